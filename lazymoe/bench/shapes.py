"""Benchmark-scale model shapes: the real dimensions of released MoE models, random weights.

A benchmark needs the byte counts of a real model (how many bytes one token reads), not its
knowledge: random weights with Qwen3-30B-A3B's shapes move exactly as many bytes per token as the
real thing. Their own routing is not real routing, though. Two kinds of router rows (the
writer's `--routing` option, which still calls the first one "uniform"):

- random router rows ("uniform" in `lazymoe.bench.writer`): every expert equally likely on
  average, yet the routers pick nearly the same experts token after token, far more reuse than
  real text: a cache hits much more than it will on real text. Never report it as uniform
  routing: the results call it ``model-own``.
- ``zipf``: router row e of each layer is scaled by ``(rank_e + 1) ** -skew`` (ranks permuted per
  layer), so a few experts win the top-k far more often (static skew). Both engines read the
  same weights, so both see the same routing.

So the benchmark does not rely on either: lazymoe's rows replay a routing trace of a stated regime
(`lazymoe.bench.routing`: independent, real-text, zipf) through `EngineConfig.routing_trace`.

Byte counts here feed the roofline bound in `lazymoe.bench.report`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from lazymoe.models.archs import get_arch

BYTES_PER_PARAM = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a Qwen3-MoE-style decoder (every layer sparse, q/k norms per head)."""

    name: str
    vocab_size: int
    hidden_size: int  # D
    num_layers: int  # L
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int  # E per layer
    top_k: int  # A experts per token per layer
    moe_intermediate_size: int  # I
    max_position_embeddings: int = 4096
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    source: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.top_k <= self.num_experts:
            raise ValueError(f"{self.name}: top_k={self.top_k} must be in 1..num_experts={self.num_experts}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.name}: num_heads={self.num_heads} must be a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")

    @classmethod
    def from_config(cls, config: dict, name: str = "") -> ModelShape:
        """The shape of a Hugging Face config.json (loaded as a dict; Qwen3-MoE if it names no
        model_type). Which fields count the experts and give their width: the architecture registry."""
        arch = get_arch(config.get("model_type") or "qwen3_moe")
        heads = config["num_attention_heads"]
        return cls(
            name=name or config.get("lazymoe_bench", {}).get("shape") or config.get("model_type", "model"),
            vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
            num_layers=config["num_hidden_layers"], num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads", heads),
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            num_experts=arch.num_experts(config), top_k=config["num_experts_per_tok"],
            moe_intermediate_size=arch.expert_width(config),
            source="config.json",
        )

    def scaled(self, **changes) -> ModelShape:
        return dataclasses.replace(self, **changes)

    # ---- parameter counts (elements) ----
    @property
    def expert_params(self) -> int:
        """One expert: gate (I, D) + up (I, D) + down (D, I)."""
        return 3 * self.moe_intermediate_size * self.hidden_size

    @property
    def attention_params_per_layer(self) -> int:
        d, h, kv, hd = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        return d * h * hd + 2 * d * kv * hd + h * hd * d + 2 * hd + 2 * d  # q, k, v, o, q/k norms, 2 norms

    @property
    def router_params_per_layer(self) -> int:
        return self.num_experts * self.hidden_size

    @property
    def total_params(self) -> int:
        per_layer = (self.attention_params_per_layer + self.router_params_per_layer
                     + self.num_experts * self.expert_params)
        return self.num_layers * per_layer + 2 * self.vocab_size * self.hidden_size + self.hidden_size

    def nbytes(self, dtype: str = "bfloat16") -> dict[str, int]:
        """Bytes of each part, and bytes one decoded token reads (the roofline's numerator).

        per-token bytes = dense (attention + router of every layer, lm_head, one embedding row)
                          + L * A * expert_bytes
        """
        b = BYTES_PER_PARAM[dtype]
        expert = self.expert_params * b
        dense_resident = (self.num_layers * (self.attention_params_per_layer + self.router_params_per_layer)
                          + 2 * self.vocab_size * self.hidden_size + self.hidden_size) * b
        dense_per_token = dense_resident - (self.vocab_size - 1) * self.hidden_size * b
        return {
            "expert_bytes": expert,
            "experts_total_bytes": self.num_layers * self.num_experts * expert,
            "dense_resident_bytes": dense_resident,
            "dense_per_token_bytes": dense_per_token,
            "active_expert_bytes_per_token": self.num_layers * self.top_k * expert,
            "total_bytes": self.total_params * b,
        }


# Qwen3-30B-A3B: config.json of Qwen/Qwen3-30B-A3B on the Hugging Face Hub.
QWEN3_30B_A3B = ModelShape(
    name="qwen3-30b-a3b", vocab_size=151_936, hidden_size=2048, num_layers=48, num_heads=32,
    num_kv_heads=4, head_dim=128, num_experts=128, top_k=8, moe_intermediate_size=768,
    max_position_embeddings=40_960, source="config.json of Qwen/Qwen3-30B-A3B (Hugging Face Hub)",
)
# OLMoE-1B-7B's sizes (config.json of allenai/OLMoE-1B-7B-0924), written in the Qwen3-MoE layout
# (q/k norm per head instead of over the whole projection): the bytes per token are the same.
OLMOE_1B_7B = ModelShape(
    name="olmoe-1b-7b-shapes", vocab_size=50_304, hidden_size=2048, num_layers=16, num_heads=16,
    num_kv_heads=16, head_dim=128, num_experts=64, top_k=8, moe_intermediate_size=1024,
    rope_theta=10_000.0, rms_norm_eps=1e-5,
    source="config.json of allenai/OLMoE-1B-7B-0924 (Hugging Face Hub), Qwen3-MoE layout",
)
# Small enough for unit tests and a laptop (a few MB).
TINY = ModelShape(
    name="tiny-random", vocab_size=320, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=16, num_experts=8, top_k=2, moe_intermediate_size=32, max_position_embeddings=512,
    source="test fixture",
)
SHAPES = {s.name: s for s in (QWEN3_30B_A3B, OLMOE_1B_7B, TINY)}


def get_shape(name: str) -> ModelShape:
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown model shape {name!r}: choose one of {sorted(SHAPES)}") from None


def router_row_scales(num_experts: int, skew: float, rng: np.random.Generator) -> np.ndarray:
    """Per-expert multipliers for the router rows: (rank + 1) ** -skew, ranks shuffled.

    With random rows w_e, the logit w_e . h of every expert is an independent Gaussian for any
    hidden state h, so scaling row e by s_e sets how often e lands in the top-k, whatever h is.
    skew = 0 scales no row (the writer's plain random rows).
    """
    ranks = rng.permutation(num_experts)
    return ((ranks + 1.0) ** -skew).astype(np.float32)  # (E,)


def expected_frequencies(scales: np.ndarray, top_k: int, samples: int = 4000,
                         seed: int = 0) -> np.ndarray:
    """Monte-Carlo share of top-k picks each expert gets under `router_row_scales` (sums to 1)."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((samples, scales.size)).astype(np.float32) * scales  # (S, E)
    chosen = np.argpartition(-logits, top_k - 1, axis=1)[:, :top_k]  # (S, A)
    counts = np.bincount(chosen.ravel(), minlength=scales.size)
    return counts / counts.sum()


def static_hit_rate(frequencies: np.ndarray, resident_experts: int) -> float:
    """Hit rate of a cache that always holds the `resident_experts` most popular experts."""
    return float(np.sort(frequencies)[::-1][:resident_experts].sum())
