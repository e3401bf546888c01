"""Triton kernels for the decode token: experts read in place from the slot pool, and RMSNorm.

Why: with every chosen expert resident, a decode layer of Qwen3-30B-A3B on an H200 spent ~75 us
of its ~290 us of GPU time gathering the 8 chosen experts out of the slot pool into a batch
(`kernels.batched_decode_indexed`: two index_selects that read and write 75 MB) before two
batched matmuls read them again (data/results/h200-profile-decode-8layers-after-host-fix.json).
These kernels read each chosen expert's weights once, where they lie:

    fused_gate_up   grid (A experts, I / BLOCK_N):  h[a] = silu(gate[slot_a] x) * (up[slot_a] x)
    fused_down      grid (D / BLOCK_N):             out = sum over a of w_a * (down[slot_a] h[a])

the slots come from a device tensor, so a CUDA graph replays them with new slots each token.
The weights' bytes are read once (75 MB a layer instead of ~225 MB), there is no workspace
of K experts, and the A experts are added in slot order inside one program (deterministic;
the batched path's index_add_ is not).

Rounding follows the batched path (and transformers): each matmul's result is rounded to the
weights' dtype, silu(gate) and silu(gate) * up are rounded, w_a * y_a is rounded to its promoted
dtype and the running sum to the output's dtype. Accumulation inside a matmul is float32.

`rms_norm` is transformers' RMSNorm (float32 statistics, the normalized row rounded to the input
dtype, then times the weight) as one kernel instead of ~7.

Triton is optional: `unavailable_reason()` says why these cannot run (no Triton, no GPU and no
interpreter, a GPU older than Volta, an activation other than SiLU); the engine then keeps the
batched path. On a CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, float32
only): that is how the unit tests check them against the batched path.
"""

from __future__ import annotations

import os

import torch

try:  # optional: lazymoe runs without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None


# Triton compiles for NVIDIA GPUs of compute capability 7.0 (Volta) and newer: PyTorch refuses to
# use it below that (torch._inductor: "Triton only supports devices of CUDA Capability >= 7.0"),
# and Triton's own README lists 8.0+ as tested. These kernels use no tensor cores (no tl.dot), so
# 7.x needs nothing Ampere adds; on Pascal (6.x) the engine keeps the batched path.
MIN_CAPABILITY = (7, 0)


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def is_silu(act) -> bool:
    """True for the activations the fused kernel computes: SiLU in any of its spellings."""
    if act is torch.nn.functional.silu or isinstance(act, torch.nn.SiLU):
        return True
    return type(act).__name__ == "SiLUActivation"  # transformers' own module


def unavailable_reason(device: torch.device, dtype: torch.dtype, act=None) -> str | None:
    """Why the Triton kernels cannot run here, or None when they can."""
    if triton is None:
        return "Triton is not installed (pip install triton; it comes with PyTorch's CUDA wheels)"
    if device.type == "cpu" and not interpreting():
        return (
            "the device is a CPU (Triton kernels run on a GPU, or on a CPU with TRITON_INTERPRET=1)"
        )
    if device.type not in ("cpu", "cuda"):
        return f"device {device.type!r} (Triton runs on CUDA GPUs)"
    if device.type == "cpu" and dtype != torch.float32:
        return f"dtype {dtype} under Triton's interpreter (it computes float32 only)"
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability < MIN_CAPABILITY:
            return (
                f"the GPU's compute capability is {capability[0]}.{capability[1]}: Triton needs "
                f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (Volta and later GPUs)"
            )
    if act is not None and not is_silu(act):
        return f"activation {type(act).__name__} (the fused kernel computes SiLU)"
    return None


