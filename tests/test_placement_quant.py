"""placement="auto" with quantized (GGUF) experts: the cost model weighs a CPU expert by its stored
bytes over the CPU kernel's measured rate for each format, and a fetch by the bytes it copies."""

from __future__ import annotations

import pytest
from gguf_models import PROMPT, twin, wide_random_gguf

from lazymoe.engine import Engine, EngineConfig
from lazymoe.engine.compute import placement
from lazymoe.engine.compute.placement import CostModel, expert_parts
from lazymoe.engine.config import GenerationConfig
from lazymoe.engine.storage.gguf_file import GGUFExpertStore

MB = 10**6
FLOPS = 6 * 768 * 2048  # one token through a Qwen3-30B-A3B-sized expert
Q4K = [("q4_k", MB), ("q4_k", MB), ("q4_k", MB)]  # gate, up, down: (format, stored bytes)
Q4K_M = [("q4_k", MB), ("q4_k", MB), ("q6_k", MB)]  # Q4_K_M's mix: down in Q6_K


def model(link_gbps=10.0, ram_gbps=50.0, **format_gbps) -> CostModel:
    return CostModel(link_gbps, ram_gbps, cpu_gflops=1000.0, cpu_format_gbps=format_gbps)


# -- the decision, from given rates ----------------------------------------------------------------
def test_slow_cpu_kernel_and_fast_link_fetches():
    assert model(link_gbps=50.0, q4_k=2.0).choose(3 * MB, 1, FLOPS, Q4K) == "fetch"


def test_fast_cpu_kernel_and_slow_link_computes_on_the_cpu():
    assert model(link_gbps=2.0, q4_k=20.0).choose(3 * MB, 1, FLOPS, Q4K) == "cpu"


def test_the_format_rate_not_the_ram_bandwidth_decides_a_quantized_expert():
    cost = model(link_gbps=10.0, ram_gbps=50.0, q4_k=2.0)  # RAM is fast, the kernel is not
    assert cost.choose(3 * MB, 1, FLOPS) == "cpu"  # a float expert of those bytes: RAM bandwidth
    assert cost.choose(3 * MB, 1, FLOPS, Q4K) == "fetch"  # the same bytes through the q4_k kernel
    assert cost.read_seconds(3 * MB, Q4K) == pytest.approx(3 * MB / 2e9)
    assert cost.read_seconds(3 * MB) == pytest.approx(3 * MB / 50e9)


def test_a_mixed_format_expert_sums_its_parts():
    cost = model(link_gbps=10.0, q4_k=20.0, q6_k=1.0)
    assert cost.read_seconds(3 * MB, Q4K_M) == pytest.approx(2 * MB / 20e9 + MB / 1e9)
    assert cost.choose(3 * MB, 1, FLOPS, Q4K) == "cpu"  # 0.15 ms on the CPU, 0.3 ms to fetch
    assert cost.choose(3 * MB, 1, FLOPS, Q4K_M) == "fetch"  # its slow q6_k part: 1.1 ms


def test_many_tokens_make_the_flops_decide():
    cost = model(link_gbps=2.0, q4_k=20.0)
    assert cost.choose(3 * MB, 1, FLOPS, Q4K) == "cpu"
    assert cost.choose(3 * MB, 512, FLOPS, Q4K) == "fetch"  # prefill: 4.8 GFLOP on the CPU


def test_a_format_without_a_rate_is_named():
    with pytest.raises(ValueError, match="q6_k"):
        model(q4_k=5.0).choose(3 * MB, 1, FLOPS, Q4K_M)
    with pytest.raises(ValueError, match="cpu_format_gbps\\['q4_k'\\]"):
        model(q4_k=0.0)


def test_describe_and_explain_show_the_rates_and_the_choice():
    cost = model(link_gbps=10.0, q4_k=20.0, q6_k=1.0)
    assert "q4_k 20.0" in cost.describe() and "q6_k 1.0" in cost.describe()
    line = cost.explain(3 * MB, FLOPS, Q4K_M)
    assert line.startswith("q4_k/q4_k/q6_k expert") and line.endswith("-> fetch")


# -- the measurement -------------------------------------------------------------------------------
def test_measurement_gives_a_positive_rate_for_every_format():
    formats = ["q8_0", "q4_0", "q4_k", "q6_k", "f16"]
    rates = placement.measure_format_gbps(formats, threads=1, nbytes=2**20)
    assert sorted(rates) == sorted(formats)
    assert all(gbps > 0 for gbps in rates.values())


def test_a_fast_format_is_timed_over_all_the_bytes_asked_a_slow_one_over_less(monkeypatch):
    """The quantized kernels read all of `nbytes` (past the CPU's cache, as RAM is read); a path
    too slow to read them within SLOW_PASS_S (the slab path: bound by arithmetic) one pass of
    about pass_seconds' worth, and 4 MiB at least."""
    import time

    from lazymoe.quant import expert

    timed = []

    def fast(x, qt):
        timed.append(qt.nbytes)

    def slow(x, qt):  # 1 GB/s
        timed.append(qt.nbytes)
        time.sleep(qt.nbytes / 1e9)

    monkeypatch.setattr(expert, "linear", fast)
    placement._measure_one_format("q8_0", 1, 64 * 2**20)
    assert min(timed[2:]) > 63 * 2**20 and max(timed) <= 64 * 2**20  # all of it (whole samples), each pass
    timed.clear()
    monkeypatch.setattr(expert, "linear", slow)
    placement._measure_one_format("q8_0", 1, 2**30)  # a GiB at 1 GB/s: 1 s a pass, too slow
    assert 4 * 2**20 <= max(timed) <= 0.1 * 1e9  # about 0.05 s of it


