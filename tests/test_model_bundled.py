"""The shipped tiny-moe: complete, reproducible by its recipe, and a real (small) model.

Thresholds are set well inside what the shipped model measures (see its MODEL_CARD.md), so they
fail only if the model or the code that evaluates it is broken.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from lazymoe.models import bundled, card, corpus, evaluate, prepare, recipe
from lazymoe.models.tokenizer import train_tokenizer
from lazymoe.paths import bundled_model_dir

pytestmark = pytest.mark.skipif(bool(bundled.problems()), reason="bundled model missing: run `make data`")

REPLAY_STEPS = 3
REPLAY_REL_TOL = 1e-4  # float sums may differ in the last bits with another thread count


@pytest.fixture(scope="module")
def model():
    return bundled.load_model()


@pytest.fixture(scope="module")
def tok():
    return bundled.load_tokenizer()


@pytest.fixture(scope="module")
def train_log():
    return json.loads((bundled_model_dir() / "train_log.json").read_text())


@pytest.fixture(scope="module")
def same_corpus(train_log):
    files = corpus.source_files()
    if corpus.fingerprint(files) != train_log["corpus"]["fingerprint"]:
        pytest.skip(f"this Python's stdlib differs from the one the model was trained on "
                    f"(Python {train_log['corpus']['python']}): replay not comparable")
    return corpus.split(files)


def test_the_folder_is_complete_and_small():
    assert bundled.problems() == []
    size = sum(p.stat().st_size for p in bundled_model_dir().iterdir() if p.is_file())
    assert size <= 25 * 2**20, f"the shipped folder is {size / 2**20:.1f} MiB: the budget is 25 MB"


def test_prepare_says_present_and_valid(capsys):
    assert prepare.main([]) == 0
    assert "present and valid" in capsys.readouterr().out


def test_prepare_reports_what_is_missing(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert any("model.safetensors" in p for p in bundled.problems(tmp_path))


def test_recipe_retrains_the_same_tokenizer(same_corpus, tok, train_log):
    train, _ = same_corpus
    again = train_tokenizer((f.text for f in train), train_log["recipe"]["vocab_size"])
    assert again.get_vocab() == tok.get_vocab()


def test_recipe_replays_the_first_steps_of_the_shipped_log(same_corpus, tok, train_log):
    cfg = recipe.RecipeConfig(**train_log["recipe"])
    train, _ = same_corpus
    ids = recipe.encode_files(tok, train)
    assert ids.numel() == train_log["corpus"]["train_tokens"]
    replay = recipe.train_steps(recipe.new_model(cfg, tok.eos_token_id), ids, None, cfg,
                                n_steps=REPLAY_STEPS, progress=False)
    for ours, shipped in zip(replay, train_log["steps"][:REPLAY_STEPS], strict=True):
        assert ours["loss"] == pytest.approx(shipped["loss"], rel=REPLAY_REL_TOL)
        assert ours["lr"] == pytest.approx(shipped["lr"])


def test_training_made_progress(train_log):
    losses = [s["loss"] for s in train_log["steps"]]
    vocab = train_log["recipe"]["vocab_size"]
    assert losses[0] == pytest.approx(math.log(vocab), abs=0.3)  # starts at uniform guessing
    assert sum(losses[-20:]) / 20 < losses[0] - 3.0


def test_heldout_perplexity_is_far_below_uniform(model, tok):
    ids = bundled.heldout_ids(tok, max_tokens=8192)
    ppl = evaluate.heldout_perplexity(model, ids)
    assert ppl < model.config.vocab_size / 50, f"held-out perplexity {ppl:.1f}"


def test_routing_is_not_uniform(model, tok):
    stats = evaluate.routing_stats(model, bundled.heldout_ids(tok, max_tokens=8192))
    uniform = stats.uniform_entropy_bits
    k, n_experts = stats.top_k, stats.num_experts
    # the per-layer balancing loss keeps every expert in use...
    assert torch.all(stats.load.min(dim=1).values > 0.005), "an expert is (almost) never used"
    assert torch.all(stats.load_entropy_bits < uniform - 0.01), stats.load_entropy_bits
    # ...but each token has favourites, and neighbouring tokens reuse experts more than chance
    assert torch.all(stats.router_entropy_bits < 0.95 * uniform), stats.router_entropy_bits
    random_reuse = 1 - (1 - k / n_experts) ** 4
    reuse = evaluate.reuse_within(stats.chosen, n_experts, window=4)
    assert torch.all(reuse > random_reuse + 0.05), (reuse, random_reuse)


def test_experts_specialize_on_token_families(model, tok):
    """Layer 0: most experts take some frequent token every time it occurs (share ~ 100 %)."""
    stats = evaluate.routing_stats(model, bundled.heldout_ids(tok, max_tokens=8192))
    owners = [e for e in range(stats.num_experts)
              if any(n >= 10 and share > 0.95 for _, n, share in stats.expert_tokens(0, e, k=8))]
    assert len(owners) >= stats.num_experts // 2, owners


def test_greedy_continuations_look_like_python(model, tok):
    texts = [p + evaluate.greedy(model, tok, p, max_new_tokens=32) for p in card.PROMPTS]
    assert sum(evaluate.complete_lines_parse(t) for t in texts) >= len(texts) - 1, texts
    init = evaluate.greedy(model, tok, "def __init__(self, name", max_new_tokens=16)
    assert ")" in init and ":" in init, init


def test_model_card_is_rendered_from_the_shipped_metrics(train_log):
    folder = bundled_model_dir()
    metrics = json.loads((folder / "metrics.json").read_text())
    text = (folder / "MODEL_CARD.md").read_text()
    assert text == card.render(metrics, train_log), "stale card: run `python -m lazymoe.models.card`"
    assert f"{metrics['heldout_perplexity']:.2f}" in text
    assert metrics["heldout_perplexity"] < metrics["uniform_perplexity"] / 20
