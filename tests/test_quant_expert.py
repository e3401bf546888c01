"""An expert computed from its quantized bytes, slab by slab, equals the dequantize-everything path.
(The fused kernels that serve decode are tested in tests/test_quant_kernels.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lazymoe import quant
from lazymoe.quant.expert import expert_forward, expert_forward_reference, qlinear

FORMATS = ["f32", "bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k"]


def random_expert(fmt: str, hidden: int = 256, inter: int = 512, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shapes = ((inter, hidden), (inter, hidden), (hidden, inter))
    return [quant.quantize(torch.randn(s, generator=gen) * 0.05, fmt) for s in shapes]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("tokens", [1, 3])
def test_expert_forward_matches_reference(fmt, tokens):
    gate, up, down = random_expert(fmt)
    x = torch.randn(tokens, 256, generator=torch.Generator().manual_seed(1))
    want = expert_forward_reference(x, gate, up, down, F.silu)
    # 3000 weights per slab: several slabs per matrix and a short last one; kernels=False: the
    # slab path, which serves prefill and the formats without a kernel
    got = expert_forward(x, gate, up, down, F.silu, slab_weights=3000, kernels=False)
    assert got.dtype == torch.float32 and got.shape == (tokens, 256)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # and the reference really uses the quantized weights, not something else
    g, u, d = (t.dequantize() for t in (gate, up, down))
    torch.testing.assert_close(want, F.linear(F.silu(x @ g.T) * (x @ u.T), d))


def test_qlinear_refuses_mismatched_shapes():
    gate, _, _ = random_expert("q8_0")
    with pytest.raises(quant.QuantError, match="features"):
        qlinear(torch.randn(1, 128), gate)


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_k"])
def test_decode_into_is_bit_exact(fmt):
    from lazymoe.quant.expert import decode_into

    qt = quant.quantize(torch.randn(6, 512) * 0.1, fmt)
    out = torch.full((4, 512), float("nan"))
    decode_into(qt.data[1:5], qt, out)
    assert torch.equal(out, qt.dequantize()[1:5])


def test_buffers_made_in_inference_mode_still_work_outside_it():
    """The engine generates under torch.inference_mode; the reusable slab buffers it leaves
    behind must not be inference tensors (in-place writes to those fail outside the mode)."""
    from lazymoe.quant import expert as module

    module._local.__dict__.clear()
    gate, up, down = random_expert("q4_0")
    x = torch.randn(1, 256)
    with torch.inference_mode():
        inside = expert_forward(x, gate, up, down)
    torch.testing.assert_close(expert_forward(x, gate, up, down), inside)
