"""llama.cpp at its best for a VRAM limit: the smallest `--n-cpu-moe N` that fits, and the best `-t`.

A user with V bytes of VRAM runs llama.cpp with `-ngl 99 --n-cpu-moe N`: the experts of the first N
layers stay in CPU memory, the rest use the GPU. Fewer layers on the CPU is faster, so the best N
is the smallest whose peak VRAM is at most V. Peak VRAM only grows as N shrinks, so a binary search
finds it in about log2(layers) loads. Each probe is one worker process (its own peak VRAM and RSS)
running a short protocol (one run of 16 tokens: enough for the peaks and to rank thread counts);
the chosen configurations then run the document's full protocol for the rows.

    python -m lazymoe.bench.llamacpp_tune RESULTS.json --gguf MODEL.gguf [--threads 4 8 16]
    python -m lazymoe.bench.llamacpp_tune RESULTS.json    # rows of a GGUF file: llama.cpp reads it too

reads a `lazymoe bench` results file, tunes llama.cpp's thread count at `--cpu-moe`, then for each
lazymoe row's peak VRAM adds the VRAM-matched llama.cpp row (and the `--cpu-moe` row at the best
thread count) to the same file, with every probe recorded under "llama_tuning".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

# measure(n_cpu_moe, n_threads) -> a worker result: "ok", "peak_vram_bytes", "decode_tok_s", ...
Measure = Callable[[int, int], dict]


@dataclass
class Probe:
    n_cpu_moe: int
    n_threads: int
    ok: bool
    peak_vram_bytes: int | None
    decode_tok_s: float | None
    error: str = ""


@dataclass
class NSearch:
    """The smallest N whose peak VRAM is at most the limit (None: not even N = every layer fits)."""

    vram_limit_bytes: int
    n_cpu_moe: int | None
    result: dict | None  # the worker result at that N
    probes: list[Probe] = field(default_factory=list)


def _probe(measure: Measure, n: int, threads: int) -> tuple[Probe, dict]:
    result = measure(n, threads)
    probe = Probe(n, threads, bool(result.get("ok")), result.get("peak_vram_bytes"),
                  result.get("decode_tok_s"), str(result.get("error", ""))[:300])
    return probe, result


def fits(probe: Probe, vram_limit_bytes: int) -> bool:
    """A run that failed (out of memory, say) does not fit; nor one whose VRAM was not measured."""
    return probe.ok and probe.peak_vram_bytes is not None and probe.peak_vram_bytes <= vram_limit_bytes


def smallest_n_cpu_moe(measure: Measure, n_layers: int, vram_limit_bytes: int, n_threads: int,
                       guess: int | None = None) -> NSearch:
    """Binary search over N in 0..n_layers, starting at `guess` (e.g. from the calculator)."""
    if n_layers < 1 or vram_limit_bytes <= 0:
        raise ValueError(f"need n_layers >= 1 and a positive VRAM limit (got {n_layers}, {vram_limit_bytes})")
    search = NSearch(vram_limit_bytes, None, None)
    lo, hi = 0, n_layers  # the answer, if any, is in lo..hi
    best: tuple[int, dict] | None = None
    mid = min(max(guess, 0), n_layers) if guess is not None else (lo + hi) // 2
    while lo <= hi:
        probe, result = _probe(measure, mid, n_threads)
        search.probes.append(probe)
        if fits(probe, vram_limit_bytes):
            best, hi = (mid, result), mid - 1
        else:
            lo = mid + 1
        mid = (lo + hi) // 2
    if best is not None:
        search.n_cpu_moe, search.result = best
    return search


def thread_candidates(physical_cores: int, logical_cpus: int | None = None) -> list[int]:
    """Half and all of the physical cores, and every logical CPU (each probe is a model load)."""
    cores = max(1, physical_cores)
    return sorted({max(1, cores // 2), cores} | ({logical_cpus} if logical_cpus else set()))


def best_threads(measure: Measure, n_cpu_moe: int, candidates: list[int]) -> tuple[int | None, list[Probe]]:
    """The thread count with the highest decode tok/s among the runs that worked (None: none did)."""
    probes = [_probe(measure, n_cpu_moe, t)[0] for t in candidates]
    good = [p for p in probes if p.ok and p.decode_tok_s]
    return (max(good, key=lambda p: p.decode_tok_s).n_threads if good else None), probes


def worker_measure(template: dict, timeout_s: float, short: bool = False) -> Measure:
    """Runs as the harness runs rows: one fresh worker process per (N, threads).
    short: one run of 16 new tokens, no warm-up (a probe), else the template's protocol."""
    from lazymoe.bench.harness import run_spec_in_process

    protocol = {"repeats": 1, "warmup": 0, "new_tokens": min(16, template["new_tokens"])} if short else {}

    def measure(n: int, threads: int) -> dict:
        spec = {**template, **protocol,
                "options": {**template["options"], "n_cpu_moe": n, "n_threads": threads}}
        return run_spec_in_process(spec, timeout_s)

    return measure


