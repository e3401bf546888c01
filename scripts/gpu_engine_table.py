"""On a CUDA machine: tok/s, hit rate and prefetch accuracy of the engine for several budgets.

    python scripts/gpu_engine_table.py [--model DIR] [--tokens 64] [--out results.json]

Every row also checks that the greedy tokens equal the full transformers model's on the same
GPU, and records the VRAM the expert pool takes (torch) and the whole process uses (NVML), so the
budget claim can be checked. Prints a Markdown table and writes the rows as JSON.
Without the bundled model (data/models/tiny-moe) it uses a random checkpoint of the same shape
(random weights route almost uniformly: the worst case for a cache; the JSON says which).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lazymoe import paths
from lazymoe.engine import Engine, GenerationConfig
from lazymoe.engine.reference import full_model, reference_greedy

PROMPT = "import os\nimport sys\n\n\ndef main(argv):\n    "


def nvml_used_bytes() -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:
        return None


def model_dir(arg: str | None) -> tuple[Path, str]:
    if arg:
        return Path(arg), "given"
    bundled = paths.bundled_model_dir()
    if (bundled / "config.json").exists():
        return bundled, "bundled"
    from lazymoe.models.random import make_random_checkpoint

    out = Path(tempfile.mkdtemp()) / "random-tiny-shape"
    make_random_checkpoint(
        out, hidden_size=128, moe_intermediate_size=128, num_experts=16, num_hidden_layers=4,
        num_attention_heads=4, head_dim=32, vocab_size=4096,
    )  # fmt: skip
    return out, "random (bundled model missing)"


def rows_to_run(total_experts: int, top_k: int) -> list[dict]:
    rows = [{"slots": None, "placement": "gpu", "prefetch": False, "ram": False}]
    for frac in (0.5, 0.25, 0.125):
        n = max(top_k, int(total_experts * frac))
        for prefetch in (False, True):
            rows.append({"slots": n, "placement": "gpu", "prefetch": prefetch, "ram": True})
    rows.append({"slots": top_k, "placement": "gpu", "prefetch": False, "ram": True})
    rows.append({"slots": top_k, "placement": "gpu", "prefetch": True, "ram": True})
    quarter = max(top_k, total_experts // 4)
    rows.append({"slots": quarter, "placement": "gpu", "prefetch": True, "ram": False})
    rows.append({"slots": quarter, "placement": "cpu", "prefetch": False, "ram": True})
    rows.append({"slots": quarter, "placement": "cpu", "prefetch": True, "ram": True})
    rows.append({"slots": quarter, "placement": "auto", "prefetch": True, "ram": True})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", default="gpu_engine_table.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU: run this on a GPU machine", file=sys.stderr)
        return 1
    path, source = model_dir(args.model)
    dtype = getattr(torch, args.dtype)
    probe = Engine.from_pretrained(path, device="cuda", dtype=args.dtype, prefetch=False)
    prompt_ids = probe.tokenizer.encode(PROMPT)
    expert_bytes, total, top_k = probe.expert_nbytes, probe.total_experts, probe.top_k
    probe.close()
    reference = full_model(path, dtype=dtype, device="cuda")
    expected = reference_greedy(reference, prompt_ids, args.tokens)
    del reference
    torch.cuda.empty_cache()
    gen = GenerationConfig(max_new_tokens=args.tokens, stop_token_ids=())
    results = []
    for row in rows_to_run(total, top_k):
        budget = None if row["slots"] is None else row["slots"] * expert_bytes
        gc.collect()  # the last row's engine (its modules and runtime refer to each other)
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        before_torch, before_nvml = torch.cuda.memory_allocated(), nvml_used_bytes()
        engine = Engine.from_pretrained(
            path, device="cuda", dtype=args.dtype, vram_budget=budget,
            ram_budget=total * expert_bytes if row["ram"] else None,
            placement=row["placement"], prefetch=row["prefetch"],
        )  # fmt: skip
        after_load = torch.cuda.memory_allocated()
        resident = sum(t.numel() * t.element_size() for t in engine.model.state_dict().values())
        engine.generate(prompt_ids, GenerationConfig(max_new_tokens=8, stop_token_ids=()))  # warm up
        engine.reset_stats()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        tokens = engine.generate(prompt_ids, gen)
        torch.cuda.synchronize()
        wall_s = time.perf_counter() - start
        s = engine.stats()
        peak_nvml = nvml_used_bytes()
        result = {
            **row,
            "vram_budget_bytes": budget,
            "pool_bytes": s.pool_bytes,
            "pool_within_budget": budget is None or s.pool_bytes <= budget,
            "tokens_match_full_model": tokens == expected,
            "decode_tok_s": s.decode_tok_s,
            "prefill_tok_s": s.prefill_tok_s,
            "wall_s": wall_s,
            "hit_rate": s.hit_rate,
            "prefetch_accuracy": s.prefetch_accuracy if row["prefetch"] else None,
            "bytes_moved": s.bytes_moved,
            "experts_on_cpu": s.experts_on_cpu,
            "resident_bytes": resident,  # non-expert weights on the GPU
            "torch_resident_plus_pool_bytes": after_load - before_torch,
            "torch_peak_growth_during_generate_bytes": torch.cuda.max_memory_allocated() - after_load,
            "nvml_used_growth_bytes": None if before_nvml is None else peak_nvml - before_nvml,
            "links": s.links,
        }
        results.append(result)
        print_row(result, total)
        engine.close()
    report = {
        "model": str(path), "model_source": source, "dtype": args.dtype,
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
        "python": platform.python_version(), "new_tokens": args.tokens,
        "expert_bytes": expert_bytes, "total_experts": total, "top_k": top_k, "rows": results,
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0 if all(r["tokens_match_full_model"] and r["pool_within_budget"] for r in results) else 1


def print_row(r: dict, total: int) -> None:
    if not hasattr(print_row, "header"):
        print("| VRAM slots | placement | prefetch | RAM tier | decode tok/s | hit rate | "
              "prefetch acc. | MiB moved | tokens = full model |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        print_row.header = True
    slots = f"all {total}" if r["slots"] is None else f"{r['slots']} of {total}"
    acc = "-" if r["prefetch_accuracy"] is None else f"{r['prefetch_accuracy']:.1%}"
    print(
        f"| {slots} | {r['placement']} | {'on' if r['prefetch'] else 'off'} | "
        f"{'yes' if r['ram'] else 'no'} | {r['decode_tok_s']:.1f} | {r['hit_rate']:.1%} | {acc} | "
        f"{r['bytes_moved'] / 2**20:.1f} | {r['tokens_match_full_model']} |",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
