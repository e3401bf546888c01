"""The CPU's read bandwidth, measured the way the quantized kernels read: the ceiling they aim at.

    read_bandwidth_gbps(threads=2)    GB/s of bytes read once (lazymoe.measure.ram_copy moves
                                      them both ways, so it reads and writes)

Numba, like the kernels (lazymoe/quant/kernels_cpu.py, kernels_int8.py), so the same threads
read the same way; lazymoe.measure stays free of numba.
"""

from __future__ import annotations

import time

import numba
import numpy as np
from numba import prange

from lazymoe.quant.kernels_cpu import _jit, _lock


@_jit(parallel=True)
def _sum_words(words):
    """Sum of uint64 words, every thread over its share: reads each byte once, writes nothing."""
    total = np.uint64(0)
    for i in prange(words.size):
        total += words[i]
    return total


def read_bandwidth_gbps(size_bytes: int = 256 << 20, repeats: int = 5, threads: int = 1) -> float:
    """The CPU's read bandwidth in GB/s: `size_bytes` (more than any cache) summed as 64-bit
    words by `threads` threads, best of `repeats` after a warm-up. The ceiling for a kernel that
    reads each stored byte once (lazymoe.measure.ram_copy moves bytes both ways)."""
    words = np.ones(size_bytes // 8, np.uint64)
    with _lock:
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        _sum_words(words)  # warm-up: compiles, touches the pages
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            _sum_words(words)
            best = min(best, time.perf_counter() - start)
    return words.nbytes / best / 1e9
