"""y = x @ W^T with W stored quantized, as nn.Linear computes it (W is (out, in), groups run along in).

`qmatmul_reference` is the obviously correct version: dequantize all of W to float32, then multiply.
`qmatmul` never holds all of W in floats at once and skips work where the format allows:

- int8_row: one scale per output row factors out of the sum, so y = (x @ q^T) * scale: the int8
  values go straight into the matmul (exact in bf16/f16/f32) and the scales touch only y.
- every other format: dequantize a slab of output rows at a time in x's dtype and multiply it.

Both run wherever the tensors are (CPU or CUDA); tests compare the two.
"""

from __future__ import annotations

import torch

from lazymoe.quant.codecs import decode, split_blocks
from lazymoe.quant.formats import QuantError
from lazymoe.quant.tensor import QuantizedTensor

SLAB_WEIGHTS = 1 << 22  # weights dequantized at once by qmatmul: 4 Mi (16 MiB in float32)


def _check(x: torch.Tensor, qt: QuantizedTensor) -> tuple[int, int]:
    if len(qt.shape) != 2:
        raise QuantError(f"qmatmul needs a 2-D weight (out, in), got shape {qt.shape}: index the expert first")
    out_features, in_features = qt.shape
    if x.shape[-1] != in_features:
        raise QuantError(f"x has {x.shape[-1]} features, the weight expects {in_features} (shape {qt.shape})")
    if x.device != qt.device:
        raise QuantError(f"x is on {x.device}, the weight on {qt.device}: move one with .to(...)")
    return out_features, in_features


def qmatmul_reference(x: torch.Tensor, qt: QuantizedTensor) -> torch.Tensor:
    """(..., in) x (out, in) -> (..., out): dequantize W to float32, y = x @ W^T, cast to x.dtype."""
    _check(x, qt)
    w = qt.dequantize(torch.float32)
    return (x.to(torch.float32) @ w.T).to(x.dtype)


def qmatmul(x: torch.Tensor, qt: QuantizedTensor) -> torch.Tensor:
    """(..., in) x (out, in) -> (..., out), dequantizing W on the fly in slabs of output rows."""
    out_features, in_features = _check(x, qt)
    fmt = qt.fmt
    if fmt.kind == "int8" and fmt.group_size is None:
        scales, payload = split_blocks(qt.data, fmt, in_features)  # (out, 1), (out, in)
        q = payload.view(torch.int8).to(x.dtype)
        return (x @ q.T) * scales[:, 0].to(x.dtype)
    slab_rows = max(1, SLAB_WEIGHTS // in_features)
    if slab_rows >= out_features:
        return x @ decode(qt.data, fmt, in_features).to(x.dtype).T
    y = x.new_empty((*x.shape[:-1], out_features))
    for start in range(0, out_features, slab_rows):
        stop = min(start + slab_rows, out_features)
        w = decode(qt.data[start:stop], fmt, in_features).to(x.dtype)  # (slab, in)
        y[..., start:stop] = x @ w.T
    return y
