"""The GGUF benchmark's premises on the GPU: trace replay through quantized VRAM slots computes
exactly the trace's experts, and the harness runs lazymoe and llama.cpp on the same GGUF file.

Run on the device machine: `pytest -m gpu tests/gpu/test_bench_gguf_gpu.py`.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from lazymoe.bench import harness
from lazymoe.bench.entry import ModelEntry
from lazymoe.bench.routing import make_trace
from lazymoe.bench.shapes import TINY
from lazymoe.bench.writer import write_model
from lazymoe.engine import Engine, GenerationConfig

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = [pytest.mark.gpu, requires_gpu]
# rows of 256 weights: the K-quants' blocks (TINY's 64 would fall back to Q8_0)
SHAPE = TINY.scaled(name="tiny-k", hidden_size=256, moe_intermediate_size=256, head_dim=64)


@pytest.fixture(scope="module", params=["q4_0", "q4_k_m"])
def gguf_file(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"gguf-{request.param}")
    return write_model(SHAPE, out, formats=("gguf",), gguf_type=request.param, device="cpu")["gguf"]


@pytest.mark.parametrize("placement", ["fetch", "cpu"])
def test_replay_through_quantized_vram_slots_computes_the_traces_experts(gguf_file, placement):
    slot = ModelEntry.from_gguf(gguf_file).nbytes()["expert_bytes"]
    trace = make_trace("real-text", 64, SHAPE.num_layers, SHAPE.num_experts, SHAPE.top_k, seed=3)
    engine = Engine.from_pretrained(gguf_file, device="cuda", dtype="bfloat16", vram_budget=6 * slot,
                                    placement=placement, prefetch=False, routing_trace=trace)
    assert engine.quantized_experts and engine.expert_nbytes == slot
    engine.runtime.computed_experts = Counter()
    prompt, gen = list(range(40, 52)), GenerationConfig(max_new_tokens=8, stop_token_ids=(), stop_strings=())
    engine.generate(prompt, gen)
    expected: Counter = Counter()
    for t in range(len(prompt) + gen.max_new_tokens - 1):
        for j, layer in enumerate(engine.moe_layers):
            expected.update({(layer, int(e)): 1 for e in trace.experts[t, j]})
    assert engine.runtime.computed_experts == expected, engine.decode_path
    stats = engine.stats()
    if placement == "fetch":
        assert 0 < stats.hit_rate < 1
    else:  # pure --cpu-moe: misses are computed on the CPU, VRAM is never filled
        assert stats.hits == 0 and stats.experts_on_cpu > 0


def test_the_harness_runs_both_engines_on_one_gguf_file_on_the_gpu(gguf_file):
    entry = ModelEntry.from_gguf(gguf_file)
    slot = entry.nbytes()["expert_bytes"]
    plan = harness.BenchPlan(models=[entry], engines=("lazymoe", "llamacpp-cpu-moe", "llamacpp-gpu"),
                             gpu=True, placements=("fetch",), vram_budgets_gb=(6.5 * slot / harness.GB,),
                             routings=("real-text", "independent"), prompt_tokens=12, new_tokens=8,
                             repeats=1, warmup=1, timeout_s=300)
    doc = harness.run_plan(plan, command="pytest", progress=False)
    rows = doc["results"]
    assert all(r["ok"] for r in rows), [r.get("error") for r in rows]
    lazymoe = [r for r in rows if r["engine"] == "lazymoe"]
    assert all(r["experts_quantized"] and r["peak_vram_bytes"] for r in lazymoe)
    hit = {r["routing"]: r["hit_rate"] for r in lazymoe if r["vram_budget_gb"]}
    assert hit["real-text"] > hit["independent"], hit
    assert {r["weights"]["file"] for r in rows} == {entry.gguf_path.rsplit("/", 1)[-1]}
    if harness.llama_cpp_available():
        assert {r["label"] for r in rows} >= {"llama.cpp --cpu-moe", "llama.cpp all on GPU"}
