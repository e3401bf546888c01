"""This machine's measured bandwidths: saved by lab01, offered by the calculator as inputs.

Lab 01 measures RAM, disk, GPU memory and host -> GPU copies (`lazymoe.hardware.measure`);
`save_measured(report)` keeps the figures the calculator uses in the learner's folder
(`~/.lazymoe/measured_bandwidths.json`, or `$LAZYMOE_HOME`), written atomically so a crash never
leaves half a file. `load_measured()` reads them back (None before lab01 has run).

    report = hardware.measure()
    calc.save_measured(report)
    calc.Machine.from_names("Laptop, DDR5-5600", 32, gpu="RTX 4060 Laptop",
                            **calc.load_measured().machine_kwargs())
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lazymoe import paths
from lazymoe.atomic import write_json
from lazymoe.calculator.bounds import CalculatorError
from lazymoe.catalog import HardwareSpec

FILE_NAME = "measured_bandwidths.json"
# lab01's measurement rows -> what the calculator calls them
RAM_ROW, VRAM_ROW, LINK_ROW, DISK_ROW = "RAM copy", "GPU device copy", "host->GPU, pinned", "disk"


@dataclass(frozen=True)
class MeasuredBandwidths:
    """Bandwidths measured on this machine, GB/s (None: not measured, e.g. no GPU)."""

    ram_gbps: float | None = None
    vram_gbps: float | None = None
    link_gbps: float | None = None
    disk_gbps: float | None = None
    measured_at: str = ""      # local time, "2026-05-01 14:03"
    quick: bool = False        # measured with LAZYMOE_QUICK's small sizes: less reliable

    def machine_kwargs(self) -> dict:
        """The `Machine` keywords these figures fill (effective_*_gbps, disk_gbps)."""
        out = {"effective_ram_gbps": self.ram_gbps, "effective_vram_gbps": self.vram_gbps,
               "effective_link_gbps": self.link_gbps, "disk_gbps": self.disk_gbps}
        return {k: v for k, v in out.items() if v}

    def describe(self) -> str:
        parts = [f"{name} {value:.1f} GB/s" for name, value in
                 (("RAM", self.ram_gbps), ("GPU memory", self.vram_gbps),
                  ("host->GPU", self.link_gbps), ("disk", self.disk_gbps)) if value]
        when = f" on {self.measured_at}" if self.measured_at else ""
        quick = " (quick sizes: run lab01 without LAZYMOE_QUICK for better figures)" if self.quick else ""
        return f"measured by lab01{when}: {', '.join(parts) or 'nothing'}{quick}"


def from_report(report, quick: bool = False) -> MeasuredBandwidths:
    """Pick the calculator's figures from a `MeasureReport`: the best of each kind of row."""
    def best(prefix: str) -> float | None:
        rows = [r.gbps for r in report.results if r.name.startswith(prefix)]
        return max(rows) if rows else None

    return MeasuredBandwidths(best(RAM_ROW), best(VRAM_ROW), best(LINK_ROW), best(DISK_ROW),
                              time.strftime("%Y-%m-%d %H:%M"), quick)


def measured_path() -> Path:
    return paths.home_dir() / FILE_NAME


def save_measured(report_or_figures, quick: bool | None = None, path: Path | None = None) -> Path:
    """Save a `MeasureReport` (or `MeasuredBandwidths`) for the calculator; returns the file."""
    if isinstance(report_or_figures, MeasuredBandwidths):
        figures = report_or_figures
    else:
        if quick is None:
            import os

            quick = os.environ.get("LAZYMOE_QUICK") == "1"
        figures = from_report(report_or_figures, quick)
    target = path or measured_path()
    write_json(target, asdict(figures), indent=2)
    return target


def load_measured(path: Path | None = None) -> MeasuredBandwidths | None:
    """The saved figures, or None if lab01 has not saved any; a damaged file says how to fix it."""
    source = path or measured_path()
    if not source.exists():
        return None
    try:
        raw = json.loads(source.read_text())
        figures = MeasuredBandwidths(**raw)
        for name in ("ram_gbps", "vram_gbps", "link_gbps", "disk_gbps"):
            value = getattr(figures, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name} = {value!r}")
    except (ValueError, TypeError) as exc:
        raise CalculatorError(f"{source} cannot be read ({exc}): run lab01's measurement cell "
                              "again to rewrite it, or delete the file") from exc
    return figures


def default_bandwidths(gpu: HardwareSpec | None, host: HardwareSpec,
                       measured: MeasuredBandwidths | None = None) -> dict[str, float | None]:
    """The link / RAM / VRAM figures to start from: the datasheet's, or the measured ones.

    Keys: link_gbps, ram_gbps, vram_gbps (None where the machine has no such thing). With
    `measured`, each figure this machine has measured replaces the datasheet's.
    """
    out = {"link_gbps": gpu.link_gbps if gpu is not None else None,
           "ram_gbps": host.bandwidth_gbps,
           "vram_gbps": gpu.bandwidth_gbps if gpu is not None else None}
    if measured is not None:
        if measured.ram_gbps:
            out["ram_gbps"] = measured.ram_gbps
        if gpu is not None and measured.link_gbps:
            out["link_gbps"] = measured.link_gbps
        if gpu is not None and measured.vram_gbps:
            out["vram_gbps"] = measured.vram_gbps
    return out
