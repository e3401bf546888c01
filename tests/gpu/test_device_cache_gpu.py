"""decode="device-cache" on a GPU: the whole token one CUDA graph, the cache's lookups, evictions and
fills done by the GPU, misses read from the page-locked GGUF map over PCIe. Checked against the
graph decoder (the host's cache deciding) on the same file: same tokens, and with prefetch off
the same hits, misses, evictions and slots.

Run on the device machine: `pytest -m gpu tests/gpu/test_device_cache_gpu.py`.
tests/test_device_cache.py runs the same loop eagerly on a CPU under Triton's interpreter.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf_models import PROMPT, half_for_auto, twin

from lazymoe.bench.routing import make_trace
from lazymoe.engine import Engine, EngineConfig, GenerationConfig
from lazymoe.engine.loading import load_tokenizer
from lazymoe.engine.storage.gguf_file import GGUFExpertStore

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = [pytest.mark.gpu, requires_gpu]

GEN = GenerationConfig(max_new_tokens=24, stop_token_ids=())


def engine(path, decode, slots, dtype="float32", **fields):
    budget = None if slots is None else slots * GGUFExpertStore.open(path).max_expert_qbytes
    return Engine(EngineConfig(model_path=path, device="cuda", dtype=dtype, vram_budget=budget,
                               decode=decode, prefetch=False, pin_checkpoint=True, **fields))  # fmt: skip


def book_state(e: Engine) -> tuple:
    book = e.tiers.device.book
    s = book.stats
    return (dict(s.hits_per_layer), dict(s.misses_per_layer), dict(s.evictions_per_layer),
            sorted(book._slot_of.items()), book.policy.oldest_first())  # fmt: skip


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("slots", [3, 7, None], ids=["3-slots", "7-slots", "no-budget"])
def test_device_cache_gives_the_graph_decoders_tokens_and_counts(tmp_path, name, dtype, slots):
    path = twin(name, tmp_path)
    tok = load_tokenizer(path)
    prompts = [tok.encode(PROMPT), tok.encode("import os\n")]
    host, device = engine(path, "graphs", slots, dtype), engine(path, "auto", slots, dtype)
    assert device.decode_path == "device-cache"  # auto, on a GPU, for a page-locked GGUF file
    for prompt in prompts:  # the second starts from the book the first wrote back
        assert device.generate(prompt, GEN) == host.generate(prompt, GEN)
        assert book_state(device) == book_state(host)
    assert device._decoder.token_graph is not None and not device._decoder.cuda_graphs
    host.close()
    device.close()


def test_a_float_checkpoint_too():
    """The bundled model's own safetensors (float32): gate and up fill the pool's gate_up slot,
    down its down slot, read over PCIe from the page-locked file."""
    from lazymoe.paths import bundled_model_dir

    prompt = load_tokenizer(bundled_model_dir()).encode(PROMPT)
    runs = []
    for decode in ("graphs", "device-cache"):
        e = Engine(EngineConfig(model_path=bundled_model_dir(), device="cuda", dtype="float32",
                                vram_budget=7 * 3 * 4 * 128 * 128, decode=decode, prefetch=False,
                                pin_checkpoint=True))  # fmt: skip
        runs.append((e.generate(prompt, GEN), book_state(e)))
        e.close()
    assert runs[0] == runs[1]


def test_a_replayed_trace_counts_as_on_the_host(tmp_path):
    path = twin("q4_0", tmp_path)
    prompt = load_tokenizer(path).encode(PROMPT)
    probe = engine(path, "graphs", 5)
    trace = make_trace("real-text", 256, len(probe.moe_layers), probe.num_experts, probe.top_k)
    host = engine(path, "graphs", 5, routing_trace=trace)
    device = engine(path, "device-cache", 5, routing_trace=trace)
    host.generate(prompt, GEN)
    device.generate(prompt, GEN)
    assert book_state(device) == book_state(host)
    for e in (probe, host, device):
        e.close()


def test_an_engine_never_closed_unlocks_its_file(tmp_path):
    """A pinned engine dropped without close() unlocks its map when collected: a new map of a
    file (which may land on the same addresses) pins again, many times over."""
    import gc

    path = twin("q8_0", tmp_path)
    for _ in range(6):
        e = engine(path, "device-cache", 5)
        assert e.store.pinned
        del e
        gc.collect()
    last = engine(path, "device-cache", 5)
    assert last.generate(load_tokenizer(path).encode(PROMPT), GEN)
    last.close()


def test_the_gpu_reads_the_locked_file_in_place(tmp_path):
    """map_tensor on the GPU is the file's bytes (no copy made), read by a kernel over PCIe."""
    path = twin("q4_0", tmp_path)
    store = GGUFExpertStore.open(path)
    store.pin_for_cuda()
    try:
        on_gpu = store.map_tensor(torch.int32, torch.device("cuda"))
        raw = np.fromfile(path, dtype=np.uint8)
        n = on_gpu.numel() * 4
        assert on_gpu.device.type == "cuda"
        assert torch.equal(on_gpu.view(torch.uint8).cpu(), torch.from_numpy(raw[:n]))
        assert on_gpu.data_ptr() == store._reader.data.ctypes.data  # the same pages
        assert int(on_gpu.sum(dtype=torch.int64)) == int(raw[:n].view(np.int32).sum(dtype=np.int64))
    finally:
        store.close()


