"""Quantize a whole model's weights and measure what it costs: size and held-out perplexity.

`quantized_copy(model, "q4_0")` returns a copy whose chosen weights went through
quantize -> dequantize ("fake quantization"): it computes exactly what a kernel that reads the
quantized bytes computes (up to summation order), so its perplexity is the quantized model's. Score it with
lazymoe.models.evaluate.heldout_perplexity on lazymoe.models.bundled.heldout_ids(tokenizer).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch

from lazymoe.quant.tensor import quantize

SELECTIONS = ("experts", "all")


def _selected(name: str, param: torch.Tensor, select: str) -> bool:
    if param.ndim < 2:
        return False  # norms and biases stay as they are
    if select == "experts":
        return ".experts." in name  # per-expert Linear weights and fused (E, out, in) tensors
    # "all": every matrix inside the transformer blocks except the router, which stays exact
    # because a small change there moves tokens to different experts.
    return name.startswith("model.layers.") and not name.endswith("mlp.gate.weight")


@dataclass(frozen=True)
class ModelQuantReport:
    """What quantizing one selection of a model's weights did."""

    format: str
    select: str
    n_tensors: int
    n_weights: int
    bytes_before: int  # the selected weights at their checkpoint dtype
    bytes_after: int  # the same weights in `format`, scales included
    rel_error: float  # ||W - W_hat|| / ||W|| over all selected weights together

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.bytes_after / self.n_weights

    def as_dict(self) -> dict:
        return {**asdict(self), "bits_per_weight": self.bits_per_weight}


@torch.no_grad()
def quantize_weights_(model: torch.nn.Module, format: str, select: str = "experts") -> ModelQuantReport:
    """Replace the selected weights of `model` in place by dequantize(quantize(w, format))."""
    if select not in SELECTIONS:
        raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
    n_tensors = n_weights = before = after = 0
    err_sq = norm_sq = 0.0
    for name, param in model.named_parameters():
        if not _selected(name, param, select):
            continue
        qt = quantize(param.data, format)
        w_hat = qt.dequantize(torch.float32)
        w = param.data.to(torch.float32)
        err_sq += float(((w - w_hat) ** 2).sum())
        norm_sq += float((w**2).sum())
        param.data.copy_(w_hat.to(param.dtype))
        n_tensors += 1
        n_weights += param.numel()
        before += param.numel() * param.element_size()
        after += qt.nbytes
    if n_tensors == 0:
        raise ValueError(f"no weights matched select={select!r}: is this a mixture-of-experts model?")
    rel = math.sqrt(err_sq / norm_sq) if norm_sq else 0.0
    return ModelQuantReport(format, select, n_tensors, n_weights, before, after, rel)


def quantized_copy(
    model: torch.nn.Module, format: str, select: str = "experts"
) -> tuple[torch.nn.Module, ModelQuantReport]:
    """A deep copy of `model` with its selected weights quantized (the original is untouched)."""
    clone = copy.deepcopy(model)
    return clone, quantize_weights_(clone, format, select)
