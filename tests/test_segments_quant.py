"""The segmented decoder on quantized expert slots: a GGUF file's bytes in a QuantizedPool, computed
by triton_quant's kernels from the decoder's device index (what a CUDA graph replays).

On the CPU the kernels run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
float32; the reference is the CPU quantized path (decode="model", lazymoe.quant.expert), which
tests/test_engine_gguf.py checks against transformers. tests/gpu/test_segments_quant_gpu.py runs
decode="graphs" on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from gguf_models import twin

from lazymoe.engine import Engine, EngineConfig, GenerationConfig
from lazymoe.engine.compute import graphs, triton_quant
from lazymoe.engine.loading import load_tokenizer
from lazymoe.engine.storage.gguf_file import GGUFExpertStore
from lazymoe.engine.storage.qpool import QuantizedPool

pytestmark = pytest.mark.skipif(
    triton_quant.unavailable_reason(torch.device("cpu"), torch.float32) is not None,
    reason="Triton is not installed (the dev extra installs it)",
)

PROMPT = "def load(self, path):\n"  # short: the interpreter pays per kernel step
GEN = GenerationConfig(max_new_tokens=10, stop_token_ids=())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name -> (GGUF path, prompt ids, tight budget, the CPU quantized path's tokens per budget)."""
    folder = tmp_path_factory.mktemp("segments-quant")
    out = {}
    for name in ("q8_0", "q4_0"):
        path = twin(name, folder)
        prompt = load_tokenizer(path).encode(PROMPT)
        tight = 3 * GGUFExpertStore.open(path).max_expert_qbytes  # a layer uses 2: misses happen
        want = {}
        for budget in (tight, None):
            cpu = Engine(EngineConfig(model_path=path, device="cpu", vram_budget=budget))
            assert cpu.decode_path == "model" and cpu.runtime.kernel == "grouped"
            want[budget] = cpu.generate(prompt, GEN)
        out[name] = (path, prompt, tight, want)
    return out


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
@pytest.mark.parametrize("tight", [True, False], ids=["tight", "no-budget"])
def test_segments_give_the_cpu_quantized_paths_tokens(files, name, tight, monkeypatch):
    path, prompt, tight_budget, want = files[name]
    budget = tight_budget if tight else None
    engine = Engine(EngineConfig(model_path=path, device="cpu", vram_budget=budget,
                                 decode="segments", kernel="fused"))  # fmt: skip
    assert engine.decode_path == "segments"
    assert isinstance(engine.tiers.device.pool, QuantizedPool)

    from_decoder = []  # the decoder's kernel calls: slots read from its device index, per layer
    kernel = triton_quant.fused_decode_quantized

    def spy(out, hidden, weights, slot_t, *args, **kwargs):
        decoder = engine._decoder
        if decoder is not None and slot_t.data_ptr() in index_rows(decoder):
            from_decoder.append(index_rows(decoder).index(slot_t.data_ptr()))
        return kernel(out, hidden, weights, slot_t, *args, **kwargs)

    monkeypatch.setattr(triton_quant, "fused_decode_quantized", spy)
    assert engine.generate(prompt, GEN) == want[budget]
    steps = engine._decoder.timings["tokens"]
    n_layers = len(engine.moe_layers)
    assert steps == GEN.max_new_tokens - 1  # the first new token comes from the prefill
    assert from_decoder == list(range(n_layers)) * steps  # every layer, its own slots, each step
    misses = sum(engine.tiers.device.book.stats.misses_per_layer.values())
    assert misses > n_layers * engine.top_k if tight else misses == 0  # tight: refetched as it runs


def index_rows(decoder) -> list[int]:
    """Where each layer's slot row of the decoder's device index starts."""
    return [decoder.index[i, 0].data_ptr() for i in range(decoder.index.shape[0])]


def test_each_layers_slot_layout_comes_from_the_file(files):
    path, prompt, tight, _ = files["q4_0"]
    engine = Engine(EngineConfig(model_path=path, device="cpu", vram_budget=tight,
                                 decode="segments", kernel="fused"))  # fmt: skip
    decoder = engine._decoder_for(len(prompt) + GEN.max_new_tokens)
    n_layers = len(engine.moe_layers)
    assert [lay.formats for lay in decoder.layouts] == [("q4_0",) * 3] * n_layers
    assert decoder.layouts[0].nbytes == engine.tiers.device.pool.slot_nbytes


def test_without_the_interpreter_the_cpu_says_why(files, monkeypatch):
    path = files["q8_0"][0]
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="quantized Triton kernels: the device is a CPU"):
        Engine(EngineConfig(model_path=path, device="cpu", decode="segments"))
    auto = Engine(EngineConfig(model_path=path, device="cpu"))
    assert auto.decode_path == "model" and "TRITON_INTERPRET" in graphs.unsupported_reason(auto)
