"""CPU kernels with int8 activations: y (T, rows) = x (T, in) @ W^T the way llama.cpp computes it.

    qmatvec_int8(x, qt)    x (T, in) float32, qt (rows, in) in q8_0 | q4_0 | q4_k | q6_k
                           -> (T, rows) float32

x is first quantized once per call to int8 blocks with one float scale each, as llama.cpp's
quantize_row_q8_0 (for q8_0 and q4_0 weights: blocks of 32) and quantize_row_q8_K (for K-quants:
super-blocks of 256) do. Then every block of a row is an integer dot product:

    sum_j w_j x_j  ~=  d_w * d_x * sum_j q_j p_j        q_j the weight's integers, p_j = round(x_j / d_x)

int8 x int8 products summed in pairs in int32 (exact), then per block one vector conversion
and one vector multiply-add by d_w * d_x (lazymoe/quant/simd_int8.py): no per-weight float
multiply-add, which is what held the float kernels (lazymoe/quant/kernels_cpu.py) at 10-30 %
of the read bandwidth. Measured: 2.5-4x faster, q8_0 at 50-60 % of the read bandwidth
(lazymoe/quant/expert.py has the table).

What changes: x is rounded to 8 bits per block (relative error up to 1/254 of the block's
largest |x|), so y is no longer the float32 product of the dequantized weights, only close to it
(tests/test_quant_int8.py bounds the difference). The weights are used exactly as stored.

The integer sums are exact, and the float part adds a row's blocks in a fixed order, so the
result does not depend on the thread count (rows are split among threads, never one row's sum).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange

from lazymoe.quant.formats import QuantError
from lazymoe.quant.int8_activations import quantize_activations
from lazymoe.quant.kernels_cpu import (
    _jit,
    _lock,
    _scale_min,
    check_activations,
    row_chunk,
    thread_count,
    weights_in,
)
from lazymoe.quant.simd_int8 import acc_i8, acc_k4, acc_q4_0, acc_q6, f16, flush
from lazymoe.quant.tensor import QuantizedTensor

KINDS = ("q8_0", "q4_0", "q4_k", "q6_k")

# Row kernels: for each row r and token t, walk the row's blocks; each block is one integer dot
# product (above) and one float multiply-add into the row's sum, in block order.


@_jit()
def _rows_q8_0(data, xq, xd, y, r0, r1):
    """Blocks of 34 bytes: d (f16), 32 int8; w = d * q."""
    T, n_blocks = xd.shape
    lanes = np.empty(32, np.float32)  # two sets of 16: consecutive blocks overlap
    for r in range(r0, r1):
        row = data[r]
        for t in range(T):
            xt = xq[t]
            lanes[:] = 0
            for b in range(n_blocks):
                o = b * 34
                acc_i8(lanes, (b & 1) * 16, row, o + 2, xt, b * 32, f16(row, o) * xd[t, b])
            y[t, r] = lanes.sum()


@_jit()
def _rows_q4_0(data, xq, xd, y, r0, r1):
    """Blocks of 18 bytes: d (f16), 16 bytes of nibbles; w = d * (nibble - 8)."""
    T, n_blocks = xd.shape
    lanes = np.empty(32, np.float32)  # two sets of 16: consecutive blocks overlap
    for r in range(r0, r1):
        row = data[r]
        for t in range(T):
            xt = xq[t]
            lanes[:] = 0
            for b in range(n_blocks):
                o = b * 18
                acc_q4_0(lanes, (b & 1) * 16, row, o + 2, xt, b * 32, f16(row, o) * xd[t, b])
            y[t, r] = lanes.sum()


@_jit()
def _rows_q4_k(data, xq, xd, xsum, y, r0, r1):
    """Super-blocks of 144 bytes: d, dmin (f16), 12 bytes of 6-bit scales and mins, 128 bytes
    of nibbles; w = d * sc * q - dmin * m, so with x = dx * p per super-block

        sum w x = dx * (d * sum_k sc_k (q . p)_k  -  dmin * sum_k m_k sum(p)_k)

    the first sum in integer lanes, the second from the sums of p per sub-block (xsum)."""
    T, n_super = xd.shape
    lanes, ilanes = np.empty(32, np.float32), np.zeros(16, np.int32)
    for r in range(r0, r1):
        row = data[r]
        for t in range(T):
            xt, mins = xq[t], np.float32(0)
            lanes[:] = 0
            for sb in range(n_super):
                o, msum = sb * 144, 0
                for k in range(4):  # sub-blocks 2k (low nibbles) and 2k + 1 (high)
                    sc0, m0 = _scale_min(row, o + 4, 2 * k)
                    sc1, m1 = _scale_min(row, o + 4, 2 * k + 1)
                    acc_k4(ilanes, row, o + 16 + 32 * k, xt, sb * 256 + 64 * k, sc0, sc1)
                    msum += m0 * xsum[t, 8 * sb + 2 * k] + m1 * xsum[t, 8 * sb + 2 * k + 1]
                flush(lanes, (sb & 1) * 16, ilanes, f16(row, o) * xd[t, sb])
                mins += f16(row, o + 2) * xd[t, sb] * np.float32(msum)
            y[t, r] = lanes.sum() - mins


@_jit()
def _rows_q6_k(data, xq, xd, xsum, y, r0, r1):
    """Super-blocks of 210 bytes: ql 128, qh 64, 16 int8 scales, d (f16); in half h, quarter s
    of 32 weights: low bits in ql[64h + 32 (s & 1):] (nibble s >> 1), high bits 2s, 2s + 1 of
    qh[32h:], scales 8h + 2s and 8h + 2s + 1 (see kernels_cpu._rows_q6_k)."""
    T, n_super = xd.shape
    lanes, ilanes = np.empty(32, np.float32), np.zeros(16, np.int32)
    for r in range(r0, r1):
        row = data[r]
        signed = row.view(np.int8)
        for t in range(T):
            xt = xq[t]
            lanes[:] = 0
            for sb in range(n_super):
                o = sb * 210
                for h in range(2):
                    for s in range(4):
                        sc, base = o + 192 + 8 * h + 2 * s, sb * 256 + 128 * h + 32 * s
                        ql, qh = o + 64 * h + 32 * (s & 1), o + 128 + 32 * h
                        acc_q6(ilanes, row, ql, 4 * (s >> 1), qh, 2 * s, xt, base, signed[sc], signed[sc + 1])
                flush(lanes, (sb & 1) * 16, ilanes, f16(row, o + 208) * xd[t, sb])
            y[t, r] = lanes.sum()


# One parallel driver per format, as in kernels_cpu: prange over chunks of `chunk` rows of n
# weights of one format and shape, weight i the (rows, row_bytes) bytes at base[starts[i]:],
# times the activations [i] (or [0] for every weight when they hold one: gate and up share x).


@_jit(parallel=True)
def _q8_0(base, starts, row_bytes, xq, xd, y, chunk):
    n, rows = starts.shape[0], y.shape[2]
    chunks = (rows + chunk - 1) // chunk
    for c in prange(n * chunks):
        i, k = c // chunks, c % chunks
        w, j = base[starts[i] : starts[i] + rows * row_bytes].reshape((rows, row_bytes)), min(i, xq.shape[0] - 1)
        _rows_q8_0(w, xq[j], xd[j], y[i], k * chunk, min(rows, (k + 1) * chunk))


@_jit(parallel=True)
def _q4_0(base, starts, row_bytes, xq, xd, y, chunk):
    n, rows = starts.shape[0], y.shape[2]
    chunks = (rows + chunk - 1) // chunk
    for c in prange(n * chunks):
        i, k = c // chunks, c % chunks
        w, j = base[starts[i] : starts[i] + rows * row_bytes].reshape((rows, row_bytes)), min(i, xq.shape[0] - 1)
        _rows_q4_0(w, xq[j], xd[j], y[i], k * chunk, min(rows, (k + 1) * chunk))


@_jit(parallel=True)
def _q4_k(base, starts, row_bytes, xq, xd, xsum, y, chunk):
    n, rows = starts.shape[0], y.shape[2]
    chunks = (rows + chunk - 1) // chunk
    for c in prange(n * chunks):
        i, k = c // chunks, c % chunks
        w, j = base[starts[i] : starts[i] + rows * row_bytes].reshape((rows, row_bytes)), min(i, xq.shape[0] - 1)
        _rows_q4_k(w, xq[j], xd[j], xsum[j], y[i], k * chunk, min(rows, (k + 1) * chunk))


@_jit(parallel=True)
def _q6_k(base, starts, row_bytes, xq, xd, xsum, y, chunk):
    n, rows = starts.shape[0], y.shape[2]
    chunks = (rows + chunk - 1) // chunk
    for c in prange(n * chunks):
        i, k = c // chunks, c % chunks
        w, j = base[starts[i] : starts[i] + rows * row_bytes].reshape((rows, row_bytes)), min(i, xq.shape[0] - 1)
        _rows_q6_k(w, xq[j], xd[j], xsum[j], y[i], k * chunk, min(rows, (k + 1) * chunk))


_KERNELS = {"q8_0": _q8_0, "q4_0": _q4_0, "q4_k": _q4_k, "q6_k": _q6_k}
# one thread: the row kernel called directly (a parallel driver's start costs ~10-25 us a call)
_ROWS = {"q8_0": _rows_q8_0, "q4_0": _rows_q4_0, "q4_k": _rows_q4_k, "q6_k": _rows_q6_k}
_ACTIVATIONS = {"q8_0": "q8_0", "q4_0": "q8_0", "q4_k": "q8_k", "q6_k": "q8_k"}


def supports(qt: QuantizedTensor) -> bool:
    """Whether `qmatvec_int8` has a kernel for this tensor (a 2-D CPU weight in one of KINDS)."""
    return qt.fmt.kind in _KERNELS and len(qt.shape) == 2 and qt.device.type == "cpu"


def activation_kind(qt: QuantizedTensor) -> str:
    """Which int8 blocks x needs for this weight: "q8_0" (q8_0, q4_0) or "q8_k" (K-quants)."""
    return _ACTIVATIONS[qt.fmt.kind]


def qmatvec_int8(
    x: torch.Tensor, qt: QuantizedTensor, threads: int | None = None, quantized: tuple | None = None
) -> torch.Tensor:
    """x (T, in) @ W^T with x quantized to int8 blocks first -> (T, rows) float32.

    threads: how many threads split the rows (None: torch.get_num_threads()).
    quantized: x already through quantize_activations(x, activation_kind(qt)), to quantize it
    once for several weights (an expert's gate and up)."""
    if not supports(qt):
        raise QuantError(
            f"no int8-activation CPU kernel for a {qt.format} weight of shape {qt.shape} on "
            f"{qt.device}: they cover 2-D CPU weights in {', '.join(KINDS)}; use activations='float'"
        )
    rows, _ = check_activations(x, qt)
    xa = quantized if quantized is not None else quantize_activations(x, activation_kind(qt))
    data = qt.data if qt.data.is_contiguous() else qt.data.contiguous()
    if thread_count(threads) == 1:
        y = np.empty((x.shape[0], rows), np.float32)
        _ROWS[qt.fmt.kind](data.numpy(), *xa, y, 0, rows)  # nogil: no lock needed
        return torch.from_numpy(y)
    return _run(qt, data.view(-1), np.zeros(1, np.int64), tuple(a[None] for a in xa), threads)[0]


def qmatvec_int8_many(
    x: torch.Tensor, qts: list[QuantizedTensor], base: torch.Tensor, threads: int | None = None
) -> torch.Tensor:
    """`kernels_cpu.qmatvec_many` with x quantized to int8 blocks first: (n, T, rows) float32,
    each [i] the same numbers as `qmatvec_int8(x[i], qts[i])`, one parallel region for all.
    x: (n, T, in), or (1, T, in) for the same rows times every weight (quantized once)."""
    flat, starts = weights_in(qts, base, supports, x.shape)
    n_x, tokens, cols = x.shape
    xa = quantize_activations(x.reshape(n_x * tokens, cols), activation_kind(qts[0]))  # per row
    return _run(qts[0], flat, starts, tuple(a.reshape(n_x, tokens, -1) for a in xa), threads)


def _run(qt: QuantizedTensor, flat: torch.Tensor, starts: np.ndarray, xa: tuple,
         threads: int | None) -> torch.Tensor:
    """The format's driver over len(starts) weights shaped like qt, activations xa (each with a
    leading axis of n or 1): (n, T, rows) float32."""
    y = np.empty((len(starts), xa[0].shape[1], qt.shape[0]), np.float32)
    n = thread_count(threads)
    with _lock:
        if numba.get_num_threads() != n:
            numba.set_num_threads(n)
        _KERNELS[qt.fmt.kind](flat.numpy(), starts, qt.fmt.row_bytes(qt.shape[1]), *xa, y,
                              row_chunk(len(starts), qt.shape[0], n))  # fmt: skip
    return torch.from_numpy(y)
