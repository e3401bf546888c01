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
