"""Triton decode kernels that read quantized experts (GGUF blocks) in place from a byte slot pool.

Why: a Q4_0 expert is 3.6x smaller than in BF16 (Q8_0 1.9x, Q4_K 3.6x, Q6_K 2.4x). If the VRAM
slots hold the stored bytes (`QuantizedPool`), the same budget holds that many more experts and
a cache miss copies that many fewer bytes. These kernels dequantize each weight in registers,
right where it is multiplied, so no float copy of an expert is ever written:

    _gate_up_kernel   grid (A pairs, I / ROWS):     h[a] = silu(gate[slot_a] x[t_a]) * (up[slot_a] x[t_a])
    _down_sum_kernel  grid (D / ROWS, T tokens):    out[t] += sum over a of token t: w_a * (down[slot_a] h[a])

A = the chosen (token, expert) pairs, grouped by token, each token's in ascending expert order
(transformers' order). Each weight byte is read once. A program reads a tile of whole blocks:
(rows, groups of 32 or 64 weights, lanes) of payload bytes as contiguous vectors, splits nibbles
with masks and shifts, and applies each block's scales once to a partial sum over the block
(triton_qblocks.py). gate/up: one program holds ROWS rows of gate and the same ROWS of up (one
tile of 2 * ROWS rows when both share a format), so x is loaded once for both. down: one program
holds ROWS output rows of up to PAIRS of token t's pairs at once (a tile of PAIRS * ROWS rows),
so the pairs' bytes are all in flight together rather than one expert after the other.
`TILES` holds the tile sizes per format. Qwen3-30B-A3B, one token, Q4_0: 8 x 96 gate/up programs
of 2 x 8 rows x 1152 B, then 512 down programs of 8 pairs x 4 rows x 432 B (the H200 has 132 SMs).

Slots, positions and token bounds come from device tensors, so a CUDA graph can replay the
kernels with new experts. Summation: float32 inside each matmul; one token's A terms are added
to `out` in order, each rounded to out's dtype as index_add_ does (deterministic). h stays
float32 between the two kernels, like the CPU path (`lazymoe.quant.expert.expert_forward`), and
each expert's output is rounded to the activations' dtype before it is weighted.

A slot is `gate | up | down`, each projection in its own format (a Q4_K_M file mixes them), at
the byte offsets `SlotLayout` gives (`QuantizedPool.fill` writes them so). Formats: f32, f16,
bf16, q8_0, q4_0, q4_1, q4_k, q5_k, q6_k (block layouts: triton_qblocks.py). Tests check the
kernels against `lazymoe.quant`'s dequantize under Triton's interpreter (float32) and, compiled,
in tests/gpu (float32 and BF16); scripts/bench_triton_quant.py times them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lazymoe import quant
from lazymoe.engine.compute.triton_kernels import interpreting, triton
from lazymoe.engine.compute.triton_qblocks import groups

if triton is not None:
    import triton.language as tl

    from lazymoe.engine.compute.triton_qblocks import row_dots

# the kernels' constexpr format codes
FORMATS = {"f32": 0, "f16": 1, "bf16": 2, "q8_0": 3, "q4_0": 4, "q4_1": 5, "q4_k": 6, "q5_k": 7,
           "q6_k": 8}  # fmt: skip


@dataclass(frozen=True)
class SlotLayout:
    """Where gate (I, D), up (I, D) and down (D, I) sit in a slot of bytes, and in which format."""

    formats: tuple[str, str, str]
    intermediate: int  # I
    hidden: int  # D

    def __post_init__(self) -> None:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ValueError(
                f"the quantized kernels read {', '.join(FORMATS)}; not {', '.join(unknown)}: "
                "compute these experts with kernel='grouped' (the CPU path)"
            )

    @classmethod
    def of(cls, expert) -> SlotLayout:
        """The layout of a `QuantizedExpert` (e.g. `QuantizedPool.expert(slot)`)."""
        i, d = expert.gate.shape
        return cls(expert.formats, i, d)

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        i, d = self.intermediate, self.hidden
        return (i, d), (i, d), (d, i)

    @property
    def row_bytes(self) -> tuple[int, int, int]:
        pairs = zip(self.formats, self.shapes, strict=True)
        return tuple(quant.get_format(f).row_bytes(cols) for f, (_, cols) in pairs)

    @property
    def offsets(self) -> tuple[int, int, int]:
        """Bytes from the slot's start to gate, up, down: back to back, as QuantizedPool.fill."""
        sizes = [n * s[0] for n, s in zip(self.row_bytes, self.shapes, strict=True)]
        return 0, sizes[0], sizes[0] + sizes[1]

    @property
    def nbytes(self) -> int:
        return self.offsets[2] + self.row_bytes[2] * self.hidden  # bytes of one expert


