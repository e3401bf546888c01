"""Tiny floating-point formats, simulated: FP8 (E4M3) and MXFP4 (E2M1 with a shared power of two).

These return the values a GPU would compute with (quantize then dequantize, in float32); they do
not produce a byte layout. They exist so module 03 can put them on the same error-vs-bits plot
as the integer formats.

FP8 E4M3: 1 sign, 4 exponent, 3 mantissa bits; largest value 448 (Micikevicius et al. 2022,
arXiv:2209.05433). Weights are scaled so the largest |w| of a block lands on 448.
MXFP4 (OCP Microscaling Formats v1.0): blocks of 32 E2M1 values (+-0, 0.5, 1, 1.5, 2, 3, 4, 6)
sharing one 8-bit power-of-two scale X = 2^(floor(log2(max|w|)) - 2): 4 + 8/32 = 4.25 bits.
"""

from __future__ import annotations

import torch

from lazymoe.quant.formats import QuantError

FP8_E4M3_MAX = 448.0
E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
MXFP4_BLOCK = 32
MXFP4_BITS_PER_WEIGHT = 4 + 8 / MXFP4_BLOCK


def fp8_bits_per_weight(block: int | None) -> float:
    """8 bits + one float32 scale per block (None: one scale per tensor, ~8 bits)."""
    return 8.0 if block is None else 8 + 32 / block


def fp8_roundtrip(w: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """w -> float8_e4m3fn -> float32, with scale = max|w| / 448 per tensor or per `block` weights."""
    x = w.to(torch.float32)
    groups = x.reshape(1, -1) if block is None else _blocks(x, block)
    scale = groups.abs().amax(dim=-1, keepdim=True) / FP8_E4M3_MAX
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    out = (groups / scale).to(torch.float8_e4m3fn).to(torch.float32) * scale
    return out.reshape(w.shape)


def mxfp4_roundtrip(w: torch.Tensor) -> torch.Tensor:
    """w -> MXFP4 (blocks of 32 along the last dim) -> float32: x = X * round_to_e2m1(w / X)."""
    blocks = _blocks(w.to(torch.float32), MXFP4_BLOCK)  # (blocks, 32)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    exponent = torch.floor(torch.log2(torch.where(amax == 0, torch.ones_like(amax), amax))) - 2
    shared = torch.exp2(exponent)  # power of two: what 8 bits of pure exponent can say
    scaled = (blocks / shared).clamp(-6, 6)
    grid = E2M1_VALUES.to(blocks.device)
    nearest = grid[(scaled.abs().unsqueeze(-1) - grid).abs().argmin(dim=-1)]  # (blocks, 32)
    return (torch.sign(scaled) * nearest * shared).reshape(w.shape)


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    if x.shape[-1] % block:
        raise QuantError(f"the row length {x.shape[-1]} is not a multiple of the block of {block}")
    return x.reshape(-1, block)
