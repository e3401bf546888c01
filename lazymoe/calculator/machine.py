"""What a model runs on: GPU(s), the host's memory, RAM size, a disk, and the link between them."""

from __future__ import annotations

from dataclasses import dataclass

from lazymoe import catalog
from lazymoe.calculator.bounds import CalculatorError
from lazymoe.catalog import HardwareSpec
from lazymoe.i18n import _

GiB = 2**30
# Assumptions, not measurements: change them where you know better.
GPU_OVERHEAD_BYTES = GiB // 2   # CUDA context + scratch buffers per GPU; `nvidia-smi` shows yours
RAM_RESERVE_BYTES = 2 * GiB     # left to the OS, the browser and the notebook
# A PCIe 3.0 x4 NVMe SSD's sequential read (e.g. Samsung 970 EVO Plus datasheet: 3,500 MB/s).
DISK_GBPS = 3.5


@dataclass(frozen=True)
class Machine:
    """A computer: an optional GPU (x gpu_count), the host's memory system, RAM size and a disk.

    host is a catalog row of kind "cpu" (RAM bandwidth) or "unified" (Apple: one memory for CPU
    and GPU; then `gpu` is None and the GPU strategies use the unified memory).

    Bandwidths default to the datasheet figures of the catalog rows. What a machine really
    delivers is lower, and can be entered (GB/s; None = the datasheet figure):
    link                 the slot the GPU sits in, when it is not the GPU's own link ("PCIe 3.0 x8":
                         a x16 card in a x8 slot, or an older board)
    effective_link_gbps  host -> GPU copies as measured (lab01's "host->GPU, pinned" row)
    effective_ram_gbps   RAM as measured (lab01's best "RAM copy" row)
    effective_vram_gbps  GPU memory as measured (lab01's "GPU device copy" row)
    """

    host: HardwareSpec
    ram_bytes: int
    gpu: HardwareSpec | None = None
    gpu_count: int = 1
    disk_gbps: float = DISK_GBPS
    use_nvlink: bool = False
    gpu_overhead_bytes: int = GPU_OVERHEAD_BYTES
    ram_reserve_bytes: int = RAM_RESERVE_BYTES
    link: str | None = None
    effective_link_gbps: float | None = None
    effective_ram_gbps: float | None = None
    effective_vram_gbps: float | None = None

    def __post_init__(self) -> None:
        if self.gpu is not None and self.gpu.kind != "gpu":
            raise CalculatorError(f"{self.gpu.name} is a {self.gpu.kind} row: pass it as host=")
        if self.host.kind == "gpu":
            raise CalculatorError(f"{self.host.name} is a GPU: pass it as gpu=, and a CPU row as host=")
        if self.gpu_count < 1:
            raise CalculatorError("gpu_count must be at least 1")
        if self.use_nvlink and (self.gpu is None or not self.gpu.nvlink_gbps):
            raise CalculatorError("use_nvlink=True, but this GPU has no NVLink in the catalog")
        for name in ("disk_gbps", "effective_link_gbps", "effective_ram_gbps", "effective_vram_gbps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise CalculatorError(_("{name} must be more than 0 GB/s, got {value}: enter a "
                                        "measured figure, or leave it empty for the datasheet's"
                                        ).format(name=name.replace("_", " "), value=value))
        if (self.link or self.effective_link_gbps) and self.gpu is None:
            raise CalculatorError(_("a host link (PCIe) only exists with a discrete GPU: pick a "
                                    "GPU, or leave the link empty"))
        if self.link:
            catalog.parse_link(self.link)   # raises CatalogError with the expected form

    @classmethod
    def from_names(cls, host: str, ram_gb: float | None = None, gpu: str | None = None,
                   **kwargs) -> Machine:
        """`Machine.from_names("DDR5-5600 dual", 64, gpu="RTX 3090")`; ram_gb in GiB."""
        host_spec = catalog.hardware(host)
        if ram_gb is None:
            if host_spec.memory_bytes is None:
                raise CalculatorError(f"{host_spec.name} is a CPU row: say how much RAM (ram_gb)")
            ram_bytes = host_spec.memory_bytes
        else:
            ram_bytes = int(ram_gb * GiB)
        return cls(host_spec, ram_bytes, catalog.hardware(gpu) if gpu else None, **kwargs)

    @property
    def unified(self) -> bool:
        return self.host.kind == "unified"

    @property
    def has_gpu(self) -> bool:
        return self.gpu is not None or self.unified

    @property
    def vram_bytes(self) -> int:
        """Memory of one GPU (the unified memory, on an Apple machine)."""
        if self.gpu is not None:
            return self.gpu.memory_bytes or 0
        return self.ram_bytes if self.unified else 0

    @property
    def vram_gbps(self) -> float:
        return self.effective_vram_gbps or self.nominal_vram_gbps

    @property
    def nominal_vram_gbps(self) -> float:
        return self.gpu.bandwidth_gbps if self.gpu is not None else self.host.bandwidth_gbps

    @property
    def vram_name(self) -> str:
        return "VRAM" if self.gpu is not None else "unified memory"

    @property
    def ram_gbps(self) -> float:
        return self.effective_ram_gbps or self.host.bandwidth_gbps

    @property
    def nominal_link_gbps(self) -> float | None:
        """The datasheet rate of the link the GPU runs at (its slot's, if `link` is given)."""
        if self.gpu is None:
            return None
        if self.link:
            gen, lanes = catalog.parse_link(self.link)
            return catalog.PCIE_LANE_GBPS[gen] * lanes
        return self.gpu.link_gbps

    @property
    def pcie_gbps(self) -> float:
        """Host -> GPU bandwidth the bounds use: the effective figure if given, else the nominal."""
        if self.effective_link_gbps:
            return self.effective_link_gbps
        nominal = self.nominal_link_gbps
        if nominal is None:
            raise CalculatorError(_("this machine has no GPU host link in the catalog: enter the "
                                    "link's bandwidth (GB/s)"))
        return nominal

    @property
    def gpu_link_name(self) -> str:
        if self.gpu is None:
            return "none"
        if self.link:
            gen, lanes = catalog.parse_link(self.link)
            return f"PCIe {gen}.0 x{lanes}"
        return self.gpu.link_name

    @property
    def ram_usable_bytes(self) -> int:
        return max(0, self.ram_bytes - self.ram_reserve_bytes)

    def bandwidth_notes(self) -> list[str]:
        """Each bandwidth that is not the datasheet's, next to the datasheet figure."""
        out = []
        pairs = [("VRAM" if self.gpu is not None else "unified memory", self.effective_vram_gbps,
                  self.nominal_vram_gbps),
                 ("RAM", self.effective_ram_gbps, self.host.bandwidth_gbps)]
        if self.gpu is not None:
            pairs.append((self.gpu_link_name, self.effective_link_gbps, self.nominal_link_gbps))
        for name, effective, nominal in pairs:
            if effective and nominal and abs(effective - nominal) > 1e-9:
                out.append(_("{name} at {effective:.4g} GB/s as entered, not the datasheet's "
                             "{nominal:.4g} GB/s").format(name=name, effective=effective, nominal=nominal))
        return out

    def describe(self) -> str:
        gpu = f"{self.gpu_count} x {self.gpu.name}" if self.gpu else "no GPU"
        link = f" on {self.gpu_link_name}" if self.link else ""
        text = f"{gpu}{link}; {self.host.name}; {self.ram_bytes / GiB:.0f} GiB RAM"
        notes = self.bandwidth_notes()
        return "; ".join([text, *notes])
