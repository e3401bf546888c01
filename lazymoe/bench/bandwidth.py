"""The three bandwidths the roofline bound needs, measured on this machine (GB/s = 1e9 bytes/s).

    cpu_read_gbps   RAM bandwidth of the CPU, all torch threads: `lazymoe.measure.ram_copy`, the
                    package's one CPU-bandwidth measurement (a copy: 2 x size bytes moved / time)
    h2d_pinned_gbps pinned host memory -> GPU (cudaMemcpy through torch, non_blocking)
    gpu_read_gbps   GPU memory read by the GPU (a sum over a large tensor)

Each is the best of a few repeats: a bound is about what the hardware can do. `lazymoe.hardware`
measures more (pageable copies, disk); `cpu_measure` in the result names the CPU method.
"""

from __future__ import annotations

import time

from lazymoe.measure import past_cache, ram_copy

GB = 1e9


def _best_seconds(fn, repeats: int, sync=None) -> float:
    fn()  # warm-up: page faults, allocator, kernels
    if sync:
        sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - start)
    return best


def measure_bandwidths(nbytes: int = 1 << 30, repeats: int = 5) -> dict[str, float | str | None]:
    """Measure; GPU entries are None without CUDA."""
    import torch

    out: dict[str, float | str | None] = {"cpu_read_gbps": None, "h2d_pinned_gbps": None,
                                    "gpu_read_gbps": None, "bytes_per_test": nbytes}
    cpu = ram_copy(past_cache(nbytes, 2), repeats)  # (past the CPU's cache)
    out["cpu_read_gbps"], out["cpu_bytes_per_test"] = cpu.gbps, cpu.size_bytes
    out["cpu_measure"] = "lazymoe.measure.ram_copy: torch copy, all threads, 2 x size / best time"
    host = torch.ones(nbytes // 4, dtype=torch.float32)
    if torch.cuda.is_available():
        sync = torch.cuda.synchronize
        pinned = host.pin_memory()
        dev = torch.empty_like(pinned, device="cuda")
        out["h2d_pinned_gbps"] = nbytes / _best_seconds(
            lambda: dev.copy_(pinned, non_blocking=True), repeats, sync) / GB
        big = torch.ones(4 * nbytes // 4, dtype=torch.float32, device="cuda")
        out["gpu_read_gbps"] = 4 * nbytes / _best_seconds(lambda: big.sum(), repeats, sync) / GB
        del pinned, dev, big
        torch.cuda.empty_cache()
    out["torch_threads"] = torch.get_num_threads()
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(measure_bandwidths(), indent=1))
