"""GGUF's "K-quants" Q4_K, Q5_K and Q6_K: super-blocks of 256 weights with per-sub-block scales.

A Q4_K_M file (what most people download) holds its big matrices in Q4_K and a few in Q6_K.
Each super-block covers 256 weights of one row (QK_K); inside it, sub-blocks share a small
integer scale that multiplies one float16 super-block scale. Byte layouts (ggml-common.h,
`block_q4_K`, `block_q5_K`, `block_q6_K`), all little-endian:

    q4_k  144 bytes  d f16 | dmin f16 | scales 12 | qs 128     8 sub-blocks of 32, 4.5 bits/weight
    q5_k  176 bytes  d f16 | dmin f16 | scales 12 | qh 32 | qs 128          5 bits, 5.5 bits/weight
    q6_k  210 bytes  ql 128 | qh 64 | scales 16 (int8) | d f16   16 sub-blocks of 16, 6.5625 b/w

q4_k / q5_k:  w = d * sc[j] * q - dmin * m[j]   sc, m: 6-bit, packed 8 + 8 into the 12 scale bytes
q6_k:         w = d * sc[j] * (q - 32)          sc: int8, q: 6 bits (4 low in ql, 2 high in qh)

`decode_*` follow gguf-py's `gguf.quants` step by step (same float32 products in the same
order), so they are bit-exact against it (tests/test_quant_kquants.py). `encode_*` write valid
blocks with a simple absmax / min-max choice of scales; llama.cpp's quantizer searches for
better scales (smaller error), but any valid block decodes the same way everywhere.
"""

from __future__ import annotations

import torch

QK_K = 256  # weights per super-block
BLOCK_BYTES = {"q4_k": 144, "q5_k": 176, "q6_k": 210}


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """(n, 2) uint8 -> (n, 1) float32: a little-endian float16 per row."""
    return raw.contiguous().view(torch.float16).to(torch.float32)


def _scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """12 packed bytes per block -> (sc, m), each (n, 8) 6-bit values (ggml's get_scale_min_k4)."""
    s = scales.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]  # (n, 4) each
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def _low_high_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(n, 128) bytes -> (n, 8, 32): sub-block 2k is the low nibbles of bytes 32k.., 2k+1 the high."""
    qs = qs.reshape(-1, 4, 1, 32)
    return torch.cat([qs & 0x0F, qs >> 4], dim=2).reshape(-1, 8, 32)


def decode_q4_k(blocks: torch.Tensor) -> torch.Tensor:
    """(n, 144) uint8 -> (n, 256) float32."""
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, mn = _scale_min(blocks[:, 4:16])
    dsc = (d * sc.to(torch.float32)).reshape(n, 8, 1)
    dm = (dmin * mn.to(torch.float32)).reshape(n, 8, 1)
    q = _low_high_nibbles(blocks[:, 16:144]).to(torch.float32)
    return (dsc * q - dm).reshape(n, QK_K)


def decode_q5_k(blocks: torch.Tensor) -> torch.Tensor:
    """(n, 176) uint8 -> (n, 256) float32: q4_k's nibbles plus a fifth bit from qh."""
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, mn = _scale_min(blocks[:, 4:16])
    dsc = (d * sc.to(torch.float32)).reshape(n, 8, 1)
    dm = (dmin * mn.to(torch.float32)).reshape(n, 8, 1)
    shifts = torch.arange(8, dtype=torch.uint8, device=blocks.device).reshape(1, 8, 1)
    qh = (
        blocks[:, 16:48].reshape(n, 1, 32) >> shifts
    ) & 1  # bit j of byte i: sub-block j, weight i
    q = (_low_high_nibbles(blocks[:, 48:176]) | (qh << 4)).to(torch.float32)
    return (dsc * q - dm).reshape(n, QK_K)


def decode_q6_k(blocks: torch.Tensor) -> torch.Tensor:
    """(n, 210) uint8 -> (n, 256) float32."""
    n = blocks.shape[0]
    ql, qh = blocks[:, 0:128], blocks[:, 128:192]
    scales = blocks[:, 192:208].contiguous().view(torch.int8).to(torch.float32)  # (n, 16)
    d = _f16(blocks[:, 208:210])
    dsc = (d * scales).reshape(n, 16, 1)
    ql = ql.reshape(n, 2, 1, 64)
    low = torch.cat([ql & 0x0F, ql >> 4], dim=2).reshape(n, 8, 32)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=blocks.device).reshape(1, 1, 4, 1)
    high = ((qh.reshape(n, 2, 1, 32) >> shifts) & 3).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).reshape(n, 16, 16).to(torch.float32)
    return (dsc * q).reshape(n, QK_K)


DECODERS = {"q4_k": decode_q4_k, "q5_k": decode_q5_k, "q6_k": decode_q6_k}


def decode(blocks: torch.Tensor, kind: str) -> torch.Tensor:
    """(n, block bytes) uint8 -> (n, 256) float32 for kind q4_k | q5_k | q6_k."""
    return DECODERS[kind](blocks.reshape(-1, BLOCK_BYTES[kind]))


