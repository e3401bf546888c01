"""The grouped kernels of a prompt's pass (triton_grouped) compiled on a GPU: TF32 tensor cores,
BF16 and float32 activations, against the dequantized formula and the per-pair decode kernels;
and a token's bits the same alone as among others (what keeps a prompt prefilled together with
others identical to it alone). tests/test_triton_grouped.py runs them under the interpreter.

Run on the device machine: `pytest -m gpu tests/gpu/test_triton_grouped_gpu.py`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lazymoe import quant
from lazymoe.engine.compute.triton_grouped import grouped_experts
from lazymoe.engine.compute.triton_quant import SlotLayout, fused_decode_quantized
from lazymoe.engine.storage.gguf_file import QuantizedExpert
from lazymoe.engine.storage.qpool import QuantizedPool

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = [pytest.mark.gpu, requires_gpu]

K, SLOTS = 8, 24
LAYOUTS = [
    SlotLayout(("q8_0",) * 3, 96, 256),
    SlotLayout(("q4_1",) * 3, 64, 256),
    SlotLayout(("q5_k",) * 3, 256, 256),
    SlotLayout(("q4_k", "q4_k", "q6_k"), 768, 2048),  # Qwen3-30B-A3B's shapes, as Q4_K_M
    SlotLayout(("q4_0",) * 3, 768, 2048),
]


def _case(layout, n_tokens, seed=0):
    g = torch.Generator().manual_seed(seed)
    pool = QuantizedPool(SLOTS, layout.nbytes, device="cuda")
    dense = []
    for slot in range(SLOTS):
        parts = [quant.quantize(torch.randn(s, generator=g) / s[1] ** 0.5, f)
                 for f, s in zip(layout.formats, layout.shapes, strict=True)]  # fmt: skip
        pool.fill(slot, QuantizedExpert(*parts))
        dense.append([p.dequantize().double() for p in parts])
    x = torch.randn(n_tokens, layout.hidden, generator=g)
    weights = torch.softmax(torch.randn(n_tokens, K, generator=g), dim=-1)
    slots = torch.stack(
        [torch.randperm(SLOTS, generator=g)[:K].sort().values for _ in range(n_tokens)]
    )
    pos = torch.stack([torch.randperm(K, generator=g) for _ in range(n_tokens)])
    return pool, dense, x, weights, slots.reshape(-1), pos.reshape(-1)


def _reference(dense, x, weights, slots, pos):
    want = torch.zeros(x.shape, dtype=torch.float64)
    for a, (s, p) in enumerate(zip(slots.tolist(), pos.tolist(), strict=True)):
        t = a // K
        gw, uw, dw = dense[s]
        xt = x[t : t + 1].double()
        want[t] += (
            weights[t, p].double() * F.linear(F.silu(F.linear(xt, gw)) * F.linear(xt, uw), dw)[0]
        )
    return want


def _grouped(pool, layout, x, weights, slots, pos, dtype):
    out = torch.zeros(x.shape, device="cuda", dtype=dtype)
    tok = torch.arange(len(slots), device="cuda") // K
    starts = torch.arange(0, len(slots) + 1, K, device="cuda")
    grouped_experts(out, x.to("cuda", dtype), weights.to("cuda", dtype), slots.cuda(), pos.cuda(),
                    pool.data, layout, tok, starts, SLOTS)  # fmt: skip
    return out


@pytest.mark.parametrize(
    "layout", LAYOUTS, ids=lambda lay: "-".join(lay.formats) + f"-{lay.hidden}"
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_grouped_kernels_match_the_formula(layout, dtype):
    """40 tokens over 24 slots (~13 tokens an expert: tiles full and partial). float32: exact
    products (1e-5 of the largest output, as the decode kernels); BF16: the weights and h are
    rounded to BF16 before the dots too, and each term and running sum after: 2 %, as the decode
    kernels' test. The decode kernels' sums from the same arguments agree as closely."""
    pool, dense, x, weights, slots, pos = _case(layout, 40)
    got = _grouped(pool, layout, x, weights, slots, pos, dtype)
    want = _reference(dense, x, weights, slots, pos)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    scale = want.abs().max().item()
    torch.testing.assert_close(got.double().cpu(), want, rtol=tol, atol=tol * scale)
    decoded = torch.zeros_like(got)
    n = len(x)
    fused_decode_quantized(decoded, x.to("cuda", dtype), weights.to("cuda", dtype), slots.cuda(),
                           pos.cuda(), pool.data, layout,
                           torch.arange(n * K, device="cuda") // K,
                           torch.arange(0, n * K + 1, K, device="cuda"))  # fmt: skip
    torch.testing.assert_close(got.double(), decoded.double(), rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("layout", LAYOUTS[3:], ids=lambda lay: "-".join(lay.formats))
def test_a_token_has_the_same_bits_alone_and_among_others(layout):
    pool, _, x, weights, slots, pos = _case(layout, 40, seed=1)
    together = _grouped(pool, layout, x, weights, slots, pos, torch.bfloat16)
    for t in (0, 17, 39):
        pairs = slice(t * K, t * K + K)
        alone = _grouped(pool, layout, x[t : t + 1], weights[t : t + 1], slots[pairs], pos[pairs],
                         torch.bfloat16)  # fmt: skip
        assert torch.equal(alone[0], together[t]), t
