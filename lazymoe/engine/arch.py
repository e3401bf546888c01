"""The engine's view of the model: its architecture record and its MoE blocks.

Facts about each architecture (config fields, checkpoint names, what the segmented decoder
handles) live in one registry, `lazymoe.models.archs`. What is here walks a transformers model:
transformers 5 gives every supported MoE model the same block, `mlp.gate` (a top-k router
returning logits, weights, indices) and `mlp.experts` (called as
`experts(hidden (T, D), top_k_index (T, K), top_k_weights (T, K)) -> (T, D)`). The engine swaps
`mlp.experts` for its own module and keeps everything else, including Qwen2-MoE's shared expert
(`mlp.shared_expert`, always resident).
"""

from __future__ import annotations

import re

from lazymoe.engine.errors import UnsupportedArchitectureError
from lazymoe.models.archs import Arch, UnknownArchitectureError, arch_of, moe_block_pattern

# Expert weights in a checkpoint: per-expert names (`...experts.3.gate_proj.weight`, Mixtral's
# `w1/w2/w3`) or transformers-5 fused ones (`...experts.gate_up_proj`, `...experts.down_proj`).
_EXPERT_KEY = re.compile(rf"\.({moe_block_pattern()})\.experts\.")


def is_expert_key(checkpoint_key: str) -> bool:
    return _EXPERT_KEY.search(checkpoint_key) is not None


def spec_for(config) -> Arch:
    """The architecture record of a transformers config, or an error naming the supported ones."""
    try:
        return arch_of(config)
    except UnknownArchitectureError as exc:
        raise UnsupportedArchitectureError(
            f"{exc} (by the lazymoe engine). Run a supported MoE checkpoint, or run this model "
            "with transformers (AutoModelForCausalLM) without expert offloading."
        ) from exc


def moe_blocks(model) -> list[tuple[int, object]]:
    """(decoder layer index, MoE block) for every layer whose MLP is a routed MoE block."""
    blocks = []
    for index, layer in enumerate(model.model.layers):
        mlp = getattr(layer, "mlp", None)
        if mlp is not None and hasattr(mlp, "experts") and hasattr(mlp, "gate"):
            blocks.append((index, mlp))
    return blocks