@dataclass(frozen=True)
class Tiles:
    """One kernel's tile: output rows and groups of weights (32 or 64, triton_qblocks.GROUP_WEIGHTS)
    per step of a program's loop over a row, and warps per program."""

    rows: int
    groups: int
    warps: int = 4


# (gate/up, down) tiles per format on a GPU; down's rows are per pair (a tile: PAIRS x rows rows).
# Aim (reasoned, not yet timed): ~4 KB of bytes a program's step (~4096 lanes, 16-32 B a thread,
# one to four steps a row at Qwen3-30B-A3B's D 2048, I 768), registers low enough (ptxas, sm_90:
# 48-168 a thread) that a whole layer's programs are resident at once: ~40 KB in flight per SM,
# what 4.3 TB/s needs at ~1 us of memory latency (Little's law).
TILES = {
    "f32": (Tiles(4, 8), Tiles(2, 8)),
    "f16": (Tiles(4, 8), Tiles(2, 8)),
    "bf16": (Tiles(4, 8), Tiles(2, 8)),
    "q8_0": (Tiles(4, 16), Tiles(2, 8)),  # 34 B groups of 32 lanes; down: 24 groups, 3 steps
    "q4_0": (Tiles(8, 16), Tiles(4, 8)),  # 18 B groups of 16 lanes
    "q4_1": (Tiles(8, 16), Tiles(4, 8)),
    "q4_k": (Tiles(4, 16), Tiles(1, 16)),  # 64 w groups of 32 lanes; down: 12 groups, 1 step
    "q5_k": (Tiles(4, 16), Tiles(1, 16)),
    "q6_k": (Tiles(4, 32), Tiles(2, 16)),  # 64 w groups of 16 lanes
}
INTERPRETER_TILES = (Tiles(64, 64), Tiles(16, 16))  # it pays per step, not per element
MAX_PAIRS = 8  # down: pairs of one token in one tile (more are taken PAIRS at a time)


