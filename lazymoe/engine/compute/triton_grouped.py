"""Triton kernels for a pass over many tokens (a prompt, several prompts): each expert's quantized
weights read once per tile of its tokens and multiplied on the tensor cores.

Why: the decode kernels (triton_quant.py) compute one (token, expert) pair at a time: every pair
decodes its expert's bytes again. A step of a few tokens barely repeats an expert, but a prompt
does: 16 prompts of 24 tokens (384 tokens, 3,072 pairs a layer of Qwen3-30B-A3B) use each of a
layer's 128 experts ~24 times, so the decode kernels decode every weight ~24 times, on the
general cores. Here the pairs are grouped by expert into tiles of TOKENS pairs, and a program
decodes a tile of ROWS rows of the expert once for all of them:

    _gate_up_kernel  grid (tiles, I / ROWS):  h[a] = silu(gate x[t_a]) * (up x[t_a]), a in the tile
    _down_kernel     grid (tiles, D / ROWS):  y[a] = w_a * (down h[a]), rounded as the decode kernels
    _sum_kernel      grid (T, D / SUM_BLOCK): out[t] += y[a] for token t's pairs in order, each
                                              sum rounded to out's dtype (as the decode kernels)

A program's loop takes STEP weights of each of its rows at a time (`_weights`: whole block groups,
loaded as (rows, groups, byte lanes) tiles, each group's scales once, decoded to float32 in
registers and put in the row's order) and multiplies them with the tile's activations at those
columns (`tl.dot`): TF32 tensor cores for BF16/FP16 activations (each weight rounded to 10 bits
of mantissa, h too, more than BF16's 8), float32 products for float32 activations (and under the
interpreter). The decode kernels multiply float32 weights: the two agree to the activations'
precision, not to the bit; `DeviceCacheDecoder.batch_experts` and the host's path therefore
compute every prompt's pass with these and every decode step with those.

Tiles are built on the device (`expert_tiles`: a stable sort of the pairs by slot, each slot's
pairs cut in tiles; no host sync), the grid sized for the most tiles a layer's pass can need;
programs past the last tile return at once. Every launch takes the same tile shape whatever the
pass, so a token's sums do not depend on which other tokens share its pass: a prompt prefilled
with others gets the bits it gets alone (tests/gpu/test_triton_grouped_gpu.py checks this).

Formats: q8_0, q4_0, q4_1, q4_k, q5_k, q6_k (a layer with another one takes the decode kernels).

Measured on an H200 (Qwen3-30B-A3B's shapes, one layer, a random router,
data/results/h200-prompt-experts.json): 384 tokens, Q4_0 1.75 ms against 7.41 per pair, Q8_0
1.78 against 10.51, Q4_K_M 3.06 against 12.39; 24 tokens, Q4_0 1.50 against 0.70. A short
prompt's tiles hold one or two tokens, and a program's loop waits on its loads: the small-tile
case is where these kernels are slower, and what a single user's first token pays for them.
"""

from __future__ import annotations

import torch

from lazymoe.engine.compute.triton_kernels import triton
from lazymoe.engine.compute.triton_quant import FORMATS, SlotLayout, check_inputs

if triton is not None:
    import triton.language as tl

    from lazymoe.engine.compute.triton_qblocks import _bytes, _f16, _i8, _k_scale_min

# weights per block group here, by format code: q8_0, q4_0, q4_1 a block; q4_k, q5_k two
# sub-blocks (one byte's two nibbles); q6_k half a block (one pass over its ql and qh bytes)
GROUP_WEIGHTS = {3: 32, 4: 32, 5: 32, 6: 64, 7: 64, 8: 128}
GROUPED = {name for name, code in FORMATS.items() if code in GROUP_WEIGHTS}
TOKENS = 16  # pairs in a tile (the dot's other side)
ROWS = 64  # weight rows a program holds
STEP = 128  # weights of a row a program's loop step decodes (a whole number of groups)
WARPS = 4
SUM_BLOCK = 1024  # output columns a program of the ordered sum adds

if triton is not None:
    _STEP = tl.constexpr(STEP)


def supports(layout: SlotLayout) -> bool:
    """Whether these kernels read every projection of the layout."""
    return all(f in GROUPED for f in layout.formats)


