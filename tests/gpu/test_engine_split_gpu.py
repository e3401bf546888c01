"""Layers split across two CUDA GPUs (`--gpus 0,1`): the full model's tokens, each GPU in budget.

Run on a machine with two GPUs: `pytest -m gpu tests/gpu/test_engine_split_gpu.py` (one GPU runs
only the GPU + CPU split). The CPU tests
(tests/test_engine_split.py) check the same arithmetic with devices=("cpu", "cpu"); only here do
tensors cross between devices, copies run on each GPU's own stream and Triton launches on the
GPU whose slots it reads.
"""

from __future__ import annotations

import pytest
import torch
from small_model import EXPERT_BYTES, GREEDY, PROMPT, checkpoint_and_tokens

from lazymoe.engine import Engine, GenerationConfig

one_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
two_gpus = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"
)
pytestmark = [pytest.mark.gpu, one_gpu]

GPUS = ("cuda:0", "cuda:1")
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return checkpoint_and_tokens(tmp_path_factory.mktemp("split-gpu"))


@two_gpus
@pytest.mark.parametrize("n_slots", [2, 5, None])
@pytest.mark.parametrize("placement", ["fetch", "cpu", "auto"])
@pytest.mark.parametrize("ram_slots", [0, 20])
@pytest.mark.parametrize("prefetch", [False, True])
def test_two_gpus_give_the_full_models_tokens(checkpoint, n_slots, placement, ram_slots, prefetch):
    path, expected = checkpoint
    engine = Engine.from_pretrained(
        path, devices=GPUS, placement=placement, prefetch=prefetch,
        vram_budget=None if n_slots is None else n_slots * EXPERT_BYTES,
        ram_budget=ram_slots * EXPERT_BYTES or None,
    )  # fmt: skip
    assert engine.decode_path == "model" and [s.layers for s in engine.shares] == [[0, 1], [2, 3]]
    assert engine.generate(PROMPT, GREEDY) == expected
    assert engine.generate(PROMPT, GREEDY) == expected  # warm caches, the same tokens
    assert torch.cuda.current_device() == 0  # the guards gave the current device back
    if n_slots is not None and placement == "fetch":
        assert all(d["misses"] > 0 for d in engine.stats().devices)


@two_gpus
@pytest.mark.parametrize("n_slots", [2, 8])
def test_each_gpu_stays_within_its_budget(checkpoint, n_slots):
    path, _ = checkpoint
    budget = n_slots * EXPERT_BYTES + EXPERT_BYTES // 2  # not a whole number of experts
    torch.cuda.empty_cache()
    before = [torch.cuda.memory_allocated(i) for i in range(2)]
    engine = Engine.from_pretrained(path, devices=GPUS, vram_budget=budget)
    built = [torch.cuda.memory_allocated(i) for i in range(2)]
    for i, share in enumerate(engine.shares):
        assert share.tiers.device.pool.nbytes <= budget
        resident = sum(
            t.numel() * t.element_size()
            for t in [*engine.model.parameters(), *engine.model.buffers()]
            if t.device == share.device
        )
        # the GPU holds its layers' weights, its pool and small buffers (decode workspace)
        assert built[i] - before[i] <= resident + budget + 2**20, i
        torch.cuda.reset_peak_memory_stats(i)
    engine.generate(PROMPT, GenerationConfig(max_new_tokens=24, stop_token_ids=()))
    for i in range(2):
        growth = torch.cuda.max_memory_allocated(i) - built[i]
        assert growth < 4 * EXPERT_BYTES, f"GPU {i}: {growth} bytes allocated beyond the pool"
    assert [d["vram_in_use_bytes"] > 0 for d in engine.stats().devices] == [True, True]


@two_gpus
def test_batched_generation_on_two_gpus_equals_each_request_alone(checkpoint):
    path, _ = checkpoint
    prompts = [PROMPT, list(range(70, 77)), [5, 9, 200, 31, 31, 7, 100]]
    one = Engine.from_pretrained(path, device="cuda", vram_budget=3 * EXPERT_BYTES, decode="model")
    expected = [one.generate(p, GREEDY) for p in prompts]
    engine = Engine.from_pretrained(path, devices=GPUS, vram_budget=3 * EXPERT_BYTES)
    with engine.batch() as batch:
        handles = [batch.add(p, GREEDY)[0] for p in prompts]
        while len(batch):
            batch.step()
        assert [batch.tokens(h) for h in handles] == expected


def test_a_gpu_and_the_cpu_split_the_layers(checkpoint):
    """A GPU too small for every layer hands the last ones to the CPU (llama.cpp's -ngl); one
    GPU is enough to see tensors cross devices."""
    path, expected = checkpoint
    engine = Engine.from_pretrained(path, devices=("cuda:0", "cpu"), vram_budget=3 * EXPERT_BYTES)
    assert [s.device.type for s in engine.shares] == ["cuda", "cpu"]
    assert engine.generate(PROMPT, GREEDY) == expected


@two_gpus
def test_seeded_sampling_on_two_gpus_repeats(checkpoint):
    """The logits come back to the first GPU, where each sampler's generator lives."""
    path, _ = checkpoint
    engine = Engine.from_pretrained(path, devices=GPUS, vram_budget=3 * EXPERT_BYTES)
    gen = GenerationConfig(max_new_tokens=12, temperature=0.8, seed=5, stop_token_ids=())
    assert engine.generate(PROMPT, gen) == engine.generate(PROMPT, gen)
