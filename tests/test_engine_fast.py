"""The fast expert kernels (grouped prefill, batched decode, batched CPU compute) give the
simple per-expert path's numbers, and greedy tokens still equal transformers' full model."""

from __future__ import annotations

import pytest
import torch

from lazymoe.engine import Engine, GenerationConfig
from lazymoe.engine.compute.moe import reference_experts
from lazymoe.engine.parts.router import topk_route
from lazymoe.engine.reference import full_model, reference_greedy
from lazymoe.models.random import make_random_checkpoint

# Tiny shapes with more room than the defaults: 16 experts, top-4, D=32, I=16.
SHAPE = dict(num_experts=16, num_experts_per_tok=4, num_hidden_layers=2)
EXPERT_BYTES = 3 * 16 * 32 * 4
PROMPT = list(range(40, 52))
FAST = ("grouped", "batched")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("m") / "qwen3", seed=5, **SHAPE)


def _engine(path, kernel, n_slots=None, **kw):
    budget = None if n_slots is None else n_slots * EXPERT_BYTES
    return Engine.from_pretrained(path, device="cpu", vram_budget=budget, kernel=kernel, **kw)


def _routed(n_tokens: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n_tokens, 32, generator=gen)
    weights, index = topk_route(torch.randn(n_tokens, 16, generator=gen), 4, True)
    return hidden, index, weights


@pytest.mark.parametrize("kernel", FAST)
@pytest.mark.parametrize("n_tokens", [1, 7])
@pytest.mark.parametrize("n_slots", [None, 5])  # every expert resident; a layer needs > 5 at T=7
def test_a_fast_kernel_equals_the_per_expert_reference(tiny, kernel, n_tokens, n_slots):
    fast = _engine(tiny, kernel, n_slots, prefetch=False)
    slow = _engine(tiny, "reference", n_slots, prefetch=False)
    for seed in range(3):
        hidden, index, weights = _routed(n_tokens, seed)
        got = fast.runtime.forward(1, hidden, index, weights)
        expected = slow.runtime.forward(1, hidden, index, weights)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        by_hand = reference_experts(
            hidden, index, weights, lambda e: fast.store.read(1, e), fast.runtime.act
        )
        torch.testing.assert_close(got, by_hand, rtol=1e-5, atol=1e-6)
    assert fast.stats().hits == slow.stats().hits  # the bookkeeping is the same
    assert fast.stats().misses == slow.stats().misses


def test_grouped_prefill_adds_in_transformers_order_so_f32_is_exact(tiny):
    fast, slow = _engine(tiny, "grouped"), _engine(tiny, "reference")
    hidden, index, weights = _routed(9, seed=11)
    got = fast.runtime.forward(0, hidden, index, weights)
    assert torch.equal(got, slow.runtime.forward(0, hidden, index, weights))


@pytest.mark.parametrize("kernel", FAST)
@pytest.mark.parametrize("n_slots", [None, 4, 9])  # 4 = one layer's top-k, the smallest allowed
def test_greedy_tokens_still_equal_the_full_model(tiny, kernel, n_slots):
    expected = reference_greedy(full_model(tiny), PROMPT, 10)
    engine = _engine(tiny, kernel, n_slots)
    gen = GenerationConfig(max_new_tokens=10, stop_token_ids=())
    assert engine.generate(PROMPT, gen) == expected


def test_batched_decode_gathers_into_one_workspace_made_at_start(tiny):
    engine = _engine(tiny, "batched", n_slots=6)
    ws = engine.runtime.workspace
    assert ws.gate_up.shape == (4, 32, 32) and ws.down.shape == (4, 32, 16)  # top-4 experts
    pointers = (ws.gate_up.data_ptr(), ws.down.data_ptr())
    engine.generate(PROMPT, GenerationConfig(max_new_tokens=5, stop_token_ids=()))
    assert (ws.gate_up.data_ptr(), ws.down.data_ptr()) == pointers
    assert engine.stats().experts_on_device == engine.stats().hits + engine.stats().misses


def test_the_cpu_compute_path_is_batched_and_equals_the_reference(tiny):
    # On a CPU-only machine placement never sends experts to the "cpu" path, so call it
    # directly: experts read from the file, computed together, one add into the output.
    engine = _engine(tiny, "grouped", n_slots=4, prefetch=False)
    hidden, index, weights = _routed(5, seed=3)
    rows: dict[int, list[tuple[int, int]]] = {}
    for i, e in enumerate(index.reshape(-1).tolist()):
        rows.setdefault(e, []).append(divmod(i, 4))
    out = torch.zeros_like(hidden)
    engine.runtime._compute_cpu(out, 0, hidden, weights, rows, sorted(rows))
    expected = reference_experts(
        hidden, index, weights, lambda e: engine.store.read(0, e), engine.runtime.act
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert engine.runtime.computed_on["cpu"] == len(rows)
    assert engine.stats().links["disk->cpu"]["transfers"] == len(rows)


def test_an_unknown_kernel_names_the_choices(tiny):
    with pytest.raises(ValueError, match="reference, grouped, batched"):
        _engine(tiny, "fastest")


def test_the_default_kernel_on_a_cpu_is_grouped(tiny):
    assert _engine(tiny, None).runtime.kernel == "grouped"
    assert "kernel grouped" in _engine(tiny, None).describe()


def test_batched_decode_keeps_both_weights_when_a_router_repeats_an_expert(tiny):
    fast, slow = (
        _engine(tiny, "batched", prefetch=False),
        _engine(tiny, "reference", prefetch=False),
    )
    hidden = torch.randn(1, 32)
    index = torch.tensor([[3, 7, 3, 1]])  # a learner's router may pick expert 3 twice
    weights = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    got = fast.runtime.forward(0, hidden, index, weights)
    torch.testing.assert_close(got, slow.runtime.forward(0, hidden, index, weights))


@pytest.mark.parametrize("kernel", FAST)
def test_bf16_fast_kernels_stay_within_bf16_rounding_of_the_reference(tiny, kernel):
    fast = _engine(tiny, kernel, n_slots=6, prefetch=False, dtype="bfloat16")
    slow = _engine(tiny, "reference", n_slots=6, prefetch=False, dtype="bfloat16")
    for n_tokens in (1, 5):
        hidden, index, weights = _routed(n_tokens, seed=n_tokens)
        hidden, weights = hidden.bfloat16(), weights.bfloat16()
        got = fast.runtime.forward(0, hidden, index, weights)
        assert got.dtype == torch.bfloat16
        expected = slow.runtime.forward(0, hidden, index, weights)
        torch.testing.assert_close(got, expected, rtol=2e-2, atol=1e-2)
