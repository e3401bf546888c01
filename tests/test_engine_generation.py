"""The engine generates exactly what the full transformers model generates.

Greedy F32 decoding must be token-identical for every supported architecture, every expert-cache
size from the smallest that holds one layer's top-k up to "every expert resident", with and
without prefetch, and for every placement mode (on a CPU-only machine the tiers are RAM and disk).
"""

from __future__ import annotations

import pytest
import torch

from lazymoe.engine import Engine, GenerationConfig
from lazymoe.engine.reference import full_model, reference_greedy
from lazymoe.models.random import SUPPORTED_ARCHS, make_random_checkpoint

PROMPT = list(range(40, 60))  # 20 token ids, valid in every tiny vocabulary
NEW_TOKENS = 10
GREEDY = GenerationConfig(max_new_tokens=NEW_TOKENS, stop_token_ids=())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """arch -> (path, reference tokens); 3 layers x 8 experts, top-2."""
    root = tmp_path_factory.mktemp("random-moe")
    out = {}
    for arch in SUPPORTED_ARCHS:
        path = make_random_checkpoint(root / arch, arch=arch, seed=7)
        out[arch] = (path, reference_greedy(full_model(path), PROMPT, NEW_TOKENS))
    return out


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
@pytest.mark.parametrize("n_slots", [2, 3, 5, 9, 24, None])  # 2 = top_k, 24 = every expert
@pytest.mark.parametrize("prefetch", [False, True])
def test_greedy_tokens_match_transformers_for_every_cache_size(checkpoints, arch, n_slots, prefetch):
    path, expected = checkpoints[arch]
    expert_bytes = 3 * 16 * 32 * 4  # 3 * I * D * 4 bytes (F32)
    budget = None if n_slots is None else n_slots * expert_bytes
    engine = Engine.from_pretrained(path, device="cpu", vram_budget=budget, prefetch=prefetch)
    assert engine.generate(PROMPT, GREEDY) == expected
    stats = engine.stats()
    assert stats.tokens == NEW_TOKENS
    if n_slots is None or n_slots >= 24:
        assert stats.misses == 0 and stats.bytes_moved == 0  # the plain model: nothing moves
    else:
        assert stats.misses > 0 and stats.bytes_moved >= stats.misses * expert_bytes


@pytest.mark.parametrize("placement", ["fetch", "cpu", "auto", "gpu"])  # gpu: fetch's old name
@pytest.mark.parametrize("arch", ["qwen3_moe", "qwen2_moe"])
def test_every_placement_mode_gives_the_same_tokens(checkpoints, arch, placement):
    path, expected = checkpoints[arch]
    engine = Engine.from_pretrained(
        path, device="cpu", vram_budget=3 * 3 * 16 * 32 * 4, placement=placement
    )
    assert engine.generate(PROMPT, GREEDY) == expected


def test_ram_budget_sizes_the_cpu_tier(checkpoints):
    path, expected = checkpoints["olmoe"]
    engine = Engine.from_pretrained(path, device="cpu", ram_budget=4 * 3 * 16 * 32 * 4)
    assert engine.tiers.device.name == "ram" and engine.tiers.device.pool.n_slots == 4
    assert engine.generate(PROMPT, GREEDY) == expected


@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo"])
def test_every_policy_gives_the_same_tokens_but_its_own_hit_rate(checkpoints, policy):
    path, expected = checkpoints["mixtral"]
    engine = Engine.from_pretrained(
        path, device="cpu", vram_budget=5 * 3 * 16 * 32 * 4, policy=policy, prefetch=False
    )
    assert engine.generate(PROMPT, GREEDY) == expected
    assert engine.tiers.device.book.policy.name == policy


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_bfloat16_stays_close_to_float32(checkpoints, arch):
    """BF16 tolerance: the greedy choice agrees with F32 on at least 85% of prompt positions.

    (Logits themselves drift by up to ~0.5 on these random models: BF16 keeps 8 bits of mantissa,
    and a different expert choice in one layer changes a token's whole path.)
    """
    path, _ = checkpoints[arch]
    f32 = Engine.from_pretrained(path, device="cpu").forward_logits(PROMPT)
    bf16 = Engine.from_pretrained(
        path, device="cpu", dtype="bfloat16", vram_budget=4 * 3 * 16 * 32 * 2
    ).forward_logits(PROMPT)
    agree = int((bf16.argmax(-1) == f32.argmax(-1)).sum())
    assert agree >= 0.85 * len(PROMPT)


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_bfloat16_engine_matches_bfloat16_transformers(checkpoints, arch):
    path, _ = checkpoints[arch]
    expected = reference_greedy(full_model(path, torch.bfloat16), PROMPT, NEW_TOKENS)
    engine = Engine.from_pretrained(
        path, device="cpu", dtype="bfloat16", vram_budget=3 * 3 * 16 * 32 * 2
    )
    assert engine.generate(PROMPT, GREEDY) == expected


def test_dense_layers_and_tied_embeddings(tmp_path):
    """Qwen MoE can keep some layers dense (mlp_only_layers) and tie lm_head to the embedding."""
    path = make_random_checkpoint(
        tmp_path / "m", num_hidden_layers=4, mlp_only_layers=[1], tie_word_embeddings=True
    )
    expected = reference_greedy(full_model(path), PROMPT, NEW_TOKENS)
    engine = Engine.from_pretrained(path, device="cpu", vram_budget=3 * 3 * 16 * 32 * 4)
    assert engine.moe_layers == [0, 2, 3]
    assert engine.generate(PROMPT, GREEDY) == expected


def test_experts_from_an_extracted_folder(checkpoints, tmp_path):
    """A bit-exact extraction gives the same tokens; an int8 one reads fewer bytes per miss."""
    from lazymoe.engine.storage.extract import extract

    path, expected = checkpoints["qwen3_moe"]
    budget = 3 * 3 * 16 * 32 * 4
    same = extract(path, tmp_path / "same", fmt="same")
    engine = Engine.from_pretrained(path, device="cpu", vram_budget=budget, experts_path=same)
    assert engine.generate(PROMPT, GREEDY) == expected
    q8 = extract(path, tmp_path / "int8", fmt="int8_row")
    quantized = Engine.from_pretrained(path, device="cpu", vram_budget=budget, experts_path=q8)
    quantized.generate(PROMPT, GREEDY)
    stats = quantized.stats()
    assert stats.bytes_moved < stats.misses * 3 * 16 * 32 * 4  # int8 + scales < F32
