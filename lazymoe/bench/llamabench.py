"""llama-bench's JSON imported as a CROSS-CHECK of the harness's llama.cpp rows, never instead of them.

The benchmark measures llama.cpp with its own runner (`lazymoe.bench.llamacpp`, the one lab09
teaches: same prompt ids, same protocol, peak VRAM and RSS measured). llama.cpp's own `llama-bench`
binary, built from the same source in the same run, times the same GGUF its own way; its output
(`-o json`) becomes one row labelled "(llama-bench cross-check)" with `"cross_check": true`, so a
reader sees whether the two agree:

    llama-bench -m model-bf16.gguf -p 32 -n 128 -r 3 -ngl 99 -ot "\\.ffn_(up|down|gate)_exps=CPU" \\
        -o json > llama-bench-cpumoe.json
    python -m lazymoe.bench.llamabench llama-bench-cpumoe.json --model qwen3-30b-a3b \\
        --routing model-own --into data/results/bench-h200-qwen3-30b-a3b.json --command "llama-bench -m ..."

llama-bench times each test on its own (field names as in tools/llama-bench/llama-bench.cpp):

    ppN (n_prompt = N, n_gen = 0):  samples_ts = N / seconds to process the N prompt tokens
    tgM (n_prompt = 0, n_gen = M):  samples_ts = M / seconds for M single-token decode steps,
                                    each step fed a random token (like sampled decoding)

    prefill_tok_s = median(samples_ts of ppN),  decode_tok_s = median(samples_ts of tgM)

It reports no peak VRAM or RSS, so those fields are None.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
from pathlib import Path

from lazymoe.bench.harness import SCHEMA, save

# `-ot PATTERN=CPU` on the expert tensors (llama-bench prints overrides as "pattern=BUFT;...")
EXPERTS_ON_CPU = re.compile(r"exps[^=;]*=CPU(;|$)")
DTYPES = {"BF16": "bfloat16", "F16": "float16", "all F32": "float32"}  # llama_ftype_name -> ours
# Fields of one llama-bench test that describe the configuration (kept under row["llama_bench"]).
# fmt: off
KEPT = ("build_commit", "build_number", "backends", "model_filename", "model_type", "model_size",
        "model_n_params", "n_threads", "n_batch", "n_ubatch", "n_gpu_layers", "n_cpu_moe",
        "tensor_buft_overrides", "flash_attn", "type_k", "type_v", "cpu_info", "gpu_info")
# Fields that must agree between the prefill and the decode test of one row.
SAME_CONFIG = ("model_filename", "n_threads", "n_gpu_layers", "n_cpu_moe", "tensor_buft_overrides",
               "flash_attn", "type_k", "type_v")
# fmt: on
NOTE = (
    "llama-bench reports no peak VRAM or RSS (None here); its tgN test feeds a random token "
    "per step and times N steps, its ppN test times the N prompt tokens alone"
)


def _read(path_or_text: str | Path) -> tuple[str, str]:
    """(name for messages, text): a Path or an existing file is read; other strings are the text."""
    if isinstance(path_or_text, Path) or (
        isinstance(path_or_text, str) and path_or_text.strip()[:1] not in ("[", "{", "")
    ):
        path = Path(path_or_text)
        if not path.is_file():
            raise ValueError(f"llama-bench output {path} does not exist")
        return str(path), path.read_text()
    return "<text>", path_or_text


def _tests(name: str, text: str) -> list[dict]:
    """The test objects of `-o json` (an array) or `-o jsonl` (one object a line)."""
    if not text.strip():
        raise ValueError(
            f"llama-bench output {name} is empty: did llama-bench fail before its "
            "first test? (its log goes to stderr)"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise ValueError(
                f"llama-bench output {name} is not valid JSON ({exc}): write it with "
                "`llama-bench ... -o json > FILE` (not 2>&1); a file without its closing ']' "
                "was cut short"
            ) from exc
    data = [data] if isinstance(data, dict) else data
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise ValueError(f"llama-bench output {name} is not a list of test objects")
    return data


def _samples_ts(name: str, test: dict) -> list[float]:
    """tokens/s of each repetition; from samples_ns where samples_ts is missing."""
    ts = test.get("samples_ts")
    if not ts and test.get("samples_ns"):
        tokens = test["n_prompt"] + test["n_gen"]
        ts = [1e9 * tokens / ns for ns in test["samples_ns"]]
    if not ts:
        raise ValueError(f"llama-bench output {name}: test {_test_name(test)} has no samples")
    return [float(x) for x in ts]


def _test_name(test: dict) -> str:
    return f"pp{test['n_prompt']}" if test["n_gen"] == 0 else f"tg{test['n_gen']}"


def _pick(name: str, tests: list[dict], kind: str) -> dict:
    """The one prefill (pp) or decode (tg) test of the file."""
    if kind == "prefill":
        found = [t for t in tests if t.get("n_prompt", 0) > 0 and t.get("n_gen", 0) == 0]
        fix = "run llama-bench with -p N"
        what = "prefill test (n_prompt > 0, n_gen = 0)"
    else:
        found = [t for t in tests if t.get("n_gen", 0) > 0 and t.get("n_prompt", 0) == 0]
        fix = "run llama-bench with -n N"
        what = "decode test (n_gen > 0, n_prompt = 0)"
    if not found:
        raise ValueError(f"llama-bench output {name} has no {what}: {fix}")
    if len(found) > 1:
        raise ValueError(
            f"llama-bench output {name} has {len(found)} {kind} tests "
            f"({', '.join(_test_name(t) for t in found)}): one row needs one "
            "configuration per file (a single -p, -n and setting of each option)"
        )
    return found[0]


def _placement(test: dict) -> tuple[str, str]:
    """(placement, label) from where llama-bench put the expert tensors."""
    overrides = str(test.get("tensor_buft_overrides", "none"))
    if test.get("n_cpu_moe", 0) > 0:
        return "cpu", f"llama.cpp --n-cpu-moe {test['n_cpu_moe']} (llama-bench cross-check)"
    if EXPERTS_ON_CPU.search(overrides):
        return "cpu", "llama.cpp --cpu-moe (llama-bench cross-check)"
    if test.get("backends") == "CPU" or test.get("n_gpu_layers") == 0:  # a CPU-only build or -ngl 0
        return "cpu", "llama.cpp on CPU (llama-bench cross-check)"
    return "gpu", "llama.cpp all on GPU (llama-bench cross-check)"


def _dtype(model_type: str) -> str:
    """Our dtype name from llama.cpp's model description ("qwen3moe 30B.A3B BF16")."""
    for ftype, dtype in DTYPES.items():
        if model_type.endswith(" " + ftype):
            return dtype
    return model_type.split(" ", 2)[-1]  # a quantized type, e.g. "Q4_K - Medium"


