"""BF16 experts on the CPU for one token: torch's matmul against lazymoe.quant.kernels_bf16.

What a decode step's CPU-computed misses cost with a BF16 checkpoint (placement cpu/auto): the
weights stream from RAM once, so the figure is GB/s of weights read. Qwen3-30B-A3B's expert shapes
(D 2048, I 768), 48 distinct experts (450 MB) or more, four times the CPU's largest cache
(`lazymoe.measure.past_cache`: an H200 host has a 300 MiB L3), three at a time as a layer's CPU
share; best of 5 passes, per thread count. CPU only:

    python scripts/bench_bf16_cpu.py data/results/h200-bf16-cpu-experts.json 1,8,16
"""

from __future__ import annotations

import json
import platform
import sys
import time

import torch
import torch.nn.functional as F

from lazymoe.hardware import probe
from lazymoe.measure import copies_past_cache
from lazymoe.quant import kernels_bf16

D, I, TOGETHER = 2048, 768, 3  # noqa: E741 (I: expert width, as in the docs)
N = copies_past_cache(3 * I * D * 2, 48)  # distinct experts: past the CPU's cache


class Expert:
    def __init__(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.gate, self.up = (torch.randn(I, D, generator=gen).to(torch.bfloat16) for _ in range(2))
        self.down = torch.randn(D, I, generator=gen).to(torch.bfloat16)


def _torch(x, experts):
    for e in experts:
        F.linear(F.silu(F.linear(x, e.gate)) * F.linear(x, e.up), e.down)


def _kernel(x, experts):
    kernels_bf16.experts_forward(x, experts, F.silu)


def main(out_path: str, threads: str = "1,2") -> None:
    machine = probe()
    experts = [Expert(i) for i in range(N)]
    x = torch.randn(1, D).to(torch.bfloat16)
    nbytes = N * 3 * I * D * 2
    rows = []
    for n in (int(t) for t in threads.split(",")):
        torch.set_num_threads(n)
        for name, run in (("torch", _torch), ("kernels_bf16", _kernel)):
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter()
                for i in range(0, N, TOGETHER):
                    run(x, experts[i : i + TOGETHER])
                best = min(best, time.perf_counter() - start)
            rows.append({"threads": n, "path": name, "gbps": nbytes / best / 1e9,
                         "ms_per_expert": best / N * 1e3})  # fmt: skip
            print(f"{n:3d} threads  {name:13s} {rows[-1]['gbps']:6.1f} GB/s  "
                  f"{rows[-1]['ms_per_expert']:.3f} ms an expert", flush=True)
    with open(out_path, "w") as f:
        json.dump({
            "what": f"BF16 experts on the CPU, one token, Qwen3-30B-A3B expert shapes, {N} distinct "
                    f"experts, {TOGETHER} a call; GB/s of weights read, best of 5",
            "machine": {"host": platform.node(), "cpu": machine.cpu_model, "cores": machine.cpu_cores_physical,
                        "flags": machine.isa_flags},
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
            "command": "python scripts/bench_bf16_cpu.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d"),
            "rows": rows,
        }, f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:])
