"""How fast `expert_forward` reads an expert's stored bytes on the CPU, beside the read bandwidth.

    python -m lazymoe.quant.expert [--formats q8_0,q4_0] [--threads 1,2] [--activations float,int8]
                                   [--json data/results/quant-cpu-kernels-dev.json]

The figures and what they mean are in lazymoe/quant/expert.py's docstring.
"""

from __future__ import annotations

import os
import time

import torch

from lazymoe.quant import kernels_int8
from lazymoe.quant.bandwidth import read_bandwidth_gbps
from lazymoe.quant.expert import SLAB_WEIGHTS, expert_forward
from lazymoe.quant.tensor import quantize


def measure_read_bandwidth(
    fmt: str,
    hidden: int = 2048,
    intermediate: int = 768,
    n_experts: int = 24,
    repeats: int = 3,
    slab_weights: int = SLAB_WEIGHTS,
    tokens: int = 1,
    threads: int | None = None,
    kernels: bool = True,
    activations: str = "float",
) -> dict[str, float]:
    """Decode-step speed of `expert_forward` (`tokens` rows) over `n_experts` distinct experts of
    Qwen3-30B-A3B's shape (more bytes than any CPU cache): stored bytes read per second, in GB/s.
    threads: torch's (and so the kernels') thread count for the run (None: as set)."""
    gen = torch.Generator().manual_seed(0)
    experts = []
    for _ in range(n_experts):
        w = [
            torch.randn(shape, generator=gen) * 0.02
            for shape in ((intermediate, hidden), (intermediate, hidden), (hidden, intermediate))
        ]
        experts.append([quantize(t, fmt) for t in w])
    nbytes = sum(t.nbytes for e in experts for t in e)  # bytes
    x = torch.randn(tokens, hidden, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        for e in experts[:2]:
            expert_forward(x, *e, slab_weights=slab_weights, kernels=kernels, activations=activations)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for e in experts:
                expert_forward(x, *e, slab_weights=slab_weights, kernels=kernels, activations=activations)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return {"format": fmt, "bytes": nbytes, "seconds": best, "read_gbps": nbytes / best / 1e9}


def main(argv: list[str] | None = None) -> int:
    """Per format, one token, 1 and 2 threads: GB/s of stored bytes read by the kernels (and by
    the slab path), next to the CPU's read bandwidth and RAM copy measured in the same run."""
    import argparse
    import json
    import platform
    import sys
    from datetime import datetime, timezone

    import numba

    from lazymoe.measure import ram_copy

    parser = argparse.ArgumentParser(prog="python -m lazymoe.quant.expert", description=main.__doc__)
    parser.add_argument("--formats", default="q8_0,q4_0,q4_k,q5_k,q6_k")
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--activations", default="float,int8", help="float, int8 or both (comma-separated)")
    parser.add_argument("--json", help="write the results here (data/results/quant-cpu-kernels-dev.json)")
    args = parser.parse_args(argv)
    rows = []
    for threads in (int(n) for n in args.threads.split(",")):
        read = read_bandwidth_gbps(threads=threads, repeats=args.repeats)
        copy = ram_copy(256 << 20, repeats=args.repeats, threads=threads).gbps
        print(f"{threads} thread(s): read {read:.1f} GB/s, RAM copy (lazymoe.measure.ram_copy) {copy:.1f} GB/s")
        for fmt in args.formats.split(","):
            slab = measure_read_bandwidth(fmt, repeats=2, threads=threads, kernels=False)["read_gbps"]
            for activations in args.activations.split(","):
                if activations == "int8" and fmt not in kernels_int8.KINDS:
                    continue
                kernel = measure_read_bandwidth(fmt, repeats=args.repeats, threads=threads, activations=activations)
                row = {"format": fmt, "activations": activations, "tokens": 1, "threads": threads,
                       "kernel_gbps": kernel["read_gbps"], "slab_gbps": slab, "read_gbps": read,
                       "ram_copy_gbps": copy, "kernel_share_of_read": kernel["read_gbps"] / read}  # fmt: skip
                rows.append(row)
                print(f"  {fmt} {activations:5}: kernel {row['kernel_gbps']:.2f} GB/s = "
                      f"{row['kernel_share_of_read']:.0%} of read bandwidth (slab path {slab:.2f} GB/s)")  # fmt: skip
    if args.json:
        from lazymoe.hardware import _cpu_model_and_flags

        cpu, flags = _cpu_model_and_flags()
        record = {
            "what": "quantized expert matmul on the CPU: stored bytes read per second, Qwen3-30B-A3B "
                    "expert shapes (hidden 2048, intermediate 768), 24 distinct experts, one token",
            "machine": {"cpu": cpu, "flags": flags, "cores": os.cpu_count(),
                        "note": "shared with other jobs and noisy: best of the repeats"},
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "numba": numba.__version__},
            "command": "python -m lazymoe.quant.expert " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "rows": rows,
        }  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return 0
