"""The CPU kernels' unit of parallel work, A/B in one process: `kernels_cpu.row_chunk` (a few
large units a thread, their count a multiple of the threads) against units of ROW_CHUNK rows
(the rule before it), rounds interleaved so that drift hits both alike. Per format (q8_0, q4_0,
q4_k with int8 activations, 3 experts a call, as a layer's CPU share; BF16 through kernels_bf16,
6 matrices a call: 3 experts' gate and up), experts past the CPU's largest cache; the median GB/s
of stored bytes read over ROUNDS rounds, written after each format. CPU only:

    python scripts/bench_row_chunk.py 16 out.json     # threads, results
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time

import torch

from lazymoe.measure import copies_past_cache
from lazymoe.quant import expert_bench, kernels_bf16, kernels_cpu, kernels_int8

ROUNDS = 5
RULES = {"row_chunk": kernels_cpu.row_chunk, "ROW_CHUNK rows": lambda n, rows, threads: kernels_cpu.ROW_CHUNK}


def use(rule) -> None:
    for module in (kernels_cpu, kernels_int8, kernels_bf16):
        module.row_chunk = rule


def bf16_gbps(mats: list[torch.Tensor], threads: int) -> float:
    x = torch.randn(1, mats[0].shape[1])
    start = time.perf_counter()
    for i in range(0, len(mats), 6):
        kernels_bf16.matvec_many(x, mats[i : i + 6], threads=threads)
    return sum(m.nbytes for m in mats) / (time.perf_counter() - start) / 1e9


def main(threads: str = "16", out_path: str = "row-chunk-ab.json") -> None:
    n = int(threads)
    mats = [torch.randn(768, 2048).to(torch.bfloat16) for _ in range(copies_past_cache(768 * 2048 * 2, 96))]
    runs: dict[tuple[str, str], list[float]] = {}
    for fmt in ("q8_0", "q4_0", "q4_k", "bf16"):
        for _ in range(ROUNDS):
            for name, rule in RULES.items():
                use(rule)
                if fmt == "bf16":
                    gbps = bf16_gbps(mats, n)
                else:
                    gbps = expert_bench.measure_read_bandwidth(fmt, repeats=3, threads=n, activations="int8",
                                                               together=3)["read_gbps"]  # fmt: skip
                runs.setdefault((fmt, name), []).append(gbps)
        print(fmt, {name: round(statistics.median(runs[fmt, name]), 1) for name in RULES}, flush=True)
        write(out_path, n, runs)
    use(RULES["row_chunk"])


def write(out_path: str, n: int, runs: dict) -> None:
    with open(out_path, "w") as f:
        json.dump({"what": "CPU kernels' unit of parallel work: row_chunk against ROW_CHUNK rows, GB/s read, "
                           f"median of {ROUNDS} interleaved rounds", "threads": n, "host": platform.node(),
                   "command": "python scripts/bench_row_chunk.py " + " ".join(sys.argv[1:]),
                   "date": time.strftime("%Y-%m-%d"), "versions": {"torch": torch.__version__},
                   "rows": [{"format": fmt, "rule": name, "median_gbps": statistics.median(v), "runs": v}
                            for (fmt, name), v in runs.items()]}, f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:])
