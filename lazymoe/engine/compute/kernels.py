"""How one layer's chosen experts are computed once their weights sit in the slot pool.

`ExpertRuntime` decides *where* each expert's weights are (bookkeeping, on the host); the
functions here do the arithmetic. Four ways, all giving transformers' result:

  "reference"  one expert at a time, index tensors built per expert: the simple path the
               others are tested against (`moe.ExpertRuntime._add`).
  "grouped"    (T > 1, prefill) the (token, k) pairs sorted by expert are gathered once,
               each expert runs on its contiguous block of rows, and one `index_add_` puts
               every row back, in the same expert order transformers adds them.
  "batched"    (T = 1, decode) the A chosen experts' slots are gathered from the stacked pool
               into a preallocated workspace and computed with two batched matmuls, as
               gpt-fast's ConditionalFeedForward does:

        h   = bmm(gate_up[slots], x)          (A, 2I, D) @ (A, D, 1) -> (A, 2I, 1)
        a   = act(h[:, :I]) * h[:, I:]        (A, I)
        y   = bmm(down[slots], a)             (A, D, I) @ (A, I, 1)  -> (A, D)
        out = sum over the A experts of w_a * y_a

  "fused"      (T = 1, decode, GPU with Triton) the same sums by two Triton kernels that read
               each chosen expert where it lies in the pool: no gather, no workspace of K
               experts (`triton_kernels.fused_decode`); the graph decoder also runs the
               model's RMSNorms as one kernel each. Other token counts go the grouped way.

The batched path launches a fixed handful of kernels per layer instead of ~6 per expert, which
is what a GPU needs (launch cost ~5-10 us each). The gather copies the A experts once more, so
on a CPU, where decode is bound by memory bandwidth and launches cost nothing, the per-expert
loop is faster (measured: see scripts/bench_engine_decode.py) and stays the CPU default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lazymoe.engine.compute import triton_kernels
from lazymoe.engine.config import KERNELS

DECODE_KERNELS = ("batched", "fused")  # the ones with a one-token path over device slots


def expert_fused(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, act) -> torch.Tensor:
    """One expert on rows x (n, D) with fused gate_up (2I, D) and down (D, I): (n, D)."""
    gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
    return F.linear(act(gate) * up, down)


def default_kernel(device: torch.device, dtype: torch.dtype | None = None, act=None) -> str:
    """The default kernel: on a GPU "fused" where Triton can run it, else "batched" (launches
    dominate there); "grouped" on a CPU."""
    if device.type != "cuda":
        return "grouped"
    if triton_kernels.unavailable_reason(device, dtype or torch.float32, act) is None:
        return "fused"
    return "batched"


def check_kernel(kernel: str, device: torch.device, dtype: torch.dtype, act) -> None:
    """Raise a ValueError naming the problem when `kernel` cannot run here."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: choose one of {', '.join(KERNELS)}")
    if kernel == "fused":
        reason = triton_kernels.unavailable_reason(device, dtype, act)
        if reason:
            raise ValueError(f"kernel='fused' cannot run here: {reason}. Use kernel='batched'.")


class DecodeWorkspace:
    """Preallocated buffers for the one-token decode paths, made once.

    "batched": ws_gate_up (K, 2I, D) and ws_down (K, D, I) on the pool's device, K * expert
    bytes next to the pool, that the gather fills. "fused": only the activations h (K, I).
    Slot and position indices are staged through a pinned host buffer.
    """

    def __init__(
        self,
        top_k: int,
        pool_gate_up: torch.Tensor,
        pool_down: torch.Tensor,
        kernel: str = "batched",
    ) -> None:
        device, dtype = pool_gate_up.device, pool_gate_up.dtype
        self.fused = kernel == "fused"
        gather = (0,) if self.fused else (top_k,)  # the fused kernel reads the pool in place
        self.gate_up = torch.empty((*gather, *pool_gate_up.shape[1:]), dtype=dtype, device=device)
        self.down = torch.empty((*gather, *pool_down.shape[1:]), dtype=dtype, device=device)
        self.h = torch.empty(
            (top_k if self.fused else 0, pool_down.shape[2]), dtype=dtype, device=device
        )
        pin = device.type == "cuda"
        self.index_host = torch.zeros(2, top_k, dtype=torch.long, pin_memory=pin)  # (slot, k) rows
        self.index_dev = torch.zeros(2, top_k, dtype=torch.long, device=device)
        self.zeros = torch.zeros(top_k, dtype=torch.long, device=device)  # every row -> token 0

    @property
    def nbytes(self) -> int:
        return self.gate_up.nbytes + self.down.nbytes + self.h.nbytes  # bytes


