"""One MoE expert computed straight from its quantized bytes, on the CPU.

    y = down @ (act(gate @ x) * (up @ x))      gate, up: (I, D), down: (D, I), each a QuantizedTensor

`expert_forward_reference` dequantizes the whole expert to float32 and runs the plain formula:
obviously correct, but it writes 4 bytes per weight (a Q4_0 expert is 9x bigger in float32).
`expert_forward` never makes a float copy of a matrix. For up to KERNEL_MAX_TOKENS rows (decode)
it calls the fused kernels of lazymoe/quant/kernels_cpu.py (q8_0, q4_0, q4_1, q4_k, q5_k, q6_k),
which read each stored byte once and keep the dequantized weights in registers; otherwise (more
tokens, or another format) it takes the slab path `qlinear`: decode a slab of rows into float32,
multiply it, move on. All agree up to float32 summation order (tests/test_quant_kernels.py,
tests/test_quant_expert.py).

`python -m lazymoe.quant.expert` (lazymoe/quant/expert_bench.py) measures the bytes per second
both paths read, next to the CPU's read bandwidth and RAM copy measured in the same run
(data/results/quant-cpu-kernels-dev.json).
On the 2-core dev machine (AMD EPYC with AVX-512, Qwen3-30B-A3B expert shapes, one token, shared
and noisy, two runs), GB/s of stored bytes and the share of the read bandwidth (29 GB/s one
thread, 35 GB/s two):

    threads   q8_0             q4_0            q4_k            q5_k         q6_k
    1         5.5 (19 %)       2.6 (9 %)       3.1 (11 %)      1.9 (6 %)    3.0-3.5 (11 %)
    2         9.9-10.3 (29 %)  4.6-4.9 (14 %)  5.5-5.6 (16 %)  5.1 (15 %)   5.8-6.2 (17 %)

against 0.2-2.4 GB/s for the slab path in the same runs: 2-14x faster, and still short of the
issue's 50 % target. The float kernels are compute-bound, not memory-bound: each weight costs a
conversion and a float multiply-add, each block a fixed overhead (the float16 scale, LLVM's alias
checks before the vector loop), and a 4-bit block carries half the bytes of a q8_0 block for the
same work.

activations="int8" does what llama.cpp does: x rounded to int8 blocks once per call, integer dot
products per block in vector registers (lazymoe/quant/kernels_int8.py). Same machine, same
measurement, expert_forward with int8 activations:

    threads   q8_0               q4_0               q4_k               q6_k
    1         14.2-16.6 (49-51 %)  6.8-7.4 (22-24 %)  5.3-9.0 (19-27 %)  9.5-9.6 (28-34 %)
    2         18.1-20.0 (57-61 %)  9.5-12.0 (30-36 %) 10.8-13.2 (34-40 %) 15.2-15.8 (48 %)

(two runs, read bandwidth 28-34 GB/s in the same runs): 2.5-4x the float kernels. The issue's
50 % target is met for q8_0 and nearly for q6_k at two threads; q4_0 and q4_k stay at 30-40 %:
a 4-bit block costs the same per-block work (float16 scale, nibble unpacking, widening to 16
bits) for half the bytes. With VNNI (vpdpbusd: sums of four byte products in one instruction,
lazymoe/quant/simd_int8.py) where the CPU has it, same machine, two runs each, alternated with
the vpmaddwd build (data/results/quant-cpu-kernels-dev-vnni.json):

    threads   q8_0                q4_0                q4_k                q6_k
    1         10.6-14.7 (12.0-14.3)  9.1-9.7 (6.4-7.7)   6.3-8.0 (7.3-8.6)   9.1-9.6 (6.2-9.5)
    2         20.0 (19.0-19.8)       12.0-14.6 (7.5-7.9) 7.5-12.0 (10.3-13.4) 10.8-12.9 (10.6-10.9)

(GB/s, vpmaddwd in brackets): q4_0 gains 1.3-1.8x, the others stay within this machine's noise.
Next: repacking the weights once so that several blocks share one scale load.

No longer equal to the float32 reference (see `expert_forward`); the engine keeps "float" unless
asked (`EngineConfig.cpu_activations="int8"`, `--cpu-activations int8`): a model with OLMoE-1B-7B's
shapes in Q4_0, every expert in RAM, decoded 8.10 tokens/s against 3.64 with "float" on the 2-core
dev machine (one run: data/results/bench-dev-cpu-olmoe-q4_0-int8.json).

`experts_forward` computes a decode step's experts together, straight from the engine's RAM slots:
each kind of matmul (gate and up, then down) of all of them in one parallel region
(`kernels_cpu.qmatvec_many`, `kernels_int8.qmatvec_int8_many`), where one expert at a time started
three. The numbers are the same, bit for bit, with either activations. Same machine, 8 experts a call against one
(data/results/quant-cpu-kernels-dev-together.json, one run), GB/s of stored bytes and the share of
the read bandwidth measured in the run (29.8 GB/s at 2 threads):

    2 threads   q8_0                 q4_0                 q4_k                q6_k
    int8 x1     20.1 (67 %)          10.6 (35 %)          7.6 (25 %)          10.1 (34 %)
    int8 x8     21.8 (73 %)          17.1 (57 %)          15.1 (50 %)         15.3 (51 %)
    float x1/x8 5.1 / 9.6            4.3 / 4.4            3.4 / 3.6           6.0 / 4.7 (noisy)

With int8 activations, computed together, every format reads at 50 % or more of the read bandwidth
on two threads (issue 16's CPU target); the float kernels stay compute-bound. On one thread
together changes little (no region to start). Not yet measured on a 16-core host.
Greedy tokens of the bundled model's GGUF twins, int8 against float, 3 prompts x 32 tokens
(scripts/int8_agreement.py, data/results/quant-int8-token-agreement-dev.json): Q4_0 96 of 96
identical, Q8_0 78 of 96 (one prompt parts after 14 tokens, the other two are identical).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lazymoe.quant import kernels_cpu, kernels_int8
from lazymoe.quant.codecs import decode
from lazymoe.quant.formats import QuantError
from lazymoe.quant.int8_activations import quantize_activations
from lazymoe.quant.tensor import QuantizedTensor

# Weights dequantized at once: 256 Ki float32 = 1 MiB, about a core's L2 cache. Measured on the
# 2-core dev machine (one thread, Qwen3-30B-A3B expert shapes, q8_0, before decode_into): 4 Ki
# weights 0.03 GB/s, 32 Ki 0.18, 64 Ki 0.29, 256 Ki 0.37, 1 Mi no better: below 256 Ki, torch's
# per-op overhead dominates.
SLAB_WEIGHTS = 1 << 18
# Tokens up to which `expert_forward` uses the fused kernels: their cost grows with the tokens
# (each weight is decoded once per token), the slab path's decode is paid once and its matmul is
# torch's. Measured on the 2-core dev machine (768 x 2048, 2 threads, noisy): the kernel is
# faster up to about 64 tokens for q8_0 and beyond 64 for q4_k and q6_k.
KERNEL_MAX_TOKENS = 32
_local = threading.local()  # one reusable float32 slab buffer per thread


def _buffer(n_weights: int) -> torch.Tensor:
    """A float32 buffer of at least `n_weights`, allocated once per thread (not once per slab:
    a fresh 1 MiB allocation is page faults every time)."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.numel() < n_weights:
        with torch.inference_mode(False):  # a normal tensor: usable inside and outside the mode
            buf = _local.buf = torch.empty(n_weights, dtype=torch.float32)
    return buf[:n_weights]


