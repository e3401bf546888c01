"""Formats by name: round trips, error bounds, sizes, odd shapes, and bytes that do not fit."""

from __future__ import annotations

import pytest
import torch

from lazymoe import quant
from lazymoe.quant.formats import get_format, rows_cols

ALL = ["f32", "f16", "bf16", "int8_row", "int8_g32", "int8_g64", "int4_g32", "q8_0", "q4_0", "q4_1"]
F16_EPS = 2.0**-11  # relative rounding of a float16 scale


def weights(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g) * 0.05
    w.view(-1)[min(7, w.numel() - 1)] = 1.0  # one outlier, as real checkpoints have
    return w


def per_group(w: torch.Tensor, group: int) -> torch.Tensor:
    return w.reshape(-1, group)


@pytest.mark.parametrize("name", ALL)
def test_to_bytes_from_bytes_round_trip_is_exact(name):
    w = weights(6, 64)
    qt = quant.quantize(w, name)
    again = quant.QuantizedTensor.from_bytes(name, qt.shape, qt.to_bytes())
    assert again.to_bytes() == qt.to_bytes()
    assert torch.equal(again.dequantize(), qt.dequantize())
    assert len(qt.to_bytes()) == qt.nbytes == quant.get_format(name).nbytes(qt.shape)


@pytest.mark.parametrize("name", ALL)
def test_quantizing_a_dequantized_tensor_changes_nothing(name):
    """The grid is stable: the dequantized values are exactly representable in the format."""
    once = quant.quantize(weights(4, 64), name).dequantize()
    twice = quant.quantize(once, name).dequantize()
    torch.testing.assert_close(twice, once, rtol=2e-3 if name.startswith("q") else 1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("name", "group", "levels"),
    [("int8_row", 64, 127), ("int8_g32", 32, 127), ("int8_g64", 64, 127), ("int4_g32", 32, 7)],
)
def test_symmetric_absmax_error_is_at_most_half_a_step(name, group, levels):
    w = weights(8, 64)
    err = (quant.quantize(w, name).dequantize() - w).abs()
    step = per_group(w, group).abs().amax(dim=-1, keepdim=True) / levels
    assert (per_group(err, group) <= step / 2 * (1 + 1e-5) + 1e-9).all()


def test_q8_0_error_is_half_a_step_plus_the_float16_scale():
    w = weights(8, 64)
    err = per_group((quant.quantize(w, "q8_0").dequantize() - w).abs(), 32)
    d = per_group(w, 32).abs().amax(dim=-1, keepdim=True) / 127
    assert (err <= d * (0.5 + 127 * F16_EPS) + 1e-9).all()


def test_q4_0_error_is_at_most_one_step_and_half_a_step_off_the_clipped_edge():
    w = weights(8, 64)
    err = per_group((quant.quantize(w, "q4_0").dequantize() - w).abs(), 32)
    d = per_group(w, 32).abs().amax(dim=-1, keepdim=True) / 8
    assert (err <= d * (1 + 8 * F16_EPS) + 1e-9).all()
    # Only a weight near the opposite extreme of the block's max gets clipped to a full step.
    assert (err <= d * (0.5 + 8 * F16_EPS) + 1e-9).float().mean() > 0.95


def test_q4_1_error_is_half_a_step_of_the_block_range():
    w = weights(8, 64) + 0.3  # an offset: the asymmetric format's minimum absorbs it
    blocks = per_group(w, 32)
    err = per_group((quant.quantize(w, "q4_1").dequantize() - w).abs(), 32)
    lo, hi = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
    d = (hi - lo) / 15
    assert (err <= d * (0.5 + 15 * F16_EPS) + lo.abs() * F16_EPS + 1e-7).all()


