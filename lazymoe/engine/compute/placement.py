"""Where a missed expert is computed: fetched to the GPU, or computed on the CPU where it lives.

    "fetch" copy it in (disk -> RAM -> VRAM), then compute on the GPU. Pays the PCIe transfer.
            (Its old name, "gpu", is still accepted by EngineConfig.)
    "cpu"   compute it on the CPU from RAM, as llama.cpp's --cpu-moe does: only the hidden state
            (D numbers per token) crosses PCIe, but the CPU reads the expert at RAM bandwidth and
            does the matmuls with its far smaller FLOP rate.
    "auto"  per expert, whichever the cost model says is faster (Fiddler's idea, Kamahori et
            al. 2024, arXiv 2402.07033):

        gpu_seconds = copied_bytes / h2d_bandwidth
        cpu_seconds = max(read_seconds, tokens * 6 * I * D / cpu_flops)

    One token (decode) makes the CPU cost a memory read; a long prompt (prefill) makes it a
    FLOP count, and the GPU wins. On a machine without a GPU there is no choice to make: the
    model runs on the CPU, "fetch" copies a missed expert into the RAM cache tier, and nothing
    is measured.

Quantized (GGUF) experts cost differently, per format. A CPU computes one from its stored bytes
with the kernels of lazymoe/quant/kernels_cpu.py, which decode every block in registers: they
are limited by that arithmetic, not by RAM, and read 2-10 GB/s of stored bytes depending on the
format (data/results/quant-cpu-kernels-dev.json), far below the RAM bandwidth. So at engine start
`measure_format_gbps` times the CPU path on each format the model holds, over more bytes than the
CPU's caches hold (once per format and thread count per process), and a CPU expert costs

        read_seconds = sum over gate, up, down of stored_bytes / that format's GB/s

(a Q4_K_M expert sums Q4_K and Q6_K parts). A fetch copies what the slots hold: the stored bytes
into quantized slots, or the dequantized floats into a float pool. Float experts keep the one
RAM-bandwidth rate. `Engine.describe()` shows the measured rates and, per mix of formats, what
one token's miss costs each way and which `auto` picks (`describe_lines`), so a learner sees why.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

# One expert as the CPU reads it: (format, stored bytes) for gate, up and down.
ExpertParts = Sequence[tuple[str, int]]

# (format, threads) -> GB/s of stored bytes the CPU path reads: measured once per process
_FORMAT_GBPS: dict[tuple[str, int], float] = {}


FLOAT_KERNELS = ("numba", "torch")  # CostModel.cpu_float_kernel's choices
SLOW_PASS_S = 0.5  # a CPU path that would take longer over a format's sample is timed on less


@dataclass
class CostModel:
    """Measured (or given) speeds; `choose` picks "fetch" or "cpu" for one missed expert."""

    h2d_bandwidth_gbps: float  # GB/s, pinned host -> GPU
    cpu_bandwidth_gbps: float  # GB/s, RAM read by the CPU (float experts)
    cpu_gflops: float  # GFLOP/s of the CPU on an expert-sized matmul
    # GB/s of stored bytes the CPU computes a quantized expert from, per format ("q4_k": 5.5)
    cpu_format_gbps: dict[str, float] = field(default_factory=dict)
    # GB/s of weights the CPU's matmul reads for one token of a float expert (None: as fast as
    # RAM). On an H200 host torch's BF16 one read ~28 GB/s with 16 threads, a third of the RAM's
    cpu_float_gbps: float | None = None
    # which CPU matmul computes a decode step's float experts: "numba" (lazymoe.quant.kernels_bf16,
    # BF16 only) or "torch", whichever measured faster here (measure_float_gbps)
    cpu_float_kernel: str = "numba"

    def __post_init__(self) -> None:
        speeds = {
            name: getattr(self, name)
            for name in ("h2d_bandwidth_gbps", "cpu_bandwidth_gbps", "cpu_gflops")
        }
        speeds |= {f"cpu_format_gbps[{fmt!r}]": gbps for fmt, gbps in self.cpu_format_gbps.items()}
        if self.cpu_float_gbps is not None:
            speeds["cpu_float_gbps"] = self.cpu_float_gbps
        for name, value in speeds.items():
            if not value > 0:
                raise ValueError(f"{name}={value}: give a positive speed")
        if self.cpu_float_kernel not in FLOAT_KERNELS:
            raise ValueError(f"cpu_float_kernel={self.cpu_float_kernel!r}: use one of "
                             f"{', '.join(FLOAT_KERNELS)}")

    def gpu_seconds(self, expert_bytes: int) -> float:
        """A fetch: `expert_bytes` (what the slot receives) over the host -> GPU link."""
        return expert_bytes / (self.h2d_bandwidth_gbps * 1e9)

    def read_seconds(self, expert_bytes: int, parts: ExpertParts | None = None) -> float:
        """The CPU's pass over one expert's weights: a float expert at RAM bandwidth (or the
        slower rate its matmul was measured at), a quantized one part by part at its format's
        measured rate."""
        if parts is None:
            return expert_bytes / (min(self.cpu_bandwidth_gbps, self.cpu_float_gbps or float("inf")) * 1e9)
        missing = sorted({fmt for fmt, _ in parts} - set(self.cpu_format_gbps))
        if missing:
            raise ValueError(
                f"no CPU rate for format(s) {', '.join(missing)}: measure them with "
                f"measure_format_gbps({missing}) and pass cpu_format_gbps"
            )
        return sum(nbytes / (self.cpu_format_gbps[fmt] * 1e9) for fmt, nbytes in parts)

    def cpu_seconds(
        self,
        expert_bytes: int,
        n_tokens: int,
        expert_flops_per_token: int,
        parts: ExpertParts | None = None,
    ) -> float:
        read_s = self.read_seconds(expert_bytes, parts)
        measured = self.cpu_float_gbps if parts is None else bool(self.cpu_format_gbps)
        if n_tokens == 1 and measured:  # the rate was timed on this very work, its arithmetic
            return read_s  # included: an estimate from a 16-row matmul's speed would add noise
        compute_s = n_tokens * expert_flops_per_token / (self.cpu_gflops * 1e9)
        return max(read_s, compute_s)

    def choose(
        self,
        expert_bytes: int,
        n_tokens: int,
        expert_flops_per_token: int,
        parts: ExpertParts | None = None,
    ) -> str:
        """Where one missed expert runs: "cpu" or "fetch". expert_bytes: what a fetch copies;
        parts: the expert's stored (format, bytes) if quantized, None for a float expert."""
        cpu_s = self.cpu_seconds(expert_bytes, n_tokens, expert_flops_per_token, parts)
        return "cpu" if cpu_s < self.gpu_seconds(expert_bytes) else "fetch"

    def explain(
        self, expert_bytes: int, expert_flops_per_token: int, parts: ExpertParts | None = None
    ) -> str:
        """One line for a learner: one token's miss of this expert, both costs and the choice."""
        what = "float" if parts is None else "/".join(fmt for fmt, _ in parts)
        gpu_ms = self.gpu_seconds(expert_bytes) * 1e3
        cpu_ms = self.cpu_seconds(expert_bytes, 1, expert_flops_per_token, parts) * 1e3
        choice = self.choose(expert_bytes, 1, expert_flops_per_token, parts)
        return f"{what} expert, one token: fetch {gpu_ms:.3f} ms, cpu {cpu_ms:.3f} ms -> {choice}"

    def describe(self) -> str:
        """The speeds it decides with, in words."""
        line = (
            f"auto's cost model: link {self.h2d_bandwidth_gbps:.1f} GB/s, CPU RAM read "
            f"{self.cpu_bandwidth_gbps:.1f} GB/s, CPU matmul {self.cpu_gflops:.0f} GFLOP/s"
        )
        if self.cpu_float_gbps is not None:
            line += f"; CPU float expert matmul {self.cpu_float_gbps:.1f} GB/s ({self.cpu_float_kernel})"
        if self.cpu_format_gbps:
            rates = ", ".join(
                f"{fmt} {gbps:.1f}" for fmt, gbps in sorted(self.cpu_format_gbps.items())
            )
            line += f"; CPU kernels read stored bytes at (GB/s) {rates}"
        return line