# -- encoding -------------------------------------------------------------------------------------
def _f16_bytes(x: torch.Tensor) -> torch.Tensor:
    """(n,) float32 -> (n, 2) uint8 of float16."""
    return x.to(torch.float16).reshape(-1, 1).contiguous().view(torch.uint8)


def _safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b, and 0 where b == 0 (an all-zero sub-block stays zero)."""
    return torch.where(b == 0, torch.zeros_like(a), a / torch.where(b == 0, torch.ones_like(b), b))


def _min_max_scales(xs: torch.Tensor, levels: int):
    """xs (n, 8, 32) -> d16, dmin16 (n,), sc, m (n, 8) in 0..63 and q (n, 8, 32) in 0..levels."""
    lo = xs.amin(-1).clamp(max=0)  # the offset is -min: only minimums <= 0, as ggml does
    scale = (xs.amax(-1) - lo) / levels  # (n, 8)
    d16 = (scale.amax(-1) / 63).to(torch.float16).to(torch.float32)  # (n,)
    dmin16 = ((-lo).amax(-1) / 63).to(torch.float16).to(torch.float32)
    sc = torch.round(_safe_div(scale, d16[:, None])).clamp(0, 63)
    m = torch.round(_safe_div(-lo, dmin16[:, None])).clamp(0, 63)
    step = (d16[:, None] * sc).unsqueeze(-1)  # what decode multiplies by
    offset = (dmin16[:, None] * m).unsqueeze(-1)
    q = torch.round(_safe_div(xs + offset, step)).clamp(0, levels)
    return d16, dmin16, sc.to(torch.uint8), m.to(torch.uint8), q.to(torch.uint8)


def _pack_scale_min(sc: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """(n, 8) sc and m (6 bits each) -> (n, 12) bytes; the inverse of _scale_min."""
    lo_sc, hi_sc, lo_m, hi_m = sc[:, :4], sc[:, 4:], m[:, :4], m[:, 4:]
    return torch.cat([
        lo_sc | ((hi_sc >> 4) << 6),
        lo_m | ((hi_m >> 4) << 6),
        (hi_sc & 0x0F) | ((hi_m & 0x0F) << 4),
    ], dim=-1)  # fmt: skip


def _pack_low_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(n, 8, 32) values -> (n, 128) bytes: the inverse of _low_high_nibbles (low 4 bits kept)."""
    q = (q & 0x0F).reshape(-1, 4, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def encode_q4_k(x: torch.Tensor) -> torch.Tensor:
    """(n, 256) float32 -> (n, 144) uint8."""
    d, dmin, sc, m, q = _min_max_scales(x.reshape(-1, 8, 32), 15)
    return torch.cat(
        [_f16_bytes(d), _f16_bytes(dmin), _pack_scale_min(sc, m), _pack_low_nibbles(q)], -1
    )


def encode_q5_k(x: torch.Tensor) -> torch.Tensor:
    """(n, 256) float32 -> (n, 176) uint8."""
    d, dmin, sc, m, q = _min_max_scales(x.reshape(-1, 8, 32), 31)
    shifts = torch.arange(8, dtype=torch.uint8, device=x.device).reshape(1, 8, 1)
    qh = ((q >> 4) << shifts).sum(dim=1, dtype=torch.uint8)  # (n, 32): bit j from sub-block j
    return torch.cat(
        [_f16_bytes(d), _f16_bytes(dmin), _pack_scale_min(sc, m), qh, _pack_low_nibbles(q)], -1
    )


def encode_q6_k(x: torch.Tensor) -> torch.Tensor:
    """(n, 256) float32 -> (n, 210) uint8: a signed absmax scale per sub-block of 16."""
    n = x.shape[0]
    xs = x.reshape(n, 16, 16)
    imax = xs.abs().argmax(dim=-1, keepdim=True)
    scale = torch.gather(xs, -1, imax).squeeze(-1) / -32  # (n, 16): the largest weight maps to -32
    d16 = (scale.abs().amax(-1) / 127).to(torch.float16).to(torch.float32)  # (n,)
    sc = torch.round(_safe_div(scale, d16[:, None])).clamp(-128, 127)
    step = (d16[:, None] * sc).unsqueeze(-1)
    q = (torch.round(_safe_div(xs, step)).clamp(-32, 31) + 32).to(torch.uint8).reshape(n, 2, 4, 32)
    low, high = q & 0x0F, q >> 4
    ql = torch.cat([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], dim=-1)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=x.device).reshape(1, 1, 4, 1)
    qh = (high << shifts).sum(dim=2, dtype=torch.uint8)  # (n, 2, 32)
    scales = sc.to(torch.int8).view(torch.uint8)
    return torch.cat([ql.reshape(n, 128), qh.reshape(n, 64), scales, _f16_bytes(d16)], -1)


ENCODERS = {"q4_k": encode_q4_k, "q5_k": encode_q5_k, "q6_k": encode_q6_k}


def encode(x: torch.Tensor, kind: str) -> torch.Tensor:
    """(n, 256) floats -> (n, block bytes) uint8 for kind q4_k | q5_k | q6_k."""
    return ENCODERS[kind](x.to(torch.float32).reshape(-1, QK_K))
