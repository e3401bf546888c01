"""The benchmark harness: the same model and the same prompt ids through every engine, one process each.

    plan = BenchPlan(models=[ModelEntry.from_dir(path)], vram_budgets_gb=[5, 8, 12])
    results = run_plan(plan, out_path="data/results/bench-mymachine.json")

An honest comparison (module 07): the same weights at the same bits (lazymoe reads the
safetensors, llama.cpp the GGUF written from them), the same prompt token ids, the same number of
new tokens (greedy; or seeded sampling with `temperature` > 0, for random-weight models whose
greedy output repeats one token), a warm-up before the timed runs, medians, and the machine,
library versions and exact command stored beside the numbers.
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
from lazymoe.bench.measure import library_versions
from lazymoe.bench.shapes import ModelShape

SCHEMA = "lazymoe.bench/1"
GB = 1e9
ENGINE_CHOICES = ("llamacpp-cpu-moe", "llamacpp-gpu", "lazymoe", "hf-full", "hf-offload")
PROMPT_TEXT = (
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n"
    "    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "The memory bandwidth of a machine sets how fast it can decode: every new token reads "
    "every active weight once. "
)
GGUF_TYPE = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


@dataclass
class ModelEntry:
    """One model, as a Hugging Face folder (for lazymoe and transformers) and a GGUF of the same bits."""

    name: str
    model_dir: str
    gguf_path: str | None
    routing: str = "trained"  # trained | uniform | zipf (random-weight benchmark models)
    dtype: str = "float32"

    @classmethod
    def from_dir(cls, model_dir: str | Path, dtype: str | None = None, name: str | None = None) -> ModelEntry:
        model_dir = Path(model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        bench = config.get("lazymoe_bench", {})
        ggufs = sorted(model_dir.glob("*.gguf"))
        dtype = dtype or ("bfloat16" if bench else "float32")
        return cls(name=name or bench.get("shape") or model_dir.name, model_dir=str(model_dir),
                   gguf_path=str(ggufs[0]) if ggufs else None,
                   routing=bench.get("routing", "trained"), dtype=dtype)

    def shape(self) -> ModelShape:
        return ModelShape.from_config(json.loads((Path(self.model_dir) / "config.json").read_text()),
                                      self.name)


@dataclass
class BenchPlan:
    """What to run. `vram_budgets_gb` applies to lazymoe (and the accelerate baseline) on a GPU."""

    models: list[ModelEntry]
    engines: tuple[str, ...] = ENGINE_CHOICES
    placements: tuple[str, ...] = ("gpu", "cpu", "auto")
    decodes: tuple[str, ...] = ("auto",)  # lazymoe decode paths on a GPU (EngineConfig.decode)
    kernels: tuple[str, ...] = ("auto",)  # lazymoe expert kernels on a GPU (EngineConfig.kernel)
    pin_checkpoint: bool = False  # lazymoe on a GPU: EngineConfig.pin_checkpoint, labelled "pinned file"
    vram_budgets_gb: tuple[float, ...] = (5.0, 8.0, 12.0)
    prompt_tokens: int = 64
    new_tokens: int = 32
    repeats: int = 3
    warmup: int = 1
    n_threads: int | None = None
    gpu: bool | None = None  # None: detect
    timeout_s: float = 1800.0
    include_resident: bool = True  # on a GPU, also lazymoe with every expert resident (no budget)
    # 0: greedy. > 0: sample (seeded). Random-weight models decode one token over and over when
    # greedy, so every step routes alike; sampling gives the varied tokens real text has.
    temperature: float = 0.0
    seed: int = 0
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = set(self.engines) - set(ENGINE_CHOICES)
        if unknown:
            raise ValueError(f"unknown engines {sorted(unknown)}: choose from {ENGINE_CHOICES}")
        if self.prompt_tokens < 1 or self.new_tokens < 2 or self.repeats < 1:
            raise ValueError("need prompt_tokens >= 1, new_tokens >= 2 and repeats >= 1")
        if self.gpu is None:
            self.gpu = _cuda_available()


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


def prompt_ids(model_dir: str | Path, n_tokens: int) -> list[int]:
    """The fixed prompt, tokenized by the model's own tokenizer, cut or repeated to n_tokens."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json")).encode(PROMPT_TEXT).ids
    return (ids * (n_tokens // len(ids) + 1))[:n_tokens]


def ensure_gguf(entry: ModelEntry, cache_dir: Path) -> str | None:
    """The entry's GGUF; exported from its safetensors (same bits) into cache_dir if missing."""
    if entry.gguf_path:
        return entry.gguf_path
    try:
        from lazymoe.models.gguf_export import export_gguf
    except ImportError:
        return None
    out = cache_dir / f"{entry.name}-{GGUF_TYPE[entry.dtype]}.gguf"
    if not out.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        export_gguf(entry.model_dir, out, out_type=GGUF_TYPE[entry.dtype])
    entry.gguf_path = str(out)
    return entry.gguf_path


def build_specs(plan: BenchPlan, llama_ok: bool) -> list[dict]:
    """One spec per (model, engine configuration): what each worker process runs."""
    specs = []
    for entry in plan.models:
        ids = prompt_ids(entry.model_dir, plan.prompt_tokens)
        common = {"model": entry.name, "routing": entry.routing, "dtype": entry.dtype, "prompt_ids": ids,
                  "new_tokens": plan.new_tokens, "repeats": plan.repeats, "warmup": plan.warmup,
                  "temperature": plan.temperature, "seed": plan.seed}

        def add(label: str, engine: str, options: dict, budget_gb: float | None, placement: str,
                common=common) -> None:
            specs.append({**common, "label": label, "engine": engine, "placement": placement,
                          "vram_budget_gb": budget_gb, "options": options})

        llama = {"gguf_path": entry.gguf_path, "n_threads": plan.n_threads,
                 "n_ctx": max(256, plan.prompt_tokens + plan.new_tokens + 16)}
        llama_here = llama_ok and bool(entry.gguf_path)
        if llama_here and "llamacpp-cpu-moe" in plan.engines:
            add("llama.cpp --cpu-moe", "llamacpp", {**llama, "cpu_moe": True}, None, "cpu")
        if "lazymoe" in plan.engines:
            base = {"model_path": entry.model_dir, "dtype": entry.dtype}
            if plan.gpu:  # budgets outer: the first budget's row of every placement comes first
                for budget in plan.vram_budgets_gb:
                    for placement in plan.placements:
                        for decode, kernel in itertools.product(plan.decodes, plan.kernels):
                            label = f"lazymoe {placement}" + ("" if decode == "auto" else f" ({decode})")
                            label += "" if kernel == "auto" else f" [{kernel}]"
                            label += ", pinned file" if plan.pin_checkpoint else ""
                            add(label, "lazymoe", {**base, "placement": placement, "decode": decode,
                                "kernel": None if kernel == "auto" else kernel,
                                "pin_checkpoint": plan.pin_checkpoint,
                                "vram_budget": int(budget * GB), "device": "cuda"}, budget, placement)
                if plan.include_resident:
                    add("lazymoe all resident", "lazymoe", {**base, "device": "cuda"}, None, "gpu")
            else:
                add("lazymoe (CPU)", "lazymoe", {**base, "device": "cpu", "placement": "cpu"}, None, "cpu")
        if llama_here and "llamacpp-gpu" in plan.engines and plan.gpu:
            add("llama.cpp all on GPU", "llamacpp", {**llama, "cpu_moe": False}, None, "gpu")
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
        "models": {e.name: {**dataclasses.asdict(e), "shape": dataclasses.asdict(e.shape()),
                            "bytes": e.shape().nbytes(e.dtype)} for e in plan.models},
        "protocol": {"prompt_tokens": plan.prompt_tokens, "new_tokens": plan.new_tokens,
                     "repeats": plan.repeats, "warmup": plan.warmup,
                     "decoding": ("greedy" if plan.temperature == 0 else
                                  f"sampled at temperature {plan.temperature}, seed {plan.seed}") + ", no stop token",
                     "statistic": "median of the timed runs", "gpu": plan.gpu},
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
