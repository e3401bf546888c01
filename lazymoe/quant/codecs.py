"""Encode a matrix into a format's blocks, and decode blocks back to floats.

    encode(w, fmt)             (R, C) floats -> (R, row_bytes) uint8
    decode(data, fmt, cols)    (R, row_bytes) uint8 -> (R, C) float32

Everything is computed in float32 with plain torch ops, on whatever device `w` lives on. The
GGUF formats follow ggml-quants.c's reference quantizers step by step (same divisions, same
rounding), so their bytes equal `gguf.quants.quantize`'s.
"""

from __future__ import annotations

import torch

from lazymoe.quant import kquants
from lazymoe.quant.formats import K_KINDS, QuantFormat
from lazymoe.quant.packing import pack_nibbles, unpack_nibbles


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's roundf (0.5 -> 1, -0.5 -> -1), written as gguf.quants.np_roundf writes it."""
    a = x.abs()
    floored = torch.floor(a)
    return torch.sign(x) * (floored + torch.floor(2 * (a - floored)))


def _div(a: torch.Tensor, b: float | torch.Tensor) -> torch.Tensor:
    """a / b, rounded as IEEE division on every device.

    On CUDA, `tensor / python_float` multiplies by the rounded reciprocal instead, which can be one
    ulp off (seen on an H100: scales differed from the CPU's). Dividing by a tensor gives the
    correctly rounded quotient everywhere, as numpy and llama.cpp's C code compute it, so a tensor
    quantized on either device has the same bytes (tests/test_quant_matmul.py).
    """
    return a / (b if isinstance(b, torch.Tensor) else torch.full_like(a, b))


def _nonzero(scale: torch.Tensor) -> torch.Tensor:
    """The scale, with 1 where it is 0 (an all-zero group divides 0 by 1, not 0 by 0)."""
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """1/d, and 0 where d == 0 (an all-zero block quantizes to zeros, not NaN)."""
    safe = torch.where(d == 0, torch.ones_like(d), d)
    return torch.where(d == 0, torch.zeros_like(d), _div(torch.ones_like(d), safe))


def _header(scales: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """(blocks, 1) float32 scales -> (blocks, n * bytes) uint8, in the order given."""
    return torch.cat([s.to(dtype).contiguous().view(torch.uint8) for s in scales], dim=-1)


def encode(w: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """(R, C) -> (R, row_bytes) uint8 in `fmt`'s layout (see lazymoe.quant.formats)."""
    rows, cols = w.shape
    if fmt.kind == "plain":
        return w.to(fmt.value_dtype).contiguous().view(torch.uint8).reshape(rows, -1)
    group = fmt.group(cols)
    x = w.to(torch.float32).reshape(-1, group)  # (blocks, G)
    if fmt.kind in K_KINDS:  # scales sit inside the block: kquants writes whole blocks
        return kquants.encode(x, fmt.kind).reshape(rows, -1)
    if fmt.kind == "int8":
        scale = _div(x.abs().amax(dim=-1, keepdim=True), 127)  # (blocks, 1)
        q = torch.round(_div(x, _nonzero(scale))).clamp(-127, 127)
        payload = q.to(torch.int8).view(torch.uint8)
        scales = [scale]
    elif fmt.kind == "int4":
        scale = _div(x.abs().amax(dim=-1, keepdim=True), 7)
        q = torch.round(_div(x, _nonzero(scale))).clamp(-7, 7)
        payload = pack_nibbles((q + 8).to(torch.uint8))
        scales = [scale]
    elif fmt.kind == "q8_0":
        d = _div(x.abs().amax(dim=-1, keepdim=True), 127)
        q = round_half_away(x * _inverse(d))
        payload = q.to(torch.int8).view(torch.uint8)
        scales = [d]
    elif fmt.kind == "q4_0":
        # The weight of largest magnitude, with its sign, maps to -8: all 16 levels get used.
        imax = x.abs().argmax(dim=-1, keepdim=True)
        d = _div(torch.gather(x, -1, imax), -8)
        q = torch.trunc(x * _inverse(d) + 8.5).clamp(0, 15)
        payload = pack_nibbles(q.to(torch.uint8))
        scales = [d]
    elif fmt.kind == "q4_1":
        lo = x.amin(dim=-1, keepdim=True)
        d = _div(x.amax(dim=-1, keepdim=True) - lo, 15)
        q = torch.trunc((x - lo) * _inverse(d) + 0.5).clamp(0, 15)
        payload = pack_nibbles(q.to(torch.uint8))
        scales = [d, lo]
    else:  # pragma: no cover - get_format only makes the kinds above
        raise AssertionError(fmt.kind)
    blocks = torch.cat([_header(scales, fmt.scale_dtype), payload], dim=-1)
    return blocks.reshape(rows, -1)


def split_blocks(data: torch.Tensor, fmt: QuantFormat, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, row_bytes) uint8 -> scales (blocks, n_scales) float32 and payload (blocks, payload bytes)."""
    blocks = data.reshape(-1, fmt.block_bytes(cols))
    head = fmt.header_bytes
    scales = blocks[:, :head].contiguous().view(fmt.scale_dtype).to(torch.float32)
    return scales, blocks[:, head:]


def decode(data: torch.Tensor, fmt: QuantFormat, cols: int) -> torch.Tensor:
    """(R, row_bytes) uint8 -> (R, cols) float32: the weights the blocks stand for."""
    rows = data.shape[0]
    if fmt.kind == "plain":
        data = data.contiguous()
        if data.storage_offset() % data.new_empty((), dtype=fmt.value_dtype).element_size():
            data = data.clone()  # bytes of a slot at an odd offset: a dtype view needs alignment
        return data.view(fmt.value_dtype).reshape(rows, cols).to(torch.float32)
    if fmt.kind in K_KINDS:
        return kquants.decode(data, fmt.kind).reshape(rows, cols)
    scales, payload = split_blocks(data, fmt, cols)
    if fmt.payload_bits == 8:
        q = payload.view(torch.int8).to(torch.float32)  # (blocks, G)
        values = q * scales[:, :1]
    else:
        nib = unpack_nibbles(payload.contiguous()).to(torch.float32)  # (blocks, G), 0..15; ~2x faster contiguous
        if fmt.kind == "q4_1":
            values = scales[:, :1] * nib + scales[:, 1:2]
        else:  # int4 and q4_0 store q + 8
            values = (nib - 8) * scales[:, :1]
    return values.reshape(rows, cols)
