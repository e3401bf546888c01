"""Activations quantized to int8 blocks, as llama.cpp does before an integer dot product.

    quantize_activations(x, "q8_0")  x (T, in) float32 -> q int8 (T, in), d float32 (T, in / 32)
    quantize_activations(x, "q8_k")  -> q, d (T, in / 256), sums int32 (T, in / 32)

x_j ~= d[block of j] * q_j. "q8_0" is llama.cpp's quantize_row_q8_0 (blocks of 32, the partner of
q8_0 and q4_0 weights), "q8_k" its quantize_row_q8_K (super-blocks of 256, the partner of the
K-quants), both as their reference C code computes them (ggml-quants.c, `_ref`), in exact float32
arithmetic (no fastmath: the rounding must be the same). The error of a value is at most half a
step: |x_j - d q_j| <= d / 2, with d = (largest |x| of the block) / 127.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

# Activation quantization: exact float32 arithmetic (no fastmath), as llama.cpp's reference code.
# Both run once per call over T x in values, which costs little next to reading the weights.


@njit(cache=True, nogil=True)
def _quantize_q8_0(x, xq, xd):
    """quantize_row_q8_0_ref: blocks of 32, d = amax / 127, q = roundf(x / d) (halves away from
    zero). llama.cpp stores d as float16; here it stays float32 (the int8 values are the same)."""
    T, n_blocks = xd.shape
    for t in range(T):
        for b in range(n_blocks):
            amax = np.float32(0)
            for j in range(32):
                amax = max(amax, abs(x[t, 32 * b + j]))
            d = amax / np.float32(127)
            inv = np.float32(1) / d if d != 0 else np.float32(0)
            xd[t, b] = d
            for j in range(32):
                v = np.float64(x[t, 32 * b + j] * inv)  # float32 product, rounded in float64:
                xq[t, 32 * b + j] = np.int8(np.sign(v) * np.floor(abs(v) + 0.5))  # exact roundf


@njit(cache=True, nogil=True)
def _quantize_q8_k(x, xq, xd, xsum):
    """quantize_row_q8_K_ref: super-blocks of 256, scale = -127 / (the value of largest |x|),
    q = min(127, rint(scale * x)) (halves to even), d = 1 / scale; all-zero blocks give d = 0.
    xsum (T, in / 32): sum of q per 32 values (llama.cpp keeps them per 16: `bsums`)."""
    T, n_super = xd.shape
    for t in range(T):
        for s in range(n_super):
            o = 256 * s
            amax, vmax = np.float32(0), np.float32(0)
            for j in range(256):
                if abs(x[t, o + j]) > amax:
                    amax, vmax = abs(x[t, o + j]), x[t, o + j]
            if amax == 0:
                xd[t, s] = 0
                xq[t, o : o + 256] = 0
            else:
                iscale = np.float32(-127) / vmax
                for j in range(256):
                    xq[t, o + j] = np.int8(min(127.0, np.rint(np.float64(iscale * x[t, o + j]))))
                xd[t, s] = np.float32(1) / iscale
            for k in range(8):
                acc = 0
                for j in range(32):
                    acc += np.int32(xq[t, o + 32 * k + j])
                xsum[t, 8 * s + k] = acc


def quantize_activations(x: torch.Tensor, kind: str) -> tuple[np.ndarray, ...]:
    """x (T, in) float32 -> (q int8 (T, in), d float32 (T, blocks)[, sums int32 (T, in / 32)]):
    q8_0 blocks for kind "q8_0" (q8_0 and q4_0 weights), q8_K super-blocks with their sums per
    32 values for "q8_k" (K-quant weights)."""
    if kind not in ("q8_0", "q8_k"):
        raise ValueError(f"kind must be 'q8_0' or 'q8_k', got {kind!r}")
    xs = x.detach().to("cpu", torch.float32).contiguous().numpy()
    T, cols = xs.shape
    group = 32 if kind == "q8_0" else 256
    if cols % group:
        raise ValueError(f"x has {cols} features: {kind} needs a multiple of {group}")
    xq = np.empty((T, cols), np.int8)
    if kind == "q8_0":
        xd = np.empty((T, cols // 32), np.float32)
        _quantize_q8_0(xs, xq, xd)
        return xq, xd
    xd, xsum = np.empty((T, cols // 256), np.float32), np.empty((T, cols // 32), np.int32)
    _quantize_q8_k(xs, xq, xd, xsum)
    return xq, xd, xsum