def test_a_gguf_in_float_slots_keeps_the_graph_decoder(tmp_path):
    """kernel='batched' dequantizes a GGUF file's experts into float slots: the GPU cannot copy
    them as stored, so auto keeps decode='graphs' and an explicit device-cache says why."""
    path = twin("q4_0", tmp_path)
    e = engine(path, "auto", None, kernel="batched")  # (float slots: no budget in stored bytes)
    assert e.decode_path == "graphs"
    e.close()
    with pytest.raises(ValueError, match="dequantized into float slots"):
        engine(path, "device-cache", None, kernel="batched")


def test_without_a_locked_file_it_says_what_to_do(tmp_path):
    path = twin("q4_0", tmp_path)
    e = Engine(EngineConfig(model_path=path, device="cuda", prefetch=False))
    assert e.decode_path == "graphs"  # auto without pin_checkpoint
    assert "tip: with --pin-checkpoint" in e.describe()  # and the tip says what it would cost
    e.close()
    with pytest.raises(ValueError, match="pin_checkpoint=True"):
        Engine(EngineConfig(model_path=path, device="cuda", decode="device-cache"))


def staggered_batch(e: Engine, prompts, gen, device_experts: bool):
    """Requests joining one after another, decoding together: their tokens, the batch."""
    with e.batch() as batch:
        batch.device_experts = device_experts
        handles = []
        for prompt in prompts:
            handles.append(batch.add(prompt, gen)[0])
            batch.step()
        while len(batch):
            batch.step()
        return [batch.tokens(h) for h in handles], batch


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("slots", [9, None], ids=["9-slots", "no-budget"])
def test_batched_steps_on_the_device_match_the_hosts_batch(tmp_path, name, dtype, slots):
    """EngineBatch's batched steps with the experts looked up, filled from the locked file and
    computed on the GPU's tables: the same tokens and the same book as the host's batched path
    (same kernels, same order); in float32 each request's tokens are those of generating it
    alone."""
    path = twin(name, tmp_path)
    tok = load_tokenizer(path)
    prompts = [tok.encode(p) for p in (PROMPT, "import os\n", "SELECT name FROM", "x = [")]
    runs = {}
    for device_experts in (False, True):
        e = engine(path, "device-cache", slots, dtype)
        tokens, batch = staggered_batch(e, prompts, GEN, device_experts)
        assert batch.step_counts["batched"] > 0
        assert batch.device_steps == (batch.step_counts["batched"] if device_experts else 0)
        assert e.runtime.lent_to is None
        runs[device_experts] = (tokens, book_state(e))
        if dtype == "float32" and device_experts:
            assert tokens == [e.generate(p, GEN) for p in prompts]
        e.close()
    assert runs[True] == runs[False]


def test_batched_steps_of_a_float_checkpoint():
    from lazymoe.paths import bundled_model_dir

    tok = load_tokenizer(bundled_model_dir())
    prompts = [tok.encode(p) for p in (PROMPT, "import os\n", "SELECT name FROM")]
    runs = {}
    for device_experts in (False, True):
        e = Engine(EngineConfig(model_path=bundled_model_dir(), device="cuda", dtype="float32",
                                vram_budget=9 * 3 * 4 * 128 * 128, decode="device-cache",
                                prefetch=False, pin_checkpoint=True))  # fmt: skip
        tokens, batch = staggered_batch(e, prompts, GEN, device_experts)
        assert batch.device_steps == (batch.step_counts["batched"] if device_experts else 0)
        runs[device_experts] = (tokens, book_state(e))
        if device_experts:
            assert tokens == [e.generate(p, GEN) for p in prompts]
        e.close()
    assert runs[True] == runs[False]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batched_steps_as_cuda_graphs_match_the_eager_steps(tmp_path, dtype):
    """The batched step recorded as one CUDA graph per batch size and replayed: the same tokens
    and the same book as running every step eagerly; batch sizes change as requests join and
    finish (a graph each), and prompts joining at once are prefilled together."""
    path = twin("q4_0", tmp_path)
    tok = load_tokenizer(path)
    texts = (PROMPT, "import os\n", "SELECT name FROM", "x = [", "class A:\n", "# note\n")
    prompts = [tok.encode(p) for p in texts]
    gens = [GenerationConfig(max_new_tokens=8 + 4 * i, stop_token_ids=()) for i in range(len(prompts))]
    runs = {}
    for graphs in (False, True):
        e = engine(path, "device-cache", 40, dtype)
        with e.batch() as batch:
            batch.graphs = graphs
            handles = [h for h, _ in batch.add_many(prompts[:3], gens[:3])]
            batch.step()
            handles += [h for h, _ in batch.add_many(prompts[3:], gens[3:])]
            while len(batch):
                batch.step()
            tokens = [batch.tokens(h) for h in handles]
            assert batch.device_steps == batch.step_counts["batched"]
            assert (batch.graph_steps > 0) == graphs and batch.graphs == graphs
            runs[graphs] = (tokens, book_state(e))
        if dtype == "float32" and graphs:
            assert tokens == [e.generate(p, g) for p, g in zip(prompts, gens, strict=True)]
        e.close()
    assert runs[True] == runs[False]


