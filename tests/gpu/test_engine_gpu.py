"""The engine on a CUDA GPU: same tokens as the full model, and the VRAM pool stays in budget.

Run on the device machine: `pytest -m gpu tests/gpu`.
"""

from __future__ import annotations

import pytest
import torch

from lazymoe.engine import Engine, GenerationConfig
from lazymoe.engine.reference import full_model, reference_greedy
from lazymoe.models.random import make_random_checkpoint

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = [pytest.mark.gpu, requires_gpu]

PROMPT = list(range(40, 72))
GREEDY = GenerationConfig(max_new_tokens=12, stop_token_ids=())
SHAPE = {"hidden_size": 128, "moe_intermediate_size": 128, "num_experts": 16,
         "num_hidden_layers": 4, "num_attention_heads": 4, "head_dim": 32}  # fmt: skip
EXPERT_BYTES = 3 * 128 * 128 * 4  # F32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = make_random_checkpoint(tmp_path_factory.mktemp("gpu") / "m", seed=11, **SHAPE)
    expected = reference_greedy(full_model(path, device="cuda"), PROMPT, GREEDY.max_new_tokens)
    torch.cuda.empty_cache()
    return path, expected


@pytest.mark.parametrize("n_slots", [2, 5, 17, None])
@pytest.mark.parametrize("placement", ["gpu", "cpu", "auto"])
@pytest.mark.parametrize("ram_slots", [0, 20])
@pytest.mark.parametrize("prefetch", [False, True])
def test_tokens_match_the_full_model_on_the_gpu(checkpoint, n_slots, placement, ram_slots, prefetch):
    path, expected = checkpoint
    engine = Engine.from_pretrained(
        path, device="cuda",
        vram_budget=None if n_slots is None else n_slots * EXPERT_BYTES,
        ram_budget=ram_slots * EXPERT_BYTES or None,
        placement=placement, prefetch=prefetch,
    )  # fmt: skip
    assert engine.generate(PROMPT, GREEDY) == expected
    stats = engine.stats()
    if placement == "cpu" and n_slots is not None and not prefetch:
        assert stats.experts_on_cpu > 0 and stats.hits == 0  # pure --cpu-moe: VRAM never filled


@pytest.mark.parametrize("n_slots", [2, 8, 32])
def test_vram_for_experts_never_exceeds_the_budget(checkpoint, n_slots):
    path, _ = checkpoint
    budget = n_slots * EXPERT_BYTES + EXPERT_BYTES // 2  # not a whole number of experts
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    engine = Engine.from_pretrained(path, device="cuda", vram_budget=budget, ram_budget="64MiB")
    assert engine.tiers.device.pool.nbytes <= budget
    resident_and_pool = torch.cuda.memory_allocated() - before
    torch.cuda.reset_peak_memory_stats()
    engine.generate(PROMPT, GenerationConfig(max_new_tokens=24, stop_token_ids=()))
    peak_growth = torch.cuda.max_memory_allocated() - before - resident_and_pool
    # During generation only activations and the KV cache are allocated: less than one expert
    # would be, per layer, so any expert tensor made outside the pool would show here.
    assert peak_growth < 4 * EXPERT_BYTES, f"{peak_growth} bytes allocated beyond the pool"
    assert engine.stats().vram_in_use_bytes > 0