if triton is not None:

    @triton.jit
    def _gate_up_silu_kernel(
        x_ptr, gate_up_ptr, slot_ptr, h_ptr, HIDDEN, INTER, stride_slot, stride_row,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        a = tl.program_id(0)  # which chosen expert
        rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # rows of gate (and of up)
        row_ok = rows < INTER
        slot = tl.load(slot_ptr + a).to(tl.int64)
        gate = gate_up_ptr + slot * stride_slot + rows[:, None].to(tl.int64) * stride_row
        up = gate + INTER * stride_row
        acc_gate = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc_up = tl.zeros([BLOCK_N], dtype=tl.float32)
        for k in range(0, HIDDEN, BLOCK_K):
            cols = k + tl.arange(0, BLOCK_K)
            col_ok = cols < HIDDEN
            ok = row_ok[:, None] & col_ok[None, :]
            x = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            acc_gate += tl.sum(
                tl.load(gate + cols[None, :], mask=ok, other=0.0).to(tl.float32) * x, axis=1
            )
            acc_up += tl.sum(
                tl.load(up + cols[None, :], mask=ok, other=0.0).to(tl.float32) * x, axis=1
            )
        dt = h_ptr.dtype.element_ty
        g = acc_gate.to(dt).to(tl.float32)
        u = acc_up.to(dt).to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)
        tl.store(h_ptr + a * INTER + rows, (act * u).to(dt), mask=row_ok)

    @triton.jit
    def _down_sum_kernel(
        h_ptr, down_ptr, slot_ptr, pos_ptr, w_ptr, out_ptr, n, HIDDEN, INTER, stride_slot, stride_row,
        ROUND_PRODUCT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # rows of down = output features
        row_ok = rows < HIDDEN
        wdt = h_ptr.dtype.element_ty
        odt = out_ptr.dtype.element_ty
        total = tl.load(out_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)  # out += ...
        for a in range(0, n):  # in slot order, like the batched path's index_add_
            slot = tl.load(slot_ptr + a).to(tl.int64)
            weight = tl.load(w_ptr + tl.load(pos_ptr + a)).to(tl.float32)
            down = down_ptr + slot * stride_slot + rows[:, None].to(tl.int64) * stride_row
            acc = tl.zeros([BLOCK_N], dtype=tl.float32)
            for k in range(0, INTER, BLOCK_K):
                cols = k + tl.arange(0, BLOCK_K)
                col_ok = cols < INTER
                ok = row_ok[:, None] & col_ok[None, :]
                h = tl.load(h_ptr + a * INTER + cols, mask=col_ok, other=0.0).to(tl.float32)[
                    None, :
                ]
                acc += tl.sum(
                    tl.load(down + cols[None, :], mask=ok, other=0.0).to(tl.float32) * h, axis=1
                )
            y = acc.to(wdt).to(tl.float32) * weight
            if ROUND_PRODUCT:  # weights and router scores both half precision: so is y * w
                y = y.to(wdt).to(tl.float32)
            total = (total + y.to(odt).to(tl.float32)).to(odt).to(tl.float32)
        tl.store(out_ptr + rows, total.to(odt), mask=row_ok)

    @triton.jit
    def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, N, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        ok = cols < N
        x = tl.load(x_ptr + row * N + cols, mask=ok, other=0.0).to(tl.float32)
        variance = tl.sum(x * x, axis=0) / N
        dt = out_ptr.dtype.element_ty
        normed = (x * (1.0 / tl.sqrt(variance + eps))).to(dt).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * N + cols, (w * normed).to(dt), mask=ok)


def _check(name: str, t: torch.Tensor, ndim: int) -> None:
    if t.dim() != ndim or not t.is_contiguous():
        raise ValueError(
            f"{name}: expected a contiguous {ndim}-d tensor, got shape {tuple(t.shape)}"
        )


def fused_decode(
    out: torch.Tensor,
    hidden: torch.Tensor,
    top_k_weights: torch.Tensor,
    slot_t: torch.Tensor,
    pos_t: torch.Tensor,
    pool_gate_up: torch.Tensor,
    pool_down: torch.Tensor,
    h_buf: torch.Tensor,
) -> None:
    """out (1, D) += sum_a top_k_weights[0, pos_t[a]] * expert_{slot_t[a]}(hidden (1, D)).

    pool_gate_up (S, 2I, D), pool_down (S, D, I): the slot pool; slot_t, pos_t (A,) long on the
    device; h_buf (>= A, I) in the pool's dtype holds the activations between the two kernels.
    The A terms are added to `out` one by one in slot order, each sum rounded to out's dtype
    (as index_add_ does). No host values: a CUDA graph can capture it.
    """
    _check("pool_gate_up", pool_gate_up, 3)
    _check("pool_down", pool_down, 3)
    n = slot_t.shape[0]
    _, two_i, d = pool_gate_up.shape
    i = two_i // 2
    if (
        pool_down.shape[1:] != (d, i)
        or hidden.numel() != d
        or h_buf.shape[0] < n
        or h_buf.shape[1] != i
    ):
        raise ValueError(
            f"shapes disagree: gate_up {tuple(pool_gate_up.shape)}, down {tuple(pool_down.shape)}, "
            f"hidden {tuple(hidden.shape)}, h_buf {tuple(h_buf.shape)} for {n} experts"
        )
    x = hidden.reshape(d)
    scores = top_k_weights.reshape(-1)  # one token: (K,)
    # weights and router scores both half precision: so is each w_a * y_a, rounded as such
    round_product = torch.promote_types(pool_gate_up.dtype, scores.dtype) != torch.float32
    block_n, block_k = 8, 256 if not interpreting() else 64
    _gate_up_silu_kernel[(n, triton.cdiv(i, block_n))](
        x, pool_gate_up, slot_t, h_buf, d, i, pool_gate_up.stride(0), pool_gate_up.stride(1),
        BLOCK_N=block_n, BLOCK_K=block_k,
    )  # fmt: skip
    _down_sum_kernel[(triton.cdiv(d, block_n),)](
        h_buf, pool_down, slot_t, pos_t, scores, out, n, d, i, pool_down.stride(0), pool_down.stride(1),
        ROUND_PRODUCT=round_product, BLOCK_N=block_n, BLOCK_K=block_k,
    )  # fmt: skip


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm over the last dimension, one program per row."""
    n = x.shape[-1]
    rows = x.contiguous().view(-1, n)
    out = torch.empty_like(rows)
    _rms_norm_kernel[(rows.shape[0],)](rows, weight, out, n, eps, BLOCK=triton.next_power_of_2(n))
    return out.view(x.shape)


class TritonRMSNorm(torch.nn.Module):
    """Stands in for a model's RMSNorm module in the segmented decoder: same weight, one kernel."""

    def __init__(self, norm: torch.nn.Module) -> None:
        super().__init__()
        self.weight = norm.weight
        self.variance_epsilon = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.variance_epsilon)
