"""Where does a decode step's time go? Engine decode on the GPU, with and without misses.

    python -m lazymoe.bench.profile --layers 8 --model DIR --hf --out /tmp/prof.json
    python -m lazymoe.bench.profile --kernel batched fused --decode graphs --vram-budget 1GiB 2GiB

Writes Qwen3-30B-A3B shapes with fewer layers to --model DIR when it holds no model yet (random
BF16 weights; the per-layer work is the real one), then for each combination of the swept engine
options (--kernel, --decode, and the budgets): milliseconds per decoded token and per layer, GPU
kernel time per token (torch.profiler), kernel launches per layer, and the ops that cost the host
most. The "every expert resident" row is the floor that expert bookkeeping adds nothing to;
transformers' own model on the GPU (its experts loop) is measured too with --hf.

The engine options are `lazymoe run`'s (`lazymoe.engine.options`); the defaults this profile
changes are in PROFILE_DEFAULTS. Budgets: --vram-budget takes sizes for the model as written (as
`lazymoe run` does); --budgets takes GB of the full 48-layer model, scaled to --layers, or "all".
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from lazymoe.engine.config import EngineConfig


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def decode_ms(stream_factory, n_tokens: int, repeats: int = 3) -> float:
    """Median over runs of milliseconds per decoded token (first token, the prefill, excluded)."""
    times = []
    for _ in range(repeats):
        it = stream_factory(n_tokens + 1)
        next(it)
        _sync()
        start = time.perf_counter()
        count = sum(1 for _ in it)
        _sync()
        times.append((time.perf_counter() - start) / count * 1e3)
    return statistics.median(times)


def profile_tokens(stream_factory, n_tokens: int, layers: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    it = stream_factory(n_tokens + 1)
    next(it)
    _sync()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])) as prof:
        count = sum(1 for _ in it)
        _sync()
    events = prof.key_averages()
    kernels = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    gpu_us = sum(e.self_device_time_total for e in kernels)
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    top = sorted((e for e in events if e.key.startswith(("aten::", "cuda"))), key=lambda e: -e.self_cpu_time_total)
    return {
        "gpu_kernel_ms_per_token": gpu_us / count / 1e3,
        "launches_per_layer_token": launches / count / layers,
        "top_host_ops": [(e.key, e.count // count, round(e.self_cpu_time_total / count / 1e3, 3)) for e in top[:25]],
        "top_kernels": [(e.key[:80], e.count // count, round(e.self_device_time_total / count / 1e3, 3))
                        for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:12]],
    }


# Engine options the profile sweeps (one row per combination), their old spellings, and the
# defaults that differ from `lazymoe run`'s: it profiles the GPU decode paths in bfloat16.
PROFILE_SWEEP = ("kernel", "decode", "vram_budget")
OLD_SWEEP_FLAGS = {"kernel": "--kernels", "decode": "--decodes"}
PROFILE_DEFAULTS = {
    "model_path": "/dev/shm/prof",  # written there first when it holds no model
    "device": "cuda",
    "dtype": "bfloat16",
    "kernel": ["batched"],
    "decode": ["graphs", "model"],
    "vram_budget": None,  # None: the budgets of --budgets
}
FULL_LAYERS = 48  # Qwen3-30B-A3B: --budgets are GB of this many layers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lazymoe.engine.options import add_engine_arguments

    parser.add_argument("--layers", type=int, default=8, help="decoder layers of the written model")
    parser.add_argument("--shape", default="qwen3-30b-a3b", help="lazymoe.bench.shapes name")
    parser.add_argument("--tokens", type=int, default=24, help="decoded tokens per timed run")
    parser.add_argument("--hf", action="store_true", help="also transformers' model on the GPU")
    parser.add_argument("--out", default=None, help="results JSON")
    engine = parser.add_argument_group(
        "engine options (the same as `lazymoe run`'s; --kernel, --decode and --vram-budget take "
        "several values, one row each)",
        "--model: the model folder, written first (random weights of --shape with --layers "
        "layers) when it holds no model.safetensors yet.")
    add_engine_arguments(engine, sweep=PROFILE_SWEEP, defaults=PROFILE_DEFAULTS, aliases=OLD_SWEEP_FLAGS)
    engine.add_argument("--budgets", nargs="+", default=None, metavar="GB",
                        help="VRAM budgets in GB (10**9 bytes) of the full 48-layer model, scaled "
                        "to --layers, or 'all' (every expert resident), one row each; the "
                        "default when --vram-budget is not given: all 8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with `budgets`: (label, vram_budget) pairs, one row each (label: the
    --budgets word, "all" or GB of the 48-layer model, kept in the results as
    budget_gb_at_48_layers; None for a --vram-budget size)."""
    parser = argparse.ArgumentParser(prog="python -m lazymoe.bench.profile", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.vram_budget is not None:
        if args.budgets is not None:
            parser.error("give --vram-budget or --budgets, not both")
        args.budgets = [(None, size) for size in args.vram_budget]
        return args
    pairs = []
    for word in args.budgets or ["all", "8"]:
        if word == "all":
            pairs.append((word, None))
            continue
        try:
            gb = float(word)
        except ValueError:
            parser.error(f"--budgets {word}: give GB of the {FULL_LAYERS}-layer model (e.g. 8) or 'all'")
        pairs.append((word, int(gb * 1e9 * args.layers / FULL_LAYERS)))  # bytes for --layers
    args.budgets = pairs
    return args


def engine_configs(args: argparse.Namespace) -> list[tuple[str | None, EngineConfig]]:
    """One (budget label, `EngineConfig`) per row: every combination of --kernel, --decode and
    the budgets, the other engine options as given. The model must exist (main writes it)."""
    from lazymoe.engine.config import EngineConfig

    return [(label, EngineConfig.from_args(args, kernel=kernel, decode=decode, vram_budget=budget))
            for kernel, decode, (label, budget) in itertools.product(args.kernel, args.decode, args.budgets)]


def hf_stream(model, prompt: list[int], n_tokens: int):
    """transformers' own greedy decode, one token at a time (the baseline): yields token ids."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        for _ in range(n_tokens):
            logits = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits
            ids = logits[:, -1:].argmax(-1)
            yield int(ids)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from lazymoe.bench.shapes import get_shape
    from lazymoe.bench.writer import write_model
    from lazymoe.engine import Engine, GenerationConfig

    device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    shape = get_shape(args.shape).scaled(num_layers=args.layers)
    model = Path(args.model_path)
    if not (model / "model.safetensors").exists():
        write_model(shape, model, device=device, formats=("safetensors",))
    prompt = list(range(100, 132))
    results = {"layers": args.layers, "rows": []}
    for label, config in engine_configs(args):
        engine = Engine(config)

        def factory(n, engine=engine):
            gen = GenerationConfig(max_new_tokens=n, temperature=1.0, seed=0, stop_token_ids=(), stop_strings=())
            return engine.stream(prompt, gen)

        decode_ms(factory, 4, repeats=1)  # warm-up
        engine.reset_stats()
        decoder = engine._decoder
        if decoder is not None:
            decoder.reset_timings()
        ms = decode_ms(factory, args.tokens)
        stats = engine.stats()
        row = {"engine": "lazymoe", "kernel": config.kernel or "auto", "decode": engine.decode_path,
               "budget_gb_at_48_layers": label, "vram_budget_bytes": config.vram_budget_bytes,
               "ms_per_token": ms, "ms_per_layer": ms / args.layers,
               "hit_rate": getattr(stats, "hit_rate", None),
               "host_us_per_layer": decoder.timing_per_layer_us() if decoder else None,
               **profile_tokens(factory, 6, args.layers)}
        print(json.dumps(row, indent=1), flush=True)
        results["rows"].append(row)
        engine.close()
        del engine
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if args.hf:
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, args.dtype)).to(device).eval()

        def hf_factory(n):
            return hf_stream(hf, prompt, n)

        decode_ms(hf_factory, 4, repeats=1)
        row = {"engine": "transformers", "ms_per_token": decode_ms(hf_factory, args.tokens),
               **profile_tokens(hf_factory, 6, args.layers)}
        row["ms_per_layer"] = row["ms_per_token"] / args.layers
        print(json.dumps(row, indent=1), flush=True)
        results["rows"].append(row)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
