"""Vector building blocks for the int8 kernels (lazymoe/quant/kernels_int8.py), as LLVM IR.

Each function below is a numba @intrinsic: called from a numba kernel, it emits a few lines of
LLVM vector IR in place. A 32-value block is loaded as one <32 x i8> vector, widened, multiplied
and summed in pairs into 16 int32 lanes; the x86 backend turns that into vpmovsxbw + vpmaddwd
(AVX2 / AVX-512), the ARM one into its own instructions. Written as a numba loop
`for j in range(32)`, the same block was unrolled fully by LLVM and left scalar: 2.3 GB/s
against 16-21 GB/s for q8_0 on one thread (measured on the 2-core dev machine).

    f16(row, o)                            the float16 at row[o:o + 2] as float32
    acc_i8(lanes, lo, w, wo, x, xo, s)     lanes[lo:lo + 16] += s * pair sums of w[wo:] x[xo:]
    acc_q4_0(lanes, lo, w, wo, x, xo, s)   the same for a q4_0 block's nibbles minus 8
    acc_k4(ilanes, w, wo, x, xo, sc0, sc1) two q4_k sub-blocks into int32 lanes, times scales
    acc_q6(ilanes, w, ql, .., sc_lo, sc_hi) 32 q6_k weights into int32 lanes, times scales
    flush(lanes, lo, ilanes, s)            lanes[lo:lo + 16] += s * ilanes; ilanes = 0

With VNNI (`has_vnni`: AVX512-VNNI or AVX-VNNI, decided when numba compiles for the machine) a
block's 32 products are summed in fours into 8 lanes by one vpdpbusd, which multiplies unsigned
by signed bytes: 4-bit and 6-bit weights enter as they are stored (0..15, 0..63) and their offset
(8, 32) comes off as offset x sum(x), by a second vpdpbusd; a q8_0 weight enters as |w| with its
sign moved onto x. Measured on the 2-core dev machine (one thread, q4_0, Qwen3-30B-A3B's expert
shapes): 10.3-10.8 GB/s against 8.4-8.8 with vpmaddwd.

`lanes` (32 float32: two sets of 16, so that consecutive blocks do not wait for each other)
hold a row's running sums lane by lane, summed across lanes once per row: no horizontal sum
per block, as llama.cpp's AVX2 code does. Pair sums are exact in int32 (|w x| <= 128 * 128).

Numba's disk cache keys each kernel on its own file only: after editing this file, delete
lazymoe/quant/__pycache__/kernels_int8.*.nbi and .nbc, or the old code keeps running.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

I8, I32 = ir.IntType(8), ir.IntType(32)


def _load(context, builder, arrty, arr, offset, n: int):
    """<n x i8> from a 1-D byte array (uint8 or int8) at `offset` bytes."""
    data = context.make_array(arrty)(context, builder, arr).data
    ptr = builder.bitcast(builder.gep(data, [offset]), ir.VectorType(I8, n).as_pointer())
    return builder.load(ptr, align=1)


def _splat(builder, value, n: int):
    """<n x T> filled with a runtime scalar."""
    vec = builder.insert_element(ir.Constant(ir.VectorType(value.type, n), ir.Undefined), value, I32(0))
    return builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(I32, n), [0] * n))


def _is_bytes(arr) -> bool:
    return isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C" and arr.dtype.bitwidth == 8


@intrinsic
def f16(typingctx, row, offset):
    """The float16 at row[offset:offset + 2] -> float32 (one vcvtph2ps with F16C)."""
    if not _is_bytes(row):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]), ir.HalfType().as_pointer())
        return builder.fpext(builder.load(ptr, align=1), ir.FloatType())

    return types.float32(row, offset), codegen


def _pair_sums(builder, w, x):
    """<16 x i32>: lane i = w_2i x_2i + w_2i+1 x_2i+1 for <32 x i8> w, x (one vpmaddwd)."""
    v32 = ir.VectorType(I32, 32)
    prod = builder.mul(builder.sext(w, v32), builder.sext(x, v32))
    even = ir.Constant(ir.VectorType(I32, 16), list(range(0, 32, 2)))
    odd = ir.Constant(ir.VectorType(I32, 16), list(range(1, 32, 2)))
    return builder.add(builder.shuffle_vector(prod, prod, even), builder.shuffle_vector(prod, prod, odd))


def _accumulate(context, builder, lanes_ty, lanes, offset, pairs, scale):
    """lanes[offset:offset + n] (float32) += float(pairs) * scale for n = 16 pair sums (or 8
    sums of four): the block's products stay in lanes, summed across lanes once per row, not
    once per block."""
    n = pairs.type.count
    f16x = ir.VectorType(ir.FloatType(), n)
    data = context.make_array(lanes_ty)(context, builder, lanes).data
    ptr = builder.bitcast(builder.gep(data, [offset]), f16x.as_pointer())
    add = builder.fmul(builder.sitofp(pairs, f16x), _splat(builder, scale, n))
    builder.store(builder.fadd(builder.load(ptr, align=4), add), ptr, align=4)
    return context.get_dummy_value()


def _is_lanes(arr) -> bool:
    return isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C" and arr.dtype == types.float32


@intrinsic
def acc_i8(typingctx, lanes, lo, w, wo, x, xo, scale):
    """lanes += scale * (pair sums of w[wo:wo + 32] * x[xo:xo + 32]), all int8: a q8_0 block
    (with VNNI: 8 sums of four, vpdpbusd)."""
    if not (_is_lanes(lanes) and _is_bytes(w) and _is_bytes(x)):
        return None

    def codegen(context, builder, sig, args):
        t = sig.args
        wv = _load(context, builder, t[2], args[2], args[3], 32)
        xv = _load(context, builder, t[4], args[4], args[5], 32)
        pairs = _signed_sums(builder, wv, xv) if has_vnni(context) else _pair_sums(builder, wv, xv)
        scale = context.cast(builder, args[6], t[6], types.float32)
        return _accumulate(context, builder, t[0], args[0], args[1], pairs, scale)

    return types.none(lanes, lo, w, wo, x, xo, scale), codegen


def _nibbles(builder, raw, high: bool):
    """The low or high nibbles of <n x i8> bytes, as <n x i8> values 0..15."""
    n = raw.type.count
    if high:
        return builder.lshr(raw, ir.Constant(ir.VectorType(I8, n), [4] * n))
    return builder.and_(raw, ir.Constant(ir.VectorType(I8, n), [15] * n))


def has_vnni(context) -> bool:
    """Whether the code is compiled for a CPU with VNNI's vpdpbusd on 256-bit vectors (AVX512-VNNI
    with AVX512-VL, or AVX-VNNI): numba compiles for the machine it runs on."""
    features = set(getattr(context.codegen(), "_tm_features", "").split(","))
    return "+avxvnni" in features or {"+avx512vnni", "+avx512vl"} <= features


def _quad_sums(builder, u, s):
    """<8 x i32>: lane i = sum over k < 4 of u_4i+k s_4i+k for <32 x i8> u (as unsigned) and s
    (signed): one vpdpbusd (VNNI), exact."""
    v8x32 = ir.VectorType(I32, 8)
    fn = builder.module.declare_intrinsic("llvm.x86.avx512.vpdpbusd.256", fnty=ir.FunctionType(v8x32, [v8x32] * 3))
    zero = ir.Constant(v8x32, [0] * 8)
    return builder.call(fn, [zero, builder.bitcast(u, v8x32), builder.bitcast(s, v8x32)])


def _unsigned_sums(builder, u, x, offset: int = 0):
    """<8 x i32> sums of four of (u - offset) x for <32 x i8> u holding 0..255 and x int8."""
    sums = _quad_sums(builder, u, x)
    if offset:
        return builder.sub(sums, _quad_sums(builder, ir.Constant(ir.VectorType(I8, 32), [offset] * 32), x))
    return sums


def _signed_sums(builder, w, x):
    """<8 x i32> sums of four of w x, both int8 (|x| <= 127): |w| (unsigned) times x with w's
    sign, as llama.cpp's AVX2 code does before vpdpbusd."""
    v8 = ir.VectorType(I8, 32)
    zero = ir.Constant(v8, [0] * 32)
    negative = builder.icmp_signed("<", w, zero)
    return _quad_sums(builder, builder.select(negative, builder.sub(zero, w), w), builder.select(negative, builder.sub(zero, x), x))


