"""Where a plan puts its bytes (VRAM, RAM, disk), and whether that fits."""

from __future__ import annotations

from dataclasses import dataclass, field

from lazymoe.calculator.workload import GiB, Machine, Workload
from lazymoe.i18n import _

TIERS = ("VRAM", "RAM", "disk")


@dataclass(frozen=True)
class MemoryStack:
    """Bytes per tier, item by item, against each tier's capacity (bytes).

    items       (tier, label, bytes): e.g. ("VRAM", "weights (24 of 48 layers)", 8.1e9)
    capacity    tier -> bytes available (VRAM: per GPU x GPUs; RAM: total RAM); no disk limit
    """

    items: tuple[tuple[str, str, float], ...]
    capacity: dict[str, float] = field(default_factory=dict)

    def total(self, tier: str) -> float:
        return sum(b for t, _, b in self.items if t == tier)

    def fits_in(self, tier: str) -> bool:
        return tier not in self.capacity or self.total(tier) <= self.capacity[tier]

    @property
    def fits(self) -> bool:
        return all(self.fits_in(t) for t in TIERS)

    def overflow(self) -> list[str]:
        """In words, each tier that is over its capacity and by how much."""
        return [_("{tier}: needs {need:.1f} GiB, has {has:.1f} GiB").format(
                    tier=t, need=self.total(t) / GiB, has=self.capacity[t] / GiB)
                for t in TIERS if not self.fits_in(t)]

    def as_dict(self) -> dict:
        return {"items": [{"tier": t, "label": label, "bytes": b} for t, label, b in self.items],
                "capacity_bytes": dict(self.capacity),
                "total_bytes": {t: self.total(t) for t in TIERS}, "fits": self.fits}


def memory_needed(workload: Workload, machine: Machine | None = None) -> dict[str, float]:
    """What running the workload takes, wherever it runs (bytes):

        weights = params x bits_per_weight / 8
        kv_cache = context x batch x KV layers x (2 x kv_heads x head_dim) x kv_bits / 8
        overhead = an allowance for the runtime (CUDA context and buffers; 0 without a GPU)
    """
    overhead = machine.gpu_overhead_bytes if machine is not None and machine.has_gpu else 0
    return {"weights": workload.weight_bytes, "kv_cache": workload.kv_cache_bytes,
            "overhead": float(overhead),
            "total": workload.weight_bytes + workload.kv_cache_bytes + overhead}


def where_it_fits(workload: Workload, machine: Machine) -> str:
    """'VRAM', 'VRAM (n GPUs)', 'RAM', 'VRAM + RAM', 'disk' or 'nowhere': the fastest home.

    Fits in VRAM when weights + KV + overhead <= one GPU's memory; 'VRAM (n GPUs)' when it needs
    the machine's n GPUs together; RAM when weights + KV <= usable RAM; VRAM + RAM when the two
    together hold it; disk otherwise (every token then reads from the disk: hopeless for dense).
    """
    need = memory_needed(workload, machine)
    if machine.has_gpu and need["total"] <= machine.vram_bytes:
        return "VRAM"
    if machine.gpu is not None and machine.gpu_count > 1:
        per_gpu = need["weights"] + need["kv_cache"] + machine.gpu_count * machine.gpu_overhead_bytes
        if per_gpu <= machine.gpu_count * machine.vram_bytes:
            return f"VRAM ({machine.gpu_count} GPUs)"
    if machine.unified:
        return "disk"
    ram_need = need["weights"] + need["kv_cache"]
    if ram_need <= machine.ram_usable_bytes:
        return "RAM"
    vram_free = max(0, machine.vram_bytes * machine.gpu_count - need["overhead"]) if machine.gpu else 0
    if ram_need <= machine.ram_usable_bytes + vram_free:
        return "VRAM + RAM"
    return "disk"


def gib(n_bytes: float) -> str:
    return f"{n_bytes / GiB:.1f} GiB"