def parse_llama_bench(
    path_or_text: str | Path, *, model: str, routing: str, placement: str | None = None
) -> list[dict]:
    """One results row (a `lazymoe bench` results row) from llama-bench's `-o json` output.

    `path_or_text` is the file, or its text. `placement` is read from the output (experts on the
    CPU: "cpu", else "gpu"); passing it checks that the file is what you meant to measure.
    """
    name, text = _read(path_or_text)
    tests = _tests(name, text)
    pp, tg = _pick(name, tests, "prefill"), _pick(name, tests, "decode")
    differ = [f for f in SAME_CONFIG if pp.get(f) != tg.get(f)]
    if differ:
        raise ValueError(
            f"llama-bench output {name}: its prefill and decode tests ran different "
            f"configurations ({', '.join(differ)} differ): one configuration per file"
        )
    found, label = _placement(tg)
    if placement is not None and placement != found:
        raise ValueError(
            f"llama-bench output {name} ran placement {found!r} ({label}, overrides "
            f"{tg.get('tensor_buft_overrides')!r}), not {placement!r}"
        )
    pp_ts, tg_ts = _samples_ts(name, pp), _samples_ts(name, tg)
    kept = {f: tg[f] for f in KEPT if f in tg}
    cpu_moe = found == "cpu"
    return [
        {
            "model": model,
            "routing": routing,
            "dtype": _dtype(str(tg.get("model_type", ""))),
            "label": label,
            "engine": "llamacpp",
            "source": "llama-bench",
            "cross_check": True,  # the harness's own llama.cpp rows are the measurement
            "placement": found,
            "vram_budget_gb": None,
            "options": {
                "gguf_path": tg.get("model_filename"),
                "n_threads": tg.get("n_threads"),
                "n_gpu_layers": tg.get("n_gpu_layers"),
                "cpu_moe": cpu_moe,
                "flash_attn": tg.get("flash_attn"),
            },
            "prompt_tokens": pp["n_prompt"],
            "new_tokens": tg["n_gen"],
            "repeats": min(len(pp_ts), len(tg_ts)),
            "warmup": None,  # llama-bench warms up unless --no-warmup
            "prefill_tok_s": statistics.median(pp_ts),
            "decode_tok_s": statistics.median(tg_ts),
            "model_size_bytes": tg.get("model_size"),
            "peak_rss_bytes": None,
            "peak_vram_bytes": None,
            "vram_source": "not measured (llama-bench cross-check)",
            "llama_bench": {
                **kept,
                "n_depth": tg.get("n_depth", 0),
                "test_time": tg.get("test_time"),
                "samples": {
                    _test_name(t): {"samples_ns": t.get("samples_ns"), "samples_ts": ts}
                    for t, ts in ((pp, pp_ts), (tg, tg_ts))
                },
            },
            "note": NOTE,
            "ok": True,
        }
    ]