def test_more_bits_less_error_and_groups_beat_rows():
    w = weights(16, 256)
    err = {r.format: r.rel_error for r in quant.compare_formats(w, ["int8_row", "int8_g32", "q8_0", "q4_0", "int4_g32", "f16"])}
    assert err["f16"] < err["int8_g32"] < err["int8_row"]  # a group keeps the outlier's damage local
    assert err["q8_0"] < err["q4_0"]
    assert err["q4_0"] < err["int4_g32"]  # q4_0's signed-max trick uses 16 levels, int4 uses 15


@pytest.mark.parametrize(
    ("name", "cols", "bits"),
    [("f32", 64, 32), ("bf16", 64, 16), ("int8_row", 64, 8.5), ("int8_g32", 64, 9), ("int4_g32", 64, 5),
     ("q8_0", 64, 8.5), ("q4_0", 64, 4.5), ("q4_1", 64, 5), ("int4_g128", 128, 4.25)],
)
def test_bits_per_weight_counts_the_scales(name, cols, bits):
    assert quant.bits_per_weight(name, cols) == bits
    assert quant.quantize(weights(3, cols), name).bits_per_weight == bits


@pytest.mark.parametrize("shape", [(64,), (1, 32), (3, 32), (2, 3, 64), (5, 7, 2, 32)])
@pytest.mark.parametrize("name", ["int8_g32", "int4_g32", "q8_0", "q4_0", "q4_1"])
def test_any_number_of_rows_and_any_rank(shape, name):
    w = weights(*shape)
    qt = quant.quantize(w, name)
    rows, cols = rows_cols(shape)
    assert qt.shape == shape and qt.dequantize().shape == shape
    assert tuple(qt.data.shape) == (rows, quant.get_format(name).row_bytes(cols))
    # Each row is quantized on its own: row 0 alone gives row 0's bytes.
    first = quant.quantize(w.reshape(rows, cols)[:1], name)
    assert first.to_bytes() == qt.to_bytes()[: qt.data.shape[1]]


@pytest.mark.parametrize("name", ["int8_g32", "int4_g32", "q8_0", "q4_0", "q4_1"])
def test_rows_not_a_multiple_of_the_group_are_an_error_that_names_the_fix(name):
    with pytest.raises(quant.QuantError, match=r"not a multiple of the group size.*pad_cols"):
        quant.quantize(weights(3, 33), name)


def test_pad_cols_makes_odd_rows_quantizable_and_keeps_the_matmul():
    w, x = weights(5, 40), weights(2, 40, seed=1)
    qt = quant.quantize(quant.pad_cols(w, 32), "q8_0")
    assert qt.shape == (5, 64)
    y = quant.qmatmul(quant.pad_cols(x, 32), qt)
    torch.testing.assert_close(y, x @ w.T, rtol=0, atol=0.02)


@pytest.mark.parametrize("cols", [1, 33, 77])
def test_per_row_int8_takes_any_row_length(cols):
    w = weights(3, cols)
    torch.testing.assert_close(quant.quantize(w, "int8_row").dequantize(), w, rtol=0, atol=1.0 / 127)


def test_all_zero_weights_quantize_to_zeros_not_nan():
    for name in ALL:
        assert torch.equal(quant.quantize(torch.zeros(2, 64), name).dequantize(), torch.zeros(2, 64))


def test_nibbles_pack_in_gguf_order_and_unpack_back():
    q = torch.arange(32, dtype=torch.uint8).remainder(16).reshape(1, 32)
    packed = quant.pack_nibbles(q)
    assert packed.shape == (1, 16)
    assert packed[0, 0] == (q[0, 0] | (q[0, 16] << 4))  # element j low, element j + 16 high
    assert torch.equal(quant.unpack_nibbles(packed), q)


@pytest.mark.parametrize("bad", ["int3_g32", "q3_k", "int8", ""])
def test_unknown_format_names_list_the_known_ones(bad):
    with pytest.raises(quant.QuantError, match="q4_0"):
        quant.get_format(bad)


