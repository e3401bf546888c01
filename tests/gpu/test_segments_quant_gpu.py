"""CUDA graphs over quantized VRAM slots: the segmented decoder (decode="graphs") computing a GGUF
file's experts with triton_quant's kernels gives the CPU quantized path's tokens (float32).

Run on the device machine: `pytest -m gpu tests/gpu/test_segments_quant_gpu.py`.
tests/test_segments_quant.py runs the same decoder eagerly (decode="segments") under Triton's
interpreter on a CPU.
"""

from __future__ import annotations

import pytest
import torch
from gguf_models import PROMPT, twin

from lazymoe.engine import Engine, EngineConfig, GenerationConfig
from lazymoe.engine.compute import triton_quant
from lazymoe.engine.loading import load_tokenizer
from lazymoe.engine.storage.gguf_file import GGUFExpertStore
from lazymoe.engine.storage.qpool import QuantizedPool

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = [pytest.mark.gpu, requires_gpu]

GEN = GenerationConfig(max_new_tokens=16, stop_token_ids=())


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
@pytest.mark.parametrize("tight", [True, False], ids=["tight", "no-budget"])
def test_graphs_on_quantized_slots_give_the_cpu_paths_tokens(tmp_path, name, tight, monkeypatch):
    path = twin(name, tmp_path)
    prompt = load_tokenizer(path).encode(PROMPT)
    budget = 3 * GGUFExpertStore.open(path).max_expert_qbytes if tight else None
    want = Engine(EngineConfig(model_path=path, device="cpu", vram_budget=budget)).generate(
        prompt, GEN
    )
    engine = Engine(
        EngineConfig(model_path=path, device="cuda", dtype="float32", vram_budget=budget)
    )
    assert engine.decode_path == "graphs"  # auto: CUDA graphs for a GGUF model on a GPU
    assert isinstance(engine.tiers.device.pool, QuantizedPool)

    called = []  # the decoder's kernel runs in Python only at warm-up and capture; replays reuse it
    kernel = triton_quant.fused_decode_quantized

    def spy(out, hidden, weights, slot_t, *args, **kwargs):
        if out.shape[0] == 1:  # a decode token (the prompt's prefill runs the kernels eagerly too)
            called.append(slot_t.data_ptr())  # the decoder exists only once warm-up and capture end
        return kernel(out, hidden, weights, slot_t, *args, **kwargs)

    monkeypatch.setattr(triton_quant, "fused_decode_quantized", spy)
    assert engine.generate(prompt, GEN) == want
    n_layers = len(engine.moe_layers)
    rows = [engine._decoder.index[i, 0].data_ptr() for i in range(n_layers)]
    # warm-up, capture: each layer reads its own row of the device index
    assert [rows.index(p) if p in rows else None for p in called] == list(range(n_layers)) * 2
    assert len(engine._decoder.cuda_graphs) == n_layers + 1
    assert engine._decoder.timings["tokens"] == GEN.max_new_tokens - 1
    if tight:
        assert engine.tiers.as_dict()["links"]["disk->vram"]["transfers"] > n_layers * engine.top_k


def test_graphs_on_quantized_slots_run_in_bf16(tmp_path):
    path = twin("q4_0", tmp_path)
    prompt = load_tokenizer(path).encode(PROMPT)
    budget = 3 * GGUFExpertStore.open(path).max_expert_qbytes
    engine = Engine(EngineConfig(model_path=path, device="cuda", dtype="bfloat16",
                                 vram_budget=budget))  # fmt: skip
    assert engine.decode_path == "graphs"
    assert len(engine.generate(prompt, GEN)) == GEN.max_new_tokens  # BF16 tokens may differ


def _spy_copy_streams(engine, method: str) -> list[bool]:
    """For each call of the VRAM pool's `method` (a copy into a slot): was it issued on the
    tiers' copy stream?"""
    pool, tiers, on_copy_stream = engine.tiers.device.pool, engine.tiers, []
    original = getattr(pool, method)

    def spy(slot, *args, **kwargs):
        on_copy_stream.append(torch.cuda.current_stream() == tiers.copy_stream)
        return original(slot, *args, **kwargs)

    setattr(pool, method, spy)
    return on_copy_stream


def test_quantized_misses_go_through_the_copy_stream_with_the_same_tokens(tmp_path):
    """A tight budget: misses staged in pinned RAM and copied on the copy stream, or with
    pin_checkpoint copied straight from the page-locked file; the CPU path's tokens either way,
    in the CUDA-graph decoder and in the eager one."""
    path = twin("q4_0", tmp_path)
    prompt = load_tokenizer(path).encode(PROMPT)
    expert_bytes = GGUFExpertStore.open(path).max_expert_qbytes  # every layer is Q4_0
    budget = 3 * expert_bytes
    want = Engine(EngineConfig(model_path=path, device="cpu", vram_budget=budget)).generate(
        prompt, GEN
    )
    for pin, decode in ((False, "graphs"), (True, "graphs"), (False, "model")):
        engine = Engine(EngineConfig(model_path=path, device="cuda", dtype="float32", decode=decode,
                                     vram_budget=budget, pin_checkpoint=pin))  # fmt: skip
        tiers = engine.tiers
        assert tiers.direct == pin and (tiers._staging is None) == pin
        spied = _spy_copy_streams(engine, "fill" if pin else "copy_slot")
        assert engine.generate(prompt, GEN) == want, (pin, decode)
        links = engine.stats().links
        misses = engine.stats().misses
        assert misses > 0 and spied and all(spied) and len(spied) >= misses
        if pin:
            assert engine.pinned_bytes > 0 and "disk->pinned" not in links
            copied = links["pinned file->vram"]
        else:
            assert tiers._staging.data.is_pinned() and "pinned file->vram" not in links
            staged, copied = links["disk->pinned"], links["disk->vram"]
            assert (staged["transfers"], staged["bytes"]) == (copied["transfers"], copied["bytes"])
        assert copied["transfers"] == len(spied) and copied["bytes"] == len(spied) * expert_bytes
        engine.close()
        assert not engine.store.pinned  # close() unlocks the file
