"""The quantized Triton kernels compiled on a GPU (float32 and BF16), and an engine whose VRAM slots
hold a GGUF file's bytes: same tokens as the CPU quantized path.

Run on the device machine: `pytest -m gpu tests/gpu/test_triton_quant_gpu.py`.
tests/test_triton_quant.py checks the same kernels under Triton's interpreter on a CPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from gguf_models import PROMPT, twin

from lazymoe import quant
from lazymoe.engine import Engine, EngineConfig, GenerationConfig
from lazymoe.engine.compute import triton_quant
from lazymoe.engine.compute.triton_quant import SlotLayout, fused_decode_quantized
from lazymoe.engine.loading import load_tokenizer
from lazymoe.engine.storage.gguf_file import GGUFExpertStore, QuantizedExpert
from lazymoe.engine.storage.qpool import QuantizedPool

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = [pytest.mark.gpu, requires_gpu]

K = 8
LAYOUTS = [
    SlotLayout(("q8_0",) * 3, 96, 256),
    SlotLayout(("q4_0",) * 3, 96, 256),
    SlotLayout(("q4_1",) * 3, 64, 256),
    SlotLayout(("q4_k",) * 3, 256, 768),
    SlotLayout(("q5_k",) * 3, 256, 256),
    SlotLayout(("q4_k", "q4_k", "q6_k"), 768, 2048),  # Qwen3-30B-A3B's shapes, as Q4_K_M
    SlotLayout(("q4_0",) * 3, 768, 2048),  # ... as Q4_0 and Q8_0 (the benchmark's tiles)
    SlotLayout(("q8_0",) * 3, 768, 2048),
    SlotLayout(("f32", "f16", "bf16"), 64, 256),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: "-".join(lay.formats))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_kernels_match_the_dequantized_formula(layout, dtype):
    """Two tokens, eight pairs each with repeated slots; `out` added to, in `dtype`.

    float32: as on the CPU (1e-5 of the largest output). BF16: each expert's output, each
    weighted term and each running sum are rounded to BF16 (8 bits of mantissa, 0.4 % a
    rounding), as index_add_ in BF16 does: 2 % of the largest output covers ~9 roundings."""
    g = torch.Generator().manual_seed(0)
    pool = QuantizedPool(5, layout.nbytes + 4, device="cuda")
    dense = []
    for slot in range(5):
        parts = [quant.quantize(torch.randn(s, generator=g) / s[1] ** 0.5, f)
                 for f, s in zip(layout.formats, layout.shapes, strict=True)]  # fmt: skip
        pool.fill(slot, QuantizedExpert(*parts))
        dense.append([p.dequantize().double() for p in parts])
    pairs = [
        (t, s, (3 * a + t) % K) for t in range(2) for a, s in enumerate([4, 0, 2, 2, 1, 3, 0, 4])
    ]
    x = torch.randn(2, layout.hidden, generator=g)
    weights = torch.softmax(torch.randn(2, K, generator=g), dim=-1)
    start = torch.randn(2, layout.hidden, generator=g)
    want = start.double().clone()
    for t, s, k in pairs:
        gw, uw, dw = dense[s]
        xt = x[t : t + 1].double()
        want[t] += (
            weights[t, k].double() * F.linear(F.silu(F.linear(xt, gw)) * F.linear(xt, uw), dw)[0]
        )
    tok_t, slot_t, pos_t = (torch.tensor(c, device="cuda") for c in zip(*pairs, strict=True))
    starts_t = torch.tensor([0, 8, 16], device="cuda")
    got = start.to("cuda", dtype)
    fused_decode_quantized(got, x.to("cuda", dtype), weights.to("cuda", dtype), slot_t, pos_t,
                           pool.data, layout, tok_t, starts_t)  # fmt: skip
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    scale = want.abs().max().item()
    torch.testing.assert_close(got.double().cpu(), want, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
def test_an_engine_with_quantized_vram_slots_gives_the_cpu_paths_tokens(tmp_path, name):
    path = twin(name, tmp_path)
    prompt = load_tokenizer(path).encode(PROMPT)
    gen = GenerationConfig(max_new_tokens=12, stop_token_ids=())
    budget = 3 * GGUFExpertStore.open(path).max_expert_qbytes  # misses refill slots as it runs
    want = Engine(EngineConfig(model_path=path, device="cpu", vram_budget=budget)).generate(
        prompt, gen
    )
    engine = Engine(  # the eager path (tests/gpu/test_segments_quant_gpu.py: CUDA graphs)
        EngineConfig(
            model_path=path, device="cuda", dtype="float32", vram_budget=budget, decode="model"
        )
    )
    pool = engine.tiers.device.pool
    assert isinstance(pool, QuantizedPool) and pool.device.type == "cuda"
    assert engine.runtime.kernel == "fused" and engine.decode_path == "model"
    assert engine.generate(prompt, gen) == want
    assert engine.tiers.as_dict()["links"]["disk->vram"]["transfers"] > 0
    bf16 = Engine(
        EngineConfig(model_path=path, device="cuda", dtype="bfloat16", vram_budget=budget)
    )
    assert len(bf16.generate(prompt, gen)) == len(want)  # runs; BF16 tokens may differ


def test_a_ram_budget_with_quantized_vram_slots_is_refused_with_the_reason(tmp_path):
    path = twin("q8_0", tmp_path)
    budget = 3 * GGUFExpertStore.open(path).max_expert_qbytes
    with pytest.raises(ValueError, match="leave ram_budget out"):
        Engine(EngineConfig(model_path=path, device="cuda", vram_budget=budget, ram_budget="1GiB"))


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
@pytest.mark.parametrize("slots", [3, None])  # 3: misses in every layer; None: all resident
def test_quantized_experts_batched_on_the_gpu_give_each_requests_tokens(
    tmp_path, name, slots, monkeypatch
):
    """Continuous batching on the GPU: several requests' tokens in one step through the kernels
    (any number of tokens per launch), each request's tokens what it gets alone (float32)."""
    path = twin(name, tmp_path)
    tokenizer = load_tokenizer(path)
    prompts = [
        tokenizer.encode(t) for t in (PROMPT, "import numpy as np\n", "SELECT name FROM users")
    ]
    gen = GenerationConfig(max_new_tokens=10, stop_token_ids=())
    budget = None if slots is None else slots * GGUFExpertStore.open(path).max_expert_qbytes
    engine = Engine(
        EngineConfig(model_path=path, device="cuda", dtype="float32", vram_budget=budget)
    )
    assert engine.runtime.kernel == "fused"
    want = [engine.generate(p, gen) for p in prompts]
    calls = []
    kernel = triton_quant.fused_decode_quantized
    monkeypatch.setattr(triton_quant, "fused_decode_quantized",
                        lambda *a, **kw: calls.append(a[0].shape[0]) or kernel(*a, **kw))  # fmt: skip
    with engine.batch() as batch:
        handles = [batch.add(p, gen)[0] for p in prompts]
        while len(batch):
            batch.step()
        got = [batch.tokens(h) for h in handles]
    assert got == want
    assert len(prompts) in calls  # a batched decode step went through the kernels