def _nibble_buffer(n_blocks: int) -> torch.Tensor:
    """(n_blocks, 32) uint8, reused like `_buffer`."""
    buf = getattr(_local, "nibbles", None)
    if buf is None or buf.shape[0] < n_blocks:
        with torch.inference_mode(False):
            buf = _local.nibbles = torch.empty(n_blocks, 32, dtype=torch.uint8)
    return buf[:n_blocks]


def decode_into(data: torch.Tensor, qt: QuantizedTensor, out: torch.Tensor) -> torch.Tensor:
    """Rows `data` (r, row_bytes) of `qt`'s format -> `out` (r, in) float32, in place where the
    format allows. q8_0 and q4_0 (the common GGUF types) skip the temporaries of `decode`: the
    int8 values or nibbles are converted straight into `out`, then scaled in place; the scales
    are read through a float16 view of the blocks (no copy of the bytes)."""
    rows, cols = out.shape
    kind = qt.fmt.kind
    if kind == "q8_0":
        blocks = data.reshape(-1, 34)  # 2 bytes d (float16) + 32 int8
        d = blocks.view(torch.float16)[:, :1].to(torch.float32)  # (blocks, 1)
        w = out.view(-1, 32)
        w.copy_(blocks[:, 2:].view(torch.int8))
        return out.view(-1, 32).mul_(d).view(rows, cols)
    if kind == "q4_0":
        blocks = data.reshape(-1, 18)  # 2 bytes d + 16 bytes: weight j low nibble, j + 16 high
        d = blocks.view(torch.float16)[:, :1].to(torch.float32)
        packed, w = blocks[:, 2:].contiguous(), out.view(-1, 32)  # contiguous: 0.5 byte/weight
        nibbles = _nibble_buffer(w.shape[0])  # (blocks, 32) uint8: unpack, then one conversion
        nibbles[:, :16] = packed & 0x0F
        nibbles[:, 16:] = packed >> 4
        w.copy_(nibbles)
        return w.sub_(8).mul_(d).view(rows, cols)
    return out.copy_(decode(data, qt.fmt, cols))


