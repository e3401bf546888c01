"""Merge one device session's results for one model shape into one file and print its table.

    python scripts/gpu/merge_results.py RESULTS_DIR SHAPE OUT_NAME "SCRIPT"

Reads RESULTS_DIR/SHAPE--*.json (one `lazymoe bench` document per step) and the raw llama-bench
outputs RESULTS_DIR/llama_bench_SHAPE--{cpumoe,gpu}-ROUTING.json, writes RESULTS_DIR/OUT_NAME and
RESULTS_DIR/table-SHAPE.md. Used by pipeline_session.sh and pipeline_pin.sh.
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

from lazymoe.bench import harness, llamabench, report

NOTE = "llama.cpp rows from its llama-bench binary (CMake build of the vendored source, sm_90), same GGUF bits"


def main(results: str, shape: str, out_name: str, script: str) -> None:
    docs = [json.loads(Path(p).read_text()) for p in sorted(glob.glob(f"{results}/{shape}--*.json"))]
    if not docs:
        sys.exit(f"{shape}: no results in {results}")
    out = f"{results}/{out_name}"
    runs = " ; ".join(d["command"] for d in docs)
    harness.save(harness.merge(docs, command=f"{script} (runs: {runs})"), out)
    for path in sorted(glob.glob(f"{results}/llama_bench_{shape}--*.json")):
        name = path.split("--", 1)[1][: -len(".json")]  # e.g. cpumoe-uniform
        cpu_moe, routing = name.startswith("cpumoe"), name.split("-")[-1]
        args = '-ot "ffn_(up|down|gate)_exps=CPU" ' if cpu_moe else ""
        try:
            rows = llamabench.parse_llama_bench(path, model=shape, routing=routing)
            llamabench.merge_into(out, rows, note=NOTE,
                                  command=f"llama-bench -m model-bf16.gguf -ngl 99 {args}-p 32 -n 16 -r 3 -o json")
        except Exception as e:  # a failed llama-bench run: its .err file says why
            print("llama-bench", name, "not merged:", e)
    table = report.table(json.loads(Path(out).read_text()))
    Path(f"{results}/table-{shape}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main(*sys.argv[1:5])