if triton is not None:

    @triton.jit
    def _join(a, b):
        """(M, G, n) and (M, G, n) -> (M, G, 2, n): a's weights, then b's."""
        return tl.permute(tl.join(a, b), (0, 1, 3, 2))

    @triton.jit
    def _weights(w, g0, n_groups, FMT: tl.constexpr, G: tl.constexpr, M: tl.constexpr,
                 C: tl.constexpr):  # fmt: skip
        """Rows at byte pointers w (M, 1), groups g0 .. g0 + G: (weights (M, C) float32, their
        columns in the row (C,), ok (C,)), C = G x the group's weights, in the row's order."""
        g = g0 + tl.arange(0, G)[None, :]  # (1, G)
        ok = g < n_groups
        ok3 = ok[:, :, None]
        if FMT == 3:  # q8_0: d | 32 int8
            b = w + g * 34
            j = tl.arange(0, 32)[None, None, :]
            v = _i8(b[:, :, None] + 2 + j, ok3) * _f16(b, ok)[:, :, None]  # (M, G, 32)
            cols = g[:, :, None] * 32 + j
        elif FMT <= 5:  # q4_0: d | 16 bytes; q4_1: d | m | 16; byte j: weight j low, j + 16 high
            j = tl.arange(0, 16)[None, None, :]
            if FMT == 4:
                b = w + g * 18
                q = _bytes(b[:, :, None] + 2 + j, ok3)
                d = _f16(b, ok)[:, :, None]
                low, high = ((q & 15) - 8).to(tl.float32) * d, ((q >> 4) - 8).to(tl.float32) * d
            else:
                b = w + g * 20
                q = _bytes(b[:, :, None] + 4 + j, ok3)
                d, m = _f16(b, ok)[:, :, None], _f16(b + 2, ok)[:, :, None]
                low, high = (q & 15).to(tl.float32) * d + m, (q >> 4).to(tl.float32) * d + m
            v = _join(low, high)  # (M, G, 2, 16)
            cols = g[:, :, None] * 32 + tl.arange(0, 32)[None, None, :]
        elif FMT <= 7:  # q4_k, q5_k: group g = sub-blocks 2i, 2i + 1 of block g // 4 (i = g % 4)
            i = (g % 4)[:, :, None]
            j = tl.arange(0, 32)[None, None, :]
            if FMT == 6:
                b = w + (g // 4) * 144
                q = _bytes(b[:, :, None] + 16 + i * 32 + j, ok3)
                low, high = q & 15, q >> 4
            else:  # the fifth bits: bit s of byte j is weight j of sub-block s
                b = w + (g // 4) * 176
                q = _bytes(b[:, :, None] + 48 + i * 32 + j, ok3)
                qh = _bytes(b[:, :, None] + 16 + j, ok3) >> (2 * i)
                low = (q & 15) | ((qh & 1) << 4)
                high = (q >> 4) | ((qh & 2) << 3)
            sc_low, m_low = _k_scale_min(b + 4, 2 * (g % 4), ok)
            sc_high, m_high = _k_scale_min(b + 4, 2 * (g % 4) + 1, ok)
            d, dmin = _f16(b, ok), _f16(b + 2, ok)
            low = (d * sc_low)[:, :, None] * low.to(tl.float32) - (dmin * m_low)[:, :, None]
            high = (d * sc_high)[:, :, None] * high.to(tl.float32) - (dmin * m_high)[:, :, None]
            v = _join(low, high)  # (M, G, 2, 32)
            cols = g[:, :, None] * 64 + tl.arange(0, 64)[None, None, :]
        else:  # q6_k: group g = half hh = g % 2 of block g // 2 (128 weights)
            hh = (g % 2)[:, :, None]
            b = w + (g // 2) * 210
            l = tl.arange(0, 32)[None, None, :]  # noqa: E741
            ql = b[:, :, None] + hh * 64 + l
            qa, qb = _bytes(ql, ok3), _bytes(ql + 32, ok3)
            qh = _bytes(b[:, :, None] + 128 + hh * 32 + l, ok3)
            sc = b[:, :, None] + 192 + hh * 8 + l // 16  # int8 scale of weights l (+ 2 per 32)
            d = _f16(b + 208, ok)[:, :, None]
            v0 = (((qa & 15) | ((qh & 3) << 4)) - 32).to(tl.float32) * _i8(sc, ok3) * d
            v1 = (((qb & 15) | ((qh & 12) << 2)) - 32).to(tl.float32) * _i8(sc + 2, ok3) * d
            v2 = (((qa >> 4) | (qh & 48)) - 32).to(tl.float32) * _i8(sc + 4, ok3) * d
            v3 = (((qb >> 4) | ((qh >> 2) & 48)) - 32).to(tl.float32) * _i8(sc + 6, ok3) * d
            both = tl.join(_join(v0, v1), _join(v2, v3))  # (M, G, 2, 32, 2)
            v = tl.permute(both, (0, 1, 4, 2, 3))  # (M, G, 2, 2, 32): weights 0 .. 127 in order
            cols = g[:, :, None] * 128 + tl.arange(0, 128)[None, None, :]
        ok_cols = tl.reshape(ok3 & (cols >= 0), [C])
        return tl.reshape(v, [M, C]), tl.reshape(cols, [C]), ok_cols

    @triton.jit
    def _rows_times(w, src_ptr, src_rows, width, n_groups, ok_t, FMT: tl.constexpr,
                    G: tl.constexpr, ROWS: tl.constexpr, TOKENS: tl.constexpr,
                    EXACT: tl.constexpr):  # fmt: skip
        """(ROWS, TOKENS) float32: rows at w (ROWS, 1) times the tile's activations (row
        src_rows[t] of the (., width) matrix at src_ptr), over all the rows' groups. EXACT:
        float32 products; else TF32 tensor cores (10 bits of mantissa, as BF16 activations)."""
        acc = tl.zeros([ROWS, TOKENS], dtype=tl.float32)
        src = src_ptr + src_rows[None, :] * width  # (1, TOKENS)
        for g0 in range(0, n_groups, G):
            v, cols, ok = _weights(w, g0, n_groups, FMT, G, ROWS, _STEP)
            x = tl.load(src + cols[:, None], mask=ok[:, None] & ok_t[None, :], other=0.0)
            if EXACT:
                acc = tl.dot(v, x.to(tl.float32), acc=acc, input_precision="ieee")
            else:
                acc = tl.dot(v, x.to(tl.float32), acc=acc, input_precision="tf32")
        return acc

    @triton.jit
    def _gate_up_kernel(
        x_ptr, pool_ptr, tile_slot_ptr, tile_pair_ptr, n_tiles_ptr, tok_ptr, h_ptr, HIDDEN,
        INTER, SLOT_BYTES, GATE_OFFSET, UP_OFFSET, GATE_ROW_BYTES, UP_ROW_BYTES, GATE_GROUPS,
        UP_GROUPS, GATE_FMT: tl.constexpr, UP_FMT: tl.constexpr, GATE_G: tl.constexpr,
        UP_G: tl.constexpr, ROWS: tl.constexpr, TOKENS: tl.constexpr,
    ):  # fmt: skip
        tile = tl.program_id(0)
        if tile < tl.load(n_tiles_ptr):
            pair = tl.load(tile_pair_ptr + tile * TOKENS + tl.arange(0, TOKENS))  # -1: none
            ok_t = pair >= 0
            tok = tl.load(tok_ptr + tl.maximum(pair, 0), mask=ok_t, other=0).to(tl.int64)
            rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
            r = tl.minimum(rows, INTER - 1).to(tl.int64)[:, None]
            slot = pool_ptr + tl.load(tile_slot_ptr + tile).to(tl.int64) * SLOT_BYTES
            exact = x_ptr.dtype.element_ty == tl.float32
            gate = _rows_times(slot + GATE_OFFSET + r * GATE_ROW_BYTES, x_ptr, tok, HIDDEN,
                               GATE_GROUPS, ok_t, GATE_FMT, GATE_G, ROWS, TOKENS, exact)  # fmt: skip
            up = _rows_times(slot + UP_OFFSET + r * UP_ROW_BYTES, x_ptr, tok, HIDDEN,
                             UP_GROUPS, ok_t, UP_FMT, UP_G, ROWS, TOKENS, exact)  # fmt: skip
            act = gate / (1.0 + tl.exp(-gate))  # SiLU, float32 as the decode kernels
            at = h_ptr + tl.maximum(pair, 0).to(tl.int64)[None, :] * INTER + rows[:, None]
            tl.store(at, act * up, mask=(rows < INTER)[:, None] & ok_t[None, :])

    @triton.jit
    def _down_kernel(
        h_ptr, pool_ptr, tile_slot_ptr, tile_pair_ptr, n_tiles_ptr, tok_ptr, pos_ptr, w_ptr,
        y_ptr, HIDDEN, INTER, TOP_K, SLOT_BYTES, DOWN_OFFSET, DOWN_ROW_BYTES, DOWN_GROUPS,
        DOWN_FMT: tl.constexpr, DOWN_G: tl.constexpr, ROWS: tl.constexpr, TOKENS: tl.constexpr,
    ):  # fmt: skip
        tile = tl.program_id(0)
        if tile < tl.load(n_tiles_ptr):
            pair = tl.load(tile_pair_ptr + tile * TOKENS + tl.arange(0, TOKENS))
            ok_t = pair >= 0
            a = tl.maximum(pair, 0).to(tl.int64)
            rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
            r = tl.minimum(rows, HIDDEN - 1).to(tl.int64)[:, None]
            slot = pool_ptr + tl.load(tile_slot_ptr + tile).to(tl.int64) * SLOT_BYTES
            odt = y_ptr.dtype.element_ty
            acc = _rows_times(slot + DOWN_OFFSET + r * DOWN_ROW_BYTES, h_ptr, a, INTER, DOWN_GROUPS,
                              ok_t, DOWN_FMT, DOWN_G, ROWS, TOKENS, odt == tl.float32)  # fmt: skip
            tok = tl.load(tok_ptr + a, mask=ok_t, other=0).to(tl.int64)
            pos = tl.load(pos_ptr + a, mask=ok_t, other=0).to(tl.int64)
            weight = tl.load(w_ptr + tok * TOP_K + pos, mask=ok_t, other=0.0).to(tl.float32)
            # each expert's output in the activations' dtype, weighted, rounded again
            y = (acc.to(odt).to(tl.float32) * weight[None, :]).to(odt)
            at = y_ptr + a[None, :] * HIDDEN + rows[:, None]
            tl.store(at, y, mask=(rows < HIDDEN)[:, None] & ok_t[None, :])

    @triton.jit
    def _sum_kernel(y_ptr, start_ptr, out_ptr, HIDDEN, BLOCK: tl.constexpr):
        """out[t] += y[a] for token t's pairs a in order, each sum rounded to out's dtype."""
        t = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = cols < HIDDEN
        odt = out_ptr.dtype.element_ty
        row = out_ptr + t.to(tl.int64) * HIDDEN + cols
        total = tl.load(row, mask=ok, other=0.0).to(tl.float32)
        first, end = tl.load(start_ptr + t), tl.load(start_ptr + t + 1)
        ys = y_ptr + first.to(tl.int64) * HIDDEN + cols  # pair `first`'s row, then the next
        for _ in range(first, end):
            total = (total + tl.load(ys, mask=ok, other=0.0).to(tl.float32)).to(odt).to(tl.float32)
            ys += HIDDEN
        tl.store(row, total.to(odt), mask=ok)


def max_tiles(n_pairs: int, n_experts: int) -> int:
    """The most tiles a pass of n_pairs pairs over at most n_experts distinct experts needs."""
    return -(-n_pairs // TOKENS) + min(n_experts, n_pairs)


def expert_tiles(slot_t: torch.Tensor, n_slots: int, n_experts: int):
    """The pairs grouped by slot in tiles of TOKENS, on the device with no host sync: (tile_slot
    (M,) int32, tile_pair (M, TOKENS) int32, pair indices or -1, n_tiles (1,) int32), M =
    max_tiles; tiles past n_tiles are not read. Pairs keep their order within a slot."""
    device, n = slot_t.device, slot_t.shape[0]
    slots = slot_t.to(torch.int64)
    order = torch.argsort(slots, stable=True)
    counts = torch.zeros(n_slots, dtype=torch.int64, device=device)
    counts.scatter_add_(0, slots, torch.ones_like(slots))
    tiles = (counts + TOKENS - 1) // TOKENS
    tiles_end = tiles.cumsum(0)
    pairs_start = counts.cumsum(0) - counts  # where each slot's pairs begin in `order`
    m = max_tiles(n, n_experts)
    tile = torch.arange(m, device=device)
    tile_slot = torch.searchsorted(tiles_end, tile, right=True).clamp_(max=n_slots - 1)
    first = (tile - (tiles_end - tiles)[tile_slot]) * TOKENS  # the tile's first pair in its slot
    lane = first[:, None] + torch.arange(TOKENS, device=device)
    used = (lane < counts[tile_slot][:, None]) & (tile < tiles_end[-1])[:, None]
    at = (pairs_start[tile_slot][:, None] + lane).clamp_(max=n - 1)
    tile_pair = torch.where(used, order[at], -1).to(torch.int32)
    return tile_slot.to(torch.int32), tile_pair, tiles_end[-1:].to(torch.int32)


def grouped_experts(
    out: torch.Tensor,
    hidden: torch.Tensor,
    top_k_weights: torch.Tensor,
    slot_t: torch.Tensor,
    pos_t: torch.Tensor,
    pool: torch.Tensor,
    layout: SlotLayout,
    tok_t: torch.Tensor,
    starts_t: torch.Tensor,
    n_experts: int,
) -> None:
    """out[t] += sum over pairs a of token t: top_k_weights[t, pos_t[a]] * expert_{slot_t[a]}(hidden[t]),
    what `triton_quant.fused_decode_quantized` computes from the same arguments (pairs grouped by
    token, token t's are starts_t[t]:starts_t[t + 1], added in that order, each sum rounded to
    out's dtype), each expert's bytes decoded once per tile of its pairs.

    out, hidden (T, D); top_k_weights (T, K); pool (S, slot bytes) uint8; slot_t, pos_t, tok_t
    (A,) and starts_t (T + 1,) integer tensors on the device; n_experts: the most distinct slots
    the pairs can use (a layer's experts). No host values: nothing waits for the GPU."""
    n_tokens, d = hidden.shape
    n, i = slot_t.shape[0], layout.intermediate
    if not supports(layout):
        raise ValueError(f"grouped kernels read {', '.join(sorted(GROUPED))}; not "
                         f"{layout.formats}: use triton_quant.fused_decode_quantized")  # fmt: skip
    check_inputs(out, hidden, top_k_weights, pool, layout)
    if starts_t.shape != (n_tokens + 1,):
        raise ValueError(f"shapes disagree: starts_t {tuple(starts_t.shape)} for {n_tokens} "
                         f"tokens: give their T + 1 bounds")  # fmt: skip
    if n == 0:
        return
    device = hidden.device
    tile_slot, tile_pair, n_tiles = expert_tiles(slot_t, pool.shape[0], n_experts)
    h = torch.empty(n, i, dtype=torch.float32, device=device)
    y = torch.empty(n, d, dtype=out.dtype, device=device)
    x, scores = hidden.contiguous(), top_k_weights.contiguous()
    codes = [FORMATS[f] for f in layout.formats]
    offsets, row_bytes = layout.offsets, layout.row_bytes
    per_step = [STEP // GROUP_WEIGHTS[c] for c in codes]  # groups a loop step takes
    groups = [-(-cols // GROUP_WEIGHTS[c]) for c, cols in zip(codes, (d, d, i), strict=True)]
    grid = tile_slot.shape[0]
    _gate_up_kernel[(grid, triton.cdiv(i, ROWS))](
        x, pool, tile_slot, tile_pair, n_tiles, tok_t, h, d, i, pool.stride(0), offsets[0],
        offsets[1], row_bytes[0], row_bytes[1], groups[0], groups[1], GATE_FMT=codes[0],
        UP_FMT=codes[1], GATE_G=per_step[0], UP_G=per_step[1], ROWS=ROWS, TOKENS=TOKENS,
        num_warps=WARPS,
    )  # fmt: skip
    _down_kernel[(grid, triton.cdiv(d, ROWS))](
        h, pool, tile_slot, tile_pair, n_tiles, tok_t, pos_t, scores, y, d, i, scores.shape[1],
        pool.stride(0), offsets[2], row_bytes[2], groups[2], DOWN_FMT=codes[2],
        DOWN_G=per_step[2], ROWS=ROWS, TOKENS=TOKENS, num_warps=WARPS,
    )  # fmt: skip
    _sum_kernel[(n_tokens, triton.cdiv(d, SUM_BLOCK))](y, starts_t, out, d, BLOCK=SUM_BLOCK)
