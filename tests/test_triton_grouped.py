"""The grouped Triton kernels of a prompt's pass (lazymoe.engine.compute.triton_grouped) against
the plain formula and against the decode kernels.

Reference: as tests/test_triton_quant.py, each expert's bytes dequantized by lazymoe.quant, then
out[t] += sum_k w * down @ (silu(gate @ x) * (up @ x)) in float64. Under Triton's interpreter the
kernels compute float32 (the tensor cores' TF32 is for tests/gpu); the tolerance is the decode
kernels' (1e-5 of the largest output: a wrong nibble, scale or block moves outputs by 1e-3 or more).
"""

from __future__ import annotations

import pytest
import torch
from test_triton_quant import K, _close, _pool, _reference

from lazymoe.engine.compute import triton_grouped, triton_quant
from lazymoe.engine.compute.triton_grouped import TOKENS, expert_tiles, grouped_experts
from lazymoe.engine.compute.triton_quant import SlotLayout, fused_decode_quantized

pytestmark = pytest.mark.skipif(
    triton_quant.unavailable_reason(torch.device("cpu"), torch.float32) is not None
    and not torch.cuda.is_available(),
    reason="Triton is not installed (the dev extra installs it)",
)


def _inputs(layout, n_tokens, n_slots, seed, routes=None):
    """x, router weights, and each token's K slots (distinct, ascending, as
    the device tables give them) and top-k places."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tokens, layout.hidden, generator=g)
    weights = torch.softmax(torch.randn(n_tokens, K, generator=g), dim=-1)
    if routes is None:
        routes = [
            sorted(torch.randperm(n_slots, generator=g)[:K].tolist()) for _ in range(n_tokens)
        ]
    slot_t = torch.tensor([s for r in routes for s in r])
    pos_t = torch.cat([torch.randperm(K, generator=g) for _ in range(n_tokens)])
    return x, weights, slot_t, pos_t


def _grouped(layout, x, weights, slot_t, pos_t, pool, n_experts):
    """Each token's K pairs in order (as the device tables give them)."""
    out = torch.zeros_like(x)
    tok_t = torch.arange(len(slot_t)) // K
    starts_t = torch.arange(0, len(slot_t) + 1, K)
    grouped_experts(out, x, weights, slot_t, pos_t, pool.data, layout, tok_t, starts_t, n_experts)
    return out


