"""q8_0, q4_0 and q4_1 are GGUF's blocks byte for byte: llama.cpp reads what we write."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from lazymoe import quant

GGUF_TYPES = {
    "q8_0": GGMLQuantizationType.Q8_0,
    "q4_0": GGMLQuantizationType.Q4_0,
    "q4_1": GGMLQuantizationType.Q4_1,
}


def awkward_weights(rows: int, cols: int, seed: int) -> np.ndarray:
    """Gaussian weights plus the cases rounding rules disagree on: zeros, outliers, exact halves."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero block: scale 0, no NaN
    w[1, 3] = 1.5  # an outlier that sets its block's scale
    w[2, :32] = np.arange(-16, 16, dtype=np.float32) + 0.5  # ties at x.5 everywhere
    w[3, :32] = 127.0 * np.linspace(-1, 1, 32, dtype=np.float32)
    w[4, :32] = -np.abs(w[4, :32])  # all negative: q4_1's minimum, q4_0's signed max
    return w


@pytest.mark.parametrize("name", list(GGUF_TYPES))
@pytest.mark.parametrize("seed", [0, 1])
def test_bytes_equal_gguf_reference_quantizer(name, seed):
    w = awkward_weights(9, 96, seed)
    expected = quants.quantize(w, GGUF_TYPES[name])  # (rows, row_bytes) uint8
    qt = quant.quantize(torch.from_numpy(w), name)
    assert qt.data.shape == expected.shape
    assert qt.to_bytes() == expected.tobytes()


@pytest.mark.parametrize("name", list(GGUF_TYPES))
def test_dequantize_equals_gguf_dequantize(name):
    w = awkward_weights(6, 64, seed=3)
    raw = quants.quantize(w, GGUF_TYPES[name])
    expected = quants.dequantize(raw, GGUF_TYPES[name])
    ours = quant.QuantizedTensor.from_bytes(name, w.shape, raw.tobytes()).dequantize()
    np.testing.assert_array_equal(ours.numpy(), expected)


@pytest.mark.parametrize("name", list(GGUF_TYPES))
def test_half_precision_inputs_quantize_like_their_float32_values(name):
    """llama.cpp converts f16/bf16 weights to f32 before quantizing; so do we."""
    w = torch.from_numpy(awkward_weights(5, 64, seed=4)).to(torch.bfloat16)
    expected = quants.quantize(w.to(torch.float32).numpy(), GGUF_TYPES[name])
    assert quant.quantize(w, name).to_bytes() == expected.tobytes()


@pytest.mark.parametrize("name", list(GGUF_TYPES))
def test_bits_per_weight_matches_gguf_block_sizes(name):
    block_weights, block_bytes = quants.GGML_QUANT_SIZES[GGUF_TYPES[name]]
    assert quant.bits_per_weight(name) == 8 * block_bytes / block_weights
