"""How fast `expert_forward` reads an expert's stored bytes on the CPU, beside the read bandwidth.

    python -m lazymoe.quant.expert [--formats q8_0,q4_0] [--threads 1,2] [--activations float,int8]
                                   [--json data/results/quant-cpu-kernels-dev.json]
    time_expert("q4_0")          lab 03: one expert, one token, in one format -> an ExpertTiming
    time_expert_formats()        the same for f32, bf16 (torch's matmul), q8_0, q4_0 and q4_k

The figures and what they mean are in lazymoe/quant/expert.py's docstring.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lazymoe.i18n import _
from lazymoe.i18n.width import pad
from lazymoe.quant import kernels_int8
from lazymoe.quant.expert import SLAB_WEIGHTS, expert_forward, experts_forward
from lazymoe.quant.formats import QuantError, get_format
from lazymoe.quant.tensor import QuantizedTensor, quantize

LAB03_FORMATS = ("f32", "bf16", "q8_0", "q4_0", "q4_k")
# plain formats run torch's own matmul
TORCH_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


@dataclass(frozen=True)
class ExpertTiming:
    """One expert (gate, up: (I, D), down: (D, I)) on one token, stored in one format."""

    format: str
    bits_per_weight: float  # stored bits per weight, scales included
    expert_bytes: int  # gate + up + down as stored: the bytes one token reads
    activations: str  # "torch" (plain formats: torch's matmul) or expert_forward's "float" / "int8"
    seconds_per_token: float  # the fastest of `seconds_by_activations`
    seconds_by_activations: dict[str, float]  # every way it was computed, best repeat each
    output_rel_error: float  # |y - y_f32| / |y_f32| against the float32 expert on the same x

    @property
    def read_gbps(self) -> float:
        """Stored bytes read per second: what the bound `bytes / bandwidth` assumes is the limit."""
        return self.expert_bytes / self.seconds_per_token / 1e9

    def speedup_over(self, other: ExpertTiming) -> float:
        """How many times faster than `other`, measured."""
        return other.seconds_per_token / self.seconds_per_token

    def bytes_ratio_over(self, other: ExpertTiming) -> float:
        """How many times fewer bytes than `other`: the speedup the bound predicts."""
        return other.expert_bytes / self.expert_bytes


def _best_seconds(run: Callable[[object], object], experts: list, repeats: int) -> float:
    """Seconds per expert: two warm-up calls, then `repeats` passes over all copies; each copy's
    best call, averaged over the copies. (Best per copy, not per pass: on a busy machine another
    program takes a core now and then, and a long pass rarely escapes it; a single call often
    does. The copies still come one after the other, so each is read from RAM, not the cache.)"""
    for e in experts[:2]:
        run(e)
    best = [float("inf")] * len(experts)  # seconds, per copy
    for _repeat in range(repeats):
        for i, e in enumerate(experts):
            start = time.perf_counter()
            run(e)
            best[i] = min(best[i], time.perf_counter() - start)
    return sum(best) / len(experts)


def time_expert(
    fmt: str,
    hidden: int = 2048,
    intermediate: int = 768,
    repeats: int = 5,
    min_bytes: int | None = None,
    threads: int | None = None,
    seed: int = 0,
) -> ExpertTiming:
    """Time one expert of Qwen3-30B-A3B's shape (hidden 2048, intermediate 768; random weights)
    on one token, stored as `fmt`: "f32", "bf16" or "f16" run torch's matmul, every other
    lazymoe.quant format runs `expert_forward` from the stored bytes, with float and with int8
    activations where kernels_int8 has a kernel; the faster one is kept (`activations` says which).

    The expert is copied until the copies hold `min_bytes` (None: 256 MiB, or more on a CPU with
    a larger cache: `lazymoe.measure.past_cache`) and each repeat runs through all of them, so the
    bytes come from RAM, as for a model whose experts all differ. seconds_per_token: each copy's
    best of `repeats`, averaged over the copies (noise only adds time). threads: torch's (and the
    kernels') thread count for the run (None: as set). The first call per format compiles the numba kernels (a few
    seconds, once; then cached on disk)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    spec = get_format(fmt)  # QuantError naming the formats for an unknown name
    gen = torch.Generator().manual_seed(seed)
    # gate, up, down
    shapes = ((intermediate, hidden), (intermediate, hidden), (hidden, intermediate))
    weights = [torch.randn(s, generator=gen) * 0.02 for s in shapes]  # float32
    x = torch.randn(1, hidden, generator=gen)
    y_f32 = F.linear(F.silu(F.linear(x, weights[0])) * F.linear(x, weights[1]), weights[2])
    runs: dict[str, Callable] = {}
    if spec.kind == "plain":
        dtype = TORCH_DTYPES[spec.name]
        expert = [w.to(dtype) for w in weights]
        xd = x.to(dtype)
        runs["torch"] = lambda e: F.linear(
            F.silu(F.linear(xd, e[0])) * F.linear(xd, e[1]), e[2]
        )
        expert_bytes = sum(w.nbytes for w in expert)
    else:
        # QuantError if the rows do not split into the format's blocks
        expert = [quantize(w, spec) for w in weights]
        runs["float"] = lambda e: expert_forward(x, *e, activations="float")
        if kernels_int8.supports(expert[0]):
            runs["int8"] = lambda e: expert_forward(x, *e, activations="int8")
        expert_bytes = sum(t.nbytes for t in expert)
    if min_bytes is None:  # more than the CPU's caches hold
        from lazymoe.measure import past_cache

        min_bytes = past_cache(256 << 20)
    n_copies = max(1, math.ceil(min_bytes / expert_bytes))
    copies = [expert] + [_copy(expert) for _ in range(n_copies - 1)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        seconds = {name: _best_seconds(run, copies, repeats) for name, run in runs.items()}
    finally:
        torch.set_num_threads(before)
    fastest = min(seconds, key=seconds.get)
    y = runs[fastest](expert).float()
    return ExpertTiming(
        format=spec.name,
        bits_per_weight=8 * expert_bytes / sum(w.numel() for w in weights),
        expert_bytes=expert_bytes,
        activations=fastest,
        seconds_per_token=seconds[fastest],
        seconds_by_activations=seconds,
        output_rel_error=float((y - y_f32).norm() / y_f32.norm()),
    )


def _copy(expert: list) -> list:
    """The same expert in fresh memory (a distinct copy, so that it is read from RAM again)."""
    return [
        QuantizedTensor(t.format, t.shape, t.data.clone())
        if isinstance(t, QuantizedTensor)
        else t.clone()
        for t in expert
    ]


def time_expert_formats(formats: tuple[str, ...] = LAB03_FORMATS, **options) -> list[ExpertTiming]:
    """`time_expert` for each format, in order (options: those of time_expert)."""
    if not formats:
        raise QuantError("give at least one format, for example ('bf16', 'q4_0')")
    return [time_expert(fmt, **options) for fmt in formats]


def timing_table(rows: list[ExpertTiming], reference: str = "bf16", bandwidth_gbps: float | None = None) -> str:
    """The rows as a text table: bytes, time and GB/s per format, and the speedup over
    `reference` measured beside the one the bound predicts (the bytes ratio). With the CPU's
    read bandwidth, also the calculator's bound for one expert (bytes / bandwidth, as
    lazymoe.calculator.decode_bound_tok_s) and the share of it the format reached."""
    from lazymoe.calculator.bounds import decode_bound_tok_s

    ref = next((r for r in rows if r.format == reference), None)
    if ref is None:
        raise QuantError(f"no {reference!r} row to compare with: time it too, or pick one of "
                         f"{', '.join(r.format for r in rows)}")  # fmt: skip
    head = (pad(_("format"), 7) + pad(_("bits/w"), 7, ">") + pad(_("MB read"), 9, ">") + " "
            + pad(_("way"), 6) + pad(_("ms/token"), 9, ">") + pad("GB/s", 7, ">"))  # fmt: skip
    head += pad(_("bound ms"), 9, ">") + pad(_("reached"), 8, ">") if bandwidth_gbps else ""
    # speedup: measured over `reference`; predicted: the bytes ratio; error: of the output vs f32
    lines = [head + pad(_("speedup"), 9, ">") + pad(_("predicted"), 10, ">") + pad(_("error"), 7, ">")]
    for r in rows:
        line = (f"{r.format:7}{r.bits_per_weight:7.2f}{r.expert_bytes / 1e6:9.2f} {r.activations:6}"
                f"{r.seconds_per_token * 1e3:9.3f}{r.read_gbps:7.1f}")  # fmt: skip
        if bandwidth_gbps:
            bound_s = 1 / decode_bound_tok_s(bandwidth_gbps, r.expert_bytes)  # bytes / bandwidth
            line += f"{bound_s * 1e3:9.3f}{bound_s / r.seconds_per_token:8.0%}"
        line += f"{r.speedup_over(ref):9.2f}{r.bytes_ratio_over(ref):10.2f}{r.output_rel_error:7.1%}"
        lines.append(line)
    return "\n".join(lines)


def measure_read_bandwidth(
    fmt: str,
    hidden: int = 2048,
    intermediate: int = 768,
    n_experts: int | None = None,
    repeats: int = 3,
    slab_weights: int = SLAB_WEIGHTS,
    tokens: int = 1,
    threads: int | None = None,
    kernels: bool = True,
    activations: str = "float",
    together: int = 1,
) -> dict[str, float]:
    """Decode-step speed of `expert_forward` (`tokens` rows) over `n_experts` distinct experts of
    Qwen3-30B-A3B's shape: stored bytes read per second, in GB/s. n_experts None: 24, plus
    copies of them in other memory until they hold CACHE_MULTIPLE times the CPU's largest cache
    (`lazymoe.measure.past_cache`: 24 such q4_0 experts fit in an H200 host's 300 MiB L3).
    threads: torch's (and so the kernels') thread count for the run (None: as set).
    together: experts computed per call, as a decode step's top-k in the engine's RAM slots
    (`experts_forward` over an expert pool); 1: one `expert_forward` each."""
    from lazymoe.measure import copies_past_cache

    gen = torch.Generator().manual_seed(0)
    experts = []
    for _expert in range(n_experts or 24):
        w = [
            torch.randn(shape, generator=gen) * 0.02
            for shape in ((intermediate, hidden), (intermediate, hidden), (hidden, intermediate))
        ]
        experts.append([quantize(t, fmt) for t in w])
    if n_experts is None:  # the same bytes again elsewhere: a kernel reads from RAM, not a cache
        distinct, per_expert = len(experts), sum(t.nbytes for t in experts[0])
        for i in range(copies_past_cache(per_expert, distinct) - distinct):
            experts.append(_copy(experts[i % distinct]))
    nbytes = sum(t.nbytes for e in experts for t in e)  # bytes
    x = torch.randn(tokens, hidden, generator=gen)
    if together > 1:
        calls = _together_calls(fmt, experts, x, together, activations)
    else:
        calls = [lambda e=e: expert_forward(x, *e, slab_weights=slab_weights, kernels=kernels,
                                            activations=activations) for e in experts]  # fmt: skip
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        for call in calls[:2]:  # warm-up
            call()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for call in calls:
                call()
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return {"format": fmt, "bytes": nbytes, "seconds": best, "read_gbps": nbytes / best / 1e9}


def _together_calls(fmt, experts, x, together, activations) -> list[Callable[[], object]]:
    """measure_read_bandwidth's `together` case: the experts laid out in a pool's slots, one
    call per `together` of them (`experts_forward`, as the engine's decode step)."""
    from lazymoe.engine.storage.gguf_file import QuantizedExpert
    from lazymoe.engine.storage.qpool import QuantizedPool

    pool = QuantizedPool(len(experts), max(sum(t.nbytes for t in e) for e in experts))
    for slot, e in enumerate(experts):
        pool.fill(slot, QuantizedExpert(*e))
    slots = [pool.expert(slot) for slot in range(len(experts))]

    def call(group):
        if experts_forward(x, group, pool.data, activations=activations) is None:
            raise QuantError(f"{fmt}: no CPU kernel computes these experts together ({activations})")

    return [functools.partial(call, [(q.gate, q.up, q.down) for q in slots[i : i + together]])
            for i in range(0, len(slots), together)]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Per format, one token, 1 and 2 threads: GB/s of stored bytes read by the kernels (and by
    the slab path), next to the CPU's read bandwidth and RAM copy measured in the same run."""
    import argparse
    import json
    import platform
    import sys
    from datetime import datetime, timezone

    import numba

    from lazymoe.measure import ram_copy, ram_read

    parser = argparse.ArgumentParser(prog="python -m lazymoe.quant.expert", description=main.__doc__)
    parser.add_argument("--formats", default="q8_0,q4_0,q4_k,q5_k,q6_k")
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--activations", default="float,int8", help="float, int8 or both (comma-separated)")
    parser.add_argument("--together", default="1",
                        help="experts per call, comma-separated, each beside 1 (8: a decode step's "
                             "top-k in one call, as the engine computes them from its RAM slots)")
    parser.add_argument("--json", help="write the results here (data/results/quant-cpu-kernels-dev.json)")
    args = parser.parse_args(argv)
    per_call = sorted({1, *(int(k) for k in args.together.split(","))})
    cases = [(a, k) for a in args.activations.split(",") for k in per_call]
    rows = []
    for threads in (int(n) for n in args.threads.split(",")):
        read = ram_read(None, repeats=args.repeats, threads=threads).gbps  # past the CPU's cache
        copy = ram_copy(None, repeats=args.repeats, threads=threads).gbps
        print(f"{threads} thread(s): RAM read {read:.1f} GB/s, RAM copy {copy:.1f} GB/s (lazymoe.measure)")
        for fmt in args.formats.split(","):
            slab = measure_read_bandwidth(fmt, n_experts=24, repeats=2, threads=threads,  # (slow:
                                          kernels=False)["read_gbps"]  # it computes, RAM waits)  # fmt: skip
            for activations, together in cases:
                if activations == "int8" and fmt not in kernels_int8.KINDS:
                    continue
                kernel = measure_read_bandwidth(fmt, repeats=args.repeats, threads=threads,
                                                activations=activations, together=together)  # fmt: skip
                row = {"format": fmt, "activations": activations, "tokens": 1, "threads": threads,
                       "experts_per_call": together,
                       "kernel_gbps": kernel["read_gbps"], "slab_gbps": slab, "read_gbps": read,
                       "ram_copy_gbps": copy, "kernel_share_of_read": kernel["read_gbps"] / read}  # fmt: skip
                rows.append(row)
                print(f"  {fmt} {activations:5} x{together}: kernel {row['kernel_gbps']:.2f} GB/s = "
                      f"{row['kernel_share_of_read']:.0%} of read bandwidth (slab path {slab:.2f} GB/s)")  # fmt: skip
    if args.json:
        from lazymoe.hardware import _cpu_model_and_flags

        cpu, flags = _cpu_model_and_flags()
        record = {
            "what": "quantized expert matmul on the CPU: stored bytes read per second, Qwen3-30B-A3B "
                    "expert shapes (hidden 2048, intermediate 768), 24 distinct experts and copies of "
                    "them past the CPU's largest cache (the slab path: the 24 alone), one token",
            "machine": {"cpu": cpu, "flags": flags, "cores": os.cpu_count(),
                        "note": "shared with other jobs and noisy: best of the repeats"},
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "numba": numba.__version__},
            "command": "python -m lazymoe.quant.expert " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "rows": rows,
        }  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return 0
