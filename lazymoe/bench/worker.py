"""Run ONE benchmark configuration in this process and write its result as JSON.

    python -m lazymoe.bench.worker spec.json result.json

The harness starts one such process per configuration, so engines never share memory, threads,
a CUDA context or an allocator's cache, and a crash or an out-of-memory in one costs only that row.
"""

from __future__ import annotations

import faulthandler
import json
import sys
import time
import traceback
from pathlib import Path

from lazymoe.bench.measure import ResourceSampler, run_protocol

ENGINES = ("llamacpp", "lazymoe", "hf")


def make_runner(engine: str, options: dict):
    """The runner for one engine; `options` are its spec's fields."""
    if engine == "llamacpp":
        from lazymoe.bench.llamacpp import LlamaCppConfig, LlamaCppRunner

        return LlamaCppRunner(LlamaCppConfig(**options))
    if engine == "lazymoe":
        from lazymoe.bench.lazymoe_runner import LazyMoeRunner
        from lazymoe.engine import EngineConfig

        return LazyMoeRunner(EngineConfig(**options))
    if engine == "hf":
        from lazymoe.bench.hf_runner import HFRunner, HFRunSpec

        return HFRunner(HFRunSpec(**options))
    raise ValueError(f"engine={engine!r}: use one of {ENGINES}")


def run_spec(spec: dict) -> dict:
    """Load, warm up, time; return the spec's labels plus every measured field."""
    result = {k: v for k, v in spec.items() if k != "prompt_ids"}
    result["prompt_tokens"] = len(spec["prompt_ids"])
    with ResourceSampler(thread=spec.get("sampler_thread", True)) as sampler:
        started = time.perf_counter()
        runner = make_runner(spec["engine"], spec.get("options", {}))
        runner.temperature, runner.seed = float(spec.get("temperature", 0.0)), int(spec.get("seed", 0))
        result["load_s"] = time.perf_counter() - started
        warm_up_stats: dict = {}

        def before_timed() -> None:  # the warm-up's counters (its hit rate), then a fresh start
            if hasattr(runner, "stats"):
                warm_up_stats.update(runner.stats())
            if hasattr(runner, "reset_stats"):
                runner.reset_stats()

        try:
            measured = run_protocol(
                runner.stream, spec["prompt_ids"], spec["new_tokens"], spec.get("repeats", 3),
                spec.get("warmup", 1), before_timed=before_timed)
            sampler.sample()  # once more while the model is still loaded
            result.update(measured.as_dict())
            if result.get("cold") and "hit_rate" in warm_up_stats:
                result["cold"]["warm_up_hit_rate"] = warm_up_stats["hit_rate"]  # all warm-up runs
            result.update(runner.stats() if hasattr(runner, "stats") else {})
            for attr in ("model_size_bytes", "gpu_offload"):
                if hasattr(runner, attr):
                    result[attr] = getattr(runner, attr)
        finally:
            runner.close()
    result["peak_rss_bytes"] = sampler.peak_rss_bytes
    result["peak_vram_bytes"] = sampler.peak_vram_bytes
    result["vram_source"] = sampler.vram_source
    result["ok"] = True
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    faulthandler.enable()  # a crash inside a C library still prints where it happened
    spec = json.loads(Path(argv[0]).read_text())
    try:
        result = run_spec(spec)
    except Exception as exc:
        result = {k: v for k, v in spec.items() if k != "prompt_ids"}
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        Path(argv[1]).write_text(json.dumps(result, indent=1))
        print(result["traceback"], file=sys.stderr)
        return 1
    Path(argv[1]).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
