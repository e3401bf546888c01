"""One expert's weights, and what every expert store has in common.

Two stores read experts: `ExpertStore` (store.py) straight from a checkpoint's safetensors, and
`ExtractedStore` (extracted.py) from the per-layer files `extract()` writes. Both derive from
`ExpertSource` here, so neither module needs the other's code: store.py opens either kind, and
extract.py (the writer) imports both; nothing imports back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class ExpertWeights:
    """One expert's three projections, as CPU (or pinned) tensors.

    gate: (I, D), up: (I, D), down: (D, I); the expert computes down @ (silu(gate @ x) * (up @ x)).
    """

    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.gate, self.up, self.down))

    def to(self, dtype: torch.dtype) -> ExpertWeights:
        """The three projections in `dtype` (the same tensors when they already are)."""
        return ExpertWeights(self.gate.to(dtype), self.up.to(dtype), self.down.to(dtype))

    @classmethod
    def empty(
        cls, intermediate: int, hidden: int, dtype: torch.dtype, pin_memory: bool = False
    ) -> ExpertWeights:
        """Preallocated buffers to `read_into` (pinned: page-locked, for fast async copies to a GPU)."""

        def buf(*shape: int) -> torch.Tensor:
            return torch.empty(shape, dtype=dtype, pin_memory=pin_memory)

        return cls(buf(intermediate, hidden), buf(intermediate, hidden), buf(hidden, intermediate))


class ExpertSource:
    """What both stores provide. Attributes (set by the subclass): model_dir, config (config.json
    as a dict), arch (model_type), num_layers (decoder layers), moe_layers, num_experts,
    hidden_size (D), intermediate_size (I), dtype (what reads return)."""

    model_dir: Path
    config: dict
    arch: str
    num_layers: int
    moe_layers: list[int]
    num_experts: int
    hidden_size: int
    intermediate_size: int
    dtype: torch.dtype

    @property
    def expert_nbytes(self) -> int:
        return 3 * self.intermediate_size * self.hidden_size * self.dtype.itemsize  # bytes

    def read(self, layer: int, expert: int) -> ExpertWeights:
        raise NotImplementedError

    def read_into(self, layer: int, expert: int, out: ExpertWeights, non_blocking: bool = False) -> int:
        raise NotImplementedError

    def keys(self) -> list[tuple[int, int]]:
        raise NotImplementedError

    def empty_buffers(
        self, pin_memory: bool | None = None, dtype: torch.dtype | None = None
    ) -> ExpertWeights:
        """Buffers shaped for one expert; pinned by default when CUDA is available."""
        if pin_memory is None:
            pin_memory = torch.cuda.is_available()
        return ExpertWeights.empty(
            self.intermediate_size, self.hidden_size, dtype or self.dtype, pin_memory
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.model_dir)!r}, arch={self.arch}, moe_layers="
            f"{len(self.moe_layers)}, experts={self.num_experts}, expert={self.expert_nbytes} bytes)"
        )
