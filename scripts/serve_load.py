"""Continuous batching measured: `lazymoe serve` one request at a time vs batched, 1-32 users.

    .venv/bin/python scripts/serve_load.py                       # bundled model, CPU
    .venv/bin/python scripts/serve_load.py --device cuda --model /path/to/model --vram-budget 8GiB \
        --out data/results/serve-h200-....json

For each `--max-batch` value (default 1, then 32) it starts `lazymoe serve` in its own process on
a free loopback port (extra arguments go to `lazymoe serve` as they are), warms it up (one
request, then one untimed round of each case), then 1, 4, 16 and 32 users at once (`lazymoe.server.loadtest.run_users`): each user its
own prompt, all prompts the same number of tokens, `--max-tokens` new tokens each, greedy,
`--repeats` times. Per case it records (medians over the repeats) the aggregate tokens/s (all
users' tokens over the wall time) and the time to first token (median, p95, max), and writes
everything with the machine, the versions, the command and the date to `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import httpx

from lazymoe import hardware
from lazymoe.bench.measure import library_versions
from lazymoe.paths import bundled_model_dir
from lazymoe.server import loadtest
from lazymoe.server.embedded import free_port

SNIPPETS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "import os\nimport sys\n\ndef run(argv):\n    path = argv[1]\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "for i in range(10):\n    total = total + i * i\nprint(total)\n",
    "with open('data.csv') as f:\n    rows = [line.split(',') for line in f]\n",
    "def merge(a, b):\n    out = []\n    while a and b:\n",
]


def user_prompts(tokenizer_dir: Path, n_users: int, n_tokens: int) -> list[list[int]]:
    """`n_users` different prompts of exactly `n_tokens` token ids each."""
    from lazymoe.engine.loading import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    prompts = []
    for i in range(n_users):
        text = f"# user {i}\n" + SNIPPETS[i % len(SNIPPETS)] * 4
        ids = tokenizer.encode(text, add_special_tokens=False)[:n_tokens]
        if len(ids) < n_tokens:
            raise ValueError(f"prompt {i} has only {len(ids)} tokens: lower --prompt-tokens")
        prompts.append(ids)
    return prompts


def start_server(
    max_batch: int, serve_args: list[str], log_path: Path
) -> tuple[subprocess.Popen, SimpleNamespace]:
    """`lazymoe serve` in its own process on a free port, once it answers /health."""
    port = free_port()
    command = [sys.executable, "-m", "lazymoe", "serve", "--port", str(port),
               "--max-batch", str(max_batch), "--max-queue", "64",
               "--requests-per-minute", "100000", "--tokens-per-minute", "100000000",
               "--log-level", "warning", *serve_args]  # fmt: skip
    log = log_path.open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    root_url = f"http://127.0.0.1:{port}"
    deadline_s = time.monotonic() + 300
    while time.monotonic() < deadline_s:
        if process.poll() is not None:
            raise RuntimeError(f"lazymoe serve exited ({process.returncode}): see {log_path}")
        try:
            health = httpx.get(f"{root_url}/health", timeout=2).json()
            conn = SimpleNamespace(root_url=root_url, headers={}, model=health["model"])
            return process, conn
        except httpx.TransportError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"lazymoe serve did not answer within 300 s: see {log_path}")


def one_run(conn: SimpleNamespace, n_users: int, prompts: list, max_tokens: int) -> dict:
    load = loadtest.run_users(conn, n_users, prompts[0], max_tokens, prompts=prompts[:n_users])
    return {
        "aggregate_tok_s": load.aggregate_tok_s,
        "ttft_median_s": load.ttft_s("median"),
        "ttft_p95_s": load.ttft_s("p95"),
        "ttft_max_s": load.ttft_s("max"),
        "per_user_tok_s_median": load.per_user_tok_s(),
        "wall_s": load.wall_s,
        "completion_tokens": sum(t.n_tokens for t in load.timings),
    }


def measure(args: argparse.Namespace, serve_args: list[str]) -> list[dict]:
    model_dir = Path(args.model) if args.model else bundled_model_dir()
    prompts = user_prompts(model_dir, max(args.users), args.prompt_tokens)
    rows = []
    for max_batch in args.max_batch:
        log_path = Path(tempfile.gettempdir()) / f"lazymoe-serve-load-b{max_batch}.log"
        process, conn = start_server(max_batch, serve_args, log_path)
        try:
            loadtest.stream_once(conn, prompts[0], max_tokens=args.max_tokens)  # warm-up, then
            # each case once (a GPU records a batch size's step on its first use)
            for n_users in args.users:
                loadtest.run_users(conn, n_users, prompts[0], args.max_tokens,
                                   prompts=prompts[:n_users])  # fmt: skip
            for n_users in args.users:
                runs = [
                    one_run(conn, n_users, prompts, args.max_tokens) for _ in range(args.repeats)
                ]
                health = httpx.get(f"{conn.root_url}/health", timeout=10).json()
                row = {"max_batch": max_batch, "max_batch_served": health["max_batch"],
                       "n_users": n_users,
                       # engine steps so far on this server, by path: "single" (one request
                       # alone, the engine's fast decoder) or "batched" (the batched layer loop)
                       "decode_steps_so_far": health.get("decode_steps")}  # fmt: skip
                row.update({k: statistics.median(r[k] for r in runs) for k in runs[0]})
                row["runs"] = runs
                rows.append(row)
                print(f"max_batch {max_batch:>2}, {n_users:>2} users: "
                      f"{row['aggregate_tok_s']:7.1f} tok/s, TTFT median "
                      f"{row['ttft_median_s'] * 1e3:7.0f} ms, p95 {row['ttft_p95_s'] * 1e3:7.0f} ms",
                      flush=True)  # fmt: skip
        finally:
            process.terminate()
            process.wait(60)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Batched vs one at a time with as many users, and vs a single user on the same server."""
    by_case = {(r["max_batch"], r["n_users"]): r for r in rows}
    out = []
    for r in rows:
        base = by_case.get((1, r["n_users"]))
        single = by_case.get((r["max_batch"], 1))
        if r["max_batch"] == 1 or base is None:
            continue
        out.append({
            "n_users": r["n_users"], "max_batch": r["max_batch"],
            "throughput_x_one_at_a_time": r["aggregate_tok_s"] / base["aggregate_tok_s"],
            "ttft_median_x_one_at_a_time": r["ttft_median_s"] / base["ttft_median_s"],
            "ttft_median_x_single_user": (r["ttft_median_s"] / single["ttft_median_s"]
                                          if single else None),
        })  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3, help="runs per case (medians kept)")
    parser.add_argument("--model", help="model folder (default: the bundled tiny model)")
    parser.add_argument("--note", action="append", default=[], help="a note for the JSON")
    parser.add_argument("--out", default="data/results/serve-cpu-bundled-batching.json")
    args, serve_args = parser.parse_known_args(argv)
    if args.model:
        serve_args = ["--model", args.model, *serve_args]
    if "--device" not in serve_args:
        serve_args = ["--device", "cpu", *serve_args]
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    rows = measure(args, serve_args)
    document = {
        "schema": "lazymoe.serve-load/1",
        "created_utc": started.isoformat(timespec="seconds"),
        "command": " ".join(["python", "scripts/serve_load.py", *(argv or sys.argv[1:])]),
        "serve_args": serve_args,
        "machine": dataclasses.asdict(hardware.probe()),
        "libraries": library_versions(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
        "protocol": {
            "users": args.users,
            "max_batch": args.max_batch,
            "prompt_tokens": args.prompt_tokens,
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "prompts": "a different prompt per user, all of prompt_tokens token ids",
            "warm_up": "per server start, not timed: one request, then one round of each case "
            "(a GPU records each batch size's step on its first use)",
            "repeats": f"{args.repeats} runs per case; each figure is the median over the runs "
            "(every run under `runs`)",
            "aggregate_tok_s": "all users' completion tokens / wall time from the first request "
            "sent to the last [DONE]",
            "ttft": "per user: first chunk carrying a token received - request sent (lazymoe "
            "sends one chunk per token, with empty text when a token decodes to none); p95 is "
            "nearest-rank",
            "client": "the users are threads of this script on the same machine as the server",
        },
        "notes": args.note,
        "results": rows,
        "summary": summary(rows),
    }
    Path(args.out).write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
