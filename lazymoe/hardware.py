"""What is in this machine: CPU, RAM and GPUs (through NVML), read without side effects.

`probe()` never fails for lack of a GPU or of NVML: it reports what it could not read.
`measure()` times the bandwidths themselves (`lazymoe.measure`, which never imports this module:
the dependency points one way) and puts the GPU's datasheet figures from `probe()` beside them.

    python -m lazymoe.hardware [--measure] [--quick] [--host "Desktop, DDR5-5600 dual channel"] [--json]
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field

import psutil

from lazymoe.i18n import _

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

    def datasheet(self):
        """This GPU's figures as `lazymoe.measure` takes them."""
        from lazymoe.measure import GpuDatasheet

        link = f"PCIe {self.pcie_gen} x{self.pcie_width}" if self.pcie_gen else "host link"
        return GpuDatasheet(self.memory_bandwidth_gbps, self.pcie_bandwidth_gbps, link)

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

    def table(self) -> str:
        """What `probe()` found, one line per part."""
        gib = 2**30
        # the row names (os, cpu, isa, ram, gpu) stay as they are: lab00 asks learners to find them
        lines = [f"os        {self.os}, Python {self.python}",
                 "cpu       " + _("{model}: {cores} cores, {threads} threads").format(
                     model=self.cpu_model, cores=self.cpu_cores_physical, threads=self.cpu_threads),
                 f"isa       {' '.join(self.isa_flags) or _('(none read)')}",
                 "ram       " + _("{total:.1f} GiB total, {available:.1f} GiB available").format(
                     total=self.ram_total_bytes / gib, available=self.ram_available_bytes / gib)]
        for g in self.gpus:
            bw = f"{g.memory_bandwidth_gbps:.0f} GB/s" if g.memory_bandwidth_gbps else "? GB/s"
            link = (f"PCIe {g.pcie_gen} x{g.pcie_width} = {g.pcie_bandwidth_gbps:.1f} GB/s"
                    if g.pcie_bandwidth_gbps else _("link unknown"))
            lines.append(f"gpu{g.index}      " + _(
                "{name}: {total:.1f} GiB ({used:.1f} used), {bandwidth} ({bus}-bit x {clock} MHz x 2), "
                "{link}, driver {driver}, CUDA {cuda}").format(
                    name=g.name, total=g.vram_total_bytes / gib, used=g.vram_used_bytes / gib,
                    bandwidth=bw, bus=g.memory_bus_width_bits, clock=g.memory_clock_mhz, link=link,
                    driver=g.driver_version, cuda=g.cuda_version))
        if not self.gpus:
            lines.append(f"gpu       {self.gpu_note or _('none')}")
        lines += [f"other     {a}" for a in self.other_accelerators]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        out = asdict(self)
        for g, d in zip(self.gpus, out["gpus"], strict=True):
            d["memory_bandwidth_gbps"] = g.memory_bandwidth_gbps
            d["pcie_bandwidth_gbps"] = g.pcie_bandwidth_gbps
        return out


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
        return [], _("nvidia-ml-py is not installed: GPUs were not probed")
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no driver, no GPU, container without NVML: all normal
        return [], _("no NVIDIA GPU found ({error})").format(error=type(exc).__name__)
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
            found.append(_("Apple GPU (Metal / MPS), memory shared with the CPU"))
        if torch.version.hip and torch.cuda.is_available():
            found.append(_("AMD GPU through ROCm: {name}").format(name=torch.cuda.get_device_name(0)))
    except Exception:
        pass
    if os.path.exists("/dev/accel"):
        found.append(_("an accelerator under /dev/accel (an NPU?)"))
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


def measure(*args, **kwargs):
    """Time RAM, disk, GPU and host<->GPU bandwidths (`lazymoe.measure.measure`), with GPU 0's
    datasheet figures from NVML beside the GPU rows."""
    from lazymoe.measure import measure as _measure

    gpus = probe().gpus
    kwargs.setdefault("gpu_datasheet", gpus[0].datasheet() if gpus else None)
    return _measure(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m lazymoe.hardware", description=_(
        "What is in this machine: CPU, RAM and GPUs (through NVML), read without side effects."))
    parser.add_argument("--measure", action="store_true", help=_("also time the bandwidths"))
    parser.add_argument("--quick", action="store_true", help=_("small sizes (seconds, not a minute)"))
    parser.add_argument("--host", help=_("catalog CPU row for the RAM datasheet figure"))
    parser.add_argument("--disk-folder", help=_("where to write the disk test file (default: temp dir)"))
    parser.add_argument("--json", action="store_true", help=_("print JSON"))
    args = parser.parse_args(argv)
    info = probe()
    report = measure(quick=args.quick or None, host=args.host, disk_folder=args.disk_folder) \
        if args.measure else None
    if args.json:
        print(json.dumps({"probe": info.as_dict(), "measure": report.as_dict() if report else None},
                         indent=2))
    else:
        print(info.table())
        if report:
            print()
            print(report.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