def batched_decode(
    out: torch.Tensor,
    hidden: torch.Tensor,
    top_k_weights: torch.Tensor,
    slots: list[int],
    positions: list[int],
    pool_gate_up: torch.Tensor,
    pool_down: torch.Tensor,
    ws: DecodeWorkspace,
    act,
) -> None:
    """out (1, D) += sum_a top_k_weights[0, positions[a]] * expert_{slots[a]}(hidden (1, D)).

    `slots` in ascending expert order: rows are added in that order (as transformers does).
    No allocation beyond small activations: the gather lands in the workspace.
    """
    n = len(slots)
    index = ws.index_host
    index[0, :n] = torch.as_tensor(slots)
    index[1, :n] = torch.as_tensor(positions)
    if ws.index_dev.device.type == "cuda":
        # the previous layer's copy from this pinned buffer must be done before we rewrite it:
        # it is, because the caller synced on this layer's ids (.tolist()) after issuing it
        ws.index_dev.copy_(index, non_blocking=True)
        idx = ws.index_dev
    else:
        idx = index
    batched_decode_indexed(
        out, hidden, top_k_weights, idx[0, :n], idx[1, :n], pool_gate_up, pool_down, ws, act
    )


def batched_decode_indexed(
    out: torch.Tensor,
    hidden: torch.Tensor,
    top_k_weights: torch.Tensor,
    slot_t: torch.Tensor,
    pos_t: torch.Tensor,
    pool_gate_up: torch.Tensor,
    pool_down: torch.Tensor,
    ws: DecodeWorkspace,
    act,
) -> None:
    """`batched_decode` with the slots and positions already in device tensors (A,): no host
    values at all, so a CUDA graph can capture it and replay it with new indices. A "fused"
    workspace sends it to the Triton kernels."""
    if ws.fused:
        triton_kernels.fused_decode(
            out, hidden, top_k_weights, slot_t, pos_t, pool_gate_up, pool_down, ws.h
        )
        return
    n = slot_t.shape[0]
    gate_up = torch.index_select(pool_gate_up, 0, slot_t, out=ws.gate_up[:n])  # (A, 2I, D)
    down = torch.index_select(pool_down, 0, slot_t, out=ws.down[:n])  # (A, D, I)
    d = hidden.shape[-1]
    h = torch.bmm(gate_up, hidden.reshape(1, d, 1).expand(n, d, 1)).squeeze(-1)  # (A, 2I)
    gate, up = h.chunk(2, dim=-1)
    y = torch.bmm(down, (act(gate) * up).unsqueeze(-1)).squeeze(-1)  # (A, D)
    y = y * top_k_weights[0].index_select(0, pos_t).unsqueeze(-1)
    out.index_add_(0, ws.zeros[:n], y.to(out.dtype))  # in slot order, like transformers


def grouped(
    out: torch.Tensor,
    hidden: torch.Tensor,
    top_k_weights: torch.Tensor,
    groups: list[tuple[list[tuple[int, int]], torch.Tensor, torch.Tensor]],
    act,
) -> None:
    """out[t] += top_k_weights[t, k] * expert(hidden[t]) for every (t, k) of every group.

    groups: [(rows [(t, k), ...], gate_up (2I, D), down (D, I))] in ascending expert order.
    One index tensor, one gather of the rows, one matmul pair per expert on a contiguous
    block, one `index_add_` at the end.
    """
    pairs = [tk for rows, _, _ in groups for tk in rows]
    index = torch.tensor(pairs, dtype=torch.long).T.to(hidden.device)  # (2, N): token, k
    tok, pos = index[0], index[1]
    x = hidden.index_select(0, tok)  # (N, D), rows sorted by expert
    w = top_k_weights[tok, pos].unsqueeze(-1)  # (N, 1)
    y = torch.empty_like(x)
    start = 0
    for rows, gate_up, down in groups:
        stop = start + len(rows)
        y[start:stop] = expert_fused(x[start:stop], gate_up, down, act) * w[start:stop]
        start = stop
    out.index_add_(0, tok, y.to(out.dtype))
