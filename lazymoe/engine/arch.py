"""Per-architecture facts: the little that differs between the MoE models the engine runs.

transformers 5 gives Qwen3-MoE, OLMoE, Mixtral and Qwen2-MoE the same MoE block: `mlp.gate`
(a top-k router returning logits, weights, indices) and `mlp.experts` (the experts, called as
`experts(hidden (T, D), top_k_index (T, K), top_k_weights (T, K)) -> (T, D)`). The engine swaps
`mlp.experts` for its own module and keeps everything else, including Qwen2-MoE's shared expert
(`mlp.shared_expert`, always resident). What is left per architecture is config field names and
the checkpoint's older key names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lazymoe.engine.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    model_type: str
    num_experts_field: str  # config field: how many experts per MoE layer
    expert_width_field: str  # config field: each expert's intermediate size I
    # checkpoint key renames (old substring, new substring): hub checkpoints predate v5 names
    key_renames: tuple[tuple[str, str], ...] = ()
    notes: str = ""

    def num_experts(self, config) -> int:
        return int(getattr(config, self.num_experts_field))

    def expert_width(self, config) -> int:
        return int(getattr(config, self.expert_width_field))

    def module_key(self, checkpoint_key: str) -> str:
        """The model's parameter name for a checkpoint key (e.g. Mixtral's block_sparse_moe)."""
        for old, new in self.key_renames:
            checkpoint_key = checkpoint_key.replace(old, new)
        return checkpoint_key


ARCHS: dict[str, ArchSpec] = {
    "qwen3_moe": ArchSpec("qwen3_moe", "num_experts", "moe_intermediate_size"),
    "olmoe": ArchSpec("olmoe", "num_experts", "intermediate_size"),
    "mixtral": ArchSpec(
        "mixtral", "num_local_experts", "intermediate_size",
        key_renames=((".block_sparse_moe.", ".mlp."),),
    ),
    "qwen2_moe": ArchSpec(
        "qwen2_moe", "num_experts", "moe_intermediate_size",
        notes="the shared expert (mlp.shared_expert) stays resident like attention",
    ),
}  # fmt: skip

# Expert weights in a checkpoint: per-expert names (`...experts.3.gate_proj.weight`, Mixtral's
# `w1/w2/w3`) or transformers-5 fused ones (`...experts.gate_up_proj`, `...experts.down_proj`).
_EXPERT_KEY = re.compile(r"\.(mlp|block_sparse_moe)\.experts\.")


def is_expert_key(checkpoint_key: str) -> bool:
    return _EXPERT_KEY.search(checkpoint_key) is not None


def spec_for(config) -> ArchSpec:
    """The ArchSpec of a transformers config, or an error naming the supported ones."""
    model_type = getattr(config, "model_type", None)
    spec = ARCHS.get(model_type)
    if spec is None:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} is not supported by the lazymoe engine; supported: "
            f"{', '.join(ARCHS)}. Run a supported MoE checkpoint, or run this model with "
            "transformers (AutoModelForCausalLM) without expert offloading."
        )
    return spec


def moe_blocks(model) -> list[tuple[int, object]]:
    """(decoder layer index, MoE block) for every layer whose MLP is a routed MoE block."""
    blocks = []
    for index, layer in enumerate(model.model.layers):
        mlp = getattr(layer, "mlp", None)
        if mlp is not None and hasattr(mlp, "experts") and hasattr(mlp, "gate"):
            blocks.append((index, mlp))
    return blocks