def expert_parts(store, layer: int) -> tuple[tuple[str, int], ...] | None:
    """(format, stored bytes) of gate, up and down for an expert of `layer`; None for a store of
    float experts. Every expert of a layer has the same formats (GGUF stacks them in one tensor)."""
    if not getattr(store, "quantized", False):
        return None
    q = store.read_quantized(layer, 0)  # views into the file's map: nothing is read
    return tuple((t.format, t.nbytes) for t in (q.gate, q.up, q.down))


def describe_lines(runtime) -> list[str]:
    """`Engine.describe()`'s lines for placement "auto" (an `ExpertRuntime` with a cost model):
    the speeds, then per mix of formats what one token's miss costs each way, and the choice."""
    from lazymoe.engine.compute.split import layer_ranges  # "0-1, 4": a few layers in words

    model = runtime.cost_model
    if model is None:
        return []
    layers_of: dict[tuple, list[int]] = {}  # (bytes a fetch copies, parts) -> layers
    for layer in sorted(runtime.miss_parts):
        nbytes, parts = runtime.miss_cost(layer)
        layers_of.setdefault((nbytes, parts), []).append(layer)
    lines = [model.describe()]
    for (nbytes, parts), layers in layers_of.items():
        explained = model.explain(nbytes, runtime.expert_flops_per_token, parts)
        lines.append(f"  layers {layer_ranges(layers)}: {explained}")
    return lines


