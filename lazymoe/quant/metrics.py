"""What a format costs and what it loses, for one tensor: bytes, bits per weight, error."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from lazymoe.quant.tensor import QuantizedTensor, quantize


def relative_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """||w - w_hat||_F / ||w||_F  (0 for a perfect copy; 0.01 is "1 % noise")."""
    w = w.to(torch.float32)
    norm = torch.linalg.vector_norm(w)
    diff = torch.linalg.vector_norm(w - w_hat.to(torch.float32))
    if norm == 0:
        return 0.0 if diff == 0 else float("inf")
    return float(diff / norm)


@dataclass(frozen=True)
class TensorReport:
    """One tensor in one format."""

    format: str
    shape: tuple[int, ...]
    nbytes: int  # bytes stored, scales included
    bits_per_weight: float
    rel_error: float  # ||w - dequant(quant(w))|| / ||w||
    max_abs_error: float

    def as_dict(self) -> dict:
        return asdict(self)


def report(w: torch.Tensor, qt: QuantizedTensor) -> TensorReport:
    """Compare `w` with its quantized copy `qt`."""
    w_hat = qt.dequantize(torch.float32)
    w32 = w.to(torch.float32)
    return TensorReport(
        format=qt.format,
        shape=tuple(qt.shape),
        nbytes=qt.nbytes,
        bits_per_weight=qt.bits_per_weight,
        rel_error=relative_error(w32, w_hat),
        max_abs_error=float((w32 - w_hat).abs().max()),
    )


def compare_formats(w: torch.Tensor, formats: list[str]) -> list[TensorReport]:
    """Quantize `w` in each format and report bytes, bits per weight and error."""
    return [report(w, quantize(w, name)) for name in formats]
