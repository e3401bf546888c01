"""The benchmark's lazymoe runner reports where a decoded token's host time goes per layer."""

from __future__ import annotations

import pytest

from lazymoe.bench.lazymoe_runner import LazyMoeRunner
from lazymoe.engine.config import EngineConfig
from lazymoe.paths import bundled_model_dir

MODEL = bundled_model_dir()
pytestmark = pytest.mark.skipif(
    not (MODEL / "model.safetensors").exists(), reason="the bundled model is not built"
)


def test_the_segmented_decoder_s_host_time_per_layer_is_in_the_stats():
    runner = LazyMoeRunner(EngineConfig(model_path=MODEL, device="cpu", decode="segments"))
    assert runner.engine.decode_path == "segments"
    list(runner.stream([40, 41, 42, 43], 6))
    runner.reset_stats()
    assert runner.engine._decoder.timings["tokens"] == 0  # the warm-up's time is not counted
    list(runner.stream([50, 51, 52], 5))
    host = runner.stats()["decode_host_us_per_layer"]
    assert set(host) == {"wait", "plan", "launch"}
    assert all(v >= 0 for v in host.values()) and host["plan"] > 0
    runner.close()


def test_the_model_path_has_no_host_breakdown():
    runner = LazyMoeRunner(EngineConfig(model_path=MODEL, device="cpu", decode="model"))
    list(runner.stream([40, 41, 42], 3))
    assert "decode_host_us_per_layer" not in runner.stats()
    runner.close()


def test_a_tuned_split_records_its_cost_model_and_every_window_s_share(monkeypatch):
    """Placement auto on the device-cache decoder, its share tuned (forced on with a cost model
    given, as a GPU machine measures one): the row records the speeds it started from, which CPU
    matmul it used, where the share ended and the share of every timed window."""
    from lazymoe.engine.compute import cpu_misses
    from lazymoe.engine.compute.placement import CostModel

    cost = CostModel(55, 90, 1e6, cpu_float_gbps=30, cpu_float_kernel="torch")
    monkeypatch.setattr(cpu_misses.ShareTuner, "WINDOW", 1)
    budget = 7 * 3 * 4 * 128 * 128  # 7 float32 expert slots: misses every token
    runner = LazyMoeRunner(EngineConfig(model_path=MODEL, device="cpu", dtype="float32", decode="device-cache",
                                        placement="auto", vram_budget=budget, prefetch=False))  # fmt: skip
    runner.engine.runtime.cost_model = cost  # (a CPU-only machine measures none)
    list(runner.stream([40, 41, 42, 43], 8))
    stats = runner.stats()
    assert stats["cost_model"]["cpu_float_kernel"] == "torch" and stats["cost_model"]["cpu_float_gbps"] == 30
    windows = stats["fetch_share_windows"]
    assert windows and all(0 <= share <= 1 and us > 0 for share, us in windows)
    assert stats["fetch_share"] == round(runner.engine._decoder.tuner.share / 256, 3)
    # the decode steps' own split: 7 decode tokens x 4 layers x top 2, within the generation's
    decoded = stats["decode_experts_on_cpu"] + stats["decode_experts_on_device"]
    assert decoded == 7 * 4 * 2 and stats["decode_experts_on_cpu"] <= stats["experts_on_cpu"]
    assert stats["experts_on_cpu"] + stats["experts_on_device"] > decoded  # (+ the prompt's)
    runner.close()