def qlinear(x: torch.Tensor, qt: QuantizedTensor, slab_weights: int = SLAB_WEIGHTS) -> torch.Tensor:
    """x (n, in) float32 @ W^T for W (out, in) stored quantized -> (n, out) float32, slab by slab."""
    if len(qt.shape) != 2 or x.shape[-1] != qt.shape[1]:
        raise QuantError(f"x has {x.shape[-1]} features, the weight is {qt.shape} (out, in)")
    rows, cols = qt.shape
    fmt = qt.fmt
    if fmt.kind == "plain" and fmt.value_dtype == torch.float32:
        return x @ qt.data.view(torch.float32).reshape(rows, cols).T  # nothing to decode
    slab = max(1, slab_weights // cols)
    buf = _buffer(min(slab, rows) * cols)
    y = x.new_empty((x.shape[0], rows))
    for start in range(0, rows, slab):
        stop = min(start + slab, rows)
        w = decode_into(
            qt.data[start:stop], qt, buf[: (stop - start) * cols].view(stop - start, cols)
        )
        if x.shape[0] == 1:
            torch.mm(x, w.T, out=y[:, start:stop])  # (1, slab): a contiguous piece of y
        else:
            y[:, start:stop] = x @ w.T
    return y


def linear(
    x: torch.Tensor,
    qt: QuantizedTensor,
    slab_weights: int = SLAB_WEIGHTS,
    activations: str = "float",
    quantized: tuple | None = None,
) -> torch.Tensor:
    """x (T, in) float32 @ W^T -> (T, out) float32: the fused kernel (kernels_cpu, or
    kernels_int8 for activations="int8") for up to KERNEL_MAX_TOKENS rows in a format it
    covers, else the slab path. quantized: x already quantized for kernels_int8."""
    if x.shape[0] <= KERNEL_MAX_TOKENS and x.shape[-1] == qt.shape[1]:
        if activations == "int8" and kernels_int8.supports(qt):
            return kernels_int8.qmatvec_int8(x, qt, quantized=quantized)
        if kernels_cpu.supports(qt):
            return kernels_cpu.qmatvec(x, qt)
    return qlinear(x, qt, slab_weights)


def expert_forward(
    x: torch.Tensor,
    gate: QuantizedTensor,
    up: QuantizedTensor,
    down: QuantizedTensor,
    act: Callable[[torch.Tensor], torch.Tensor] = F.silu,
    slab_weights: int = SLAB_WEIGHTS,
    kernels: bool = True,
    activations: str = "float",
) -> torch.Tensor:
    """One expert on rows x (n, D) from its quantized gate (I, D), up (I, D), down (D, I): (n, D)
    float32. No float copy of a whole matrix is ever made. kernels=False: the slab path only.

    activations="float" (the default): x and the hidden rows stay float32, and the result
    equals the dequantized float32 reference up to summation order (the engine's token-identity
    tests rely on it). activations="int8": as llama.cpp, x (and the hidden rows before `down`)
    are rounded to int8 blocks with one scale per block (lazymoe/quant/int8_activations.py) and
    each block is an integer dot product (lazymoe/quant/kernels_int8.py), for q8_0, q4_0, q4_k
    and q6_k weights and up to KERNEL_MAX_TOKENS rows (other cases: as "float"). Each
    activation moves by at most half a step, 1/254 of its block's largest |x|, so the output
    differs from the float path by about that relative amount: 2.5-4x the speed (module
    docstring), not the same numbers."""
    if activations not in ("float", "int8"):
        raise QuantError(f"activations must be 'float' or 'int8', got {activations!r}")
    x = x.to(torch.float32)
    if not kernels:
        h = act(qlinear(x, gate, slab_weights)) * qlinear(x, up, slab_weights)  # (n, I)
        return qlinear(h, down, slab_weights)
    shared = None  # x quantized once for gate and up when both take the same int8 blocks
    if activations == "int8" and x.shape[0] <= KERNEL_MAX_TOKENS and kernels_int8.supports(gate):
        kind = kernels_int8.activation_kind(gate)
        if kernels_int8.supports(up) and kernels_int8.activation_kind(up) == kind:
            shared = quantize_activations(x, kind)
    h = act(linear(x, gate, slab_weights, activations, shared)) * linear(x, up, slab_weights, activations, shared)
    return linear(h, down, slab_weights, activations)


def experts_forward(
    x: torch.Tensor,
    experts: list[tuple[QuantizedTensor, QuantizedTensor, QuantizedTensor]],
    base: torch.Tensor,
    act: Callable[[torch.Tensor], torch.Tensor] = F.silu,
    activations: str = "float",
) -> torch.Tensor | None:
    """Several experts on the same rows x (T, D): (n, T, D) float32, [i] the same numbers as
    `expert_forward(x, *experts[i], act, activations=activations)`. Each kind of matmul runs for
    all n experts in one parallel region of the CPU kernels (`kernels_cpu.qmatvec_many`, or
    `kernels_int8.qmatvec_int8_many` for activations="int8"): gate and up together, then down;
    one region's start costs as much as a small matmul on many threads, and a decode step paid
    three per expert. base: the tensor holding every expert's bytes (an expert pool's `data`).
    None when they cannot go together (more than KERNEL_MAX_TOKENS rows, formats the kernels
    lack, experts laid out differently): call `expert_forward` for each then."""
    if activations not in ("float", "int8"):
        raise QuantError(f"activations must be 'float' or 'int8', got {activations!r}")
    if not experts or x.shape[0] > KERNEL_MAX_TOKENS:
        return None
    many = kernels_int8.qmatvec_int8_many if activations == "int8" else kernels_cpu.qmatvec_many
    gates, ups, downs = (list(part) for part in zip(*experts, strict=True))
    x = x.to(torch.float32)[None]  # the same rows for every gate and up
    n = len(experts)
    try:
        if (gates[0].format, gates[0].shape) == (ups[0].format, ups[0].shape):
            gate_up = many(x, gates + ups, base)
            g, u = gate_up[:n], gate_up[n:]
        else:  # a file may store gate and up in different formats: two regions
            g, u = many(x, gates, base), many(x, ups, base)
        h = torch.stack([act(g[i]) * u[i] for i in range(n)])  # each (T, I), as expert_forward's
        return many(h, downs, base)
    except QuantError:
        return None


def expert_forward_reference(
    x: torch.Tensor,
    gate: QuantizedTensor,
    up: QuantizedTensor,
    down: QuantizedTensor,
    act: Callable[[torch.Tensor], torch.Tensor] = F.silu,
) -> torch.Tensor:
    """The same, by dequantizing the whole expert to float32 first: the path to test against."""
    x = x.to(torch.float32)
    g, u, d = (t.dequantize(torch.float32) for t in (gate, up, down))
    return F.linear(act(F.linear(x, g)) * F.linear(x, u), d)


if __name__ == "__main__":  # the measurement lives in expert_bench.py
    from lazymoe.quant.expert_bench import main

    raise SystemExit(main())
