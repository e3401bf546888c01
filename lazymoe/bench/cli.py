"""`lazymoe bench`: run the harness (or print a saved result's table).

    lazymoe bench                                  # the bundled tiny model, every engine present
    lazymoe bench --model DIR --vram-budget 5GB 8GB 12GB --out data/results/mine.json
    lazymoe bench DIR1 DIR2 --engines lazymoe      # model folders given first, as --model DIR1 DIR2
    lazymoe bench --model model-q4_0.gguf          # one quantized file for lazymoe and llama.cpp
    lazymoe bench --report data/results/*.json     # tables of saved results
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from pathlib import Path

from lazymoe.bench.harness import ENGINE_CHOICES, ROUTING_CHOICES
from lazymoe.bench.routing import REGIMES
from lazymoe.engine.options import ModelPathError, add_engine_arguments, check_model_path, same_path
from lazymoe.i18n import _

# Engine options the bench sweeps: each takes several values, one row per combination
# (lazymoe.bench.harness.build_specs). On a CPU-only machine lazymoe runs once, all resident.
BENCH_SWEEP = ("model_path", "placement", "decode", "kernel", "vram_budget", "cpu_activations",
               "fetch_per_layer")
# Where the bench's defaults differ from `lazymoe run`'s, and why:
BENCH_DEFAULTS = {
    # compare every placement, not only the default one
    "placement": ["fetch", "cpu", "auto"],
    # three cache sizes for the decode-speed-against-budget curve; decimal GB, as the committed
    # results (data/results) were measured
    "vram_budget": ["5GB", "8GB", "12GB"],
    # per model: float32 for the bundled model, bfloat16 for benchmark-shape models (the same
    # bits as the GGUF that llama.cpp reads); also the transformers baselines' and GGUF's dtype
    "dtype": None,
}
OLD_SWEEP_FLAGS = {"placement": "--placements", "decode": "--decodes", "kernel": "--kernels"}
# Fields the plan carries itself (swept, per model, or set per row by the harness)
PLAN_FIELDS = (*BENCH_SWEEP, "dtype", "device", "pin_checkpoint")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help=_("model folders or .gguf files, the same as --model (one row set per model)"))
    parser.add_argument("--engines", nargs="+", default=list(ENGINE_CHOICES), choices=ENGINE_CHOICES)
    lazymoe = parser.add_argument_group(
        _("engine options (the same as `lazymoe run`'s; the swept ones take several values)"),
        _("--model: model folders (config.json, safetensors, tokenizer.json; a *.gguf of the same "
        "weights beside them, else one is exported), used by every engine; or .gguf files, which "
        "lazymoe (experts kept quantized) and llama.cpp both read (transformers is skipped: it "
        "would compute dequantized floats). --dtype: also the "
        "GGUF's and the transformers baselines' (default: float32 for the bundled model, "
        "bfloat16 for benchmark-shape models). The other options apply to lazymoe's rows."))
    add_engine_arguments(lazymoe, sweep=BENCH_SWEEP, defaults=BENCH_DEFAULTS, aliases=OLD_SWEEP_FLAGS)
    lazymoe.add_argument("--budgets", nargs="+", type=float, default=None, metavar="GB",
                         dest="budgets_gb", help=_("old spelling of --vram-budget in GB (10**9 bytes): "
                         "--budgets 5 8 is --vram-budget 5GB 8GB"))
    parser.add_argument("--no-resident", action="store_true",
                        help=_("on a GPU, skip lazymoe with every expert resident"))
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128,
                        help=_("generated tokens per run, after the prompt (llama-bench's tg128)"))
    parser.add_argument("--routing", nargs="+", default=list(REGIMES), choices=ROUTING_CHOICES,
                        help=_("lazymoe's routing, one row each (lazymoe.bench.routing): independent "
                             "(uniform draws, the worst case), real-text (calibrated to a measurement "
                             "of real routing), zipf (static skew), model-own (the model's own routers; "
                             "random weights reuse experts far more than real text)"))
    parser.add_argument("--temperature", type=float, default=0.0,
                        help=_("0: greedy (default). >0: seeded sampling, for random-weight models, whose "
                             "greedy output repeats one token so every step routes alike"))
    parser.add_argument("--seed", type=int, default=0, help=_("sampling seed (with --temperature)"))
    parser.add_argument("--repeats", type=int, default=3, help=_("timed runs; the median is reported"))
    parser.add_argument("--warmup", type=int, default=1, help=_("untimed runs first"))
    parser.add_argument("--threads", type=int, default=None, help=_("CPU threads for llama.cpp"))
    parser.add_argument("--timeout", type=float, default=1800.0, help=_("seconds per configuration"))
    parser.add_argument("--note", action="append", default=[], help=_("a note stored with the results"))
    parser.add_argument("--out", default=None, help=_("results JSON (default: ~/.lazymoe/bench/...)"))
    parser.add_argument("--report", nargs="+", default=None, metavar="JSON",
                        help=_("print the tables of saved results instead of running"))


def run(args: argparse.Namespace) -> int:
    from lazymoe.bench import report

    if args.report:
        return report.main(args.report)
    from lazymoe import paths
    from lazymoe.bench.harness import GB, BenchPlan, ModelEntry, run_plan
    from lazymoe.engine.config import parse_bytes
    from lazymoe.engine.storage.gguf_config import GGUFError

    if args.budgets_gb:
        if args.vram_budget is not BENCH_DEFAULTS["vram_budget"]:
            print("lazymoe bench: give --vram-budget or the old --budgets, not both", file=sys.stderr)
            return 2
        args.vram_budget = [f"{gb:g}GB" for gb in args.budgets_gb]
    try:
        model_paths = bench_model_paths(args.models, args.model_path) or [str(paths.bundled_model_dir())]
    except ModelPathError as exc:
        print(f"lazymoe bench: {exc}", file=sys.stderr)
        return 2
    for model_path in model_paths:
        if Path(model_path).is_dir() and not (Path(model_path) / "config.json").is_file():
            print(f"lazymoe bench: {model_path} has no config.json. Give a model folder or a .gguf "
                  "file, or build the bundled model with `python -m lazymoe.models.prepare`.",
                  file=sys.stderr)
            return 2
    try:
        models = [ModelEntry.from_path(p, dtype=args.dtype) for p in model_paths]
    except GGUFError as exc:  # a broken or non-MoE .gguf: said before any row runs
        print(f"lazymoe bench: {exc}", file=sys.stderr)
        return 2
    try:
        shared = lazymoe_options(args, models)
    except (ValueError, FileNotFoundError) as exc:
        print(f"lazymoe bench: {exc}", file=sys.stderr)
        return 2
    plan = BenchPlan(
        models=models, engines=tuple(args.engines), lazymoe_options=shared,
        placements=tuple(args.placement), decodes=tuple(args.decode), kernels=tuple(args.kernel),
        pin_checkpoint=args.pin_checkpoint, cpu_activations=tuple(args.cpu_activations),
        fetch_per_layer=tuple(args.fetch_per_layer or (None,)),
        vram_budgets_gb=tuple(parse_bytes(b) / GB for b in args.vram_budget),
        prompt_tokens=args.prompt_tokens, gpu=None if args.device == "auto" else args.device == "cuda",
        new_tokens=args.new_tokens, repeats=args.repeats, warmup=args.warmup,
        n_threads=args.threads, timeout_s=args.timeout, notes=list(args.note),
        include_resident=not args.no_resident, temperature=args.temperature, seed=args.seed,
        routings=tuple(args.routing),
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


def bench_model_paths(positional: list[str], flag: list[str] | None) -> list[str]:
    """The models from the positional words and --model (either, or both when they agree): model
    folders, or .gguf files (lazymoe and llama.cpp read the same file; `ModelEntry.from_gguf`)."""
    flag = list(flag or [])
    if positional and flag and not (len(positional) == len(flag)
                                    and all(map(same_path, positional, flag))):
        raise ModelPathError(f"two lists of models: {' '.join(positional)} and --model "
                             f"{' '.join(flag)}: give them one way")
    return [str(check_model_path(word)) for word in positional or flag]


def lazymoe_options(args: argparse.Namespace, models: list) -> dict:
    """The engine options every lazymoe row shares (`BenchPlan.lazymoe_options`), checked now, on
    every model and every swept value, so a bad flag fails before a long run, not in each row."""
    from lazymoe.engine import EngineConfig

    first = {name: (getattr(args, name) or [None])[0] for name in BENCH_SWEEP if name != "model_path"}
    for entry in models:
        config = EngineConfig.from_args(args, **first, model_path=entry.model_path, dtype=entry.dtype)
    for fetch in (args.fetch_per_layer or [])[1:]:  # the swept values past the first, by the config
        EngineConfig.from_args(args, **{**first, "fetch_per_layer": fetch},
                               model_path=models[0].model_path, dtype=models[0].dtype)  # fmt: skip
    return {k: v for k, v in config.cli_values().items() if k not in PLAN_FIELDS}
