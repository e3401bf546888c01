"""An expert computed from its quantized bytes, slab by slab, equals the dequantize-everything path.
(The fused kernels that serve decode are tested in tests/test_quant_kernels.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lazymoe import quant
from lazymoe.engine.storage.gguf_file import QuantizedExpert
from lazymoe.engine.storage.qpool import QuantizedPool
from lazymoe.quant import kernels_cpu, kernels_int8
from lazymoe.quant.expert import (
    KERNEL_MAX_TOKENS,
    expert_forward,
    expert_forward_reference,
    experts_forward,
    qlinear,
)

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


def pooled(experts: list[list[quant.QuantizedTensor]]) -> tuple[torch.Tensor, list]:
    """The experts in the slots of an expert pool, as the engine holds them (one row of bytes per
    slot, gate | up | down, with room to spare past each): (pool data, each expert's views)."""
    pool = QuantizedPool(len(experts), max(sum(t.nbytes for t in e) for e in experts) + 64)
    for slot, e in enumerate(experts):
        pool.fill(slot, QuantizedExpert(*e))
    return pool.data, [[q.gate, q.up, q.down] for q in map(pool.expert, range(len(experts)))]


@pytest.mark.parametrize(("fmt", "activations"), [
    *((fmt, "float") for fmt in ["q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k"]),
    *((fmt, "int8") for fmt in kernels_int8.KINDS),
])  # fmt: skip
@pytest.mark.parametrize("tokens", [1, 2])
@pytest.mark.parametrize("threads", [1, 2])
def test_experts_together_give_each_experts_own_numbers(fmt, tokens, activations, threads):
    data, experts = pooled([random_expert(fmt, seed=s) for s in range(5)])
    x = torch.randn(tokens, 256, generator=torch.Generator().manual_seed(2))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # one expert alone takes another code path on one thread
    try:
        got = experts_forward(x, [tuple(e) for e in experts], data, F.silu, activations)
        assert got.shape == (5, tokens, 256) and got.dtype == torch.float32
        for i, e in enumerate(experts):  # the same bits as one at a time: the engine's tokens agree
            assert torch.equal(got[i], expert_forward(x, *e, F.silu, activations=activations)), i
    finally:
        torch.set_num_threads(before)


def test_experts_together_with_gate_and_down_in_different_formats():
    # a Q4_K_M file: gate and up in one format, down in another (and gate != up is allowed too)
    parts = [random_expert("q4_k", seed=s) for s in range(3)]
    mixed = [[g, quant.quantize(u.dequantize(), "q5_k"), quant.quantize(d.dequantize(), "q6_k")]
             for g, u, d in parts]
    data, experts = pooled(mixed)
    x = torch.randn(1, 256, generator=torch.Generator().manual_seed(3))
    got = experts_forward(x, [tuple(e) for e in experts], data, F.silu)
    for i, e in enumerate(experts):
        assert torch.equal(got[i], expert_forward(x, *e, F.silu))


def test_experts_together_decline_what_they_cannot_do():
    data, experts = pooled([random_expert("q8_0", seed=s) for s in range(2)])
    x = torch.randn(1, 256)
    elsewhere = [random_expert("q8_0", seed=9), experts[1]]  # weights outside `data`
    assert experts_forward(x, [tuple(e) for e in elsewhere], data, F.silu) is None
    mixed = [experts[0], pooled([random_expert("q4_0")])[1][0]]
    assert experts_forward(x, [tuple(e) for e in mixed], data, F.silu) is None  # two formats
    assert experts_forward(torch.randn(KERNEL_MAX_TOKENS + 1, 256), [tuple(e) for e in experts],
                           data, F.silu) is None  # prefill: the slab path's business
    q5_data, q5_experts = pooled([random_expert("q5_k", seed=s) for s in range(2)])
    assert experts_forward(x, [tuple(e) for e in q5_experts], q5_data, F.silu) is not None
    assert experts_forward(x, [tuple(e) for e in q5_experts], q5_data, F.silu, "int8") is None  # no int8 q5_k
    with pytest.raises(quant.QuantError, match="activations must be 'float' or 'int8'"):
        experts_forward(x, [tuple(e) for e in experts], data, F.silu, "int4")
    with pytest.raises(quant.QuantError, match="not a contiguous part of `base`"):
        kernels_cpu.qmatvec_many(x[None], [elsewhere[0][0]], data)
    with pytest.raises(quant.QuantError, match=r"x must be \(2 or 1, tokens, 256\)"):
        kernels_cpu.qmatvec_many(torch.randn(3, 1, 256), [experts[0][0], experts[1][0]], data)
