"""`lazymoe bench`: run the harness (or print a saved result's table).

    lazymoe bench                                  # the bundled tiny model, every engine present
    lazymoe bench --model DIR --budgets 5 8 12 --out data/results/mine.json
    lazymoe bench --report data/results/*.json     # tables of saved results
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from pathlib import Path

from lazymoe.bench.harness import ENGINE_CHOICES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=None, metavar="DIR",
                        help="a model folder (config.json, safetensors, tokenizer.json; a *.gguf of "
                             "the same weights beside them, else one is exported). Repeatable. "
                             "Default: the bundled tiny model")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="compute dtype for lazymoe/transformers and the GGUF type (default: "
                             "float32 for the bundled model, bfloat16 for benchmark-shape models)")
    parser.add_argument("--engines", nargs="+", default=list(ENGINE_CHOICES), choices=ENGINE_CHOICES)
    parser.add_argument("--placements", nargs="+", default=["gpu", "cpu", "auto"],
                        choices=["gpu", "cpu", "auto"], help="lazymoe placements (GPU machines)")
    parser.add_argument("--decodes", nargs="+", default=["auto"],
                        choices=["auto", "model", "segments", "graphs"],
                        help="lazymoe decode paths on a GPU (auto: CUDA graphs where they apply)")
    parser.add_argument("--kernels", nargs="+", default=["auto"], choices=["auto", "batched", "fused"],
                        help="lazymoe expert kernels on a GPU (auto: fused where Triton runs)")
    parser.add_argument("--pin-checkpoint", action="store_true",
                        help="lazymoe on a GPU: page-lock the mapped expert files (EngineConfig.pin_checkpoint)")
    parser.add_argument("--budgets", nargs="+", type=float, default=[5.0, 8.0, 12.0], metavar="GB",
                        help="VRAM budgets for lazymoe, in GB (1e9 bytes)")
    parser.add_argument("--no-resident", action="store_true",
                        help="on a GPU, skip lazymoe with every expert resident")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0: greedy (default). >0: seeded sampling, for random-weight models, whose "
                             "greedy output repeats one token so every step routes alike")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (with --temperature)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for llama.cpp")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per configuration")
    parser.add_argument("--note", action="append", default=[], help="a note stored with the results")
    parser.add_argument("--out", default=None, help="results JSON (default: ~/.lazymoe/bench/...)")
    parser.add_argument("--report", nargs="+", default=None, metavar="JSON",
                        help="print the tables of saved results instead of running")


def run(args: argparse.Namespace) -> int:
    from lazymoe.bench import report

    if args.report:
        return report.main(args.report)
    from lazymoe import paths
    from lazymoe.bench.harness import BenchPlan, ModelEntry, run_plan

    model_dirs = args.model or [str(paths.bundled_model_dir())]
    for model_dir in model_dirs:
        if not (Path(model_dir) / "config.json").is_file():
            print(f"lazymoe bench: {model_dir} has no config.json. Give a model folder, or build the "
                  "bundled one with `python -m lazymoe.models.prepare`.", file=sys.stderr)
            return 2
    plan = BenchPlan(
        models=[ModelEntry.from_dir(d, dtype=args.dtype) for d in model_dirs],
        engines=tuple(args.engines), placements=tuple(args.placements), decodes=tuple(args.decodes), kernels=tuple(args.kernels),
        pin_checkpoint=args.pin_checkpoint,
        vram_budgets_gb=tuple(args.budgets), prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens, repeats=args.repeats, warmup=args.warmup,
        n_threads=args.threads, timeout_s=args.timeout, notes=list(args.note),
        include_resident=not args.no_resident, temperature=args.temperature, seed=args.seed,
    )
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out) if args.out else paths.home_dir() / "bench" / f"results-{stamp}.json"
    command = "lazymoe bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 1 and sys.argv[1] == "bench" else shlex.join(sys.argv)
    document = run_plan(plan, out_path=out, command=command)
    print(report.table(document))
    for note in document["notes"]:
        print(f"note: {note}")
    print(f"\nresults: {out}")
    return 0 if any(r.get("ok") for r in document["results"]) else 1
