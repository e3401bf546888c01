"""CPU kernels: y (T, rows) = x (T, in) @ W^T with W read straight from its GGUF blocks.

    qmatvec(x, qt)     x (T, in) float32, qt (rows, in) in q8_0 | q4_0 | q4_1 | q4_k | q5_k | q6_k
                       -> (T, rows) float32
    qmatvec_many(x, qts, base)   the same for n weights of one format and shape at once (a
                       decode step's experts, their bytes in `base`): (n, T, rows), one
                       parallel region for all of them

Each kernel walks a row's blocks once: it reads the block's scale(s), turns its 8/6/5/4-bit
values into floats in registers and multiplies them into every token's running sum. No weight
is ever written back to memory as a float, so the memory traffic is the stored bytes and x.
The rows are split among the threads (`prange` over chunks of rows, `row_chunk`).

For a block of 32 weights (q8_0, q4_0: w_j = d * (q_j - 8)) the sum factors as

    sum_j w_j x_j = d * sum_j (q_j - 8) x_j          one float multiply per block, not per weight

and q4_k's `w = d*sc*q - dmin*m` gives d*sc * sum(q x) - dmin*m * sum(x): sum(x) over each 32
inputs is the same for every row, so it is computed once per call (`_block_sums`).

Why numba, not a C++ extension: numba ships as wheels for Linux, macOS and Windows (x86-64 and
ARM), so a learner's `pip install` brings the compiler with it; a C++ extension built at first
use needs a compiler on the learner's machine, which an office laptop rarely has. The loops
below are what a C++ kernel would be, and LLVM vectorises them the same way (fastmath lets it
reorder the float sums). The measured figures are in lazymoe/quant/expert.py.
lazymoe/quant/kernels_int8.py does the same work the way llama.cpp does (x rounded to int8
blocks, integer dot products): 2-3x faster, no longer equal to the float32 reference.

Compiled at first use (3-6 s per format on the 2-core dev machine, once), then cached on disk
(`cache=True`: __pycache__ beside this file, or numba's per-user cache folder when the install
is read-only; where neither can be written, each process compiles again).
"""

from __future__ import annotations

import math
import threading

import numba
import numpy as np
import torch
from numba import njit, prange

from lazymoe.quant.formats import QuantError
from lazymoe.quant.tensor import QuantizedTensor

ROW_CHUNK = 16  # rows per unit of work at least: enough to amortise a thread hand-off
ITEMS_PER_THREAD = 4  # units of work a call splits into per thread, at least (where rows allow)
KINDS = ("q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k")

# 2**(e - 25) for a float16 exponent e (subnormals, e = 0, scale like e = 1): see _f16
_POW2 = np.array([2.0 ** (max(e, 1) - 25) for e in range(32)], dtype=np.float32)


