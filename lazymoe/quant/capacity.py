"""How many experts a memory budget holds in each storage format, and what that does to a cache.

One expert is three matrices, each stored row by row in its format (lazymoe/quant/formats.py):

    gate, up   (I, D)    I = the expert's width (moe_intermediate_size), D = hidden_size
    down       (D, I)
    expert bytes = 2 x nbytes((I, D)) + nbytes((D, I))          # scales included
    slots        = budget bytes // slot bytes                   # experts the budget holds

A slot must fit the largest expert of any layer, as the engine's quantized pool sizes its slots
(lazymoe/engine/storage/qpool.py): a Q4_K_M file stores some layers' `down` in Q6_K, so those
experts are bigger, and every slot is sized for them. A token reads the average expert.

Formats: any lazymoe.quant name for all three matrices ("bf16", "q8_0", "q4_0", "q4_k", ...), or
"q4_k_m", llama.cpp's mix: gate and up Q4_K; down Q6_K in the first and last eighth of the layers
and every third layer between, Q4_K in the others (`use_more_bits` in llama.cpp's
src/llama-quant.cpp; the same rule writes the course's GGUF files, lazymoe.models.gguf_write).

    cap = capacity("q4_0", 8 * 10**9, QWEN3_30B_A3B)      # lazymoe.bench.shapes, or any object
    cap.slots, cap.resident_fraction                         # with the four sizes below
    cache_hit_rate(trace, cap)                               # LRU replay of a routing trace
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from lazymoe.quant.formats import QuantError, get_format

MIXES = ("q4_k_m",)  # llama.cpp's per-tensor mixes, beside the single formats
LABELS = {"bf16": "BF16", "f16": "F16", "f32": "F32", "q8_0": "Q8_0", "q4_0": "Q4_0",
          "q4_1": "Q4_1", "q4_k": "Q4_K", "q5_k": "Q5_K", "q6_k": "Q6_K", "q4_k_m": "Q4_K_M"}


class ExpertShape(Protocol):
    """What sizes an expert and counts them (lazymoe.bench.shapes.ModelShape has these)."""

    hidden_size: int  # D
    moe_intermediate_size: int  # I
    num_layers: int  # L (every layer an MoE layer)
    num_experts: int  # E per layer


def uses_more_bits(layer: int, num_layers: int) -> bool:
    """llama.cpp's Q4_K_M rule: `down` in Q6_K in the first and last eighth of the layers and
    every third layer between them."""
    from lazymoe.models.gguf_write import _more_bits  # the rule the course's GGUF writer uses

    return _more_bits(layer, num_layers)


def projection_formats(fmt: str, layer: int = 0, num_layers: int = 1) -> tuple[str, str, str]:
    """The stored format of (gate, up, down) of an expert in `layer`."""
    key = fmt.strip().lower()
    if key == "q4_k_m":
        return "q4_k", "q4_k", "q6_k" if uses_more_bits(layer, num_layers) else "q4_k"
    try:
        get_format(key)
    except QuantError as exc:
        raise QuantError(f"{exc}; or a mix: {', '.join(MIXES)}") from None
    return key, key, key


def expert_nbytes(fmt: str, hidden_size: int, moe_intermediate_size: int, layer: int = 0,
                  num_layers: int = 1) -> int:
    """Bytes of one expert of `layer` stored in `fmt`, scales included."""
    d, i = hidden_size, moe_intermediate_size
    gate, up, down = projection_formats(fmt, layer, num_layers)
    return get_format(gate).nbytes((i, d)) + get_format(up).nbytes((i, d)) + get_format(down).nbytes((d, i))


@dataclass(frozen=True)
class ExpertCapacity:
    """Experts of one format in a budget: the numbers of module 06's table."""

    format: str  # the lazymoe name ("q4_k_m"); `label` is llama.cpp's ("Q4_K_M")
    budget_bytes: int  # bytes for cached experts
    slot_nbytes: int  # bytes of one slot: the largest expert of any layer
    mean_nbytes: float  # bytes of the average expert: what a token reads per expert
    params_per_expert: int  # weights of one expert: 3 x I x D
    slots: int  # experts the budget holds, at most every expert of the model
    total_experts: int  # L x E

    @property
    def label(self) -> str:
        return LABELS.get(self.format, self.format.upper())

    @property
    def bits_per_weight(self) -> float:
        """Average stored bits per expert weight, scales included."""
        return 8 * self.mean_nbytes / self.params_per_expert

    @property
    def resident_fraction(self) -> float:
        return self.slots / self.total_experts


def capacity(fmt: str, budget_bytes: int, shape: ExpertShape) -> ExpertCapacity:
    """How many experts of `shape` stored in `fmt` fit in `budget_bytes`.

        slots = min(budget_bytes // slot bytes, L x E)
    """
    if budget_bytes <= 0:
        raise ValueError(f"budget_bytes={budget_bytes}: give a positive number of bytes (8 GB = 8 * 10**9)")
    sizes = [expert_nbytes(fmt, shape.hidden_size, shape.moe_intermediate_size, layer, shape.num_layers)
             for layer in range(shape.num_layers)]
    total = shape.num_layers * shape.num_experts
    return ExpertCapacity(
        format=fmt.strip().lower(), budget_bytes=int(budget_bytes), slot_nbytes=max(sizes),
        mean_nbytes=sum(sizes) / len(sizes),
        params_per_expert=3 * shape.hidden_size * shape.moe_intermediate_size,
        slots=min(int(budget_bytes) // max(sizes), total), total_experts=total,
    )  # fmt: skip


def cache_hit_rate(trace, cap: ExpertCapacity, policy: str = "lru") -> float:
    """Hit rate of one cache of `cap.slots` experts (all layers together, as the engine's) on a
    routing trace (lazymoe.engine.parts.trace.RoutingTrace), replayed by the engine's own
    bookkeeping (`simulate`); every access counts, the first (cold) ones included.

    A budget that holds every expert is loaded whole before the first token, as the engine does:
    nothing is ever missed, the hit rate is 1.
    """
    from lazymoe.engine.parts.trace import simulate

    if trace.num_layers * trace.num_experts != cap.total_experts:
        raise ValueError(f"the trace has {trace.num_layers} x {trace.num_experts} experts and the "
                         f"capacity counts {cap.total_experts}: make both for the same model")
    if cap.slots >= cap.total_experts:
        return 1.0
    if cap.slots < trace.top_k:
        raise ValueError(f"{cap.label}: {cap.slots} slots cannot hold one layer's {trace.top_k} "
                         f"experts: give at least {trace.top_k * cap.slot_nbytes} bytes")
    return simulate(trace, cap.slots, policy).hit_rate