@intrinsic
def acc_q4_0(typingctx, lanes, lo, w, wo, x, xo, scale):
    """lanes += scale * (sums of a q4_0 block's 32 weights (nibble - 8) * x[xo:xo + 32]): with
    VNNI the nibbles (0..15) times x in sums of four, minus 8 x in sums of four (two vpdpbusd,
    8 lanes); else pair sums of (nibble - 8) x (vpmaddwd, 16 lanes). Both exact in int32."""
    if not (_is_lanes(lanes) and _is_bytes(w) and _is_bytes(x)):
        return None

    def codegen(context, builder, sig, args):
        t = sig.args
        raw = _load(context, builder, t[2], args[2], args[3], 16)
        both = builder.shuffle_vector(
            _nibbles(builder, raw, False), _nibbles(builder, raw, True), ir.Constant(ir.VectorType(I32, 32), list(range(32)))
        )
        xv = _load(context, builder, t[4], args[4], args[5], 32)
        scale = context.cast(builder, args[6], t[6], types.float32)
        if has_vnni(context):
            sums = _unsigned_sums(builder, both, xv, offset=8)
            return _accumulate(context, builder, t[0], args[0], args[1], sums, scale)
        wv = builder.sub(both, ir.Constant(ir.VectorType(I8, 32), [8] * 32))
        pairs = _pair_sums(builder, wv, xv)
        return _accumulate(context, builder, t[0], args[0], args[1], pairs, scale)

    return types.none(lanes, lo, w, wo, x, xo, scale), codegen


def _lanes_ptr(context, builder, ty, arr, elem, offset=None, n=16):
    data = context.make_array(ty)(context, builder, arr).data
    if offset is not None:
        data = builder.gep(data, [offset])
    return builder.bitcast(data, ir.VectorType(elem, n).as_pointer())


