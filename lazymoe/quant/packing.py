"""Two 4-bit values per byte, in GGUF's order, and padding rows to a whole number of groups.

GGUF's order within one block of G weights: byte j holds weight j in its low nibble and weight
j + G/2 in its high nibble. (A SIMD kernel unpacks 16 weights with one AND and the other 16 with
one shift: no shuffling.)
"""

from __future__ import annotations

import torch

from lazymoe.quant.formats import QuantError


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(blocks, G) values in 0..15 -> (blocks, G/2) bytes: low = q[:, j], high = q[:, j + G/2]."""
    if q.shape[-1] % 2:
        raise QuantError(f"pack_nibbles needs an even number of values per block, got {q.shape[-1]}")
    q = q.to(torch.uint8)
    half = q.shape[-1] // 2
    return q[..., :half] | (q[..., half:] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """(blocks, G/2) bytes -> (blocks, G) values in 0..15; the inverse of pack_nibbles."""
    packed = packed.to(torch.uint8)
    return torch.cat([packed & 0x0F, packed >> 4], dim=-1)


def pad_cols(w: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the last dimension up to a multiple of `multiple` (zeros quantize to zero).

    The matching activations need the same padding (zeros) before a matmul.
    """
    cols = w.shape[-1]
    extra = (-cols) % multiple
    if extra == 0:
        return w
    return torch.nn.functional.pad(w, (0, extra))
