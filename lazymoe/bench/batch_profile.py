"""Where does a batched step's time go? `EngineBatch` on one model, B users at once.

    python -m lazymoe.bench.batch_profile --model model.gguf --device cuda --pin-checkpoint \
        --vram-budget 40GiB --dtype bfloat16 --users 1 4 16 32 --out /tmp/batch-profile.json

For each number of users B: B prompts of --prompt-tokens ids join at once (`add_many`: one padded
prefill pass) and decode --steps batched steps; then the same B prompts join one by one (`add`
each, a prefill pass each). Recorded (milliseconds, the GPU synchronised around each):
the prefill together and one by one, every step's time (median), and for one step the host's
hottest functions (cProfile, by cumulative time) and the ops that cost the host and the device
most (torch.profiler). With --compare-host also the steps with the experts through the host's
path (`device_experts=False`). Prints one line per B and writes everything to --out.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time

import torch

from lazymoe.engine import Engine, GenerationConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, (time.perf_counter() - start) * 1e3


def prompts_for(engine: Engine, n_users: int, n_tokens: int) -> list[list[int]]:
    """`n_users` different prompts of `n_tokens` ids each (ids past the special ones)."""
    vocab = engine.model.get_input_embeddings().num_embeddings
    return [[(101 + 37 * u + 7 * i) % (vocab - 200) + 100 for i in range(n_tokens)]
            for u in range(n_users)]  # fmt: skip


def profile_users(engine: Engine, n_users: int, args, device_experts: bool = True) -> dict:
    """One B: prefill together, steps, one profiled step; prefill one by one."""
    device = engine.device
    gen = GenerationConfig(max_new_tokens=args.steps + 8, stop_token_ids=())
    prompts = prompts_for(engine, n_users, args.prompt_tokens)
    row: dict = {"n_users": n_users, "device_experts": device_experts}
    with engine.batch() as batch:
        batch.device_experts = device_experts
        joined, row["prefill_together_ms"] = _timed(
            device, lambda: batch.add_many(prompts, [gen] * n_users)
        )
        failed = [j for j in joined if isinstance(j, Exception)]
        if failed:  # (empty batches would time as nearly free)
            raise RuntimeError(f"{len(failed)} of {n_users} prompts failed to join") from failed[0]
        steps = []
        for _ in range(args.steps):
            _, ms = _timed(device, batch.step)
            steps.append(ms)
        row["step_ms"] = steps
        row["step_ms_median"] = statistics.median(steps)
        row["tok_s"] = n_users / row["step_ms_median"] * 1e3
        row["paths"] = dict(batch.step_counts)
        row["device_steps"] = batch.device_steps
        row["device_prefills"] = batch.device_prefills
        profiler = cProfile.Profile()
        _sync(device)
        profiler.enable()
        batch.step()
        _sync(device)
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
        row["cprofile_step"] = text.getvalue()
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            batch.step()
            _sync(device)
        averages = prof.key_averages()
        row["ops_by_host_time"] = averages.table(sort_by="self_cpu_time_total", row_limit=25)
        if device.type == "cuda":
            row["ops_by_device_time"] = averages.table(sort_by="self_cuda_time_total",
                                                       row_limit=25)  # fmt: skip
    with engine.batch() as batch:
        batch.device_experts = device_experts
        _, row["prefill_one_by_one_ms"] = _timed(
            device, lambda: [batch.add(p, gen) for p in prompts]
        )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--vram-budget", default=None)
    parser.add_argument("--pin-checkpoint", action="store_true")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--prompt-tokens", type=int, default=24)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--compare-host", action="store_true",
                        help="also the host's path for the experts (device_experts=False)")
    parser.add_argument("--out", required=True)
    args, ignored = parser.parse_known_args(argv)  # (`lazymoe serve` flags given to both)
    if ignored:
        print(f"ignored: {' '.join(ignored)}")
    fields = {"device": args.device, "pin_checkpoint": args.pin_checkpoint}
    if args.dtype:
        fields["dtype"] = args.dtype
    if args.vram_budget:
        fields["vram_budget"] = args.vram_budget
    engine = Engine.from_pretrained(args.model, **fields)
    rows = []
    profile_users(engine, max(args.users), args)  # warm-up: every kernel compiled once
    for n_users in args.users:
        for device_experts in (True, False) if args.compare_host else (True,):
            row = profile_users(engine, n_users, args, device_experts)
            rows.append(row)
            print(f"{n_users:>3} users, device_experts={device_experts}: step "
                  f"{row['step_ms_median']:.1f} ms ({row['tok_s']:.0f} tok/s), prefill together "
                  f"{row['prefill_together_ms']:.0f} ms, one by one "
                  f"{row['prefill_one_by_one_ms']:.0f} ms", flush=True)  # fmt: skip
    document = {"command": "python -m lazymoe.bench.batch_profile " + " ".join(argv or []),
                "decode_path": engine.decode_path, "describe": engine.describe(),
                "args": vars(args), "rows": rows}  # fmt: skip
    with open(args.out, "w") as f:
        json.dump(document, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
