"""Aggregate tokens/s of continuous batching (`Engine.batch()`) against one request at a time.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_batch.py --out data/results/batch-cpu-bundled.json

For each expert budget and each number of concurrent requests B, the same B requests (greedy,
`--new-tokens` each, different prompts) run two ways, alternating, `--repeats` times each after
one warm-up:

    one at a time   engine.generate for each request, one after another
    batched         every request added, then batch.step() until none is live

    aggregate tok/s = every new token of the B requests / wall seconds (prefills included)
    per-user tok/s  = one request's new tokens / the seconds until its last token (batched: the
                      whole run; one at a time: its own generate call, mean over requests)

Prints a table and writes JSON with the machine, the versions and the command. On a shared,
noisy machine, read the ratios rather than the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

from lazymoe.engine import Engine, GenerationConfig
from lazymoe.paths import bundled_model_dir

TEXTS = [
    "def read_config(path):\n    with open(path) as f:\n", "import numpy as np\n",
    "SELECT name FROM users", "class Point:\n    def __init__(self, x, y):\n",
    "for i in range(10):\n", "print('hello')\n", "x = [1, 2, 3]\n", "# read the file\n",
]  # fmt: skip


def run_alone(engine: Engine, prompts, gen) -> tuple[float, list[float]]:
    start, per_user = time.perf_counter(), []
    for p in prompts:
        t0 = time.perf_counter()
        engine.generate(p, gen)
        per_user.append(gen.max_new_tokens / (time.perf_counter() - t0))
    return time.perf_counter() - start, per_user


def run_batched(engine: Engine, prompts, gen) -> tuple[float, list[float]]:
    start = time.perf_counter()
    with engine.batch() as batch:
        for p in prompts:
            batch.add(p, gen)
        while len(batch):
            batch.step()
    seconds = time.perf_counter() - start
    return seconds, [gen.max_new_tokens / seconds] * len(prompts)


def measure(engine, prompts, gen, repeats) -> list[dict]:
    """Both ways, alternating run by run (a shared machine's load drifts: pairs see the same)."""
    ways = {"one at a time": run_alone, "batched": run_batched}
    for run in ways.values():
        run(engine, prompts, gen)  # warm-up (and a warm expert cache, as a server would have)
    runs = {how: [] for how in ways}
    for _ in range(repeats):
        for how, run in ways.items():
            runs[how].append(run(engine, prompts, gen))
    ratios = [
        b[0] and a[0] / b[0] for a, b in zip(runs["one at a time"], runs["batched"], strict=True)
    ]
    rows = []
    for how, run in ways.items():
        engine.reset_stats()
        run(engine, prompts, gen)
        stats = engine.stats()
        seconds = statistics.median(r[0] for r in runs[how])
        rows.append({
            "how": how,
            "aggregate_tok_s": len(prompts) * gen.max_new_tokens / seconds,
            "per_user_tok_s": statistics.median(statistics.mean(r[1]) for r in runs[how]),
            "wall_seconds": seconds,
            "expert_fetches": stats.misses,
            "bytes_moved": stats.bytes_moved,
            "batched_speedup_median_of_pairs": statistics.median(ratios),
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--slots", type=int, nargs="+", default=[64, 16],
                        help="experts cached, of the bundled model's 64 (64: all resident)")  # fmt: skip
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model = bundled_model_dir()
    gen = GenerationConfig(max_new_tokens=args.new_tokens, stop_token_ids=())
    results = []
    for slots in args.slots:
        engine = Engine.from_pretrained(model, device="cpu", vram_budget=slots * 3 * 128 * 128 * 4)
        prompts = [engine.tokenizer.encode(t) for t in TEXTS]
        for users in args.users:
            chosen = [prompts[i % len(prompts)] for i in range(users)]
            for row in measure(engine, chosen, gen, args.repeats):
                row = {"expert_slots": slots, "users": users, **row}
                results.append(row)
                print(f"slots {slots:3d} users {users:3d} {row['how']:14s} aggregate "
                      f"{row['aggregate_tok_s']:7.1f} tok/s, per user {row['per_user_tok_s']:7.1f} "
                      f"tok/s, fetches {row['expert_fetches']:5d}, batched/alone "
                      f"{row['batched_speedup_median_of_pairs']:.2f}x", flush=True)  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({
            "what": "continuous batching vs one request at a time, bundled tiny-moe, CPU, float32",
            "command": "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "") + " "
                       + " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
            "libraries": {"torch": torch.__version__, "transformers": transformers.__version__},
            "protocol": f"greedy, {args.new_tokens} new tokens each; one warm-up each way, then "
                        f"{args.repeats} runs alternating the two ways; medians, and the median "
                        "of the pairs' speed ratios; fetches and bytes from one more run",
            "notes": "a shared, noisy 2-core machine: compare ratios, not absolute numbers",
            "results": results,
        }, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
