"""What runs: a model at a format (or a mix of formats), a context length and a batch.

All byte counts here are bookkeeping over the catalog's parameter counts: no tensors.
What it runs on is `Machine` (lazymoe/calculator/machine.py, re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass

from lazymoe import catalog
from lazymoe.calculator.bounds import CalculatorError
from lazymoe.calculator.machine import (
    DISK_GBPS,
    GPU_OVERHEAD_BYTES,
    RAM_RESERVE_BYTES,
    GiB,
    Machine,
)
from lazymoe.catalog import ModelSpec
from lazymoe.i18n import _

GB = 1e9


def weight_bits(spec: ModelSpec, fmt: str | None = None,
                other_fmt: str | None = None) -> tuple[float, float | None, str]:
    """(expert bits, other bits or None, label) for a catalog model at catalog format names."""
    expert_format = catalog.weight_format(fmt or spec.native_format)
    if not spec.has_expert_shapes:
        if other_fmt:
            raise CalculatorError(f"{spec.name} has no separate experts, so it has one format for "
                                  "all its weights: leave the second format out")
        return expert_format.bits_per_weight, None, expert_format.name
    if other_fmt:
        other_format = catalog.weight_format(other_fmt)
    elif expert_format.name == spec.native_format and spec.native_other_format:
        other_format = catalog.weight_format(spec.native_other_format)
    else:
        other_format = expert_format
    if other_format.name == expert_format.name:
        label = expert_format.name
    else:
        label = f"{expert_format.name} experts, {other_format.name} rest"
    return expert_format.expert_bits, other_format.other_bits, label


@dataclass(frozen=True)
class Workload:
    """A model at a weight format, for `context_tokens` of context and `batch` sequences.

    bits_per_weight         bits per weight, scales included (formats.yaml); for an MoE with known
                            experts, the routed experts' bits
    other_bits_per_weight   for MoE: the weights outside the experts, when they are kept at
                            another format (GPT-OSS: MXFP4 experts, BF16 rest); None = same
    kv_bits                 bits per cached K/V value (16 for an fp16 cache, 8 for q8_0)
    format_label            how the formats are named in results ("Q4_K_M", "MXFP4 experts, BF16 rest")
    """

    model: ModelSpec
    bits_per_weight: float
    other_bits_per_weight: float | None = None
    context_tokens: int = 4096
    batch: int = 1
    kv_bits: float = 16.0
    format_label: str = ""

    def __post_init__(self) -> None:
        for name in ("bits_per_weight", "other_bits_per_weight"):
            bits = getattr(self, name)
            if bits is not None and not 0 < bits <= 32:
                raise CalculatorError(f"{name} must be in (0, 32], got {bits}")
        if self.context_tokens < 1 or self.batch < 1:
            raise CalculatorError("context_tokens and batch must be at least 1")

    @classmethod
    def from_names(cls, model: str, fmt: str | None = None, other_fmt: str | None = None,
                   **kwargs) -> Workload:
        """Build from catalog names: `Workload.from_names("Qwen3-30B-A3B", "Q4_K_M")`.

        fmt         the experts' format (a dense model: all weights); None = as the model ships
        other_fmt   MoE: the format of everything outside the experts; None = the mix that `fmt`
                    describes (Q4_K_M's own average for the rest), or the shipped one when `fmt` is
                    the model's own format (GPT-OSS: BF16)
        """
        spec = catalog.model(model)
        bits, other, label = weight_bits(spec, fmt, other_fmt)
        return cls(spec, bits, other, format_label=label, **kwargs)

    # ---- bytes held -----------------------------------------------------------------------
    @property
    def _other_bits(self) -> float:
        return self.other_bits_per_weight or self.bits_per_weight

    def describe_formats(self) -> str:
        """'Q4_K_M (experts 4.84 bits, rest 5.2 bits per weight)' or '4.9 bits per weight'."""
        name = f"{self.format_label} " if self.format_label else ""
        if self.model.has_expert_shapes and self._other_bits != self.bits_per_weight:
            return name + _("(experts {bits:g} bits, rest {other:g} bits per weight)").format(
                bits=self.bits_per_weight, other=self._other_bits)
        return name + _("({bits:g} bits per weight)").format(bits=self.bits_per_weight)

    @property
    def expert_bytes(self) -> float:
        """All routed experts of all layers (0 for a dense model or unknown expert shapes)."""
        m = self.model
        if not m.has_expert_shapes:
            return 0.0
        return m.n_moe_layers * m.experts * m.params_per_expert * self.bits_per_weight / 8

    @property
    def outside_bytes(self) -> float:
        """Everything but the routed experts (all weights, for a dense model)."""
        m = self.model
        if not m.has_expert_shapes:
            return m.params_total * self.bits_per_weight / 8
        return m.params_outside_experts * self._other_bits / 8

    @property
    def weight_bytes(self) -> float:
        return self.expert_bytes + self.outside_bytes

    @property
    def kv_cache_bytes(self) -> float:
        """context x batch x KV layers x (2 x kv_heads x head_dim) x kv_bits / 8."""
        values = self.model.kv_values_per_token_layer
        layers = self.model.n_kv_layers
        if values is None or layers is None:
            return 0.0
        return self.context_tokens * self.batch * layers * values * self.kv_bits / 8

    # ---- bytes read per decode step (one token for each sequence of the batch) ------------
    def experts_touched_per_layer(self) -> float:
        """Distinct experts a layer uses for the batch: E x (1 - (1 - k/E)^B), uniform routing."""
        m = self.model
        return m.experts * (1 - (1 - m.experts_per_token / m.experts) ** self.batch)

    @property
    def active_expert_bytes_per_step(self) -> float:
        m = self.model
        if not m.has_expert_shapes:
            return 0.0
        return (m.n_moe_layers * self.experts_touched_per_layer() * m.params_per_expert
                * self.bits_per_weight / 8)

    @property
    def outside_read_bytes_per_step(self) -> float:
        """Non-expert weights read per step; the input embedding gives one row, not its table."""
        m = self.model
        if m.is_moe and not m.has_expert_shapes:
            return m.params_active * self.bits_per_weight / 8   # only the published total known
        params = m.params_outside_experts if m.has_expert_shapes else m.params_total
        return (params - m.params_input_embedding) * self._other_bits / 8

    @property
    def weights_read_per_step(self) -> float:
        return self.outside_read_bytes_per_step + self.active_expert_bytes_per_step

    @property
    def bytes_per_step(self) -> float:
        """Weights read once per step, plus every sequence's KV cache (at full context)."""
        return self.weights_read_per_step + self.kv_cache_bytes

    def describe_read(self) -> str:
        """What one decode step reads, in the words lab01, module 01 and the widget all use."""
        weights = self.weights_read_per_step / GB
        if self.kv_cache_bytes <= 0:
            return _("{gb:.2f} GB read per token: weights only (no KV cache counted)").format(gb=weights)
        sequences = _(" x {n} sequences").format(n=self.batch) if self.batch > 1 else ""
        return _("{gb:.2f} GB read per token: {weights:.2f} GB of weights + {kv:.2f} GB of KV cache "
                 "({tokens} tokens{sequences})").format(
            gb=self.bytes_per_step / GB, weights=weights, kv=self.kv_cache_bytes / GB,
            tokens=self.context_tokens, sequences=sequences)

    @property
    def bytes_per_layer(self) -> float:
        """Weight bytes of one layer, embeddings spread evenly (what layer splits move)."""
        return self.weight_bytes / self.n_slices

    @property
    def n_slices(self) -> int:
        """Layers to split by; 100 slices when the catalog does not give the layer count."""
        return self.model.layers or 100

    def notes(self) -> list[str]:
        m, out = self.model, []
        if m.is_moe and not m.has_expert_shapes:
            out.append(_("{model}: expert shapes unknown, so each token is taken to read "
                         "{active_b:.1f}B parameters as one block").format(
                model=m.name, active_b=m.params_active / 1e9))
        if m.kv_values_per_token_layer is None:
            out.append(_("{model}: KV shape unknown, KV cache left out").format(model=m.name))
        if self.kv_cache_bytes > 0:
            out.append(_("the KV cache is counted at its full length, {tokens} tokens").format(
                tokens=self.context_tokens))
        return out



__all__ = ["DISK_GBPS", "GPU_OVERHEAD_BYTES", "RAM_RESERVE_BYTES", "GiB", "Machine", "Workload",
           "weight_bits"]
