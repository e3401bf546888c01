"""qmatmul (dequantize on the fly) computes what the reference (dequantize all, then multiply) does."""

from __future__ import annotations

import pytest
import torch
from conftest import requires_gpu

from lazymoe import quant
from lazymoe.quant import matmul

FORMATS = ["f16", "int8_row", "int8_g32", "int4_g64", "q8_0", "q4_0", "q4_1"]


def operands(tokens: int, out_features: int, in_features: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, in_features, generator=g)
    w = torch.randn(out_features, in_features, generator=g) * 0.05
    return x, w


@pytest.mark.parametrize("name", FORMATS)
def test_qmatmul_matches_the_reference(name):
    x, w = operands(5, 48, 128)
    qt = quant.quantize(w, name)
    torch.testing.assert_close(quant.qmatmul(x, qt), quant.qmatmul_reference(x, qt), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["int8_g32", "q4_0"])
def test_qmatmul_in_slabs_matches_the_reference(name, monkeypatch):
    monkeypatch.setattr(matmul, "SLAB_WEIGHTS", 128 * 7)  # 7 rows per slab: 48 rows -> 7 slabs
    x, w = operands(3, 48, 128)
    qt = quant.quantize(w, name)
    torch.testing.assert_close(quant.qmatmul(x, qt), quant.qmatmul_reference(x, qt), rtol=1e-5, atol=1e-5)


def test_qmatmul_keeps_leading_dimensions_and_dtype():
    x, w = operands(6, 32, 64)
    qt = quant.quantize(w, "q8_0")
    y = quant.qmatmul(x.reshape(2, 3, 64).to(torch.bfloat16), qt)
    assert y.shape == (2, 3, 32) and y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float().reshape(6, 32), quant.qmatmul_reference(x, qt), rtol=0.02, atol=0.05)


def test_quantized_matmul_is_close_to_the_float_matmul():
    x, w = operands(4, 64, 256)
    exact = x @ w.T
    for name, rel in [("q8_0", 0.01), ("q4_0", 0.15)]:
        y = quant.qmatmul(x, quant.quantize(w, name))
        assert quant.relative_error(exact, y) < rel, name


def test_qmatmul_says_what_does_not_fit():
    x, w = operands(2, 32, 64)
    with pytest.raises(quant.QuantError, match="64"):
        quant.qmatmul(x[:, :32], quant.quantize(w, "q8_0"))
    with pytest.raises(quant.QuantError, match="index the expert"):
        quant.qmatmul(x, quant.quantize(w.reshape(2, 16, 64), "q8_0"))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("name", FORMATS)
def test_gpu_quantize_and_qmatmul_match_the_cpu(name):
    x, w = operands(7, 96, 256)
    cpu = quant.quantize(w, name)
    gpu = quant.quantize(w.cuda(), name)
    assert gpu.to_bytes() == cpu.to_bytes()  # same bytes on either device
    y_gpu = quant.qmatmul(x.cuda(), gpu)
    torch.testing.assert_close(y_gpu.cpu(), quant.qmatmul_reference(x, cpu), rtol=1e-3, atol=1e-3)
    y_bf16 = quant.qmatmul(x.cuda().bfloat16(), gpu)
    torch.testing.assert_close(y_bf16.float().cpu(), quant.qmatmul_reference(x, cpu), rtol=0.03, atol=0.1)