def _add_int_lanes(context, builder, ty, lanes, vec):
    """lanes[:n] (int32, an array of 16) += vec (n = 16 pair sums or 8 sums of four)."""
    ptr = _lanes_ptr(context, builder, ty, lanes, I32, n=vec.type.count)
    builder.store(builder.add(builder.load(ptr, align=4), vec), ptr, align=4)
    return context.get_dummy_value()


def _is_int_lanes(arr) -> bool:
    return isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C" and arr.dtype == types.int32


@intrinsic
def acc_k4(typingctx, ilanes, w, wo, x, xo, sc0, sc1):
    """ilanes (16 int32) += sc0 * pair sums of the low nibbles of w[wo:wo + 32] times
    x[xo:xo + 32] + sc1 * those of the high nibbles times x[xo + 32:xo + 64]: two q4_k
    sub-blocks (|each lane| <= 2 * 15 * 127 * 63 per pair of sub-blocks: no overflow)."""
    if not (_is_int_lanes(ilanes) and _is_bytes(w) and _is_bytes(x)):
        return None

    def codegen(context, builder, sig, args):
        t = sig.args
        raw = _load(context, builder, t[1], args[1], args[2], 32)
        x0 = _load(context, builder, t[3], args[3], args[4], 32)
        x1 = _load(context, builder, t[3], args[3], builder.add(args[4], ir.Constant(args[4].type, 32)), 32)
        sums = _unsigned_sums if has_vnni(context) else _pair_sums
        lo, hi = sums(builder, _nibbles(builder, raw, False), x0), sums(builder, _nibbles(builder, raw, True), x1)
        n = lo.type.count
        lo = builder.mul(lo, _splat(builder, context.cast(builder, args[5], t[5], types.int32), n))
        hi = builder.mul(hi, _splat(builder, context.cast(builder, args[6], t[6], types.int32), n))
        return _add_int_lanes(context, builder, t[0], args[0], builder.add(lo, hi))

    return types.none(ilanes, w, wo, x, xo, sc0, sc1), codegen


@intrinsic
def flush(typingctx, lanes, lo, ilanes, scale):
    """lanes[lo:lo + 16] (float32) += float(ilanes) * scale, then ilanes = 0: a super-block's
    integer lanes into the row's float lanes."""
    if not (_is_lanes(lanes) and _is_int_lanes(ilanes)):
        return None

    def codegen(context, builder, sig, args):
        t = sig.args
        iptr = _lanes_ptr(context, builder, t[2], args[2], I32)
        pairs = builder.load(iptr, align=4)
        builder.store(ir.Constant(ir.VectorType(I32, 16), [0] * 16), iptr, align=4)
        return _accumulate(context, builder, t[0], args[0], args[1], pairs, context.cast(builder, args[3], t[3], types.float32))

    return types.none(lanes, lo, ilanes, scale), codegen


@intrinsic
def acc_q6(typingctx, ilanes, w, ql, ql_shift, qh, qh_shift, x, xo, sc_lo, sc_hi):
    """ilanes (16 int32) += pair sums of 32 q6_k weights times x[xo:xo + 32], times their
    scales: weight l = (nibble of w[ql + l] at bit ql_shift) | (2 bits of w[qh + l] at
    qh_shift) << 4, minus 32; scale sc_lo for l < 16 (the first half of the lanes), sc_hi for
    the rest."""
    if not (_is_int_lanes(ilanes) and _is_bytes(w) and _is_bytes(x)):
        return None

    def codegen(context, builder, sig, args):
        v8 = ir.VectorType(I8, 32)
        t = sig.args

        def scalar(i, ty):
            return context.cast(builder, args[i], t[i], ty)

        low = builder.lshr(_load(context, builder, t[1], args[1], args[2], 32), _splat(builder, scalar(3, types.int8), 32))
        high = builder.lshr(_load(context, builder, t[1], args[1], args[4], 32), _splat(builder, scalar(5, types.int8), 32))
        q = builder.or_(
            builder.and_(low, ir.Constant(v8, [15] * 32)),
            builder.shl(builder.and_(high, ir.Constant(v8, [3] * 32)), ir.Constant(v8, [4] * 32)),
        )
        xv = _load(context, builder, t[6], args[6], args[7], 32)
        if has_vnni(context):  # lane i: weights 4i .. 4i + 3
            pairs = _unsigned_sums(builder, q, xv, offset=32)
        else:  # lane i: weights 2i, 2i + 1
            pairs = _pair_sums(builder, builder.sub(q, ir.Constant(v8, [32] * 32)), xv)
        n = pairs.type.count
        first = ir.Constant(ir.VectorType(ir.IntType(1), n), [1] * (n // 2) + [0] * (n // 2))
        scales = builder.select(first, _splat(builder, scalar(8, types.int32), n), _splat(builder, scalar(9, types.int32), n))
        return _add_int_lanes(context, builder, t[0], args[0], builder.mul(pairs, scales))

    return types.none(ilanes, w, ql, ql_shift, qh, qh_shift, x, xo, sc_lo, sc_hi), codegen
