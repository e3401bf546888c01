"""Triton decode kernels that read quantized experts (GGUF blocks) in place from a byte slot pool.

Why: a Q4_0 expert is 3.6x smaller than in BF16 (Q8_0 1.9x, Q4_K 3.6x, Q6_K 2.4x). If the VRAM
slots hold the stored bytes (`QuantizedPool`), the same budget holds that many more experts and
a cache miss copies that many fewer bytes. These kernels dequantize each weight in registers,
right where it is multiplied, so no float copy of an expert is ever written:

    _gate_up_kernel   grid (A pairs, I / BLOCK_N):   h[a] = silu(gate[slot_a] x[t_a]) * (up[slot_a] x[t_a])
    _down_sum_kernel  grid (D / BLOCK_N, T tokens):  out[t] += sum over a of token t: w_a * (down[slot_a] h[a])

A = the chosen (token, expert) pairs, grouped by token, each token's in ascending expert order
(transformers' order). Each pair's gate and up bytes are read once (one program per pair and
rows); down bytes once per pair. Slots, positions and token bounds come from device tensors, so
a CUDA graph can replay the kernels with new experts. Summation: float32 inside each matmul;
one token's A terms are added to `out` in order, each rounded to out's dtype as index_add_ does
(deterministic). h stays float32 between the two kernels, like the CPU path
(`lazymoe.quant.expert.expert_forward`), and each expert's output is rounded to the
activations' dtype before it is weighted.

A slot is `gate | up | down`, each projection in its own format (a Q4_K_M file mixes them), at
the byte offsets `SlotLayout` gives (`QuantizedPool.fill` writes them so). Formats and the block
layouts the kernels decode (lazymoe/quant/formats.py, kquants.py: byte for byte GGUF's):

    f32 f16 bf16   plain values
    q8_0  34 B / 32 w    d f16 | 32 int8                          w = d * q
    q4_0  18 B / 32 w    d f16 | 16 B nibbles (j low, j+16 high)   w = d * (q - 8)
    q4_1  20 B / 32 w    d f16 | m f16 | 16 B nibbles              w = d * q + m
    q4_k 144 B / 256 w   d | dmin | 12 B 6-bit (sc, m) x 8 | 128 B nibbles    w = d*sc*q - dmin*m
    q5_k 176 B / 256 w   as q4_k, + 32 B fifth bits before the nibbles
    q6_k 210 B / 256 w   128 B low nibbles | 64 B 2-bit highs | 16 int8 sc | d    w = d*sc*(q-32)

Every weight is decoded from the bytes that hold it (its block's scale bytes are re-read by its
neighbours, from cache). This is the simple, obviously correct first version: tests check it
against `lazymoe.quant`'s dequantize under Triton's interpreter (float32) and, compiled, in
tests/gpu (float32 and BF16; scripts/bench_triton_quant.py times them). Loading whole blocks
(scale once, payload as a vector) is the next step for speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lazymoe import quant
from lazymoe.engine.compute.triton_kernels import interpreting, triton

if triton is not None:
    import triton.language as tl

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


if triton is not None:

    @triton.jit
    def _byte(p, ok):
        return tl.load(p, mask=ok, other=0).to(tl.int32)

    @triton.jit
    def _f16(p, ok):  # two little-endian bytes as a float16, widened
        bits = _byte(p, ok) | (_byte(p + 1, ok) << 8)
        return bits.to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)

    @triton.jit
    def _k_scale_min(s, sub, ok):
        """q4_k/q5_k: sub-block `sub`'s 6-bit (sc, m) from the 12 bytes at s (get_scale_min_k4)."""
        a = _byte(s + sub % 4, ok)
        b = _byte(s + sub % 4 + 4, ok)
        c = _byte(s + sub % 4 + 8, ok)
        low = sub < 4
        sc = tl.where(low, a & 63, (c & 15) | ((a >> 6) << 4))
        m = tl.where(low, b & 63, (c >> 4) | ((b >> 6) << 4))
        return sc.to(tl.float32), m.to(tl.float32)

    @triton.jit
    def _dequant(row, c, ok, FMT: tl.constexpr):
        """Weights at columns c (1, BK) of rows starting at byte pointers row (BN, 1): (BN, BK) f32."""
        if FMT == 0:  # f32
            p = row + c * 4
            bits = _byte(p, ok) | (_byte(p + 1, ok) << 8) | (_byte(p + 2, ok) << 16)
            w = (bits | (_byte(p + 3, ok) << 24)).to(tl.float32, bitcast=True)
        elif FMT == 1:  # f16
            w = _f16(row + c * 2, ok)
        elif FMT == 2:  # bf16: the top half of a float32
            p = row + c * 2
            w = ((_byte(p, ok) | (_byte(p + 1, ok) << 8)) << 16).to(tl.float32, bitcast=True)
        elif FMT == 3:  # q8_0
            b = row + (c // 32) * 34
            q = ((_byte(b + 2 + c % 32, ok) ^ 128) - 128).to(tl.float32)  # int8
            w = q * _f16(b, ok)
        elif FMT == 4 or FMT == 5:  # q4_0, q4_1: weight j in byte j % 16, low nibble first
            j = c % 32
            if FMT == 4:
                b = row + (c // 32) * 18
                nib = (_byte(b + 2 + j % 16, ok) >> (4 * (j // 16))) & 15
                w = (nib.to(tl.float32) - 8.0) * _f16(b, ok)
            else:
                b = row + (c // 32) * 20
                nib = (_byte(b + 4 + j % 16, ok) >> (4 * (j // 16))) & 15
                w = _f16(b, ok) * nib.to(tl.float32) + _f16(b + 2, ok)
        elif FMT == 6 or FMT == 7:  # q4_k, q5_k: 8 sub-blocks of 32
            r = c % 256
            sub = r // 32
            j = r % 32
            if FMT == 6:
                b = row + (c // 256) * 144
                q = (_byte(b + 16 + (sub // 2) * 32 + j, ok) >> (4 * (sub % 2))) & 15
            else:
                b = row + (c // 256) * 176
                q = (_byte(b + 48 + (sub // 2) * 32 + j, ok) >> (4 * (sub % 2))) & 15
                q = q | (((_byte(b + 16 + j, ok) >> sub) & 1) << 4)
            sc, m = _k_scale_min(b + 4, sub, ok)
            w = (_f16(b, ok) * sc) * q.to(tl.float32) - _f16(b + 2, ok) * m
        else:  # q6_k: two halves of 128; 16 sub-blocks of 16 with int8 scales
            b = row + (c // 256) * 210
            r = c % 256
            h = r // 128
            rr = r % 128
            low = (_byte(b + h * 64 + rr % 64, ok) >> (4 * (rr // 64))) & 15
            high = (_byte(b + 128 + h * 32 + rr % 32, ok) >> (2 * (rr // 32))) & 3
            q = ((low | (high << 4)) - 32).to(tl.float32)
            sc = ((_byte(b + 192 + r // 16, ok) ^ 128) - 128).to(tl.float32)
            w = (_f16(b + 208, ok) * sc) * q
        return w

    @triton.jit
    def _gate_up_kernel(
        x_ptr, pool_ptr, slot_ptr, tok_ptr, h_ptr, HIDDEN, INTER, SLOT_BYTES,
        GATE_OFFSET, UP_OFFSET, GATE_ROW_BYTES, UP_ROW_BYTES,
        GATE_FMT: tl.constexpr, UP_FMT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        a = tl.program_id(0)  # which (token, expert) pair
        rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # rows of gate (and of up)
        row_ok = rows < INTER
        slot = pool_ptr + tl.load(slot_ptr + a).to(tl.int64) * SLOT_BYTES
        x_row = x_ptr + tl.load(tok_ptr + a).to(tl.int64) * HIDDEN
        gate = slot + GATE_OFFSET + rows[:, None].to(tl.int64) * GATE_ROW_BYTES  # (BN, 1)
        up = slot + UP_OFFSET + rows[:, None].to(tl.int64) * UP_ROW_BYTES
        acc_gate = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc_up = tl.zeros([BLOCK_N], dtype=tl.float32)
        for k in range(0, HIDDEN, BLOCK_K):
            cols = k + tl.arange(0, BLOCK_K)
            col_ok = cols < HIDDEN
            ok = row_ok[:, None] & col_ok[None, :]
            x = tl.load(x_row + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            acc_gate += tl.sum(_dequant(gate, cols[None, :], ok, GATE_FMT) * x, axis=1)
            acc_up += tl.sum(_dequant(up, cols[None, :], ok, UP_FMT) * x, axis=1)
        act = acc_gate / (1.0 + tl.exp(-acc_gate))  # SiLU, float32 like the CPU path
        tl.store(h_ptr + a * INTER + rows, act * acc_up, mask=row_ok)

    @triton.jit
    def _down_sum_kernel(
        h_ptr, pool_ptr, slot_ptr, pos_ptr, start_ptr, w_ptr, out_ptr, HIDDEN, INTER, TOP_K,
        SLOT_BYTES, DOWN_OFFSET, DOWN_ROW_BYTES,
        DOWN_FMT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # rows of down = output features
        t = tl.program_id(1)  # which token
        row_ok = rows < HIDDEN
        odt = out_ptr.dtype.element_ty
        out_row = out_ptr + t.to(tl.int64) * HIDDEN + rows
        total = tl.load(out_row, mask=row_ok, other=0.0).to(tl.float32)  # out += ...
        for a in range(tl.load(start_ptr + t), tl.load(start_ptr + t + 1)):  # token t's pairs
            slot = pool_ptr + tl.load(slot_ptr + a).to(tl.int64) * SLOT_BYTES
            weight = tl.load(w_ptr + t * TOP_K + tl.load(pos_ptr + a)).to(tl.float32)
            down = slot + DOWN_OFFSET + rows[:, None].to(tl.int64) * DOWN_ROW_BYTES
            acc = tl.zeros([BLOCK_N], dtype=tl.float32)
            for k in range(0, INTER, BLOCK_K):
                cols = k + tl.arange(0, BLOCK_K)
                col_ok = cols < INTER
                ok = row_ok[:, None] & col_ok[None, :]
                h = tl.load(h_ptr + a * INTER + cols, mask=col_ok, other=0.0)[None, :]
                acc += tl.sum(_dequant(down, cols[None, :], ok, DOWN_FMT) * h, axis=1)
            y = acc.to(odt).to(tl.float32) * weight  # the expert's output in the activations' dtype
            total = (total + y.to(odt).to(tl.float32)).to(odt).to(tl.float32)
        tl.store(out_row, total.to(odt), mask=row_ok)


def unavailable_reason(device: torch.device, dtype: torch.dtype, act=None) -> str | None:
    """Why these kernels cannot run here, or None (the same conditions as the float kernels)."""
    from lazymoe.engine.compute.triton_kernels import unavailable_reason as float_reason

    return float_reason(device, dtype, act)


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
    if pool.dtype != torch.uint8 or pool.dim() != 2 or not pool.is_contiguous():
        raise ValueError(f"pool: expected contiguous (slots, bytes) uint8, got {pool.dtype} "
                         f"{tuple(pool.shape)}")  # fmt: skip
    if (
        d != layout.hidden
        or out.shape != hidden.shape
        or not out.is_contiguous()
        or top_k_weights.shape[0] != n_tokens
        or pool.shape[1] < layout.nbytes
    ):
        raise ValueError(
            f"shapes disagree: hidden {tuple(hidden.shape)}, out {tuple(out.shape)} (contiguous), "
            f"top_k_weights {tuple(top_k_weights.shape)}, a slot of "
            f"{pool.shape[1]} bytes for {layout}, which needs {layout.nbytes}"
        )
    if interpreting() and hidden.device.type == "cpu" and hidden.dtype != torch.float32:
        raise ValueError(f"Triton's interpreter computes float32 only, got {hidden.dtype}")
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
    # the interpreter pays per step, not per element: fewer, bigger tiles
    block_n, block_k = (128, 256) if interpreting() else (16, 256)
    _gate_up_kernel[(n, triton.cdiv(i, block_n))](
        x, pool, slot_t, tok_t, h_buf, d, i, pool.stride(0), offsets[0], offsets[1],
        row_bytes[0], row_bytes[1], GATE_FMT=codes[0], UP_FMT=codes[1],
        BLOCK_N=block_n, BLOCK_K=block_k,
    )  # fmt: skip
    _down_sum_kernel[(triton.cdiv(d, block_n), n_tokens)](
        h_buf, pool, slot_t, pos_t, starts_t, scores, out, d, i, scores.shape[1], pool.stride(0),
        offsets[2], row_bytes[2], DOWN_FMT=codes[2], BLOCK_N=block_n, BLOCK_K=block_k,
    )  # fmt: skip
