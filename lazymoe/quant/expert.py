"""One MoE expert computed straight from its quantized bytes, on the CPU.

    y = down @ (act(gate @ x) * (up @ x))      gate, up: (I, D), down: (D, I), each a QuantizedTensor

`expert_forward_reference` dequantizes the whole expert to float32 and runs the plain formula:
obviously correct, but it writes 4 bytes per weight (a Q4_0 expert is 9x bigger in float32).
`expert_forward` never holds more than `slab_weights` dequantized weights at once: it decodes a
slab of rows into float32, multiplies it, and moves on, so the float copy stays in the CPU's
cache and memory traffic is the quantized bytes themselves. Both give the same numbers up to
float32 summation order (tests/test_quant_expert.py).

`python -m lazymoe.quant.expert` measures the bytes per second this path reads, next to the
machine's RAM bandwidth (`lazymoe.measure.ram_copy`). On the 2-core dev machine (Qwen3-30B-A3B
expert shapes, one token, 2 threads, a shared and noisy machine): q8_0 0.7-1.5 GB/s, q4_0
0.1-0.5, q4_k 0.2, q6_k 0.3, against a RAM copy of 11-30 GB/s: a few per cent. Each torch op is
one more pass over the slab (convert, scale, multiply); a fused loop that reads each byte once
(C++: 3.8 GB/s for q8_0 in a quick test) is the way to the issue's 50 % target.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lazymoe.quant.codecs import decode
from lazymoe.quant.formats import QuantError
from lazymoe.quant.tensor import QuantizedTensor, quantize

# Weights dequantized at once: 256 Ki float32 = 1 MiB, about a core's L2 cache. Measured on the
# 2-core dev machine (one thread, Qwen3-30B-A3B expert shapes, q8_0, before decode_into): 4 Ki
# weights 0.03 GB/s, 32 Ki 0.18, 64 Ki 0.29, 256 Ki 0.37, 1 Mi no better: below 256 Ki, torch's
# per-op overhead dominates.
SLAB_WEIGHTS = 1 << 18
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


def expert_forward(
    x: torch.Tensor,
    gate: QuantizedTensor,
    up: QuantizedTensor,
    down: QuantizedTensor,
    act: Callable[[torch.Tensor], torch.Tensor] = F.silu,
    slab_weights: int = SLAB_WEIGHTS,
) -> torch.Tensor:
    """One expert on rows x (n, D) from its quantized gate (I, D), up (I, D), down (D, I): (n, D)
    float32. No float copy of a whole matrix is ever made."""
    x = x.to(torch.float32)
    h = act(qlinear(x, gate, slab_weights)) * qlinear(x, up, slab_weights)  # (n, I)
    return qlinear(h, down, slab_weights)


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


def measure_read_bandwidth(
    fmt: str,
    hidden: int = 2048,
    intermediate: int = 768,
    n_experts: int = 24,
    repeats: int = 3,
    slab_weights: int = SLAB_WEIGHTS,
) -> dict[str, float]:
    """Decode-step speed of `expert_forward` (one token) over `n_experts` distinct experts of
    Qwen3-30B-A3B's shape (more bytes than any CPU cache): stored bytes read per second, in GB/s."""
    gen = torch.Generator().manual_seed(0)
    experts = []
    for _ in range(n_experts):
        w = [
            torch.randn(shape, generator=gen) * 0.02
            for shape in ((intermediate, hidden), (intermediate, hidden), (hidden, intermediate))
        ]
        experts.append([quantize(t, fmt) for t in w])
    nbytes = sum(t.nbytes for e in experts for t in e)  # bytes
    x = torch.randn(1, hidden, generator=gen)
    for e in experts[:2]:
        expert_forward(x, *e, slab_weights=slab_weights)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for e in experts:
            expert_forward(x, *e, slab_weights=slab_weights)
        best = min(best, time.perf_counter() - start)
    return {"format": fmt, "bytes": nbytes, "seconds": best, "read_gbps": nbytes / best / 1e9}


def main() -> int:
    from lazymoe.measure import ram_copy

    ram = ram_copy(256 << 20, repeats=3)
    print(
        f"RAM bandwidth (lazymoe.measure.ram_copy): {ram.gbps:.1f} GB/s, torch threads {torch.get_num_threads()}"
    )
    for fmt in ("q8_0", "q4_0", "q4_k", "q6_k"):
        r = measure_read_bandwidth(fmt)
        print(
            f"{fmt}: {r['read_gbps']:.2f} GB/s of stored bytes = {r['read_gbps'] / ram.gbps:.0%} of RAM bandwidth"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
