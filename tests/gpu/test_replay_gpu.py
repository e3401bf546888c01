"""Trace replay on the GPU's CUDA-graph decoder: the experts computed are exactly the trace's.

Run on the device machine: `pytest -m gpu tests/gpu`.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from lazymoe.bench.routing import make_trace
from lazymoe.engine import Engine, EngineConfig, GenerationConfig
from lazymoe.models.random import make_random_checkpoint

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = [pytest.mark.gpu, requires_gpu]

SHAPE = {"hidden_size": 128, "moe_intermediate_size": 128, "num_experts": 16,
         "num_hidden_layers": 4, "num_attention_heads": 4, "head_dim": 32}  # fmt: skip
EXPERT_BYTES = 3 * 128 * 128 * 4  # F32


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("regime", ["independent", "real-text"])
def test_graph_decoder_replays_the_trace(tmp_path, regime, prefetch):
    path = make_random_checkpoint(tmp_path / "m", seed=5, **SHAPE)
    config = json.loads((path / "config.json").read_text())
    top_k, experts = config["num_experts_per_tok"], config.get("num_experts") or config["num_local_experts"]
    trace = make_trace(regime, 64, config["num_hidden_layers"], experts, top_k, seed=3)
    engine = Engine(EngineConfig(path, device="cuda", vram_budget=40 * EXPERT_BYTES, placement="fetch",
                                 prefetch=prefetch, decode="graphs", routing_trace=trace))
    assert engine.decode_path == "graphs"
    layers = engine.moe_layers
    engine.runtime.computed_experts = Counter()
    prompt, gen = list(range(40, 52)), GenerationConfig(max_new_tokens=10, stop_token_ids=())
    engine.generate(prompt, gen)
    fed = len(prompt) + gen.max_new_tokens - 1
    expected: Counter = Counter()
    for t in range(fed):
        for j, layer in enumerate(layers):
            expected.update({(layer, int(e)): 1 for e in trace.experts[t, j]})
    assert engine.runtime.computed_experts == expected
    stats = engine.stats()
    assert 0 < stats.hit_rate < 1  # 40 of the 64 experts fit: some hits, some misses