def split_counts(e: Engine) -> tuple[int, int]:
    """(experts the CPU computed, experts computed on the GPU) so far."""
    return e.runtime.computed_on["cpu"], e.runtime.computed_on["device"]


@pytest.mark.parametrize("name", ["q4_0", "float"])
@pytest.mark.parametrize("fields", [{"placement": "cpu"}, {"placement": "auto", "fetch_per_layer": 1},
                                    {"placement": "auto"}], ids=["cpu", "auto-fetch-1", "auto-half"])
def test_misses_computed_on_the_cpu_inside_the_graph(tmp_path, name, fields, monkeypatch):
    """placement cpu/auto on the device-cache decoder: the GPU fetches at most fetch_per_layer
    of a layer's misses (or auto's share of them: half here) and the host computes the others
    while the token's graph waits for them (cpu_misses.py). float32: the tokens of fetching
    every miss; the CPU did compute some, and the GPU's graph, not the eager path, ran the
    token."""
    from lazymoe.engine.compute import cpu_misses
    from lazymoe.paths import bundled_model_dir

    if fields == {"placement": "auto"}:  # whatever this machine measures: half
        monkeypatch.setattr(cpu_misses, "fetch_split", half_for_auto(cpu_misses.fetch_split))

    if name == "float":
        path, budget = bundled_model_dir(), 7 * 3 * 4 * 128 * 128
    else:
        path = twin(name, tmp_path)
        budget = 7 * GGUFExpertStore.open(path).max_expert_qbytes
    prompt = load_tokenizer(path).encode(PROMPT)

    def make(**more):
        return Engine(EngineConfig(model_path=path, device="cuda", dtype="float32", vram_budget=budget,
                                   decode="device-cache", prefetch=False, pin_checkpoint=True,
                                   **more))  # fmt: skip

    fetch, split = make(), make(**fields)
    assert split.decode_path == "device-cache" and split._decoder_for(64).mailbox is not None
    assert split.generate(prompt, GEN) == fetch.generate(prompt, GEN)
    on_cpu, on_device = split_counts(split)
    assert split._decoder.timings["tokens"] > 0  # decode tokens ran as the graph
    assert split._decoder.mailbox.compute_s > 0  # and the host computed inside them
    if fields["placement"] == "cpu":  # a miss is never fetched, on a GPU not in the prompt's
        assert on_cpu > 0 and on_device == 0  # pass either: the cache stays empty, all on the CPU
    else:
        assert on_cpu > 0 and on_device > 0
    for e in (fetch, split):
        e.close()


def test_a_failing_cpu_share_raises_and_leaves_the_engine_usable(tmp_path, monkeypatch):
    """The host's half fails mid-token: the GPU is released at once (no spin to its limit), the
    error reaches the caller, and the next generation gives the right tokens."""
    import time

    path = twin("q4_0", tmp_path)
    prompt = load_tokenizer(path).encode(PROMPT)
    e = engine(path, "device-cache", 7, placement="cpu")
    want = engine(path, "device-cache", 7).generate(prompt, GEN)
    calls = {"n": 0}
    real = e.runtime._compute_cpu

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise MemoryError("out of memory on the host")
        return real(*args)

    monkeypatch.setattr(e.runtime, "_compute_cpu", failing)
    start = time.perf_counter()
    with pytest.raises(MemoryError):
        e.generate(prompt, GEN)
    assert time.perf_counter() - start < 30
    monkeypatch.setattr(e.runtime, "_compute_cpu", real)
    assert e.generate(prompt, GEN) == want
    e.close()
