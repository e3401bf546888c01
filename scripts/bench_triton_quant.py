"""Decode-step time of the quantized Triton kernels (triton_quant) next to the BF16 fused kernels.

One token, Qwen3-30B-A3B's expert shapes (D 2048, I 768, 8 chosen experts), slots drawn from a
pool of 128 experts so each step reads experts that are not in the L2 cache. Reports microseconds
per layer and the stored bytes read per second: launched one by one from Python (`us_per_layer`,
the host's launch overhead included, as the first version was timed) and replayed from a CUDA
graph (`us_per_layer_graph`: the GPU's time alone, as the engine's decode segments run), and
each format's time next to the first version's (the per-weight kernels, BEFORE: measured on an
H200 on 2026-12-01, launched one by one). GPU only:

    python scripts/bench_triton_quant.py data/results/h200-triton-quant-decode.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from lazymoe import quant
from lazymoe.bench.kernel_results import write_kernel_result
from lazymoe.engine.compute import kernels, triton_kernels
from lazymoe.engine.compute.triton_quant import SlotLayout, fused_decode_quantized

D, I, A, SLOTS, STEPS = 2048, 768, 8, 128, 200  # noqa: E741 (I: expert width, as in the docs)
FORMATS = [("q8_0",) * 3, ("q4_0",) * 3, ("q4_k",) * 3, ("q6_k",) * 3, ("q4_k", "q4_k", "q6_k")]
# the first kernels (one byte gather per weight and per scale byte), same script, same shapes
BEFORE = Path(__file__).resolve().parents[1] / "data/results/h200x2-triton-quant-decode.json"


def _before_us() -> dict[tuple[str, ...], float]:
    if not BEFORE.exists():
        return {}
    rows = json.loads(BEFORE.read_text())["rows"]
    return {tuple(r["formats"]): r["us_per_layer"] for r in rows}


def _time_us(step, n_steps: int = STEPS) -> float:
    for i in range(10):
        step(i)
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(n_steps):
        step(i)
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) * 1000 / n_steps  # us per step


def _time_graph_us(step, n_steps: int = STEPS, replays: int = 5) -> float:
    """GPU time alone: the n_steps launched from a CUDA graph (as the engine's decode segments
    do), so the host's launch overhead is not timed."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and warm up outside the capture
        for i in range(3):
            step(i)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(n_steps):
            step(i)
    graph.replay()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) * 1000 / (n_steps * replays)  # us per step


def _slot_sets(device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randperm(SLOTS, generator=g)[:A].sort().values.to(device) for _ in range(STEPS)]


def main(out_path: str) -> None:
    dev = torch.device("cuda")
    x = torch.randn(1, D, device=dev, dtype=torch.bfloat16)
    scores = torch.softmax(torch.randn(1, A, device=dev), -1).to(torch.bfloat16)
    pos = torch.arange(A, device=dev)
    tok = torch.zeros(A, dtype=torch.int32, device=dev)  # every pair is token 0's
    starts = torch.tensor([0, A], dtype=torch.int32, device=dev)
    sets = _slot_sets(dev)
    before = _before_us()
    rows = []
    for formats in FORMATS:
        layout = SlotLayout(formats, I, D)
        one = [quant.quantize(torch.randn(s, device=dev) * 0.02, f).data.reshape(-1)
               for f, s in zip(formats, layout.shapes, strict=True)]  # fmt: skip
        pool = torch.cat(one).repeat(SLOTS, 1)  # (SLOTS, expert bytes); same bytes, other places
        out = torch.zeros(1, D, device=dev, dtype=torch.bfloat16)
        h = torch.empty(A, I, device=dev, dtype=torch.float32)

        def step(i, pool=pool, layout=layout, out=out, h=h):
            fused_decode_quantized(out, x, scores, sets[i % STEPS], pos, pool, layout, tok,
                                   starts, h)  # fmt: skip

        us, graph_us = _time_us(step), _time_graph_us(step)
        nbytes = A * layout.nbytes
        rows.append({"formats": formats, "us_per_layer": us, "bytes_per_layer": nbytes,
                     "read_gbps": nbytes / us / 1e3, "us_per_layer_graph": graph_us,
                     "read_gbps_graph": nbytes / graph_us / 1e3})  # fmt: skip
        if formats in before:
            rows[-1]["before_us_per_layer"] = before[formats]
            rows[-1]["speedup"] = before[formats] / us
        print(rows[-1], flush=True)
        del pool
    gate_up = torch.randn(SLOTS, 2 * I, D, device=dev, dtype=torch.bfloat16)
    down = torch.randn(SLOTS, D, I, device=dev, dtype=torch.bfloat16)
    ws = kernels.DecodeWorkspace(A, gate_up, down, "fused")
    out = torch.zeros(1, D, device=dev, dtype=torch.bfloat16)

    def bf16_step(i):
        triton_kernels.fused_decode(out, x, scores, sets[i % STEPS], pos, gate_up, down, ws.h)

    us, graph_us = _time_us(bf16_step), _time_graph_us(bf16_step)
    nbytes = A * 3 * I * D * 2
    rows.append({"formats": ["bf16 (triton_kernels.fused_decode)"] * 3, "us_per_layer": us,
                 "bytes_per_layer": nbytes, "read_gbps": nbytes / us / 1e3,
                 "us_per_layer_graph": graph_us, "read_gbps_graph": nbytes / graph_us / 1e3})  # fmt: skip
    print(rows[-1], flush=True)
    write_kernel_result(
        out_path,
        "scripts/bench_triton_quant.py",
        rows,
        what="one decode layer's experts: quantized Triton kernels vs the BF16 fused kernels",
        before=f"{BEFORE.name}: the per-weight kernels this version replaces",
        shapes={"hidden": D, "intermediate": I, "experts_per_step": A, "pool_slots": SLOTS},
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "triton-quant-decode.json")