def measure_format_gbps(
    formats: Iterable[str], threads: int | None = None, nbytes: int | None = None
) -> dict[str, float]:
    """format -> GB/s of stored bytes that the CPU path (lazymoe.quant.expert.linear: the fused
    kernel, or the slab path for a format it lacks) reads for one token, over `nbytes` (None:
    past the CPU's largest cache, `lazymoe.measure.past_cache`). Each (format, threads) is
    measured once per process (a fraction of a second after numba's first compile of it)."""
    from lazymoe.measure import past_cache

    threads = threads or torch.get_num_threads()
    nbytes = past_cache(8 * 2**20) if nbytes is None else nbytes
    rates = {}
    for fmt in sorted(set(formats)):
        if (fmt, threads) not in _FORMAT_GBPS:
            _FORMAT_GBPS[fmt, threads] = _measure_one_format(fmt, threads, nbytes)
        rates[fmt] = _FORMAT_GBPS[fmt, threads]
    return rates


def _measure_one_format(
    fmt: str,
    threads: int,
    nbytes: int,
    cols: int = 2048,
    repeats: int = 5,
    pass_seconds: float = 0.05,
) -> float:
    """Best of `repeats` passes of one token over `fmt` weights (rows, cols): 64 quantized rows of
    N(0, 0.02) tiled (quantizing MiBs takes seconds; the kernels' speed does not depend on the
    values): `nbytes` of them, or for a slow path (one whose pass over `nbytes` would take more
    than SLOW_PASS_S, as the slab path of f16, 100x slower than a kernel: bound by arithmetic,
    not by RAM) as many as one pass of about `pass_seconds` reads. At least 4 MiB, which also
    times the first guess (a kernel's call has a fixed cost, and on a busy machine a thread can
    wait a scheduler slice: less data would time those instead); repeats stop after 0.2 s."""
    from lazymoe import quant
    from lazymoe.quant.expert import linear

    gen = torch.Generator().manual_seed(0)
    seed = quant.quantize(torch.randn(64, cols, generator=gen) * 0.02, fmt)
    x = torch.randn(1, cols, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        linear(x, seed)  # warm-up: numba compiles a format at first use (cached on disk after)
        fewest = -(-min(4 * 2**20, nbytes) // seed.nbytes)  # at least 4 MiB (or nbytes if less)
        qt = quant.QuantizedTensor(seed.format, (64 * fewest, cols), seed.data.repeat(fewest, 1))
        start = time.perf_counter()
        linear(x, qt)
        guess_bps = qt.nbytes / (time.perf_counter() - start)  # bytes/s
        target = nbytes if nbytes / guess_bps <= SLOW_PASS_S else guess_bps * pass_seconds
        copies = int(max(fewest, target // seed.nbytes))
        if copies > fewest:
            qt = quant.QuantizedTensor(seed.format, (64 * copies, cols), seed.data.repeat(copies, 1))
        best, spent = float("inf"), 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            linear(x, qt)
            seconds = time.perf_counter() - start
            best, spent = min(best, seconds), spent + seconds
            if spent > 0.2:
                break
    finally:
        torch.set_num_threads(before)
    return qt.nbytes / best / 1e9


def measure_cost_model(
    hidden: int,
    intermediate: int,
    dtype: torch.dtype,
    device: str,
    nbytes: int = 32 * 2**20,
    formats: Iterable[str] = (),
) -> CostModel:
    """Measure the speeds on this machine (a fraction of a second, plus one per format in
    `formats`: those of a quantized model's experts)."""
    from lazymoe.measure import past_cache, ram_copy  # the package's one CPU-bandwidth measurement

    cpu_gbps = ram_copy(past_cache(nbytes, 2), repeats=3).gbps  # RAM's speed, not the cache's
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
    float_gbps, float_kernel = (None, "numba") if formats else measure_float_gbps(hidden, intermediate, dtype)
    return CostModel(h2d_gbps, cpu_gbps, gflops, measure_format_gbps(formats), float_gbps, float_kernel)


def measure_float_gbps(hidden: int, intermediate: int, dtype: torch.dtype,
                       nbytes: int | None = None) -> tuple[float, str]:  # fmt: skip
    """(GB/s, kernel): how fast the CPU's matmul for one token reads a float expert's weights,
    and with which kernel, as a decode step's CPU experts are computed. BF16 times both its
    kernels and keeps the faster: lazymoe.quant.kernels_bf16 ("numba", three matrices a call:
    2-3x torch on the dev machine's cores) and torch ("torch": its own threads, which on a big
    Xeon may read faster). Each: the best of 3 passes over about `nbytes` of (2I, D) matrices
    (2 to 256 of them; None: more than the CPU's caches hold, `lazymoe.measure.past_cache`), so
    that they are read from RAM as a missed expert is (on an H200 host, whose L3 holds 300 MiB,
    264 MB of them measured 34-55 GB/s at load, 450 MB of experts 30-35 in a benchmark)."""
    from lazymoe.measure import past_cache
    from lazymoe.quant import kernels_bf16

    nbytes = past_cache(256 * 2**20) if nbytes is None else nbytes
    w = torch.randn(2 * intermediate, hidden).to(dtype)
    mats = [w.clone() for _ in range(min(256, max(2, nbytes // w.nbytes)))]
    x = torch.randn(1, hidden).to(dtype)

    def by_torch():
        for m in mats:
            torch.nn.functional.linear(x, m)

    def by_numba():
        for i in range(0, len(mats), 3):
            kernels_bf16.matvec_many(x, mats[i : i + 3])

    kernels = {"torch": by_torch} | ({"numba": by_numba} if dtype == torch.bfloat16 else {})
    rates = {}
    for name, run in kernels.items():
        best = float("inf")
        for _ in range(4):  # the first pass warms up (thread pool, compiles): the best of the rest
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        rates[name] = len(mats) * w.nbytes / best / 1e9
    kernel = max(rates, key=rates.get)
    return rates[kernel], kernel
