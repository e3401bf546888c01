"""Where a missed expert is computed: fetched to the GPU, or computed on the CPU where it lives.

    "fetch" copy it in (disk -> RAM -> VRAM), then compute on the GPU. Pays the PCIe transfer.
            (Its old name, "gpu", is still accepted by EngineConfig.)
    "cpu"   compute it on the CPU from RAM, as llama.cpp's --cpu-moe does: only the hidden state
            (D numbers per token) crosses PCIe, but the CPU reads the expert at RAM bandwidth and
            does the matmuls with its far smaller FLOP rate.
    "auto"  per expert, whichever the cost model says is faster (Fiddler's idea, Kamahori et
            al. 2024, arXiv 2402.07033):

        gpu_seconds = expert_bytes / h2d_bandwidth
        cpu_seconds = max(expert_bytes / cpu_bandwidth, tokens * 6 * I * D / cpu_flops)

    One token (decode) makes the CPU cost a memory read; a long prompt (prefill) makes it a
    FLOP count, and the GPU wins. On a machine without a GPU there is no choice to make: the
    model runs on the CPU, and "fetch" copies a missed expert into the RAM cache tier.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class CostModel:
    """Measured (or given) speeds; `choose` picks "fetch" or "cpu" for one missed expert."""

    h2d_bandwidth_gbps: float  # GB/s, pinned host -> GPU
    cpu_bandwidth_gbps: float  # GB/s, RAM read by the CPU
    cpu_gflops: float  # GFLOP/s of the CPU on an expert-sized matmul

    def __post_init__(self) -> None:
        for name in ("h2d_bandwidth_gbps", "cpu_bandwidth_gbps", "cpu_gflops"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: give a positive speed")

    def gpu_seconds(self, expert_bytes: int) -> float:
        return expert_bytes / (self.h2d_bandwidth_gbps * 1e9)

    def cpu_seconds(self, expert_bytes: int, n_tokens: int, expert_flops_per_token: int) -> float:
        read_s = expert_bytes / (self.cpu_bandwidth_gbps * 1e9)
        compute_s = n_tokens * expert_flops_per_token / (self.cpu_gflops * 1e9)
        return max(read_s, compute_s)

    def choose(self, expert_bytes: int, n_tokens: int, expert_flops_per_token: int) -> str:
        cpu_s = self.cpu_seconds(expert_bytes, n_tokens, expert_flops_per_token)
        return "cpu" if cpu_s < self.gpu_seconds(expert_bytes) else "fetch"


def measure_cost_model(
    hidden: int, intermediate: int, dtype: torch.dtype, device: str, nbytes: int = 32 * 2**20
) -> CostModel:
    """Measure the three speeds on this machine (a fraction of a second)."""
    from lazymoe.measure import ram_copy  # the package's one CPU-bandwidth measurement

    cpu_gbps = ram_copy(nbytes, repeats=3).gbps
    src = torch.empty(nbytes // 4, dtype=torch.float32)
    h2d_gbps = cpu_gbps  # no GPU: the "transfer" is a RAM copy
    if device.startswith("cuda"):
        pinned = src.pin_memory()
        on_gpu = torch.empty_like(pinned, device=device)
        on_gpu.copy_(pinned)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(3):
            on_gpu.copy_(pinned, non_blocking=True)
        torch.cuda.synchronize()
        h2d_gbps = 3 * nbytes / (time.perf_counter() - start) / 1e9
        del pinned, on_gpu
        torch.cuda.empty_cache()  # give the measuring buffer back: it is not the engine's
    x = torch.randn(16, hidden, dtype=dtype)
    w = torch.randn(2 * intermediate, hidden, dtype=dtype)
    torch.nn.functional.linear(x, w)
    start = time.perf_counter()
    for _ in range(5):
        torch.nn.functional.linear(x, w)
    gflops = 5 * 2 * 16 * 2 * intermediate * hidden / (time.perf_counter() - start) / 1e9
    return CostModel(h2d_gbps, cpu_gbps, gflops)