def _jit(**options):
    """njit with the options every kernel shares; caching falls back to none when no cache
    folder can be written (numba raises at decoration then)."""

    def wrap(fn):
        try:
            return njit(fastmath=True, cache=True, nogil=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(fastmath=True, cache=False, nogil=True, **options)(fn)

    return wrap


@_jit(inline="always")
def _f16(lo, hi):
    """Two little-endian bytes of a float16 -> float32 (exact; inf and NaN are not decoded:
    a valid block's scales are finite)."""
    h = np.int32(lo) | (np.int32(hi) << 8)
    e = (h >> 10) & 31
    m = h & 1023
    v = np.float32(m + (1024 if e != 0 else 0)) * _POW2[e]
    return -v if h & 0x8000 else v


# Every kernel has the same shape (q8_0's is the simplest to read):
#
#   for each chunk of rows (in parallel: `row_chunk`), for each row r:
#       for each block b of the row, for each token t:
#           part[t, slot:slot + 32] += w(block b) * x[t, block b's inputs]     w in registers
#       y[t, r] = sum(part[t])
#
# `part` (T, SLOTS * 32) holds running sums, and consecutive blocks add into different slots,
# so the CPU overlaps them instead of waiting for one add before the next (one slot: about half
# the speed, measured). Writing w into a small buffer first and reusing it for every token was
# 4-5x slower (measured): LLVM then guards each block's loop with alias checks.
SLOTS = 4


@_jit()
def _rows_q8_0(data, x, y, r0, r1):
    """Blocks of 34 bytes: d (f16), 32 int8; w = d * q."""
    n_blocks, T = x.shape[1] // 32, x.shape[0]
    part = np.empty((T, SLOTS * 32), np.float32)
    for r in range(r0, r1):
        part[:] = 0
        row = data[r]
        q = row.view(np.int8)
        for b in range(n_blocks):
            o, base, p = b * 34, b * 32, (b % SLOTS) * 32
            d = _f16(row[o], row[o + 1])
            for t in range(T):
                for j in range(32):
                    part[t, p + j] += np.float32(q[o + 2 + j]) * (d * x[t, base + j])
        for t in range(T):
            y[t, r] = part[t].sum()


@_jit()
def _rows_q4_0(data, x, y, r0, r1):
    """Blocks of 18 bytes: d (f16), 16 bytes; weight j is the low nibble of byte j, weight
    j + 16 the high one; w = d * (nibble - 8)."""
    n_blocks, T = x.shape[1] // 32, x.shape[0]
    part = np.empty((T, SLOTS * 32), np.float32)
    for r in range(r0, r1):
        part[:] = 0
        row = data[r]
        for b in range(n_blocks):
            o, base, p = b * 18, b * 32, (b % SLOTS) * 32
            d = _f16(row[o], row[o + 1])
            for t in range(T):
                for j in range(16):
                    v = np.int32(row[o + 2 + j])
                    part[t, p + j] += np.float32((v & 15) - 8) * (d * x[t, base + j])
                    part[t, p + 16 + j] += np.float32((v >> 4) - 8) * (d * x[t, base + 16 + j])
        for t in range(T):
            y[t, r] = part[t].sum()


@_jit()
def _rows_q4_1(data, x, y, r0, r1):
    """Blocks of 20 bytes: d, m (f16), 16 bytes of nibbles as q4_0; w = d * nibble + m."""
    n_blocks, T = x.shape[1] // 32, x.shape[0]
    part = np.empty((T, SLOTS * 32), np.float32)
    for r in range(r0, r1):
        part[:] = 0
        row = data[r]
        for b in range(n_blocks):
            o, base, p = b * 20, b * 32, (b % SLOTS) * 32
            d, m = _f16(row[o], row[o + 1]), _f16(row[o + 2], row[o + 3])
            for t in range(T):
                for j in range(16):
                    v = np.int32(row[o + 4 + j])
                    part[t, p + j] += (d * np.float32(v & 15) + m) * x[t, base + j]
                    part[t, p + 16 + j] += (d * np.float32(v >> 4) + m) * x[t, base + 16 + j]
        for t in range(T):
            y[t, r] = part[t].sum()


@_jit(inline="always")
def _scale_min(row, s, j):
    """Sub-block j's 6-bit (scale, min) from the 12 bytes at row[s:] (ggml's get_scale_min_k4)."""
    if j < 4:
        return np.int32(row[s + j]) & 63, np.int32(row[s + j + 4]) & 63
    sc = (np.int32(row[s + j + 4]) & 15) | ((np.int32(row[s + j - 4]) >> 6) << 4)
    mn = (np.int32(row[s + j + 4]) >> 4) | ((np.int32(row[s + j]) >> 6) << 4)
    return sc, mn


@_jit()
def _rows_q4_k(data, x, y, r0, r1):
    """Super-blocks of 144 bytes: d, dmin (f16), 12 bytes of 6-bit scales and mins, 128 bytes:
    bytes 32k.. hold sub-block 2k in their low nibbles and 2k + 1 in their high ones;
    w = d * sc * q - dmin * m."""
    n_super, T = x.shape[1] // 256, x.shape[0]
    part = np.empty((T, SLOTS * 32), np.float32)
    for r in range(r0, r1):
        part[:] = 0
        row = data[r]
        for sb in range(n_super):
            o = sb * 144
            d, dmin = _f16(row[o], row[o + 1]), _f16(row[o + 2], row[o + 3])
            for k in range(4):  # sub-blocks 2k (low nibbles) and 2k + 1 (high)
                sc0, m0 = _scale_min(row, o + 4, 2 * k)
                sc1, m1 = _scale_min(row, o + 4, 2 * k + 1)
                dl0, ml0 = d * np.float32(sc0), dmin * np.float32(m0)
                dl1, ml1 = d * np.float32(sc1), dmin * np.float32(m1)
                q, base, p = o + 16 + 32 * k, sb * 256 + 64 * k, (k % 2) * 64
                for t in range(T):
                    for j in range(32):
                        v = np.int32(row[q + j])
                        part[t, p + j] += (dl0 * np.float32(v & 15) - ml0) * x[t, base + j]
                        part[t, p + 32 + j] += (dl1 * np.float32(v >> 4) - ml1) * x[t, base + 32 + j]
        for t in range(T):
            y[t, r] = part[t].sum()


@_jit()
def _rows_q5_k(data, x, y, r0, r1):
    """Super-blocks of 176 bytes: q4_k's header (16 bytes), 32 bytes qh, 128 bytes of nibbles;
    bit j of qh byte i is the fifth bit of sub-block j's weight i."""
    n_super, T = x.shape[1] // 256, x.shape[0]
    part = np.empty((T, SLOTS * 32), np.float32)
    for r in range(r0, r1):
        part[:] = 0
        row = data[r]
        for sb in range(n_super):
            o = sb * 176
            d, dmin = _f16(row[o], row[o + 1]), _f16(row[o + 2], row[o + 3])
            for k in range(4):
                sc0, m0 = _scale_min(row, o + 4, 2 * k)
                sc1, m1 = _scale_min(row, o + 4, 2 * k + 1)
                dl0, ml0 = d * np.float32(sc0), dmin * np.float32(m0)
                dl1, ml1 = d * np.float32(sc1), dmin * np.float32(m1)
                q, base, p = o + 48 + 32 * k, sb * 256 + 64 * k, (k % 2) * 64
                for t in range(T):
                    for j in range(32):
                        v, h = np.int32(row[q + j]), np.int32(row[o + 16 + j]) >> (2 * k)
                        lo = (v & 15) | ((h & 1) << 4)
                        hi = (v >> 4) | ((h & 2) << 3)
                        part[t, p + j] += (dl0 * np.float32(lo) - ml0) * x[t, base + j]
                        part[t, p + 32 + j] += (dl1 * np.float32(hi) - ml1) * x[t, base + 32 + j]
        for t in range(T):
            y[t, r] = part[t].sum()


@_jit()
def _rows_q6_k(data, x, y, r0, r1):
    """Super-blocks of 210 bytes: ql 128, qh 64, 16 int8 scales, d (f16). In each half h of
    128 weights, weight l + 32 s (l < 32, s < 4) is q = (4 bits of ql[64h + l + 32 (s & 1)],
    low or high by s >> 1) | (bits 2s, 2s + 1 of qh[32h + l]) << 4, w = d * scale * (q - 32),
    scale = scales[8h + l // 16 + 2s]."""
    n_super, T = x.shape[1] // 256, x.shape[0]
    part = np.empty((T, SLOTS * 32), np.float32)
    for r in range(r0, r1):
        part[:] = 0
        row = data[r]
        signed = row.view(np.int8)
        for sb in range(n_super):
            o = sb * 210
            d = _f16(row[o + 208], row[o + 209])
            for h in range(2):
                for g in range(2):  # l in [16g, 16g + 16): one scale per quarter s
                    s0 = o + 192 + 8 * h + g
                    d0, d1 = d * np.float32(signed[s0]), d * np.float32(signed[s0 + 2])
                    d2, d3 = d * np.float32(signed[s0 + 4]), d * np.float32(signed[s0 + 6])
                    ql, qh = o + 64 * h + 16 * g, o + 128 + 32 * h + 16 * g
                    base, p = sb * 256 + 128 * h + 16 * g, 16 * g
                    for t in range(T):
                        for i in range(16):
                            a, b = np.int32(row[ql + i]), np.int32(row[ql + 32 + i])
                            e = np.int32(row[qh + i])
                            q0 = ((a & 15) | ((e & 3) << 4)) - 32
                            q1 = ((b & 15) | (((e >> 2) & 3) << 4)) - 32
                            q2 = ((a >> 4) | (((e >> 4) & 3) << 4)) - 32
                            q3 = ((b >> 4) | (((e >> 6) & 3) << 4)) - 32
                            part[t, p + i] += d0 * np.float32(q0) * x[t, base + i]
                            part[t, p + 32 + i] += d1 * np.float32(q1) * x[t, base + 32 + i]
                            part[t, p + 64 + i] += d2 * np.float32(q2) * x[t, base + 64 + i]
                            part[t, p + 96 + i] += d3 * np.float32(q3) * x[t, base + 96 + i]
        for t in range(T):
            y[t, r] = part[t].sum()


# One parallel driver per format: prange over chunks of `chunk` rows, each chunk a plain call
# of the row kernel (a loop written inside prange itself ran 2-4x slower, measured: numba's
# parallel lowering loses the vectorisation of the inner loops). A call covers n matrices of one
# format and shape, matrix i the (rows, row_bytes) bytes at base[starts[i]:], times x[i] (x[0]
# for every matrix when x holds one): `qmatvec_many` gives a decode step's experts one parallel
# region, whose start (~10-25 us to wake the threads) each matrix paid alone before.


@_jit(parallel=True)
def _q8_0(base, starts, row_bytes, x, y, chunk):
    n, rows = starts.shape[0], y.shape[2]
    chunks = (rows + chunk - 1) // chunk
    for c in prange(n * chunks):
        i, k = c // chunks, c % chunks
        w = base[starts[i] : starts[i] + rows * row_bytes].reshape((rows, row_bytes))
        _rows_q8_0(w, x[min(i, x.shape[0] - 1)], y[i], k * chunk, min(rows, (k + 1) * chunk))


@_jit(parallel=True)
def _q4_0(base, starts, row_bytes, x, y, chunk):
    n, rows = starts.shape[0], y.shape[2]
    chunks = (rows + chunk - 1) // chunk
    for c in prange(n * chunks):
        i, k = c // chunks, c % chunks
        w = base[starts[i] : starts[i] + rows * row_bytes].reshape((rows, row_bytes))
        _rows_q4_0(w, x[min(i, x.shape[0] - 1)], y[i], k * chunk, min(rows, (k + 1) * chunk))


@_jit(parallel=True)
def _q4_1(base, starts, row_bytes, x, y, chunk):
    n, rows = starts.shape[0], y.shape[2]
    chunks = (rows + chunk - 1) // chunk
    for c in prange(n * chunks):
        i, k = c // chunks, c % chunks
        w = base[starts[i] : starts[i] + rows * row_bytes].reshape((rows, row_bytes))
        _rows_q4_1(w, x[min(i, x.shape[0] - 1)], y[i], k * chunk, min(rows, (k + 1) * chunk))


@_jit(parallel=True)
def _q4_k(base, starts, row_bytes, x, y, chunk):
    n, rows = starts.shape[0], y.shape[2]
    chunks = (rows + chunk - 1) // chunk
    for c in prange(n * chunks):
        i, k = c // chunks, c % chunks
        w = base[starts[i] : starts[i] + rows * row_bytes].reshape((rows, row_bytes))
        _rows_q4_k(w, x[min(i, x.shape[0] - 1)], y[i], k * chunk, min(rows, (k + 1) * chunk))


@_jit(parallel=True)
def _q5_k(base, starts, row_bytes, x, y, chunk):
    n, rows = starts.shape[0], y.shape[2]
    chunks = (rows + chunk - 1) // chunk
    for c in prange(n * chunks):
        i, k = c // chunks, c % chunks
        w = base[starts[i] : starts[i] + rows * row_bytes].reshape((rows, row_bytes))
        _rows_q5_k(w, x[min(i, x.shape[0] - 1)], y[i], k * chunk, min(rows, (k + 1) * chunk))


@_jit(parallel=True)
def _q6_k(base, starts, row_bytes, x, y, chunk):
    n, rows = starts.shape[0], y.shape[2]
    chunks = (rows + chunk - 1) // chunk
    for c in prange(n * chunks):
        i, k = c // chunks, c % chunks
        w = base[starts[i] : starts[i] + rows * row_bytes].reshape((rows, row_bytes))
        _rows_q6_k(w, x[min(i, x.shape[0] - 1)], y[i], k * chunk, min(rows, (k + 1) * chunk))


_KERNELS = {"q8_0": _q8_0, "q4_0": _q4_0, "q4_1": _q4_1, "q4_k": _q4_k, "q5_k": _q5_k, "q6_k": _q6_k}
_lock = threading.Lock()  # one kernel at a time: each already uses every thread it is given


def supports(qt: QuantizedTensor) -> bool:
    """Whether `qmatvec` has a kernel for this tensor (a 2-D weight in one of KINDS)."""
    return qt.fmt.kind in _KERNELS and len(qt.shape) == 2 and qt.device.type == "cpu"


def check_activations(x: torch.Tensor, qt: QuantizedTensor) -> tuple[int, int]:
    """qt's (rows, cols), or QuantError when x is not (tokens, cols)."""
    rows, cols = qt.shape
    if x.dim() != 2 or x.shape[1] != cols:
        raise QuantError(f"x must be (tokens, {cols}) for a weight of shape {qt.shape}, got {tuple(x.shape)}")
    return rows, cols


def row_chunk(n: int, rows: int, threads: int) -> int:
    """Rows per unit of a parallel driver's work for n matrices of `rows` rows on `threads`
    threads. numba hands each thread an equal run of the units up front, so the units' count
    (n x chunks a matrix) is a multiple of the threads where it can be, and at least
    ITEMS_PER_THREAD a thread; a unit holds ROW_CHUNK rows at least. Units no smaller than that
    because each one's start makes array views (of the weights, x and y) whose reference counts
    every thread updates atomically, on the same few cache lines: 16 threads on a layer's 3 CPU
    experts' gate and up (6 x 768 rows) take 96 units of 48 rows, not 288 of 16."""
    t = max(1, threads)
    step = t // math.gcd(n, t)  # chunks a matrix: a multiple of this makes n x chunks one of t
    want = -(-ITEMS_PER_THREAD * t // n)
    per_matrix = max(step, -(-want // step) * step)
    while True:  # a chunk size that cuts a matrix into per_matrix chunks exactly, or the floor
        chunk = max(ROW_CHUNK, -(-rows // per_matrix))
        if chunk == ROW_CHUNK or -(-rows // chunk) == per_matrix:
            return chunk
        per_matrix += step


def thread_count(threads: int | None) -> int:
    """Threads to split rows over: `threads`, else torch's count, within numba's pool."""
    return max(1, min(threads or torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def qmatvec(x: torch.Tensor, qt: QuantizedTensor, threads: int | None = None) -> torch.Tensor:
    """x (T, in) @ W^T for W (rows, in) stored in one of KINDS -> (T, rows) float32.

    threads: how many threads split the rows (None: torch.get_num_threads(), the count the
    engine and `torch.set_num_threads` already set)."""
    if not supports(qt):
        raise QuantError(
            f"no CPU kernel for a {qt.format} weight of shape {qt.shape} on {qt.device}: the kernels "
            f"cover 2-D CPU weights in {', '.join(KINDS)}; use lazymoe.quant.expert.qlinear instead"
        )
    check_activations(x, qt)
    data = qt.data if qt.data.is_contiguous() else qt.data.contiguous()
    return _run(qt, data.view(-1), np.zeros(1, np.int64), x[None], threads)[0]


def qmatvec_many(
    x: torch.Tensor, qts: list[QuantizedTensor], base: torch.Tensor, threads: int | None = None
) -> torch.Tensor:
    """x[i] (T, in) @ W_i^T for n weights of one format and shape, in one parallel region:
    (n, T, rows) float32, each [i] the same numbers as `qmatvec(x[i], qts[i])`.

    x: (n, T, in), or (1, T, in) for the same rows times every weight. base: a contiguous uint8
    CPU tensor holding every weight's bytes (an expert pool's `data`): the kernels find weight i
    at its byte offset there. QuantError when a weight is not in `base`, or the weights differ in
    format or shape."""
    flat, starts = weights_in(qts, base, supports, x.shape)
    return _run(qts[0], flat, starts, x, threads)


def weights_in(qts: list[QuantizedTensor], base: torch.Tensor, supported, x_shape) -> tuple:
    """(base as one flat uint8 array, each weight's byte offset in it) for a call over `qts`
    with activations shaped `x_shape` (n or 1, T, in), or QuantError saying what does not fit."""
    if not qts:
        raise QuantError("no weights given: give at least one")
    first = qts[0]
    if not supported(first):
        raise QuantError(f"no CPU kernel for a {first.format} weight of shape {first.shape} on {first.device}")
    if any((q.format, q.shape) != (first.format, first.shape) for q in qts):
        raise QuantError("the weights differ in format or shape: give one kind of weight a call")
    if len(x_shape) != 3 or x_shape[0] not in (1, len(qts)) or x_shape[2] != first.shape[1]:
        raise QuantError(f"x must be ({len(qts)} or 1, tokens, {first.shape[1]}), got {tuple(x_shape)}")
    if base.dtype != torch.uint8 or base.device.type != "cpu" or not base.is_contiguous():
        raise QuantError("base must be a contiguous uint8 CPU tensor")
    origin, end = base.data_ptr(), base.numel()
    starts = np.empty(len(qts), np.int64)
    for i, q in enumerate(qts):
        starts[i] = q.data.data_ptr() - origin
        if not q.data.is_contiguous() or not 0 <= starts[i] <= end - q.nbytes:
            raise QuantError(f"weight {i} is not a contiguous part of `base`")
    return base.view(-1), starts


def _run(qt: QuantizedTensor, flat: torch.Tensor, starts: np.ndarray, x: torch.Tensor,
         threads: int | None) -> torch.Tensor:
    """The format's driver over len(starts) weights shaped like qt: (n, T, rows) float32."""
    rows, cols = qt.shape
    xs = x.detach().to("cpu", torch.float32).contiguous()
    y = torch.empty((len(starts), x.shape[1], rows), dtype=torch.float32)
    n = thread_count(threads)
    with _lock:
        numba.set_num_threads(n)
        _KERNELS[qt.fmt.kind](flat.numpy(), starts, qt.fmt.row_bytes(cols), xs.numpy(), y.numpy(),
                              row_chunk(len(starts), rows, n))  # fmt: skip
    return y
