"""What is in this machine: CPU, RAM and GPUs (through NVML), read without side effects.

`probe()` never fails for lack of a GPU or of NVML: it reports what it could not read.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

import psutil

# PCIe payload bandwidth per lane and direction, GB/s, after line encoding
# (gen1/2: 8b/10b, gen3+: 128b/130b). Source: PCI-SIG base specifications, rounded.
PCIE_LANE_GBPS = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}


@dataclass
class GpuInfo:
    index: int
    name: str
    vram_total_bytes: int
    vram_used_bytes: int
    memory_bus_width_bits: int | None = None
    memory_clock_mhz: int | None = None
    pcie_gen: int | None = None
    pcie_width: int | None = None
    driver_version: str | None = None
    cuda_version: str | None = None

    @property
    def memory_bandwidth_gbps(self) -> float | None:
        """Theoretical VRAM bandwidth = bus width (bytes) x memory clock x 2 (double data rate)."""
        if not self.memory_bus_width_bits or not self.memory_clock_mhz:
            return None
        return self.memory_bus_width_bits / 8 * self.memory_clock_mhz * 1e6 * 2 / 1e9

    @property
    def pcie_bandwidth_gbps(self) -> float | None:
        """Host link bandwidth, one direction = lanes x per-lane rate of that generation."""
        if not self.pcie_gen or not self.pcie_width or self.pcie_gen not in PCIE_LANE_GBPS:
            return None
        return PCIE_LANE_GBPS[self.pcie_gen] * self.pcie_width


@dataclass
class MachineInfo:
    os: str
    python: str
    cpu_model: str
    cpu_cores_physical: int | None
    cpu_threads: int | None
    isa_flags: list[str]
    ram_total_bytes: int
    ram_available_bytes: int
    gpus: list[GpuInfo] = field(default_factory=list)
    other_accelerators: list[str] = field(default_factory=list)
    gpu_note: str = ""


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    wanted = ["avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni",
              "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd", "sve"]
    return model, [flag for flag in wanted if flag in flags]


def _nvml_gpus() -> tuple[list[GpuInfo], str]:
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed: GPUs were not probed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no driver, no GPU, container without NVML: all normal
        return [], f"no NVIDIA GPU found ({type(exc).__name__})"
    gpus = []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        try:
            cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
            cuda_version = f"{cuda // 1000}.{cuda % 1000 // 10}"
        except Exception:
            cuda_version = None

        def read(fn, *args):
            try:
                return fn(*args)
            except Exception:
                return None

        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(GpuInfo(
                index=i,
                name=name.decode() if isinstance(name, bytes) else name,
                vram_total_bytes=int(memory.total),
                vram_used_bytes=int(memory.used),
                memory_bus_width_bits=read(pynvml.nvmlDeviceGetMemoryBusWidth, handle),
                memory_clock_mhz=read(pynvml.nvmlDeviceGetMaxClockInfo, handle, pynvml.NVML_CLOCK_MEM),
                pcie_gen=read(pynvml.nvmlDeviceGetMaxPcieLinkGeneration, handle),
                pcie_width=read(pynvml.nvmlDeviceGetMaxPcieLinkWidth, handle),
                driver_version=driver.decode() if isinstance(driver, bytes) else driver,
                cuda_version=cuda_version,
            ))
    finally:
        pynvml.nvmlShutdown()
    return gpus, ""


def _other_accelerators() -> list[str]:
    found = []
    try:
        import torch

        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            found.append("Apple GPU (Metal / MPS), memory shared with the CPU")
        if torch.version.hip and torch.cuda.is_available():
            found.append(f"AMD GPU through ROCm: {torch.cuda.get_device_name(0)}")
    except Exception:
        pass
    if os.path.exists("/dev/accel"):
        found.append("an accelerator under /dev/accel (an NPU?)")
    return found


def probe() -> MachineInfo:
    """Read CPU, RAM and GPUs. Cheap (well under a second) and safe without a GPU."""
    model, flags = _cpu_model_and_flags()
    memory = psutil.virtual_memory()
    gpus, note = _nvml_gpus()
    return MachineInfo(
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        cpu_model=model,
        cpu_cores_physical=psutil.cpu_count(logical=False),
        cpu_threads=psutil.cpu_count(logical=True),
        isa_flags=flags,
        ram_total_bytes=int(memory.total),
        ram_available_bytes=int(memory.available),
        gpus=gpus,
        other_accelerators=_other_accelerators(),
        gpu_note=note,
    )
