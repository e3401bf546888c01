"""The benchmark harness: the same model and the same prompt ids through every engine, one process each.

    plan = BenchPlan(models=[ModelEntry.from_dir(path)], vram_budgets_gb=[5, 8, 12])
    results = run_plan(plan, out_path="data/results/bench-mymachine.json")

An honest comparison (module 07): the same weights at the same bits (lazymoe reads the
safetensors, llama.cpp the GGUF written from them; or, for a quantized model, both read one GGUF
file: `ModelEntry.from_gguf`, `lazymoe.bench.entry`), the same prompt token ids, the same number of
new tokens (greedy; or seeded sampling with `temperature` > 0, for random-weight models whose
greedy output repeats one token), a warm-up before the timed runs, medians, and the machine,
library versions and exact command stored beside the numbers.

Routing: a random-weight model's routers reuse experts far more than real text does, so lazymoe's
rows replay a routing regime instead (`lazymoe.bench.routing`: independent, real-text, zipf;
`EngineConfig.routing_trace`): the routers still run, the experts fetched and computed are the
trace's, everything else is the engine's normal path. Each row records its regime, the regime's
parameters and the hit rate it produced at its budget. "model-own" rows use the model's own
routers (never call a random model's routing uniform). llama.cpp cannot replay a trace; with its
experts placed per layer, routing does not change the work it does, so it runs the model's own.

Timing: `warmup` generations first (the first one starts with an empty cache: its prefill and
first tokens are reported as "cold"), then `repeats` timed ones whose median decode tok/s is the
steady state.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from lazymoe import atomic
from lazymoe.bench import routing
from lazymoe.bench.entry import (  # noqa: F401 (GGUF_TYPE, PROMPT_TEXT, ROUTERS: their old home)
    GGUF_TYPE,
    PROMPT_TEXT,
    ROUTERS,
    ModelEntry,
    ensure_gguf,
    gguf_weights,
    prompt_ids,
)
from lazymoe.bench.measure import library_versions
from lazymoe.bench.protocol import protocol, resident_fraction, trace_file

# 3: GGUF-only entries (one quantized file for every engine), each row's "weights" (formats, size),
# per-engine byte counts ("bytes_llamacpp"); 2: routing regimes (trace replay), cold first tokens;
# 1: model-own only. lazymoe.bench.report reads all three.
SCHEMA = "lazymoe.bench/3"
GB = 1e9
ENGINE_CHOICES = ("llamacpp-cpu-moe", "llamacpp-gpu", "lazymoe", "hf-full", "hf-offload")
ROUTING_CHOICES = (*routing.REGIMES, routing.MODEL_OWN)


@dataclass
class BenchPlan:
    """What to run. `vram_budgets_gb` applies to lazymoe (and the accelerate baseline) on a GPU."""

    models: list[ModelEntry]
    engines: tuple[str, ...] = ENGINE_CHOICES
    placements: tuple[str, ...] = ("fetch", "cpu", "auto")  # lazymoe placements on a GPU
    decodes: tuple[str, ...] = ("auto",)  # lazymoe decode paths on a GPU (EngineConfig.decode)
    kernels: tuple[str, ...] = ("auto",)  # lazymoe expert kernels on a GPU (EngineConfig.kernel)
    pin_checkpoint: bool = False  # lazymoe on a GPU: EngineConfig.pin_checkpoint, labelled "pinned file"
    cpu_activations: tuple[str, ...] = ("float",)  # EngineConfig.cpu_activations, one row set each
    # EngineConfig.fetch_per_layer for placement "auto" rows, one row each (None: the cost model's)
    fetch_per_layer: tuple[int | None, ...] = (None,)
    # the other EngineConfig fields every lazymoe row shares (`lazymoe bench`'s engine flags)
    lazymoe_options: dict = field(default_factory=dict)
    vram_budgets_gb: tuple[float, ...] = (5.0, 8.0, 12.0)
    prompt_tokens: int = 64
    new_tokens: int = 128  # llama-bench's tg128; fewer is mostly a cache's warm-up
    repeats: int = 3
    warmup: int = 1
    n_threads: int | None = None
    gpu: bool | None = None  # None: detect
    timeout_s: float = 1800.0
    include_resident: bool = True  # on a GPU, also lazymoe with every expert resident (no budget)
    cpu_cache_budgets_gb: tuple[float, ...] = ()  # no GPU: also lazymoe with a RAM cache this big
    # 0: greedy. > 0: sample (seeded). Random-weight models decode one token over and over when
    # greedy, so every step routes alike; sampling gives the varied tokens real text has.
    temperature: float = 0.0
    seed: int = 0
    # lazymoe's routing (lazymoe.bench.routing): one row per regime; "model-own": no trace
    routings: tuple[str, ...] = routing.REGIMES
    trace_tokens: int | None = None  # None: twice what the warm-up and timed runs route
    # Prefetch guesses from the model's routers, which cannot predict a replayed trace: replayed
    # rows run without it unless this is True (their prefetch accuracy is then recorded)
    replay_prefetch: bool = False
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown_routing = set(self.routings) - set(ROUTING_CHOICES)
        if unknown_routing:
            raise ValueError(f"unknown routings {sorted(unknown_routing)}: choose from {ROUTING_CHOICES}")
        unknown = set(self.engines) - set(ENGINE_CHOICES)
        if unknown:
            raise ValueError(f"unknown engines {sorted(unknown)}: choose from {ENGINE_CHOICES}")
        if self.prompt_tokens < 1 or self.new_tokens < 2 or self.repeats < 1:
            raise ValueError("need prompt_tokens >= 1, new_tokens >= 2 and repeats >= 1")
        if self.gpu is None:
            self.gpu = _cuda_available()
        if self.trace_tokens is None:
            self.trace_tokens = 2 * (self.prompt_tokens + self.new_tokens) * (self.warmup + self.repeats)



def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def llama_cpp_available() -> bool:
    from lazymoe.bench.llamacpp import LlamaCppUnavailable, load_bindings

    try:
        load_bindings()
        return True
    except LlamaCppUnavailable:
        return False


def build_specs(plan: BenchPlan, llama_ok: bool, trace_dir: Path | None = None) -> list[dict]:
    """One spec per (model, engine configuration, routing): what each worker process runs.
    Traces are written to (or found in) trace_dir (default: ~/.lazymoe/bench/traces)."""
    from lazymoe import paths

    trace_dir = trace_dir or paths.home_dir() / "bench" / "traces"
    specs = []
    for entry in plan.models:
        ids = prompt_ids(entry.model_path, plan.prompt_tokens)
        common = {"model": entry.name, "model_routers": entry.routers, "dtype": entry.dtype,
                  "prompt_ids": ids, "new_tokens": plan.new_tokens, "repeats": plan.repeats,
                  "warmup": plan.warmup, "temperature": plan.temperature, "seed": plan.seed}
        if entry.gguf_only:  # the one file every row reads: its formats and size beside each row
            common["weights"] = gguf_weights(entry.gguf_path)
        traces = {regime: trace_file(entry, regime, plan.trace_tokens, plan.seed, trace_dir)
                  for regime in plan.routings if regime != routing.MODEL_OWN}

        def add(label: str, engine: str, options: dict, budget_gb: float | None, placement: str,
                common=common, traces=traces, entry=entry) -> None:
            if engine != "lazymoe":  # cannot replay a trace: the model's own routers
                specs.append({**common, "label": label, "engine": engine, "placement": placement,
                              "vram_budget_gb": budget_gb, "options": options,
                              "routing": routing.MODEL_OWN, "routing_params": {}})
                return
            # every expert resident: routing changes no cache traffic, so one row (the first regime)
            for regime in plan.routings if budget_gb is not None else plan.routings[:1]:
                row_options, params = dict(options), {}
                if regime != routing.MODEL_OWN:
                    row_options["routing_trace"], params = traces[regime]
                    row_options["prefetch"] = plan.replay_prefetch and options.get("prefetch", True)
                specs.append({**common, "label": label, "engine": engine, "placement": placement,
                              "vram_budget_gb": budget_gb, "options": row_options, "routing": regime,
                              "routing_params": params, "resident_fraction": resident_fraction(entry, budget_gb)})

        llama = {"gguf_path": entry.gguf_path, "n_threads": plan.n_threads,
                 "n_ctx": max(256, plan.prompt_tokens + plan.new_tokens + 16)}
        llama_here = llama_ok and bool(entry.gguf_path)
        if llama_here and "llamacpp-cpu-moe" in plan.engines:
            add("llama.cpp --cpu-moe", "llamacpp", {**llama, "cpu_moe": True}, None, "cpu")
        for activations in plan.cpu_activations if "lazymoe" in plan.engines else ():
            base = {**plan.lazymoe_options, "model_path": entry.model_path, "dtype": entry.dtype,
                    "cpu_activations": activations}
            int8 = ", int8 activations" if activations == "int8" else ""
            if plan.gpu:  # budgets outer: the first budget's row of every placement comes first
                for budget in plan.vram_budgets_gb:
                    for placement in plan.placements:
                        fetches = plan.fetch_per_layer if placement == "auto" else (None,)
                        for decode, kernel, fetch in itertools.product(plan.decodes, plan.kernels, fetches):
                            label = f"lazymoe {placement}" + ("" if decode == "auto" else f" ({decode})")
                            label += "" if kernel == "auto" else f" [{kernel}]"
                            label += "" if fetch is None else f", fetch {fetch} a layer"
                            label += (", pinned file" if plan.pin_checkpoint else "") + int8
                            add(label, "lazymoe", {**base, "placement": placement, "decode": decode,
                                "kernel": None if kernel == "auto" else kernel,
                                "pin_checkpoint": plan.pin_checkpoint, "fetch_per_layer": fetch,
                                "vram_budget": round(budget * GB), "device": "cuda"}, budget, placement)
                if plan.include_resident:  # pinned too when the rows are: decode="device-cache"
                    label = "lazymoe all resident" + (", pinned file" if plan.pin_checkpoint else "") + int8
                    add(label, "lazymoe", {**base, "device": "cuda",
                                           "pin_checkpoint": plan.pin_checkpoint}, None, "fetch")
            else:
                add("lazymoe (CPU)" + int8, "lazymoe", {**base, "device": "cpu", "placement": "cpu"}, None, "cpu")
                for budget in plan.cpu_cache_budgets_gb:  # a RAM cache over the mapped checkpoint
                    add(f"lazymoe (CPU), {budget:g} GB cache{int8}", "lazymoe", {
                        **base, "device": "cpu", "placement": "cpu", "vram_budget": round(budget * GB)},
                        budget, "cpu")
        if llama_here and "llamacpp-gpu" in plan.engines and plan.gpu:
            add("llama.cpp all on GPU", "llamacpp", {**llama, "cpu_moe": False}, None, "gpu")
        if entry.gguf_only:  # transformers would run dequantized floats, not the file: skipped
            continue
        if "hf-full" in plan.engines:
            add("transformers full model", "hf", {"model_path": entry.model_dir, "dtype": entry.dtype,
                                                   "mode": "full"}, None, "gpu" if plan.gpu else "cpu")
        if "hf-offload" in plan.engines:
            budget = min(plan.vram_budgets_gb) if plan.gpu else None
            add("accelerate offload", "hf", {
                "model_path": entry.model_dir, "dtype": entry.dtype, "mode": "offload",
                "vram_budget_bytes": int(budget * GB) if budget else None,
                "ram_budget_bytes": None if plan.gpu else _offload_ram_cap(entry)}, budget, "offload")
    return specs


def skipped_baselines(plan: BenchPlan) -> list[str]:
    """One line per GGUF-only entry whose transformers baselines the plan asked for and skips."""
    hf = [e for e in plan.engines if e.startswith("hf-")]
    return [f"{e.name}: a GGUF file alone: transformers baselines ({', '.join(hf)}) skipped, as "
            "they would compute dequantized float weights, not the file's quantized bits"
            for e in plan.models if e.gguf_only and hf]


def _offload_ram_cap(entry: ModelEntry) -> int:
    """On a CPU-only machine, cap RAM at half the weights so accelerate must use its disk offload."""
    size = sum(p.stat().st_size for p in Path(entry.model_dir).glob("*.safetensors"))
    return max(1, size // 2)


def run_spec_in_process(spec: dict, timeout_s: float, env: dict | None = None) -> dict:
    """Run one spec in a fresh `python -m lazymoe.bench.worker` process; never raises."""
    with tempfile.TemporaryDirectory(prefix="lazymoe-bench-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "lazymoe.bench.worker", str(spec_path), str(result_path)]
        base = {k: v for k, v in spec.items() if k != "prompt_ids"}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                  env={**os.environ, **(env or {})})
        except subprocess.TimeoutExpired:
            return {**base, "ok": False, "error": f"timed out after {timeout_s:.0f} s"}
        if result_path.exists():
            return json.loads(result_path.read_text())
        return {**base, "ok": False, "error": f"worker {_exit_reason(proc.returncode)} and left no result: "
                f"{proc.stderr[-2000:]}"}


def _exit_reason(returncode: int) -> str:
    import signal

    if returncode < 0:
        name = signal.Signals(-returncode).name
        why = {"SIGSEGV": "a crash inside a C library", "SIGKILL": "killed, often for memory"}.get(name, "")
        return f"died of {name}{f' ({why})' if why else ''}"
    return f"exited with {returncode}"


def run_plan(plan: BenchPlan, out_path: str | Path | None = None, command: str | None = None,
             bandwidths: dict | None = None, progress: bool = True) -> dict:
    """Run every configuration of the plan, each in its own process; return (and save) the results."""
    from lazymoe import hardware, paths

    llama_ok = llama_cpp_available()
    notes = list(plan.notes)
    if not llama_ok:
        notes.append("llama-cpp-python is not installed: llama.cpp rows skipped "
                     "(pip install -e '.[llama]')")
    wants_llama = any(e.startswith("llamacpp") for e in plan.engines)
    for entry in plan.models:
        if llama_ok and wants_llama and not ensure_gguf(entry, paths.home_dir() / "bench" / "gguf"):
            notes.append(f"{entry.name}: no GGUF and no exporter: llama.cpp rows skipped")
    notes += skipped_baselines(plan)
    specs = build_specs(plan, llama_ok)
    if bandwidths is None:
        from lazymoe.bench.bandwidth import measure_bandwidths

        bandwidths = measure_bandwidths(nbytes=256 << 20 if not plan.gpu else 1 << 30)
    results: list[dict] = []
    document = {
        "schema": SCHEMA,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": dataclasses.asdict(hardware.probe()),
        "libraries": library_versions(),
        "bandwidths": bandwidths,
        "models": {e.name: e.describe() for e in plan.models},
        "protocol": protocol(plan),
        "notes": notes,
        "results": results,
    }
    for spec in tqdm(specs, desc="benchmark", disable=not progress):
        results.append(run_spec_in_process(spec, plan.timeout_s))
        if out_path:  # after every row: a run cut short still leaves what it measured
            save(document, out_path)
    if out_path:
        save(document, out_path)
    return document


def save(document: dict, out_path: str | Path) -> None:
    """Write a results document atomically (`lazymoe.atomic.write_json`): a crash mid-write leaves
    the previous file, never half of one. An existing file keeps its mode."""
    atomic.write_json(out_path, document, indent=1, default=str)


def merge(documents: list[dict], command: str | None = None) -> dict:
    """One document from several runs on the same machine (e.g. one per routing)."""
    merged = {**documents[0], "results": [], "models": {}, "notes": [], "commands": []}
    for doc in documents:
        merged["results"] += doc["results"]
        merged["models"].update(doc["models"])
        merged["notes"] += [n for n in doc["notes"] if n not in merged["notes"]]
        merged["commands"].append(doc["command"])
    merged["command"] = command or " && ".join(merged["commands"])
    return merged