@pytest.mark.parametrize("bad", ["int8_g7", "int4_g0"])
def test_group_sizes_must_be_even(bad):
    with pytest.raises(quant.QuantError, match="even number"):
        quant.get_format(bad)


def test_from_bytes_refuses_a_buffer_of_the_wrong_size():
    qt = quant.quantize(weights(4, 64), "q4_0")
    raw = qt.to_bytes()
    with pytest.raises(quant.QuantError, match=r"needs \d+ bytes, the buffer has"):
        quant.QuantizedTensor.from_bytes("q4_0", (4, 64), raw[:-1])
    with pytest.raises(quant.QuantError, match="q8_0"):  # the wrong format for these bytes
        quant.QuantizedTensor.from_bytes("q8_0", (4, 64), raw)
    with pytest.raises(quant.QuantError, match="shape"):  # the wrong shape
        quant.QuantizedTensor.from_bytes("q4_0", (4, 96), raw)
    with pytest.raises(quant.QuantError, match="int8_row"):  # per-row scales: same count, other rows
        quant.QuantizedTensor.from_bytes("int8_row", (2, 64), quant.quantize(weights(1, 128), "int8_row").to_bytes())


def test_from_bytes_accepts_read_only_memory_without_writing_to_it():
    qt = quant.quantize(weights(2, 32), "q8_0")
    view = memoryview(qt.to_bytes())  # bytes are read-only, like a memory-mapped file
    assert torch.equal(quant.QuantizedTensor.from_bytes("q8_0", (2, 32), view).dequantize(), qt.dequantize())


def test_quantize_refuses_integer_tensors():
    with pytest.raises(quant.QuantError, match="floating-point"):
        quant.quantize(torch.ones(2, 32, dtype=torch.int32), "q8_0")


def test_simulated_float_formats_sit_where_their_bits_say():
    from lazymoe.quant import floats

    w = weights(16, 256)
    err = {
        "fp8": quant.relative_error(w, floats.fp8_roundtrip(w, block=128)),
        "mxfp4": quant.relative_error(w, floats.mxfp4_roundtrip(w)),
        "q8_0": quant.compare_formats(w, ["q8_0"])[0].rel_error,
        "q4_0": quant.compare_formats(w, ["q4_0"])[0].rel_error,
    }
    assert err["q8_0"] < err["fp8"] < err["mxfp4"]  # 3 mantissa bits lose to 8-bit integers
    assert 0.5 * err["q4_0"] < err["mxfp4"] < 2 * err["q4_0"]  # two 4-bit formats, similar error
    # Every MXFP4 value is an E2M1 value times its block's power of two.
    shared = torch.exp2(torch.floor(torch.log2(w.reshape(-1, 32).abs().amax(dim=-1, keepdim=True))) - 2)
    codes = floats.mxfp4_roundtrip(w).reshape(-1, 32) / shared
    assert torch.isin(codes.abs(), floats.E2M1_VALUES).all()


def test_the_catalog_and_the_quantizer_agree_on_bits_per_weight():
    from lazymoe import catalog

    formats = catalog.all_formats()
    for name in ("q8_0", "q4_0"):
        assert formats[name.upper()].bits_per_weight == quant.bits_per_weight(name)


@pytest.mark.parametrize("name", ["f32", "f16", "bf16"])
def test_plain_rows_decode_from_an_unaligned_slot(name):
    """A slot of raw bytes may start at any byte of a pool: plain formats decode from there too."""
    from lazymoe.quant import codecs

    fmt = get_format(name)
    w = torch.randn(3, 8).to(fmt.value_dtype)
    raw = w.view(torch.uint8).reshape(3, -1)
    pool = torch.zeros(raw.numel() + 1, dtype=torch.uint8)
    pool[1:] = raw.reshape(-1)
    got = codecs.decode(pool[1:].view(3, -1), fmt, 8)
    assert torch.equal(got, w.to(torch.float32))
