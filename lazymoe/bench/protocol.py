"""The benchmark's protocol, written into every results file: how the rows' numbers were taken,
and the routing traces lazymoe's rows replay (`lazymoe.bench.routing`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lazymoe.bench import routing

if TYPE_CHECKING:
    from lazymoe.bench.harness import BenchPlan, ModelEntry

GB = 1e9

def trace_file(entry: ModelEntry, regime: str, tokens: int, seed: int, cache_dir: Path) -> tuple[str, dict]:
    """The entry's trace of `regime` (made once per shape, seed and length, kept in cache_dir) and
    the parameters it was made with, for the results."""
    shape = entry.shape()
    params = {**routing.regime_params(regime, shape.num_experts, shape.top_k), "seed": seed,
              "trace_tokens": tokens}
    if regime == "real-text":
        params["calibrated_to"] = routing.SOURCE
    name = f"{shape.num_layers}x{shape.num_experts}-top{shape.top_k}-{regime}-s{seed}-t{tokens}.npz"
    path = cache_dir / name
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        trace = routing.make_trace(regime, tokens, shape.num_layers, shape.num_experts, shape.top_k, seed)
        atomic_path = trace.save(cache_dir / f".{name}.partial.npz")
        atomic_path.replace(path)
    return str(path), params


def resident_fraction(entry: ModelEntry, budget_gb: float | None) -> float:
    """The share of the model's experts that fit the budget (1.0: no budget, all resident): as
    many slots as the budget holds, each the size of the largest expert as lazymoe stores it (a
    GGUF entry's quantized bytes), over the model's experts."""
    if budget_gb is None:
        return 1.0
    shape = entry.shape()
    slots = budget_gb * GB // entry.nbytes()["expert_bytes"]
    return min(1.0, slots / (shape.num_layers * shape.num_experts))


def protocol(plan: BenchPlan) -> dict:
    """What every row's numbers mean: the results file's own description of how they were taken."""
    return {
        "prompt_tokens": plan.prompt_tokens, "new_tokens": plan.new_tokens, "repeats": plan.repeats,
        "warmup": plan.warmup, "gpu": plan.gpu,
        "decoding": ("greedy" if plan.temperature == 0 else
                     f"sampled at temperature {plan.temperature}, seed {plan.seed}") + ", no stop token",
        "statistic": "decode_tok_s: steady state, the median of the timed runs after the warm-up; "
                     "cold: the first warm-up run, which starts with an empty expert cache",
        "routing": {
            "regimes": list(plan.routings), "trace_tokens": plan.trace_tokens, "seed": plan.seed,
            "replay": "lazymoe rows replay a trace of their regime (EngineConfig.routing_trace): the "
                      "routers still run, but the experts fetched and computed are the trace's (the "
                      "trace's k-th expert takes the router's k-th weight); cache, copies, placement "
                      "and kernels are the normal path; the trace continues across the warm-up and "
                      "timed runs",
            "prefetch": "on" if plan.replay_prefetch else
                        "off in replayed rows (the model's routers cannot predict a trace)",
            "model-own": "the model's own routers; for random weights far more reuse than real text",
            "other engines": "llama.cpp and transformers cannot replay a trace: model-own routing",
            "real-text source": routing.SOURCE,
        },
        "weights": "a model folder: lazymoe reads its safetensors, llama.cpp a GGUF of the same bits; "
                   "a GGUF file alone: lazymoe (experts kept quantized) and llama.cpp read that one "
                   "file, whose formats and size each row carries under 'weights'",
        "memory": "peak_vram_bytes (NVML, this process) and peak_rss_bytes sampled every 20 ms "
                  "through load, warm-up and timed runs, for every engine",
        "bound": "lazymoe.bench.report.roofline_tok_s: perfect overlap of GPU memory, the host link "
                 "for fetched misses and CPU memory for misses computed on the CPU, at the row's "
                 "measured hit rate and the machine's measured bandwidths",
    }
