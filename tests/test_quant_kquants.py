"""Q4_K, Q5_K and Q6_K: our decode is bit-exact against gguf-py's, on any valid block."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from lazymoe import quant
from lazymoe.quant import kquants

K_TYPES = {
    "q4_k": GGMLQuantizationType.Q4_K,
    "q5_k": GGMLQuantizationType.Q5_K,
    "q6_k": GGMLQuantizationType.Q6_K,
}


def random_blocks(kind: str, n: int, seed: int) -> np.ndarray:
    """n blocks of random bytes whose float16 scales are finite (random bits could be NaN/inf)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n, kquants.BLOCK_BYTES[kind]), dtype=np.uint8)
    scales = (rng.standard_normal((n, 2)) * 0.01).astype(np.float16).view(np.uint8)
    if kind == "q6_k":
        raw[:, 208:210] = scales[:, :2]  # d is the last field
    else:
        raw[:, 0:4] = scales  # d, dmin come first
    raw[0, :] = 0  # an all-zero block
    return raw


@pytest.mark.parametrize("kind", list(K_TYPES))
@pytest.mark.parametrize("seed", [0, 1])
def test_decode_random_blocks_equals_gguf(kind, seed):
    raw = random_blocks(kind, 40, seed)
    expected = quants.dequantize(raw, K_TYPES[kind])  # (40, 256) float32
    ours = kquants.decode(torch.from_numpy(raw), kind)
    np.testing.assert_array_equal(ours.numpy(), expected.reshape(ours.shape))


@pytest.mark.parametrize("kind", list(K_TYPES))
def test_quantized_tensor_roundtrip_equals_gguf(kind):
    """A (rows, 2 super-blocks) matrix through QuantizedTensor: bytes gguf reads the same way,
    and an error small enough to be useful."""
    w = torch.randn(6, 512, generator=torch.Generator().manual_seed(7)) * 0.02
    w[0, :256] = 0.0
    qt = quant.quantize(w, kind)
    assert qt.data.shape == (6, 2 * kquants.BLOCK_BYTES[kind])
    expected = quants.dequantize(qt.data.numpy(), K_TYPES[kind])
    np.testing.assert_array_equal(qt.dequantize().numpy(), expected)
    err = quant.relative_error(w, qt.dequantize())
    assert err < {"q4_k": 0.12, "q5_k": 0.06, "q6_k": 0.03}[kind]
    assert (qt.dequantize()[0, :256] == 0).all()
    again = quant.QuantizedTensor.from_bytes(kind, (6, 512), qt.to_bytes())
    assert torch.equal(again.dequantize(), qt.dequantize())


@pytest.mark.parametrize(("kind", "bits"), [("q4_k", 4.5), ("q5_k", 5.5), ("q6_k", 6.5625)])
def test_sizes_match_gguf(kind, bits):
    fmt = quant.get_format(kind)
    assert fmt.bits_per_weight() == bits
    block, type_size = quants.GGML_QUANT_SIZES[K_TYPES[kind]]
    assert (fmt.group_size, fmt.block_bytes(512)) == (block, type_size)


def test_row_not_a_multiple_of_256_is_a_clear_error():
    with pytest.raises(quant.QuantError, match="multiple of the group size 256"):
        quant.quantize(torch.randn(2, 128), "q4_k")
