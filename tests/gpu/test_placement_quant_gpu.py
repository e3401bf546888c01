"""placement "cpu" and "auto" with a GGUF file's experts on a GPU: a miss computed on the CPU runs
the quantized CPU kernels on the stored bytes, and the tokens equal all-fetch's.

Run on the device machine: `pytest -m gpu tests/gpu/test_placement_quant_gpu.py`.
tests/test_placement_quant.py checks the cost model and the same paths on a CPU.
"""

from __future__ import annotations

import pytest
import torch
from gguf_models import PROMPT, twin, wide_random_gguf

from lazymoe.engine import Engine, EngineConfig, GenerationConfig
from lazymoe.engine.storage.gguf_file import GGUFExpertStore

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = [pytest.mark.gpu, requires_gpu]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("placement-quant-gpu")
    return {"q4_0": twin("q4_0", folder), "q4_k_m": wide_random_gguf(folder)}


def run(path, placement: str) -> tuple[list[int], Engine]:
    budget = 2 * GGUFExpertStore.open(path).max_expert_qbytes  # two slots: mostly misses
    engine = Engine(EngineConfig(model_path=path, device="cuda", dtype="float32",
                                 vram_budget=budget, placement=placement))  # fmt: skip
    prompt = engine.tokenizer.encode(PROMPT)
    return engine.generate(prompt, GenerationConfig(max_new_tokens=12, stop_token_ids=())), engine


@pytest.mark.parametrize("name", ["q4_0", "q4_k_m"])
def test_cpu_and_auto_give_the_tokens_of_fetch(files, name):
    want, _ = run(files[name], "fetch")
    got, engine = run(files[name], "cpu")
    assert got == want
    assert engine.runtime.computed_on["cpu"] > 0
    assert engine.runtime.cpu_reads_stored  # the CPU kernels, not a dequantized copy
    got, engine = run(files[name], "auto")
    assert got == want
    rates = engine.runtime.cost_model.cpu_format_gbps
    formats = {f for layer in engine.moe_layers for f in GGUFExpertStore.open(files[name]).formats(layer)}
    assert set(rates) == formats and all(r > 0 for r in rates.values())
    print(engine.describe())  # the measured rates and each layer's choice, for the report