def _template(doc: dict, gguf: str | None) -> tuple[dict, int]:
    """A llama.cpp spec like the document's lazymoe rows (same model, prompt, protocol), and the
    model's layer count. Rows that read a GGUF file: llama.cpp reads that same file."""
    from lazymoe.bench.entry import model_config
    from lazymoe.bench.harness import prompt_ids

    row = next(r for r in doc["results"] if r.get("engine") == "lazymoe" and r.get("ok"))
    model_dir = row["options"]["model_path"]  # a folder, or the GGUF file both engines read
    n_layers = model_config(model_dir)["num_hidden_layers"]
    if gguf is None or str(model_dir).lower().endswith(".gguf"):
        if not str(model_dir).lower().endswith(".gguf"):
            raise ValueError(f"the lazymoe rows read the folder {model_dir}: give --gguf, the GGUF "
                             "of the same weights")
        if gguf is not None and Path(gguf).resolve() != Path(model_dir).resolve():
            raise ValueError(f"the lazymoe rows read {model_dir}, so llama.cpp must read that same "
                             f"file, not {gguf}: leave --gguf out")
        gguf = str(model_dir)
    keep = ("model", "dtype", "new_tokens", "repeats", "warmup", "temperature", "seed", "weights")
    template = {k: row[k] for k in keep if k in row}
    template.update(engine="llamacpp", routing="model-own", vram_budget_gb=None,
                    prompt_ids=prompt_ids(model_dir, row["prompt_tokens"]),
                    options={"gguf_path": gguf, "cpu_moe": True, "n_gpu_layers": -1,
                             "n_ctx": max(256, row["prompt_tokens"] + row["new_tokens"] + 16)})
    return template, n_layers


def _row(result: dict, label: str, n_cpu_moe: int, n_layers: int, note: str) -> dict:
    options = {**result.get("options", {}), "cpu_moe": n_cpu_moe >= n_layers}
    return {**result, "label": label, "placement": "cpu", "options": options, "note": note}


def tune_document(doc: dict, gguf: str | None, threads: list[int] | None, timeout_s: float,
                  measure: Measure | None = None, probe: Measure | None = None) -> dict:
    """Add the tuned llama.cpp rows to a results document (returned; the input is not changed).
    `probe` searches (short runs), `measure` makes the rows (the full protocol)."""
    import psutil

    template, n_layers = _template(doc, gguf)
    measure = measure or worker_measure(template, timeout_s)
    probe = probe or worker_measure(template, timeout_s, short=True)
    candidates = threads or thread_candidates(psutil.cpu_count(logical=False) or 1, psutil.cpu_count())
    best_t, thread_probes = best_threads(probe, n_layers, candidates)
    tuning = {"thread_candidates": candidates, "best_threads": best_t,
              "thread_probes": [asdict(p) for p in thread_probes], "searches": []}
    rows = []
    if best_t is not None:
        _, cpu_moe = _probe(measure, n_layers, best_t)
        rows.append(_row(cpu_moe, f"llama.cpp --cpu-moe -t {best_t}", n_layers, n_layers,
                         f"thread count tuned over {candidates}"))
        limits = sorted({r["peak_vram_bytes"] for r in doc["results"]
                         if r.get("engine") == "lazymoe" and r.get("ok") and r.get("peak_vram_bytes")})
        guess = None
        for limit in limits:  # smallest first: each answer is a good first guess for the next
            search = smallest_n_cpu_moe(probe, n_layers, limit, best_t, guess=guess)
            tuning["searches"].append({"vram_limit_bytes": limit, "n_cpu_moe": search.n_cpu_moe,
                                       "probes": [asdict(p) for p in search.probes]})
            if search.result is not None:
                n = guess = search.n_cpu_moe
                rows.append(_row(measure(n, best_t), f"llama.cpp --n-cpu-moe {n} -t {best_t} "
                                 f"(VRAM <= {limit / 1e9:.1f} GB)", n, n_layers,
                                 f"smallest --n-cpu-moe whose peak VRAM is at most lazymoe's "
                                 f"{limit / 1e9:.2f} GB"))
    return {**doc, "results": [*doc["results"], *rows], "llama_tuning": tuning}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lazymoe.bench.llamacpp_tune", description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a `lazymoe bench` results file with lazymoe rows (updated in place)")
    parser.add_argument("--gguf", default=None, help="the GGUF of the same weights (default: the "
                        "GGUF file the lazymoe rows read, when they read one)")
    parser.add_argument("--threads", type=int, nargs="*", help="thread counts to try (default: from the cores)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per probe")
    args = parser.parse_args(argv)
    path = Path(args.results)
    import shlex
    import sys

    from lazymoe.bench.harness import save

    doc = tune_document(json.loads(path.read_text()), args.gguf, args.threads, args.timeout)
    if "commands" not in doc:  # a single run's file: its own command comes first
        doc["commands"] = [doc["command"]] if doc.get("command") else []
    doc["commands"].append(shlex.join(["python -m lazymoe.bench.llamacpp_tune", *(argv or sys.argv[1:])]))
    save(doc, path)
    tuning = doc["llama_tuning"]
    print(f"best -t {tuning['best_threads']}; " + "; ".join(
        f"VRAM <= {s['vram_limit_bytes'] / 1e9:.2f} GB: --n-cpu-moe {s['n_cpu_moe']}" for s in tuning["searches"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