def _stamp(row: dict) -> tuple:
    """What makes a llama-bench row the same row: its label, model, routing and test time."""
    test_time = row.get("llama_bench", {}).get("test_time")
    return row.get("label"), row.get("model"), row.get("routing"), test_time


def merge_into(results_path: str | Path, rows: list[dict], *, command: str, note: str) -> dict:
    """Append `rows` to a results file of `lazymoe bench` (schema lazymoe.bench/N), with the command and a note.

    Written atomically (a temporary file beside it, then os.replace): an interrupted merge leaves
    the old file. Returns the new document.
    """
    path = Path(results_path)
    document = json.loads(path.read_text())
    family = SCHEMA.split("/")[0] + "/"  # lazymoe.bench/1 files (before routing regimes) too
    if not isinstance(document, dict) or not str(document.get("schema", "")).startswith(family):
        schema = document.get("schema") if isinstance(document, dict) else None
        raise ValueError(
            f"{path} has schema {schema!r}, not {family}N: merge llama-bench rows "
            "only into a results file written by `lazymoe bench`"
        )
    stamps = {_stamp(r) for r in document.get("results", []) if r.get("source") == "llama-bench"}
    for row in rows:
        if row.get("source") == "llama-bench" and _stamp(row) in stamps:
            raise ValueError(f"{path} already has this llama-bench row {_stamp(row)}")
    document.setdefault("results", []).extend(rows)
    if "commands" not in document:  # a single run's file: its own command comes first
        document["commands"] = [document["command"]] if document.get("command") else []
    document["commands"].append(command)
    document.setdefault("notes", [])
    if note not in document["notes"]:
        document["notes"].append(note)
    save(document, path)  # atomic: an interrupted merge leaves the old file
    return document


def reconstructed_command(row: dict) -> str:
    """An approximate llama-bench command from the fields it printed, when the real one is lost."""
    lb = row["llama_bench"]
    fa = {-1: "auto", 0: "off", 1: "on"}.get(lb.get("flash_attn"), "auto")
    command = (
        f"llama-bench -m {shlex.quote(str(lb.get('model_filename')))} -p {row['prompt_tokens']} "
        f"-n {row['new_tokens']} -r {row['repeats']} -t {lb.get('n_threads')} "
        f"-ngl {lb.get('n_gpu_layers')} -fa {fa}"
    )
    if lb.get("n_cpu_moe"):
        command += f" -ncmoe {lb['n_cpu_moe']}"
    if lb.get("tensor_buft_overrides", "none") != "none":
        command += f" -ot {shlex.quote(lb['tensor_buft_overrides'])}"
    return command + " -o json  # reconstructed from its output"


def main(argv: list[str] | None = None) -> int:
    from lazymoe.bench import report

    parser = argparse.ArgumentParser(
        prog="python -m lazymoe.bench.llamabench",
        description="Merge llama-bench -o json output into a results file.",
    )
    parser.add_argument("file", help="llama-bench -o json output")
    parser.add_argument("--model", required=True, help="the model name used in the results file")
    parser.add_argument("--routing", required=True, choices=["model-own", "uniform", "zipf", "trained"],
                        help="model-own: the model's own routers (llama.cpp cannot replay a trace)")
    parser.add_argument(
        "--into",
        required=True,
        metavar="RESULTS.json",
        help="a results file of `lazymoe bench` (schema lazymoe.bench/N)",
    )
    parser.add_argument("--command", default=None, help="the exact llama-bench command that ran")
    parser.add_argument("--note", default=None, help="a note stored with the results")
    args = parser.parse_args(argv)
    try:
        rows = parse_llama_bench(Path(args.file), model=args.model, routing=args.routing)
        command = args.command or reconstructed_command(rows[0])
        note = (
            f"{rows[0]['label']} ({args.model}, {args.routing}) from {Path(args.file).name}: "
            f"{NOTE}." + (f" {args.note}" if args.note else "")
        )
        document = merge_into(args.into, rows, command=command, note=note)
    except (ValueError, OSError) as exc:
        print(f"llamabench: {exc}", file=sys.stderr)
        return 2
    if args.model not in document.get("models", {}):
        print(
            f"llamabench: warning: {args.model!r} is not among {args.into}'s models "
            f"({', '.join(document.get('models', {})) or 'none'}): no roofline bound for it",
            file=sys.stderr,
        )
    print(report.table({**document, "results": rows}))
    print(f"\nadded {len(rows)} row(s) to {args.into}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
