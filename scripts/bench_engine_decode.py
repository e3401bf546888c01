"""Decode tok/s of the engine on a mid-size random Qwen3-MoE checkpoint, on this machine.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_engine_decode.py --dir /tmp/mid-moe

Makes the checkpoint once (8 layers, 32 experts, top-4, D=512, I=256, F32 by default), then
for each budget (every expert resident, and a small cache) and each `--kernels` choice runs
greedy generation `--repeats` times after one warm-up, and prints the median decode and prefill
tok/s. Random weights route almost uniformly: the worst case for a cache. Also prints the
decode bound of this machine with every expert resident:

    bound tok/s = RAM read bandwidth (a tensor copy, bytes read) / weight bytes read per token
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from lazymoe.engine import Engine, GenerationConfig
from lazymoe.models.random import make_random_checkpoint

SHAPE = dict(
    num_hidden_layers=8, num_experts=32, num_experts_per_tok=4, hidden_size=512,
    moe_intermediate_size=256, intermediate_size=1024, num_attention_heads=8,
    num_key_value_heads=4, head_dim=64,
)  # fmt: skip


def ensure_checkpoint(model_dir: Path) -> Path:
    if not (model_dir / "config.json").exists():
        make_random_checkpoint(model_dir, arch="qwen3_moe", seed=0, **SHAPE)
    return model_dir


def ram_read_gbps(nbytes: int = 64 * 2**20) -> float:
    """GB/s read by a tensor copy (each byte is read once and written once), best of 5."""
    src = torch.empty(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return nbytes / best / 1e9


def bytes_per_token(engine: Engine) -> int:
    """Weights read per decoded token: top-k experts per layer plus every non-expert matrix."""
    experts = len(engine.moe_layers) * engine.top_k * engine.expert_nbytes
    dense = sum(p.nbytes for name, p in engine.model.named_parameters() if "embed" not in name)
    return experts + dense  # bytes


def speeds(engine: Engine, prompt: list[int], new_tokens: int, repeats: int) -> dict[str, list]:
    """Decode and prefill tok/s of `repeats` runs after one warm-up."""
    gen = GenerationConfig(max_new_tokens=new_tokens, stop_token_ids=())
    engine.generate(prompt, gen)  # warm-up
    out: dict[str, list] = {"decode_tok_s": [], "prefill_tok_s": []}
    for _ in range(repeats):
        engine.reset_stats()
        engine.generate(prompt, gen)
        stats = engine.stats()
        out["decode_tok_s"].append(stats.decode_tok_s)
        out["prefill_tok_s"].append(stats.prefill_tok_s)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/lazymoe-mid-moe"))
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small-slots", type=int, default=64, help="experts in the small cache")
    parser.add_argument(
        "--kernels", default="default",
        help="comma-separated engine kernels to compare (reference, grouped, batched; "
        "'default': the device's default, also what an engine without the option runs)",
    )  # fmt: skip
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    model_dir = ensure_checkpoint(args.dir)
    prompt = list(range(10, 10 + args.prompt_tokens))
    results = {"threads": torch.get_num_threads(), "shape": SHAPE, "runs": {}}
    probe = Engine.from_pretrained(model_dir, device="cpu", prefetch=False)
    slot_bytes = probe.expert_nbytes
    token_bytes = bytes_per_token(probe)
    probe.close()
    read_gbps = ram_read_gbps()
    bound = read_gbps * 1e9 / token_bytes
    results["bound"] = {"ram_read_gbps": read_gbps, "bytes_per_token": token_bytes, "tok_s": bound}
    print(f"bound: {token_bytes / 1e6:.1f} MB per token at {read_gbps:.1f} GB/s read "
          f"-> {bound:.1f} tok/s (every expert resident)")  # fmt: skip
    budgets = (("all resident", None), (f"{args.small_slots} slots", args.small_slots * slot_bytes))
    for name, budget in budgets:
        for kernel in args.kernels.split(","):
            extra = {} if kernel == "default" else {"kernel": kernel}
            engine = Engine.from_pretrained(model_dir, device="cpu", vram_budget=budget, **extra)
            runs = speeds(engine, prompt, args.tokens, args.repeats)
            hit_rate = engine.stats().hit_rate
            engine.close()
            decode = statistics.median(runs["decode_tok_s"])
            prefill = statistics.median(runs["prefill_tok_s"])
            results["runs"][f"{name}/{kernel}"] = {
                **runs, "decode_median": decode, "prefill_median": prefill, "hit_rate": hit_rate,
            }  # fmt: skip
            print(f"{name:>14} {kernel:>9}: decode {decode:7.1f} tok/s (median of "
                  f"{len(runs['decode_tok_s'])}: {', '.join(f'{s:.1f}' for s in runs['decode_tok_s'])}), "
                  f"prefill {prefill:7.1f} tok/s, hit rate {hit_rate:.2f}", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
