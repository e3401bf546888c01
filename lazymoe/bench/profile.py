"""Where does a decode step's time go? Engine decode on the GPU, with and without misses.

    python -m lazymoe.bench.profile --layers 8 --out /tmp/prof.json

Writes Qwen3-30B-A3B shapes with fewer layers (random BF16 weights; the per-layer work is the real
one), then for each VRAM budget: milliseconds per decoded token and per layer, GPU kernel time per
token (torch.profiler), kernel launches per layer, and the ops that cost the host most. The
"every expert resident" row is the floor that expert bookkeeping adds nothing to; transformers'
own model on the GPU (its experts loop) is measured too when it fits.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lazymoe.bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--model", default="/dev/shm/prof")
    parser.add_argument("--budgets", nargs="+", default=["all", "8"], help="GB scaled to 48 layers, or 'all'")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--kernels", nargs="+", default=["batched"])
    parser.add_argument("--decodes", nargs="+", default=["graphs", "model"],
                        help="EngineConfig.decode values to compare")
    parser.add_argument("--hf", action="store_true", help="also transformers' model on the GPU")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", default="qwen3-30b-a3b")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    from lazymoe.bench.shapes import get_shape
    from lazymoe.bench.writer import write_model
    from lazymoe.engine import Engine, EngineConfig, GenerationConfig

    shape = get_shape(args.shape).scaled(num_layers=args.layers)
    model = Path(args.model)
    if not (model / "model.safetensors").exists():
        write_model(shape, model, device=args.device, formats=("safetensors",))
    prompt = list(range(100, 132))
    results = {"layers": args.layers, "rows": []}
    for kernel, decode, budget in itertools.product(args.kernels, args.decodes, args.budgets):
        vram = None if budget == "all" else int(float(budget) * 1e9 * args.layers / 48)
        engine = Engine(EngineConfig(model_path=str(model), device=args.device, dtype="bfloat16",
                                     vram_budget=vram, placement="fetch", kernel=kernel,
                                     decode=decode))

        def factory(n, engine=engine):
            gen = GenerationConfig(max_new_tokens=n, temperature=1.0, seed=0, stop_token_ids=(), stop_strings=())
            return engine.stream(prompt, gen)

        decode_ms(factory, 4, repeats=1)  # warm-up
        engine.reset_stats()
        decoder = engine._decoder
        if decoder is not None:
            decoder.timings.update(tokens=0, wait_s=0.0, plan_s=0.0, launch_s=0.0)
        ms = decode_ms(factory, args.tokens)
        stats = engine.stats()
        row = {"engine": "lazymoe", "kernel": kernel, "decode": engine.decode_path,
               "budget_gb_at_48_layers": budget,
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

        hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).to(args.device).eval()

        def hf_factory(n):
            ids = torch.tensor([prompt], device=args.device)
            past = None
            with torch.inference_mode():
                for _ in range(n):
                    out = hf(input_ids=ids, past_key_values=past, use_cache=True)
                    past = out.past_key_values
                    ids = out.logits[:, -1:].argmax(-1)
                    yield int(ids)

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