def test_each_format_is_measured_once_per_process_past_the_cpus_cache(monkeypatch):
    """Once per (format, threads); by default over past_cache's bytes, not a few MiB that a big
    server CPU's cache would hold (and time instead of RAM)."""
    from lazymoe import measure

    calls = []

    def fake(fmt, threads, nbytes):
        calls.append(fmt)
        assert nbytes == measure.past_cache(8 * 2**20)
        return 3.0

    monkeypatch.setattr(placement, "_FORMAT_GBPS", {})
    monkeypatch.setattr(placement, "_measure_one_format", fake)
    assert placement.measure_format_gbps(["q4_k", "q6_k", "q4_k"], threads=2) == {"q4_k": 3.0, "q6_k": 3.0}
    placement.measure_format_gbps(["q6_k", "q4_k"], threads=2)
    assert calls == ["q4_k", "q6_k"]


# -- in the engine ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("placement-quant")


def generate(engine: Engine) -> list[int]:
    prompt = engine.tokenizer.encode(PROMPT)
    return engine.generate(prompt, GenerationConfig(max_new_tokens=8, stop_token_ids=()))


def test_the_store_gives_each_layers_formats(folder):
    store = GGUFExpertStore.open(wide_random_gguf(folder))  # Q4_K_M: Q6_K down in layers 2 and 3
    parts = {layer: expert_parts(store, layer) for layer in store.moe_layers}
    assert [tuple(fmt for fmt, _ in p) for p in parts.values()] == [
        ("q4_k", "q4_k", "q4_k"), ("q4_k", "q4_k", "q4_k"),
        ("q4_k", "q4_k", "q6_k"), ("q4_k", "q4_k", "q6_k"),
    ]  # fmt: skip
    for layer, p in parts.items():
        assert sum(n for _, n in p) == store.expert_qbytes(layer)


def test_auto_on_a_cpu_machine_measures_nothing_and_gives_the_same_tokens(folder, monkeypatch):
    path = twin("q4_0", folder)

    def no_measuring(*args, **kwargs):
        raise AssertionError("a CPU-only engine has one place to compute: nothing to measure")

    monkeypatch.setattr(placement, "measure_cost_model", no_measuring)
    monkeypatch.setattr(placement, "_measure_one_format", no_measuring)
    tokens = {}
    for where in ("fetch", "auto"):
        engine = Engine(EngineConfig(model_path=path, device="cpu", dtype="float32", placement=where))
        tokens[where] = generate(engine)
        assert engine.runtime.cost_model is None
        assert "cost model" not in engine.describe()
        assert engine.runtime.computed_on["cpu"] == 0  # the CPU is "the device" here
    assert tokens["auto"] == tokens["fetch"]


def test_auto_follows_each_layers_formats_and_keeps_the_tokens(folder):
    """A CPU engine dressed as a GPU one (`tiers.on_gpu`), so that `auto` chooses: with q4_k
    fast on the CPU and q6_k slow, the Q4_K_M file's layers 0-1 compute their misses on the
    CPU (from the stored bytes) and layers 2-3 fetch theirs; tokens equal all-fetch's."""
    path = wide_random_gguf(folder)
    store = GGUFExpertStore.open(path)
    budget = 2 * store.max_expert_qbytes  # two slots: nearly every expert is a miss

    def make() -> Engine:
        return Engine(EngineConfig(model_path=path, device="cpu", dtype="float32", vram_budget=budget))

    want = generate(make())
    engine = make()
    runtime = engine.runtime
    runtime.placement, runtime.tiers.on_gpu = "auto", True
    nbytes = store.expert_qbytes(0)
    link_gbps = nbytes / 0.5e-3 / 1e9  # a fetch of a layer-0 expert: 0.5 ms
    runtime.cost_model = model(link_gbps=link_gbps, q4_k=1e3, q6_k=1e-3)  # q6_k: 1 MB/s
    runtime.miss_parts = {layer: expert_parts(store, layer) for layer in engine.moe_layers}
    assert [runtime._compute_where(layer, 1) for layer in engine.moe_layers] == [
        "cpu", "cpu", "device", "device"
    ]  # fmt: skip
    assert generate(engine) == want
    assert runtime.computed_on["cpu"] > 0 and runtime.computed_on["device"] > 0
    assert runtime.stored_cpu_steps > 0  # decode steps' CPU experts together, from the file's map
    links = runtime.tiers.as_dict()["links"]
    assert set(links["disk->cpu"]["bytes_per_layer"]) == {0, 1}  # stored bytes, read by the CPU
    assert set(links["disk->vram"]["bytes_per_layer"]) >= {2, 3}
    for layer, n in links["disk->cpu"]["bytes_per_layer"].items():
        assert n % store.expert_qbytes(layer) == 0
    lines = placement.describe_lines(runtime)
    assert "q4_k" in lines[0] and "q6_k" in lines[0]
    assert lines[1].endswith("-> cpu") and lines[2].endswith("-> fetch")
