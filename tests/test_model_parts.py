"""The recipe's parts, on tiny fixtures: corpus split, config checks, schedule, metrics, counting."""

from __future__ import annotations

import pytest
import torch

from lazymoe.models import corpus, evaluate, recipe, speed
from lazymoe.models.params import param_counts

TINY = recipe.RecipeConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=2,
                           num_kv_heads=1, head_dim=32, num_experts=4, top_k=2,
                           moe_intermediate_size=64, seq_len=32, batch_size=2, steps=10,
                           warmup_steps=2)


@pytest.fixture(scope="module")
def tiny_model():
    return recipe.new_model(TINY, eos_id=0).eval()


def test_corpus_is_sorted_split_by_path_hash_and_disjoint():
    files = corpus.source_files()
    paths = [f.relpath for f in files]
    assert paths == sorted(paths)
    assert not any("/test/" in f"/{p}" or p.startswith("encodings/") for p in paths)
    train, heldout = corpus.split(files)
    assert {f.relpath for f in train}.isdisjoint(f.relpath for f in heldout)
    assert 0.02 < len(heldout) / len(files) < 0.10  # about 1 in 20 files
    assert corpus.fingerprint(files) == corpus.fingerprint(corpus.source_files())


def test_corpus_refuses_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no standard library source"):
        corpus.source_files(tmp_path / "nowhere")


@pytest.mark.parametrize("bad,match", [
    (dict(top_k=8), "lower top_k"),
    (dict(num_kv_heads=3), "multiple of num_kv_heads"),
    (dict(seq_len=4096), "max_position_embeddings"),
    (dict(warmup_steps=10), "warmup_steps"),
])
def test_recipe_config_says_what_to_change(bad, match):
    fields = {**TINY.__dict__, **bad}
    with pytest.raises(ValueError, match=match):
        recipe.RecipeConfig(**fields)


def test_model_config_renormalizes_top_k_as_llamacpp_does():
    config = recipe.model_config(recipe.RecipeConfig(), eos_id=0)
    assert config.norm_topk_prob is True
    assert config.mlp_only_layers == [] and config.decoder_sparse_step == 1  # every layer is MoE


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = recipe.RecipeConfig()
    lrs = [recipe.lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[0] < lrs[cfg.warmup_steps - 1] == pytest.approx(cfg.lr)
    assert all(a >= b for a, b in zip(lrs[cfg.warmup_steps:], lrs[cfg.warmup_steps + 1:], strict=False))
    assert lrs[-1] == pytest.approx(cfg.lr * cfg.min_lr_ratio, rel=1e-2)


def test_training_is_seeded_and_learns(tiny_model):
    ids = torch.arange(2000) % 50  # a text that repeats: easy to learn
    logs = [recipe.train_steps(recipe.new_model(TINY, 0), ids, None, TINY, progress=False)
            for _ in range(2)]
    assert [e["loss"] for e in logs[0]] == [e["loss"] for e in logs[1]]
    assert logs[0][-1]["loss"] < logs[0][0]["loss"] - 0.5


def test_a_model_that_knows_nothing_has_perplexity_equal_to_the_vocabulary(tiny_model):
    ids = torch.randint(0, TINY.vocab_size, (200,), generator=torch.Generator().manual_seed(0))
    blank = recipe.new_model(TINY, 0).eval()
    with torch.no_grad():
        blank.lm_head.weight.zero_()  # every logit 0: uniform over the vocabulary
    assert evaluate.heldout_perplexity(blank, ids, seq_len=32) == pytest.approx(TINY.vocab_size, rel=1e-4)


def test_routing_stats_count_every_pick(tiny_model):
    ids = torch.randint(0, TINY.vocab_size, (128,), generator=torch.Generator().manual_seed(1))
    stats = evaluate.routing_stats(tiny_model, ids, seq_len=32)
    assert stats.counts.shape == (TINY.num_layers, TINY.num_experts)
    assert torch.all(stats.counts.sum(dim=1) == 128 * TINY.top_k)
    assert torch.allclose(stats.load.sum(dim=1), torch.ones(TINY.num_layers))
    assert torch.all(stats.load_entropy_bits <= stats.uniform_entropy_bits + 1e-6)
    assert stats.chosen.shape == (TINY.num_layers, 128, TINY.top_k)
    token = int(ids[0])
    total_share = sum(share for e in range(TINY.num_experts)
                      for t, _, share in stats.expert_tokens(0, e, k=TINY.vocab_size) if t == token)
    assert total_share == pytest.approx(1.0)  # each occurrence has exactly one top-1 expert


def test_reuse_within_matches_a_hand_count():
    # one layer, 4 experts, top-1: experts 0, 0, 1, 0, 2 -> with window 1: hits at t=1 only
    chosen = torch.tensor([0, 0, 1, 0, 2]).reshape(1, 5, 1)
    assert float(evaluate.reuse_within(chosen, 4, window=1)[0]) == pytest.approx(1 / 4)
    # window 2: t=2 (1: no), t=3 (0: yes), t=4 (2: no)
    assert float(evaluate.reuse_within(chosen, 4, window=2)[0]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("code,ok", [
    ("def f(x):\n    return x\nprint(f(", True),  # unfinished last line is dropped
    ("class A:\n    def g(self):\n", True),  # open block gets a `pass`
    ("def f(x)\n    return x\n", False),
])
def test_complete_lines_parse(code, ok):
    assert evaluate.complete_lines_parse(code) is ok


def test_param_counts_add_up_to_the_model(tiny_model):
    counts = param_counts(tiny_model.config)
    assert counts.total == sum(p.numel() for p in tiny_model.parameters())
    expert_params = sum(p.numel() for n, p in tiny_model.named_parameters() if ".experts." in n)
    assert counts.experts == expert_params
    idle = TINY.num_layers * (TINY.num_experts - TINY.top_k) * counts.per_expert
    assert counts.active == counts.total - idle


def test_decode_bytes_count_only_active_experts_and_skip_the_embedding(tiny_model):
    counts = param_counts(tiny_model.config)
    assert speed.decode_bytes_per_token(tiny_model) == 4 * (counts.active - counts.embedding)
    dense = speed.dense_model(64, 2, vocab_size=256)
    n_all = sum(p.numel() for p in dense.parameters())
    assert speed.decode_bytes_per_token(dense) == 4 * (n_all - 256 * 64)


def test_fit_roofline_recovers_bandwidth_and_overhead():
    x = [1e7, 5e7, 2e8]
    y = [0.002 + b / 8e9 for b in x]
    bw, overhead = speed.fit_roofline(x, y)
    assert bw == pytest.approx(8.0) and overhead == pytest.approx(0.002)
    with pytest.raises(ValueError, match="larger models"):
        speed.fit_roofline([1e7, 2e7], [0.02, 0.01])


def test_timers_return_positive_seconds(tiny_model):
    assert 0 < speed.time_prefill(tiny_model, 16, repeats=1) < 10
    assert 0 < speed.time_decode(tiny_model, n_new=3, prompt_tokens=4) < 10
