"""A prompt's experts on the GPU: the grouped kernels (triton_grouped) next to the per-pair decode
kernels (triton_quant), per layer, as a pass over T tokens computes them.

Qwen3-30B-A3B's expert shapes (D 2048, I 768, 8 of 128 experts a token), BF16 activations, each
token's experts drawn uniformly (a random router: on real text some experts take more of a
prompt's tokens, which only makes the tiles fuller). Times are medians of eager launches (a
prompt's pass is not a CUDA graph), tile building included. GPU only:

    python scripts/bench_prompt_experts.py data/results/h200-prompt-experts.json
"""

from __future__ import annotations

import statistics
import sys

import torch

from lazymoe import quant
from lazymoe.bench.kernel_results import write_kernel_result
from lazymoe.engine.compute.triton_grouped import grouped_experts
from lazymoe.engine.compute.triton_quant import SlotLayout, fused_decode_quantized

D, I, K, EXPERTS, REPEATS = 2048, 768, 8, 128, 20  # noqa: E741 (I: expert width, as in the docs)
FORMATS = [("q4_0",) * 3, ("q8_0",) * 3, ("q4_k", "q4_k", "q6_k")]
TOKENS = [1, 24, 96, 384, 512]


def _median_ms(step) -> float:
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(REPEATS):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def main(out_path: str) -> None:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for formats in FORMATS:
        layout = SlotLayout(formats, I, D)
        one = [quant.quantize(torch.randn(s, device=dev) * 0.02, f).data.reshape(-1)
               for f, s in zip(formats, layout.shapes, strict=True)]  # fmt: skip
        pool = torch.cat(one).repeat(EXPERTS, 1)  # (experts, bytes): same bytes, other places
        for n in TOKENS:
            x = torch.randn(n, D, device=dev, dtype=torch.bfloat16, generator=g)
            scores = torch.softmax(torch.randn(n, K, device=dev, generator=g), -1).to(x.dtype)
            ranks = torch.rand(n, EXPERTS, device=dev, generator=g).argsort(dim=1)[:, :K]
            slots = ranks.sort(dim=1).values.reshape(-1)
            pos = torch.arange(K, device=dev).repeat(n)
            tok = torch.arange(n * K, dtype=torch.int32, device=dev) // K
            starts = torch.arange(0, n * K + 1, K, dtype=torch.int32, device=dev)
            outs = {}

            def per_pair(outs=outs, x=x, scores=scores, slots=slots, pos=pos, tok=tok,
                         starts=starts, pool=pool, layout=layout):  # fmt: skip
                outs["per_pair"] = torch.zeros_like(x)
                fused_decode_quantized(outs["per_pair"], x, scores, slots, pos, pool, layout, tok,
                                       starts)  # fmt: skip

            def grouped(outs=outs, x=x, scores=scores, slots=slots, pos=pos, tok=tok,
                        starts=starts, pool=pool, layout=layout):  # fmt: skip
                outs["grouped"] = torch.zeros_like(x)
                grouped_experts(outs["grouped"], x, scores, slots, pos, pool, layout, tok, starts,
                                EXPERTS)  # fmt: skip

            pair_ms, grouped_ms = _median_ms(per_pair), _median_ms(grouped)
            diff = (outs["grouped"].float() - outs["per_pair"].float()).abs().max().item()
            scale = outs["per_pair"].float().abs().max().item()
            flops = n * K * 3 * 2 * I * D
            rows.append({"formats": formats, "tokens": n, "pairs": n * K,
                         "per_pair_ms_per_layer": pair_ms, "grouped_ms_per_layer": grouped_ms,
                         "speedup": pair_ms / grouped_ms, "grouped_tflops": flops / grouped_ms / 1e9,
                         "max_abs_diff_over_max_abs": diff / scale})  # fmt: skip
            print(rows[-1], flush=True)
        del pool
    write_kernel_result(
        out_path,
        "scripts/bench_prompt_experts.py",
        rows,
        what="one layer's experts of a pass over T tokens: grouped kernels vs per-pair decode kernels",
        routing="uniform random top-8 of 128 experts per token (tile fill is a lower bound)",
        shapes={"hidden": D, "intermediate": I, "top_k": K, "experts": EXPERTS},
        timing=f"median of {REPEATS} eager calls (CUDA events), tile building included",
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "prompt-experts.json")
