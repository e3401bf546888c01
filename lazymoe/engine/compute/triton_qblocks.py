"""Triton device functions: a tile of rows of GGUF blocks times activations, block by block.

The quantized decode kernels (triton_quant.py) call `row_dots` for every tile of weights they
read. A row is cut into *groups* of 32 or 64 weights whose bytes sit together in one block:

    format  block          group                       loaded per group (one vector per row)
    f32..   -              32 values                    32 values, assembled from bytes
    q8_0    34 B / 32 w    the block                    32 int8 | d
    q4_0    18 B / 32 w    the block                    16 bytes: weight j low, j + 16 high | d
    q4_1    20 B / 32 w    the block                    16 bytes | d, m
    q4_k   144 B / 256 w   sub-blocks 2i, 2i+1 (64 w)   32 bytes: low nibble 2i, high 2i+1 | d, dmin, 2 x (sc, m)
    q5_k   176 B / 256 w   as q4_k                      32 bytes + the 32 bytes of fifth bits | as q4_k
    q6_k   210 B / 256 w   64 w: half `hh` of the       ql 16 + 16 bytes, qh 16 bytes | 4 int8 scales, d
                           block, lanes l .. l + 15

A tile is (M rows, G groups, lanes): the payload is loaded as one (M, G, lanes) block of bytes,
contiguous along the lanes (coalesced, vectorized loads), nibbles are split with a mask and a
shift, each lane's weights are multiplied by the activations at their columns (a (1 or M, G,
lanes) tile, shared by all rows of a program) and summed over the lanes first; the block's scales
(loaded once per group, not once per weight) multiply those partial sums:

    row . x  =  sum over groups of  d * sum(q * x)            (q8_0; q4_0 with q - 8)
             =  sum over groups of  d * sc * sum(q * x) - dmin * m * sum(x)    (q4_k, q5_k)

Every byte is decoded as lazymoe.quant decodes it (byte for byte GGUF's, lazymoe/quant/formats.py,
kquants.py); only the order of the float32 sums differs from "dequantize, then multiply".
"""

from __future__ import annotations

from lazymoe.engine.compute.triton_kernels import triton

if triton is not None:
    import triton.language as tl

# weights per group and groups per row, per format (the kernels' constexpr codes of triton_quant)
GROUP_WEIGHTS = {0: 32, 1: 32, 2: 32, 3: 32, 4: 32, 5: 32, 6: 64, 7: 64, 8: 64}


