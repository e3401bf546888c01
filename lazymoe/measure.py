"""Measure this machine's bandwidths: RAM copy, disk read, GPU memory, host <-> GPU copies.

CPU bandwidth is measured here and nowhere else, two ways, each the ceiling of a different kind of
work:

    ram_copy   bytes read and written again (a copy): lab01's table, the benchmark's roofline
               bound (`lazymoe.bench.bandwidth`), the engine's placement cost model
               (`lazymoe.engine.compute.placement`)
    ram_read   bytes read once, nothing written: the ceiling of a CPU kernel that computes
               straight from stored weights (`lazymoe.quant.expert_bench`, lab03)

Every number is the best of a few repeats of one sized transfer (best, because the slower runs
are the ones something else interrupted). Sizes and repeats are printed with the results.
`LAZYMOE_QUICK=1` (or `quick=True`) uses small sizes so a notebook finishes fast on CI.

    from lazymoe.hardware import measure   # adds the GPU datasheet figures read through NVML
    report = measure()             # a progress bar while it runs
    print(report.table())
    report.figure().show()         # measured vs datasheet
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lazymoe.i18n import _
from lazymoe.i18n.width import pad

MiB = 2**20
GB = 1e9
# A RAM measurement's buffers together hold at least this many times the CPU's largest cache:
# one that fits times the cache instead (on an H200 host with a 300 MiB L3, a 256 MiB read gave
# 159-181 GB/s, a 512 MiB copy 83: data/results/quant-cpu-kernels-h200*.json)
CACHE_MULTIPLE = 4


@dataclass
class Measurement:
    """One transfer, timed: gbps = bytes moved / best time."""

    name: str
    gbps: float
    size_bytes: int
    repeats: int
    seconds: list[float]
    datasheet_gbps: float | None = None
    datasheet: str = ""           # where the datasheet figure comes from
    note: str = ""

    @property
    def share_of_datasheet(self) -> float | None:
        return self.gbps / self.datasheet_gbps if self.datasheet_gbps else None


@dataclass
class MeasureReport:
    results: list[Measurement] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def table(self) -> str:
        lines = [pad(_("measurement"), 34) + f"{'GB/s':>9}" + pad(_("datasheet"), 11, ">")
                 + pad(_("share"), 7, ">") + "  " + _("size x repeats")]
        for r in self.results:
            sheet = f"{r.datasheet_gbps:>11.1f}" if r.datasheet_gbps else f"{'-':>11}"
            share = f"{r.share_of_datasheet:>7.0%}" if r.share_of_datasheet else f"{'-':>7}"
            lines.append(f"{r.name:<34}{r.gbps:>9.2f}{sheet}{share}  "
                         f"{r.size_bytes / MiB:.0f} MiB x {r.repeats}")
        notes = [f"  - {r.name}: {r.note}" for r in self.results if r.note]
        notes += [f"  - {r.name}: " + _("datasheet = {source}").format(source=r.datasheet)
                  for r in self.results if r.datasheet]
        if notes:
            lines += ["", _("notes:"), *notes]
        if self.skipped:
            lines += ["", _("skipped:"), *(f"  - {s}" for s in self.skipped)]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"results": [asdict(r) for r in self.results], "skipped": list(self.skipped)}

    def figure(self):
        """A plotly bar chart: measured next to the datasheet figure, log scale."""
        import plotly.graph_objects as go

        names = [r.name for r in self.results]
        fig = go.Figure([
            go.Bar(name=_("measured"), x=names, y=[r.gbps for r in self.results],
                   text=[f"{r.gbps:.1f}" for r in self.results], textposition="outside"),
            go.Bar(name=_("datasheet"), x=names, y=[r.datasheet_gbps or 0 for r in self.results],
                   text=[f"{r.datasheet_gbps:.1f}" if r.datasheet_gbps else "?" for r in self.results],
                   textposition="outside"),
        ])
        fig.update_layout(barmode="group", yaxis_type="log", yaxis_title=_("GB/s (log scale)"),
                          title=_("Measured bandwidth vs datasheet"), height=420)
        return fig


@functools.cache
def largest_cache_bytes(sysfs: str | Path = "/sys/devices/system/cpu") -> int | None:
    """The CPU's last-level cache (usually L3), all its instances together, as Linux lists them
    under `sysfs` (a server with several chiplets or sockets has one per group of cores, and its
    threads together fill all of them), else as the C library gives it; None where neither says."""
    found: dict[tuple[int, str], int] = {}  # (level, the cores that share it) -> bytes
    for index in Path(sysfs).glob("cpu[0-9]*/cache/index[0-9]*"):
        try:
            level = int((index / "level").read_text())
            shared = (index / "shared_cpu_list").read_text().strip()
            text = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            found[level, shared] = int(digits) * unit
    if found:
        top = max(level for level, _ in found)
        return sum(size for (level, _), size in found.items() if level == top) or None
    for name in ("SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):
        with contextlib.suppress(ValueError, OSError, AttributeError):  # (not glibc)
            if int(os.sysconf(name)) > 0:
                return int(os.sysconf(name))
    return None


def past_cache(size_bytes: int, buffers: int = 1) -> int:
    """`size_bytes`, raised (in whole MiB) so that `buffers` buffers of it hold CACHE_MULTIPLE
    times the CPU's largest cache, but never past an eighth of the memory available now: the
    size a measurement meant for RAM needs."""
    import psutil

    cache = largest_cache_bytes() or 0
    need = -(-CACHE_MULTIPLE * cache // buffers // MiB) * MiB
    room = psutil.virtual_memory().available // 8 // buffers // MiB * MiB
    return max(size_bytes, min(need, room))


def copies_past_cache(item_bytes: int, at_least: int = 1) -> int:
    """How many items of `item_bytes` (a benchmark's experts or matrices, each in its own memory)
    together hold `past_cache`'s bytes, and `at_least` of them."""
    return max(at_least, -(-past_cache(0) // item_bytes))


def _cache_note(size_bytes: int, buffers: int) -> str:
    """A warning for a result whose buffers fit in the CPU's largest cache."""
    cache = largest_cache_bytes()
    if cache and size_bytes * buffers < 2 * cache:
        return _("{size} MiB fits in this CPU's {cache} MiB cache: this is more the cache's speed "
                 "than RAM's").format(size=size_bytes * buffers // MiB, cache=cache // MiB)
    return ""


def _best_of(fn: Callable[[], float], repeats: int) -> list[float]:
    fn()  # warm-up: first touches allocate pages and load code
    return [fn() for _ in range(repeats)]


def ram_copy(size_bytes: int | None, repeats: int, threads: int | None = None) -> Measurement:
    """RAM bandwidth: a torch copy of `size_bytes`, bytes moved = 2 x size (each byte read once,
    written once), best of `repeats` after a warm-up. threads: torch threads for the copy
    (None: all of them; 1: what one core reaches). size_bytes None: two buffers of 128 MiB or
    more, past the CPU's cache (`past_cache`); a size whose buffers fit in the cache gets a
    note saying so."""
    import torch

    if size_bytes is None:
        size_bytes = past_cache(128 * MiB, buffers=2)
    src = torch.ones(size_bytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    before = torch.get_num_threads()
    used = threads or before

    def once() -> float:
        t0 = time.perf_counter()
        dst.copy_(src)
        return time.perf_counter() - t0

    torch.set_num_threads(used)
    try:
        secs = _best_of(once, repeats)
    finally:
        torch.set_num_threads(before)
    notes = [_("one core rarely saturates all memory channels") if used == 1 else "",
             _cache_note(size_bytes, 2)]  # fmt: skip
    return Measurement(f"RAM copy, {used} thread{'s' if used > 1 else ''}", 2 * size_bytes / min(secs) / GB,
                       size_bytes, repeats, secs, note="; ".join(n for n in notes if n))


def ram_read(size_bytes: int | None = None, repeats: int = 5, threads: int | None = None) -> Measurement:
    """RAM read bandwidth: `size_bytes` summed as 64-bit words by `threads` threads, bytes moved =
    size (each byte read once, nothing written), best of `repeats` after a warm-up. size_bytes
    None: 256 MiB or more, past the CPU's cache (`past_cache`); a size that fits in the cache
    gets a note saying so.

    The right ceiling for work that streams stored bytes once, such as a quantized expert kernel
    (bytes / `ram_read` is its best time); `ram_copy` is the one for moving bytes (filling a cache
    slot, a staging buffer). The threads are numba's, the ones the CPU kernels of `lazymoe.quant`
    use, so kernel and ceiling read memory the same way. threads None: all of numba's.
    """
    import numba
    import numpy as np

    from lazymoe.quant.kernels_cpu import _lock  # numba's thread count is shared by the kernels

    if size_bytes is None:
        size_bytes = past_cache(256 * MiB)
    words = np.ones(size_bytes // 8, np.uint64)
    used = max(1, min(threads or numba.config.NUMBA_NUM_THREADS, numba.config.NUMBA_NUM_THREADS))
    sum_words = _sum_words()

    def once() -> float:
        t0 = time.perf_counter()
        sum_words(words)
        return time.perf_counter() - t0

    with _lock:
        before = numba.get_num_threads()
        numba.set_num_threads(used)
        try:
            secs = _best_of(once, repeats)  # the warm-up also compiles and touches the pages
        finally:
            numba.set_num_threads(before)
    return Measurement(f"RAM read, {used} thread{'s' if used > 1 else ''}", words.nbytes / min(secs) / GB,
                       words.nbytes, repeats, secs, note=_cache_note(words.nbytes, 1))


@functools.cache
def _sum_words():
    """The numba kernel behind `ram_read`, compiled at first use (numba loads only then: the engine
    imports this module for `ram_copy`)."""
    import numpy as np
    from numba import prange

    from lazymoe.quant.kernels_cpu import _jit

    @_jit(parallel=True)
    def sum_words(words):  # reads each 8-byte word once, writes nothing
        total = np.uint64(0)
        for i in prange(words.size):
            total += words[i]
        return total

    return sum_words


def ram_copy_numpy(size_bytes: int, repeats: int) -> Measurement:
    """One thread: `ram_copy(..., threads=1)` (the name lab02 and module 02 import)."""
    return ram_copy(size_bytes, repeats, threads=1)


def ram_copy_torch(size_bytes: int, repeats: int) -> Measurement:
    """Every torch thread: `ram_copy(...)` (the name lab04 imports)."""
    return ram_copy(size_bytes, repeats)


def disk_read(size_bytes: int, repeats: int, folder: str | Path | None = None) -> Measurement:
    """Sequential read of a fresh file, with O_DIRECT where the file system allows it.

    Without root we cannot drop the page cache; we write the file, flush it, ask the kernel to
    forget its pages (posix_fadvise DONTNEED) and read with O_DIRECT, which bypasses the cache.
    Where O_DIRECT is refused (tmpfs, macOS) the number may include the page cache: it says so.
    """
    chunk = 8 * MiB
    size_bytes = max(chunk, size_bytes // chunk * chunk)
    fd, path = tempfile.mkstemp(prefix="lazymoe-disk-", dir=folder)
    try:
        block = os.urandom(chunk)
        with os.fdopen(fd, "wb") as f:
            for _chunk in range(size_bytes // chunk):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        direct = hasattr(os, "O_DIRECT")
        buf = mmap.mmap(-1, chunk)   # page-aligned, as O_DIRECT requires

        def once() -> float:
            nonlocal direct
            if hasattr(os, "posix_fadvise"):
                fd0 = os.open(path, os.O_RDONLY)
                os.posix_fadvise(fd0, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd0)
            try:
                fd1 = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
            except OSError:
                direct = False
                fd1 = os.open(path, os.O_RDONLY)
            t0 = time.perf_counter()
            try:
                while os.readv(fd1, [buf]) > 0:
                    pass
            except OSError:   # O_DIRECT accepted at open, refused at read (some file systems)
                direct = False
                os.close(fd1)
                return once()
            os.close(fd1)
            return time.perf_counter() - t0

        secs = [once() for _repeat in range(repeats)]   # no warm-up: it would fill the cache
    finally:
        os.unlink(path)
    note = (_("O_DIRECT: the page cache was bypassed") if direct else
            _("O_DIRECT not available here: the number may include the page cache (RAM speed)"))
    return Measurement(f"disk sequential read ({Path(path).parent})", size_bytes / min(secs) / GB,
                       size_bytes, repeats, secs, note=note)


@dataclass(frozen=True)
class GpuDatasheet:
    """A GPU's datasheet figures (from NVML: `lazymoe.hardware.GpuInfo.datasheet()`), GB/s."""

    vram_gbps: float | None = None
    link_gbps: float | None = None
    link_name: str = "host link"


def gpu_measurements(size_bytes: int, repeats: int, device: int = 0,
                     datasheet: GpuDatasheet | None = None) -> list[Measurement]:
    """Device copy (2 x size moved), host->GPU from pinned and pageable memory, GPU->host pinned."""
    import torch

    sheet = datasheet or GpuDatasheet()
    vram_sheet, link_sheet, link_name = sheet.vram_gbps, sheet.link_gbps, sheet.link_name
    dev = torch.device("cuda", device)
    a = torch.empty(size_bytes, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    pinned = torch.empty(size_bytes, dtype=torch.uint8).pin_memory()
    pageable = torch.empty(size_bytes, dtype=torch.uint8)
    pageable.fill_(1)

    def timed(dst, src) -> Callable[[], float]:
        def once() -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src, non_blocking=True)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return once

    out = []
    secs = _best_of(timed(b, a), repeats)
    out.append(Measurement("GPU device copy", 2 * size_bytes / min(secs) / GB, size_bytes, repeats,
                           secs, vram_sheet, _("NVML: bus width x memory clock x 2")))
    for name, dst, src in [("host->GPU, pinned", a, pinned), ("host->GPU, pageable", a, pageable),
                           ("GPU->host, pinned", pinned, a)]:
        secs = _best_of(timed(dst, src), repeats)
        out.append(Measurement(name, size_bytes / min(secs) / GB, size_bytes, repeats, secs,
                               link_sheet, _("NVML: {link}, one direction").format(link=link_name)))
    out[2].note = _("pageable memory is first copied into a pinned staging buffer by the driver")
    return out


def measure(quick: bool | None = None, host: str | None = None, disk_folder: str | Path | None = None,
            gpu: bool = True, gpu_datasheet: GpuDatasheet | None = None) -> MeasureReport:
    """Run every measurement this machine supports; a progress bar shows where it is.

    host: a catalog CPU row ("Desktop, DDR5-5600 dual channel") to set the RAM rows' datasheet
    figure; we cannot read the memory configuration without root, so you say it.
    gpu_datasheet: GPU 0's figures for the GPU rows (`lazymoe.hardware.measure` reads them).
    """
    from tqdm.auto import tqdm  # here: the engine imports this module for ram_copy alone

    if quick is None:
        quick = os.environ.get("LAZYMOE_QUICK") == "1"
    ram_size, disk_size, gpu_size = (64 * MiB, 64 * MiB, 256 * MiB) if quick else (
        512 * MiB, 1024 * MiB, 1024 * MiB)
    repeats = 3 if quick else 5
    ram_sheet = ram_source = None
    if host:
        from lazymoe import catalog

        row = catalog.hardware(host)
        ram_sheet, ram_source = row.bandwidth_gbps, f"{row.name} ({row.source})"
    steps: list[tuple[str, Callable[[], list[Measurement]]]] = [
        ("RAM, 1 thread", lambda: [ram_copy(past_cache(ram_size, 2), repeats, threads=1)]),
        ("RAM, all threads", lambda: [ram_copy(past_cache(ram_size, 2), repeats)]),
        ("disk", lambda: [disk_read(disk_size, repeats, disk_folder)]),
    ]
    report = MeasureReport()
    if gpu and _cuda_available():
        steps.append(("GPU", lambda: gpu_measurements(gpu_size, repeats * 2, datasheet=gpu_datasheet)))
    elif gpu:
        report.skipped.append(_("GPU copies: no CUDA GPU visible to torch"))
    for label, step in tqdm(steps, desc="measuring", unit="step"):
        try:
            results = step()
        except Exception as exc:   # a measurement that cannot run here is reported, not fatal
            report.skipped.append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        for r in results:
            if r.name.startswith("RAM") and ram_sheet:
                r.datasheet_gbps, r.datasheet = ram_sheet, ram_source
        report.results.extend(results)
    return report


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False
