"""BF16 weights times one token on the CPU, several matrices in one parallel region (numba).

Why: a decode step's experts computed on the CPU (placement cpu/auto) read every weight once for
one token, so the speed is how fast the weights stream from RAM. torch's BF16 matmul for one token
read 28 GB/s with 16 threads on an H200 host's Xeon (data/results/h200-cpu-misses-profile.txt), a
third of that machine's RAM read rate, and 11 GB/s on one core of the dev machine, where this
kernel reads about 20.

A BF16 number is the top half of a float32: widening it is a 16-bit shift, which LLVM vectorises.
Each row is widened into a small float32 buffer and dotted with x in float32 (the same products
torch's BF16 matmul sums; the order of the sums differs, so the last bits may). `experts_forward`
keeps the expert's inner activations in float32, where torch's BF16 path rounds them to BF16: its
results are a little closer to the exact ones than torch's.

    y[i] = W_i @ x[i or 0]     W_i (rows, cols) bfloat16, x float32, y (n, rows) float32
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import carray, prange, types
from numba.extending import intrinsic

# one numba parallel region at a time, with the quantized kernels too (their lock): each uses
# every thread it is given, and numba's thread pool takes one region at a time
from lazymoe.quant.kernels_cpu import _jit, _lock, row_chunk, thread_count


@intrinsic
def _u16_at(typingctx, address):
    """The uint16 pointer at an integer address (a torch tensor's data_ptr): a row read through
    it is a plain contiguous load, with no array object to count references on."""
    sig = types.CPointer(types.uint16)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.uint16)))

    return sig, codegen


@_jit()
def _rows(address, stride, x, y, r0, r1):
    """y[r] = row r . x for r in [r0, r1) of the matrix whose row r starts `stride` bytes after
    row r - 1 at `address`."""
    cols = x.shape[0]
    wide = np.empty(cols, np.uint32)
    f = wide.view(np.float32)
    for r in range(r0, r1):
        row = carray(_u16_at(address + r * stride), cols)
        for j in range(cols):
            wide[j] = np.uint32(row[j]) << 16
        acc = np.float32(0)
        for j in range(cols):
            acc += f[j] * x[j]
        y[r] = acc


@_jit(parallel=True)
def _many(addresses, strides, x, y, chunk):
    n, rows = addresses.shape[0], y.shape[1]
    chunks = (rows + chunk - 1) // chunk
    for c in prange(n * chunks):
        i, k = c // chunks, c % chunks
        _rows(addresses[i], strides[i], x[min(i, x.shape[0] - 1)], y[i], k * chunk,
              min(rows, (k + 1) * chunk))  # fmt: skip


def matvec_many(x: torch.Tensor, weights: list[torch.Tensor], threads: int | None = None) -> torch.Tensor:
    """x (n or 1, cols) times each of n bfloat16 CPU matrices (rows, cols), row-contiguous, of one
    shape: (n, rows) float32. ValueError when they are not that. The matrices are read in place
    by address: they stay alive (the caller holds them) until this returns."""
    if not weights:
        raise ValueError("no weights given: give at least one")
    rows, cols = weights[0].shape
    for w in weights:
        if w.dtype != torch.bfloat16 or w.device.type != "cpu" or w.shape != (rows, cols) or w.stride(1) != 1:
            raise ValueError(f"every weight must be a bfloat16 CPU matrix {rows} x {cols} with "
                             f"contiguous rows, got {w.dtype} {tuple(w.shape)} on {w.device}")  # fmt: skip
    if x.dim() != 2 or x.shape[0] not in (1, len(weights)) or x.shape[1] != cols:
        raise ValueError(f"x must be ({len(weights)} or 1, {cols}), got {tuple(x.shape)}")
    if not x.is_floating_point() or x.device.type != "cpu":
        raise ValueError(f"x must be floating point on the CPU, got {x.dtype} on {x.device}")
    addresses = np.array([w.data_ptr() for w in weights], np.int64)
    strides = np.array([w.stride(0) * 2 for w in weights], np.int64)  # bytes from row to row
    xs = x.detach().to(torch.float32).contiguous().numpy()
    y = np.empty((len(weights), rows), np.float32)
    n = thread_count(threads)
    with _lock:
        numba.set_num_threads(n)
        _many(addresses, strides, xs, y, row_chunk(len(weights), rows, n))
    return torch.from_numpy(y)


def experts_forward(x: torch.Tensor, experts: list, act) -> torch.Tensor:
    """One token (1, D) through each of n BF16 experts (gate, up, down: (I, D), (I, D), (D, I)):
    their outputs, (n, D) float32. Two parallel regions: gate and up of all of them, then down."""
    n = len(experts)
    gate_up = matvec_many(x, [e.gate for e in experts] + [e.up for e in experts])
    h = act(gate_up[:n]) * gate_up[n:]
    return matvec_many(h, [e.down for e in experts])