if triton is not None:

    @triton.jit
    def _gate_up_kernel(
        x_ptr, pool_ptr, slot_ptr, tok_ptr, h_ptr, HIDDEN, INTER, SLOT_BYTES,
        GATE_OFFSET, UP_OFFSET, GATE_ROW_BYTES, UP_ROW_BYTES, GATE_GROUPS, UP_GROUPS,
        GATE_FMT: tl.constexpr, UP_FMT: tl.constexpr, ROWS: tl.constexpr, GROUPS: tl.constexpr,
    ):  # fmt: skip
        a = tl.program_id(0)  # which (token, expert) pair
        rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)  # rows of gate (and of up)
        slot = pool_ptr + tl.load(slot_ptr + a).to(tl.int64) * SLOT_BYTES
        x = x_ptr + tl.load(tok_ptr + a).to(tl.int64) * HIDDEN + tl.zeros([1, 1], dtype=tl.int64)
        if GATE_FMT == UP_FMT:  # one tile: ROWS rows of gate, then the same rows of up
            m = tl.arange(0, 2 * ROWS)
            r = tl.minimum(tl.program_id(1) * ROWS + m % ROWS, INTER - 1).to(tl.int64)
            proj = GATE_OFFSET + (m // ROWS).to(tl.int64) * (UP_OFFSET - GATE_OFFSET)
            w = (slot + proj + r * GATE_ROW_BYTES)[:, None]  # (2 ROWS, 1)
            acc = tl.zeros([2 * ROWS], dtype=tl.float32)
            for g0 in range(0, GATE_GROUPS, GROUPS):
                acc += row_dots(w, x, g0, GATE_GROUPS, HIDDEN, GATE_FMT, GROUPS)
            both = tl.reshape(acc, [2, ROWS])
            which = tl.arange(0, 2)[:, None]
            acc_gate = tl.sum(tl.where(which == 0, both, 0.0), axis=0)
            acc_up = tl.sum(tl.where(which == 1, both, 0.0), axis=0)
        else:  # two formats: two tiles of ROWS rows
            r = tl.minimum(rows, INTER - 1).to(tl.int64)
            gate = (slot + GATE_OFFSET + r * GATE_ROW_BYTES)[:, None]
            up = (slot + UP_OFFSET + r * UP_ROW_BYTES)[:, None]
            acc_gate = tl.zeros([ROWS], dtype=tl.float32)
            acc_up = tl.zeros([ROWS], dtype=tl.float32)
            for g0 in range(0, GATE_GROUPS, GROUPS):
                acc_gate += row_dots(gate, x, g0, GATE_GROUPS, HIDDEN, GATE_FMT, GROUPS)
            for g0 in range(0, UP_GROUPS, GROUPS):
                acc_up += row_dots(up, x, g0, UP_GROUPS, HIDDEN, UP_FMT, GROUPS)
        act = acc_gate / (1.0 + tl.exp(-acc_gate))  # SiLU, float32 like the CPU path
        tl.store(h_ptr + a * INTER + rows, act * acc_up, mask=rows < INTER)

    @triton.jit
    def _down_sum_kernel(
        h_ptr, pool_ptr, slot_ptr, pos_ptr, start_ptr, w_ptr, out_ptr, HIDDEN, INTER, TOP_K,
        SLOT_BYTES, DOWN_OFFSET, DOWN_ROW_BYTES, DOWN_GROUPS,
        DOWN_FMT: tl.constexpr, PAIRS: tl.constexpr, ROWS: tl.constexpr, GROUPS: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # rows of down = output features
        t = tl.program_id(1)  # which token
        row_ok = rows < HIDDEN
        odt = out_ptr.dtype.element_ty
        out_row = out_ptr + t.to(tl.int64) * HIDDEN + rows
        total = tl.load(out_row, mask=row_ok, other=0.0).to(tl.float32)  # out += ...
        m = tl.arange(0, PAIRS * ROWS)  # tile row m: pair m // ROWS, output row m % ROWS
        r = tl.minimum(tl.program_id(0) * ROWS + m % ROWS, HIDDEN - 1).to(tl.int64)
        p = tl.arange(0, PAIRS)
        end = tl.load(start_ptr + t + 1)
        for a0 in range(tl.load(start_ptr + t), end, PAIRS):  # token t's pairs, PAIRS at a time
            a = tl.minimum(a0 + m // ROWS, end - 1)  # pairs past the end: read, then dropped
            slot = pool_ptr + tl.load(slot_ptr + a).to(tl.int64) * SLOT_BYTES
            down = (slot + DOWN_OFFSET + r * DOWN_ROW_BYTES)[:, None]  # (PAIRS ROWS, 1)
            h = (h_ptr + a.to(tl.int64) * INTER)[:, None]
            acc = tl.zeros([PAIRS * ROWS], dtype=tl.float32)
            for g0 in range(0, DOWN_GROUPS, GROUPS):
                acc += row_dots(down, h, g0, DOWN_GROUPS, INTER, DOWN_FMT, GROUPS)
            pos = tl.load(pos_ptr + tl.minimum(a0 + p, end - 1))
            weight = tl.load(w_ptr + t * TOP_K + pos).to(tl.float32)[:, None]  # (PAIRS, 1)
            # each expert's output in the activations' dtype, weighted, rounded again
            y = (tl.reshape(acc, [PAIRS, ROWS]).to(odt).to(tl.float32) * weight).to(odt)
            y = y.to(tl.float32)
            for k in tl.static_range(PAIRS):  # added in order, each sum rounded (index_add_)
                term = tl.sum(tl.where(p[:, None] == k, y, 0.0), axis=0)
                summed = (total + term).to(odt).to(tl.float32)
                total = tl.where(a0 + k < end, summed, total)
        tl.store(out_row, total.to(odt), mask=row_ok)


def unavailable_reason(device: torch.device, dtype: torch.dtype, act=None) -> str | None:
    """Why these kernels cannot run here, or None (the same conditions as the float kernels)."""
    from lazymoe.engine.compute.triton_kernels import unavailable_reason as float_reason

    return float_reason(device, dtype, act)


def check_inputs(out, hidden, top_k_weights, pool: torch.Tensor, layout: SlotLayout) -> None:
    """ValueError naming what does not fit, for the arguments these kernels and the grouped ones
    (triton_grouped.py) share: out, hidden (T, D) with D the layout's, out contiguous,
    top_k_weights (T, K), pool contiguous (slots, >= an expert's bytes) uint8."""
    if (
        pool.dtype != torch.uint8
        or pool.dim() != 2
        or not pool.is_contiguous()
        or pool.shape[1] < layout.nbytes
    ):
        raise ValueError(f"pool: expected contiguous (slots, >= {layout.nbytes} bytes) uint8 for "
                         f"{layout}, got {pool.dtype} {tuple(pool.shape)}")  # fmt: skip
    if (
        hidden.dim() != 2
        or hidden.shape[1] != layout.hidden
        or out.shape != hidden.shape
        or not out.is_contiguous()
        or top_k_weights.shape[0] != hidden.shape[0]
    ):
        raise ValueError(
            f"shapes disagree: hidden {tuple(hidden.shape)}, out {tuple(out.shape)} (contiguous), "
            f"top_k_weights {tuple(top_k_weights.shape)}, for {layout}"
        )
    if interpreting() and hidden.device.type == "cpu" and hidden.dtype != torch.float32:
        raise ValueError(f"Triton's interpreter computes float32 only, got {hidden.dtype}")


def fused_decode_quantized(
    out: torch.Tensor,
    hidden: torch.Tensor,
    top_k_weights: torch.Tensor,
    slot_t: torch.Tensor,
    pos_t: torch.Tensor,
    pool: torch.Tensor,
    layout: SlotLayout,
    tok_t: torch.Tensor | None = None,
    starts_t: torch.Tensor | None = None,
    h_buf: torch.Tensor | None = None,
) -> None:
    """out[t] += sum over pairs a of token t: top_k_weights[t, pos_t[a]] * expert_{slot_t[a]}(hidden[t]).

    out, hidden (T, D); top_k_weights (T, K); pool (S, slot bytes) uint8, every slot in `layout`;
    slot_t, pos_t, tok_t (A,) and starts_t (T + 1,) integer tensors on the device: pairs grouped
    by token, token t's are starts_t[t]:starts_t[t + 1], added in that order. tok_t and starts_t
    may be left out for one token (T = 1). h_buf (>= A, I) float32 holds the activations between
    the two kernels (made here when left out). With every tensor given, no host values: a CUDA
    graph can capture it.
    """
    n_tokens, d = hidden.shape
    i = layout.intermediate
    n = slot_t.shape[0]
    check_inputs(out, hidden, top_k_weights, pool, layout)
    if tok_t is None or starts_t is None:
        if n_tokens != 1:
            raise ValueError(f"{n_tokens} tokens: give tok_t and starts_t (which pairs are whose)")
        tok_t = torch.zeros(n, dtype=torch.int32, device=hidden.device)
        starts_t = torch.tensor([0, n], dtype=torch.int32, device=hidden.device)
    if h_buf is None:
        h_buf = torch.empty(max(n, 1), i, dtype=torch.float32, device=hidden.device)
    if h_buf.dtype != torch.float32 or h_buf.shape[0] < n or h_buf.shape[1] != i:
        raise ValueError(f"h_buf: expected float32 (>= {n}, {i}), got {h_buf.dtype} "
                         f"{tuple(h_buf.shape)}")  # fmt: skip
    x = hidden.contiguous()
    scores = top_k_weights.contiguous()
    codes = [FORMATS[f] for f in layout.formats]
    offsets, row_bytes = layout.offsets, layout.row_bytes
    gate_up, down = TILES[layout.formats[0]][0], TILES[layout.formats[2]][1]
    if interpreting():
        gate_up, down = INTERPRETER_TILES
    pairs = min(triton.next_power_of_2(scores.shape[1]), MAX_PAIRS)
    _gate_up_kernel[(n, triton.cdiv(i, gate_up.rows))](
        x, pool, slot_t, tok_t, h_buf, d, i, pool.stride(0), offsets[0], offsets[1],
        row_bytes[0], row_bytes[1], groups(codes[0], d), groups(codes[1], d),
        GATE_FMT=codes[0], UP_FMT=codes[1], ROWS=gate_up.rows, GROUPS=gate_up.groups,
        num_warps=gate_up.warps,
    )  # fmt: skip
    _down_sum_kernel[(triton.cdiv(d, down.rows), n_tokens)](
        h_buf, pool, slot_t, pos_t, starts_t, scores, out, d, i, scores.shape[1], pool.stride(0),
        offsets[2], row_bytes[2], groups(codes[2], i), DOWN_FMT=codes[2], PAIRS=pairs,
        ROWS=down.rows, GROUPS=down.groups, num_warps=down.warps,
    )  # fmt: skip