def _want(x, weights, slot_t, pos_t, pool):
    pairs = [
        (a // K, s, p) for a, (s, p) in enumerate(zip(slot_t.tolist(), pos_t.tolist(), strict=True))
    ]
    return _reference(torch.zeros_like(x), x, weights, pairs, pool)


@pytest.mark.parametrize(
    "formats,intermediate,hidden",
    [
        (("q8_0",) * 3, 96, 256),  # down rows: 3 blocks (not a whole step of 4)
        (("q4_0",) * 3, 96, 160),  # 5 blocks a row
        (("q4_1",) * 3, 64, 128),
        (("q4_k",) * 3, 256, 256),
        (("q5_k",) * 3, 256, 256),
        (("q6_k",) * 3, 256, 768),  # 3 super-blocks, 6 halves a row
        (("q4_k", "q4_k", "q6_k"), 256, 256),  # a Q4_K_M layer
        (("q4_k", "q5_k", "q8_0"), 256, 256),  # gate and up in two formats
    ],
)
def test_each_format_matches_the_dequantized_formula(formats, intermediate, hidden):
    layout = SlotLayout(formats, intermediate, hidden)
    pool = _pool(layout, 10, seed=1)
    x, weights, slot_t, pos_t = _inputs(layout, 3, 10, seed=2)
    got = _grouped(layout, x, weights, slot_t, pos_t, pool, 10)
    _close(got, _want(x, weights, slot_t, pos_t, pool))


def test_a_slot_with_more_pairs_than_a_tile_and_the_decode_kernels_agree():
    """40 tokens all on slot 2 (3 tiles of TOKENS, the last partial), the rest spread: the
    grouped sums equal the per-pair decode kernels' (float32 on the interpreter: to rounding)."""
    layout = SlotLayout(("q4_0",) * 3, 64, 128)
    n_slots, n_tokens = 12, 40
    pool = _pool(layout, n_slots, seed=3)
    g = torch.Generator().manual_seed(4)
    routes = []
    for _ in range(n_tokens):
        others = [s for s in torch.randperm(n_slots, generator=g).tolist() if s != 2][: K - 1]
        routes.append(sorted([2, *others]))
    x, weights, slot_t, pos_t = _inputs(layout, n_tokens, n_slots, seed=5, routes=routes)
    got = _grouped(layout, x, weights, slot_t, pos_t, pool, n_slots)
    _close(got, _want(x, weights, slot_t, pos_t, pool))
    decoded = torch.zeros_like(x)
    tok_t = torch.arange(n_tokens * K) // K
    starts = torch.arange(0, n_tokens * K + 1, K)
    fused_decode_quantized(decoded, x, weights, slot_t, pos_t, pool.data, layout, tok_t, starts)
    torch.testing.assert_close(got, decoded, rtol=1e-5, atol=1e-5 * decoded.abs().max().item())


def test_tiles_hold_each_slots_pairs_in_order():
    slot_t = torch.tensor([5, 1, 5, 5, 0] + [1] * (TOKENS + 1))
    tile_slot, tile_pair, n_tiles = expert_tiles(slot_t, n_slots=8, n_experts=8)
    n = int(n_tiles)
    assert tile_slot.shape[0] == triton_grouped.max_tiles(len(slot_t), 8) >= n
    tiles = [(int(tile_slot[j]), [p for p in tile_pair[j].tolist() if p >= 0]) for j in range(n)]
    ones = [1, *range(5, 5 + TOKENS + 1)]
    assert tiles == [(0, [4]), (1, ones[:TOKENS]), (1, ones[TOKENS:]), (5, [0, 2, 3])]
    assert (tile_pair[n:] == -1).all()


def test_a_token_gets_the_same_sums_alone_as_with_others():
    """What makes a prompt prefilled with others identical to it alone: a token's sums do not
    depend on the pass (here exact on the interpreter; tests/gpu checks the tensor cores)."""
    layout = SlotLayout(("q4_k", "q4_k", "q6_k"), 256, 256)
    pool = _pool(layout, 9, seed=6)
    x, weights, slot_t, pos_t = _inputs(layout, 5, 9, seed=7)
    together = _grouped(layout, x, weights, slot_t, pos_t, pool, 9)
    for t in (0, 3):
        pairs = slice(t * K, t * K + K)
        alone = _grouped(layout, x[t : t + 1], weights[t : t + 1], slot_t[pairs], pos_t[pairs],
                         pool, 9)  # fmt: skip
        assert torch.equal(alone[0], together[t])


def test_uneven_pairs_per_token_add_to_out_in_order():
    """As the host's path sends them: tokens with 3, 0 and 5 pairs, added to a nonzero `out`,
    the same sums as the decode kernels from the same arguments."""
    layout = SlotLayout(("q8_0", "q8_0", "q4_0"), 64, 128)
    pool = _pool(layout, 6, seed=8)
    g = torch.Generator().manual_seed(9)
    x, start = torch.randn(3, 128, generator=g), torch.randn(3, 128, generator=g)
    weights = torch.softmax(torch.randn(3, K, generator=g), dim=-1)
    slot_t, pos_t = torch.tensor([0, 2, 5, 1, 2, 3, 4, 5]), torch.tensor([4, 0, 7, 1, 2, 3, 5, 6])
    tok_t, starts_t = torch.tensor([0, 0, 0, 2, 2, 2, 2, 2]), torch.tensor([0, 3, 3, 8])
    got, want = start.clone(), start.clone()
    grouped_experts(got, x, weights, slot_t, pos_t, pool.data, layout, tok_t, starts_t, 6)
    fused_decode_quantized(want, x, weights, slot_t, pos_t, pool.data, layout, tok_t, starts_t)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    assert torch.equal(got[1], start[1])


def test_bad_input_is_named():
    layout = SlotLayout(("f32", "f16", "bf16"), 64, 96)
    assert not triton_grouped.supports(layout)
    one = (torch.zeros(K, dtype=torch.long), torch.arange(K))
    where = (torch.zeros(K, dtype=torch.long), torch.tensor([0, K]))
    with pytest.raises(ValueError, match="grouped kernels read"):
        grouped_experts(torch.zeros(1, 96), torch.zeros(1, 96), torch.ones(1, K), *one,
                        torch.zeros(1, 8192, dtype=torch.uint8), layout, *where, 4)  # fmt: skip
    q = SlotLayout(("q8_0",) * 3, 32, 64)
    with pytest.raises(ValueError, match="shapes disagree"):
        grouped_experts(torch.zeros(2, 64), torch.zeros(2, 64), torch.ones(2, K), *one,
                        _pool(q, 1).data, q, *where, 4)  # fmt: skip
    with pytest.raises(ValueError, match="pool: expected"):
        grouped_experts(torch.zeros(1, 64), torch.zeros(1, 64), torch.ones(1, K), *one,
                        torch.zeros(1, 8, dtype=torch.uint8), q, *where, 4)  # fmt: skip
