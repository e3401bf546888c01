"""Counting parameters of a Qwen3-MoE-style config: total, per expert, and active per token.

Why it matters: an MoE stores every expert but each token uses only top_k of them per layer, so
the bytes a decode step must read are set by the *active* parameters, while the memory you need
to hold the model is set by the *total*.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts (numbers of weights, not bytes)."""

    embedding: int  # token embedding table: looked up, not multiplied
    attention: int  # all layers: q, k, v, o projections and q/k norms
    router: int  # all layers: (E, D) gate matrices
    per_expert: int  # one expert of one layer: gate + up + down = 3 * D * I
    experts: int  # all experts of all layers
    norms: int
    lm_head: int
    top_k: int
    num_layers: int

    @property
    def total(self) -> int:
        return self.embedding + self.attention + self.router + self.experts + self.norms + self.lm_head

    @property
    def active(self) -> int:
        """Weights one token touches: total - experts + num_layers * top_k * per_expert."""
        return (self.total - self.experts) + self.num_layers * self.top_k * self.per_expert


def attention_head_dim(config) -> int:
    """One attention head's width: the config's head_dim, else hidden_size / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def param_counts(config) -> ParamCounts:
    """Count from a transformers Qwen3MoeConfig (or anything with the same attributes)."""
    d, n_layers = config.hidden_size, config.num_hidden_layers
    head_dim = attention_head_dim(config)
    q = config.num_attention_heads * head_dim
    kv = config.num_key_value_heads * head_dim
    attention = n_layers * (d * q + 2 * d * kv + q * d + 2 * head_dim)
    num_experts = config.num_experts
    per_expert = 3 * d * config.moe_intermediate_size
    tied = getattr(config, "tie_word_embeddings", False)
    return ParamCounts(
        embedding=config.vocab_size * d,
        attention=attention,
        router=n_layers * num_experts * d,
        per_expert=per_expert,
        experts=n_layers * num_experts * per_expert,
        norms=(2 * n_layers + 1) * d,
        lm_head=0 if tied else config.vocab_size * d,
        top_k=config.num_experts_per_tok,
        num_layers=n_layers,
    )