def groups(fmt_code: int, cols: int) -> int:
    """Groups in a row of `cols` weights (plain formats: the last may be partial)."""
    return -(-cols // GROUP_WEIGHTS[fmt_code])


if triton is not None:

    @triton.jit
    def _bytes(p, ok):
        return tl.load(p, mask=ok, other=0).to(tl.int32)

    @triton.jit
    def _f16(p, ok):  # two little-endian bytes as a float16, widened
        bits = _bytes(p, ok) | (_bytes(p + 1, ok) << 8)
        return bits.to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)

    @triton.jit
    def _i8(p, ok):
        return tl.load(p, mask=ok, other=0).to(tl.int8, bitcast=True).to(tl.float32)

    @triton.jit
    def _k_scale_min(s, sub, ok):
        """q4_k/q5_k: sub-block `sub`'s 6-bit (sc, m) from the 12 bytes at s (get_scale_min_k4)."""
        a = _bytes(s + sub % 4, ok)
        b = _bytes(s + sub % 4 + 4, ok)
        c = _bytes(s + sub % 4 + 8, ok)
        low = sub < 4
        sc = tl.where(low, a & 63, (c & 15) | ((a >> 6) << 4))
        m = tl.where(low, b & 63, (c >> 4) | ((b >> 6) << 4))
        return sc.to(tl.float32), m.to(tl.float32)

    @triton.jit
    def _x(x, cols, ok):
        """Activations at `cols` (1, G, lanes) of the rows at x (1 or M, 1, 1), as float32."""
        return tl.load(x + cols, mask=ok, other=0.0).to(tl.float32)

    @triton.jit
    def _lanes(q, xs, ok):
        """(M, G): sum over the lanes of integer weights q (M, G, lanes) times activations at xs."""
        return tl.sum(q.to(tl.float32) * tl.load(xs, mask=ok, other=0.0).to(tl.float32), axis=2)

    @triton.jit
    def _plain(w, x, g, ok, cols, FMT: tl.constexpr):
        """f32, f16, bf16 rows: each value assembled from its bytes (any byte alignment)."""
        c = g[:, :, None] * 32 + tl.arange(0, 32)[None, None, :]  # (1, G, 32) columns
        c_ok = ok[:, :, None] & (c < cols)
        if FMT == 0:
            p = w + c * 4
            bits = _bytes(p, c_ok) | (_bytes(p + 1, c_ok) << 8) | (_bytes(p + 2, c_ok) << 16)
            v = (bits | (_bytes(p + 3, c_ok) << 24)).to(tl.float32, bitcast=True)
        elif FMT == 1:
            v = _f16(w + c * 2, c_ok)
        else:  # bf16: the top half of a float32
            p = w + c * 2
            v = ((_bytes(p, c_ok) | (_bytes(p + 1, c_ok) << 8)) << 16).to(tl.float32, bitcast=True)
        return tl.sum(tl.sum(v * _x(x, c, c_ok), axis=2), axis=1)

    @triton.jit
    def _q8_q4(w, x, g, ok, FMT: tl.constexpr):
        """q8_0, q4_0, q4_1: one group = one block of 32 weights."""
        ok3 = ok[:, :, None]
        if FMT == 3:  # q8_0: d | 32 int8
            b = w + g * 34  # (M, G) each block's first byte
            j = tl.arange(0, 32)[None, None, :]
            q = _i8(b[:, :, None] + 2 + j, ok3)
            s = tl.sum(q * _x(x, g[:, :, None] * 32 + j, ok3), axis=2)
            return tl.sum(s * _f16(b, ok), axis=1)
        else:  # q4_0: d | 16 bytes; q4_1: d | m | 16 bytes. Byte j: weight j low, j + 16 high
            j = tl.arange(0, 16)[None, None, :]
            if FMT == 4:
                b = w + g * 18
                q = _bytes(b[:, :, None] + 2 + j, ok3)
            else:
                b = w + g * 20
                q = _bytes(b[:, :, None] + 4 + j, ok3)
            low = _x(x, g[:, :, None] * 32 + j, ok3)
            high = _x(x, g[:, :, None] * 32 + 16 + j, ok3)
            if FMT == 4:
                q_low, q_high = ((q & 15) - 8).to(tl.float32), ((q >> 4) - 8).to(tl.float32)
                s = tl.sum(q_low * low + q_high * high, axis=2)
                return tl.sum(s * _f16(b, ok), axis=1)
            else:
                s = tl.sum((q & 15).to(tl.float32) * low + (q >> 4).to(tl.float32) * high, axis=2)
                x_sum = tl.sum(low + high, axis=2)
                return tl.sum(s * _f16(b, ok) + x_sum * _f16(b + 2, ok), axis=1)

    @triton.jit
    def _q45_k(w, x, g, ok, FMT: tl.constexpr):
        """q4_k, q5_k: group g = sub-blocks 2i and 2i + 1 of block g // 4 (i = g % 4)."""
        ok3 = ok[:, :, None]
        i = g % 4
        j = tl.arange(0, 32)[None, None, :]
        if FMT == 6:
            b = w + (g // 4) * 144
            q = _bytes(b[:, :, None] + 16 + i[:, :, None] * 32 + j, ok3)
            low, high = q & 15, q >> 4
        else:  # + the fifth bits: bit s of byte j is weight j of sub-block s
            b = w + (g // 4) * 176
            q = _bytes(b[:, :, None] + 48 + i[:, :, None] * 32 + j, ok3)
            qh = _bytes(b[:, :, None] + 16 + j, ok3) >> (2 * i[:, :, None])
            low = (q & 15) | ((qh & 1) << 4)
            high = (q >> 4) | ((qh & 2) << 3)
        x_low = _x(x, g[:, :, None] * 64 + j, ok3)
        x_high = _x(x, g[:, :, None] * 64 + 32 + j, ok3)
        sc_low, m_low = _k_scale_min(b + 4, 2 * i, ok)
        sc_high, m_high = _k_scale_min(b + 4, 2 * i + 1, ok)
        s = sc_low * tl.sum(low.to(tl.float32) * x_low, axis=2)
        s += sc_high * tl.sum(high.to(tl.float32) * x_high, axis=2)
        m = m_low * tl.sum(x_low, axis=2) + m_high * tl.sum(x_high, axis=2)
        return tl.sum(_f16(b, ok) * s - _f16(b + 2, ok) * m, axis=1)

    @triton.jit
    def _q6_k(w, x, g, ok):
        """q6_k: group g = lanes l = 16 * (g % 2) + 0..15 of half hh = (g // 2) % 2 of block
        g // 4: ql bytes hh*64 + l (weights l, 64 + l of the half) and + 32 (32 + l, 96 + l),
        qh byte hh*32 + l (their 2 high bits each); int8 scale of 16 weights; d last."""
        ok3 = ok[:, :, None]
        hh = (g // 2) % 2
        b = w + (g // 4) * 210
        l = ((g % 2) * 16)[:, :, None] + tl.arange(0, 16)[None, None, :]  # noqa: E741
        ql = b[:, :, None] + hh[:, :, None] * 64 + l
        qa, qb = _bytes(ql, ok3), _bytes(ql + 32, ok3)
        qh = _bytes(b[:, :, None] + 128 + hh[:, :, None] * 32 + l, ok3)
        xs = x + ((g // 4) * 256 + hh * 128)[:, :, None] + l
        sc = b + 192 + hh * 8 + g % 2  # scale of weights l (+ 2 per 32 weights further)
        s = _i8(sc, ok) * _lanes(((qa & 15) | ((qh & 3) << 4)) - 32, xs, ok3)
        s += _i8(sc + 2, ok) * _lanes(((qb & 15) | ((qh & 12) << 2)) - 32, xs + 32, ok3)
        s += _i8(sc + 4, ok) * _lanes(((qa >> 4) | (qh & 48)) - 32, xs + 64, ok3)
        s += _i8(sc + 6, ok) * _lanes(((qb >> 4) | ((qh >> 2) & 48)) - 32, xs + 96, ok3)
        return tl.sum(_f16(b + 208, ok) * s, axis=1)

    @triton.jit
    def row_dots(w, x, g0, n_groups, cols, FMT: tl.constexpr, GROUPS: tl.constexpr):
        """(M,) float32: rows at byte pointers w (M, 1) times activations x (1 or M, 1) (pointers
        to each row's column 0), over groups g0 .. g0 + GROUPS of the row's n_groups."""
        g = g0 + tl.arange(0, GROUPS)[None, :]  # (1, G)
        ok = g < n_groups
        if FMT <= 2:
            return _plain(w[:, :, None], x[:, :, None], g, ok, cols, FMT)
        elif FMT <= 5:
            return _q8_q4(w, x[:, :, None], g, ok, FMT)
        elif FMT <= 7:
            return _q45_k(w, x[:, :, None], g, ok, FMT)
        else:
            return _q6_k(w, x[:, :, None], g, ok)
