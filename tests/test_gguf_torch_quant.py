"""The GGUF writer's torch Q8_0/Q4_0 quantizers give gguf-py's bytes exactly (ties, zero blocks,
negative maxima), on the CPU here and on a GPU in the GPU suite; its K-quants (which it computes on
a GPU when there is one) give the same bytes there as on the CPU."""

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from lazymoe.models.archs import TensorSlot
from lazymoe.models.gguf_write import K_FORMATS, LEGACY_TORCH, _encode


def awkward_values(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((16, 256)).astype(np.float32) * 0.02
    x[0, :32] = 0.0  # a zero block: scale 0, every quant the zero point
    x[1, :32] = 0.5  # all equal
    x[2, 5] = -4 * np.abs(x[2]).max()  # a negative maximum sets Q4_0's sign
    x[3, :32] = np.arange(32) / 127.0  # exact halves after Q8_0's scaling: roundf, not banker's
    x[4, :32] = np.arange(-16, 16) / 8.0  # exact .5 after Q4_0's scaling
    return torch.from_numpy(x).to(torch.bfloat16).float().numpy()  # the writer's bf16 draws


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0])
@pytest.mark.parametrize("seed", [0, 1])
def test_same_bytes_as_gguf_py(qtype, seed):
    x = awkward_values(seed)
    ref = gguf.quants.quantize(x, qtype)
    got = LEGACY_TORCH[qtype](torch.from_numpy(x)).numpy().reshape(ref.shape)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, ref)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0])
def test_same_bytes_on_the_gpu(qtype):
    x = np.concatenate(
        [
            awkward_values(2),
            np.random.default_rng(3).standard_normal((4096, 256)).astype(np.float32) * 0.02,
        ]
    )
    ref = gguf.quants.quantize(x, qtype)
    got = LEGACY_TORCH[qtype](torch.from_numpy(x).cuda()).cpu().numpy().reshape(ref.shape)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("qtype", sorted(K_FORMATS))
def test_k_quants_same_bytes_on_the_gpu_as_on_the_cpu(qtype):
    x = np.concatenate(
        [
            awkward_values(4),
            np.random.default_rng(5).standard_normal((2048, 256)).astype(np.float32) * 0.02,
        ]
    )
    slot = TensorSlot("blk.0.ffn_down_exps.weight", x.shape, "experts", ())
    on_cpu = _encode(x, slot, qtype)  # a numpy array: the CPU path
    on_gpu = _encode(torch.from_numpy(x), slot, qtype)  # a tensor: moved to the GPU
    assert on_gpu.shape == on_cpu.shape
    np.testing.assert_array_equal(on_gpu, on_cpu)
