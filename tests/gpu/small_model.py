"""The small random MoE the GPU engine tests share: its shape, prompt, and full-model tokens."""

from __future__ import annotations

import torch

from lazymoe.engine import GenerationConfig
from lazymoe.engine.reference import full_model, reference_greedy
from lazymoe.models.random import make_random_checkpoint

PROMPT = list(range(40, 72))
GREEDY = GenerationConfig(max_new_tokens=12, stop_token_ids=())
SHAPE = {"hidden_size": 128, "moe_intermediate_size": 128, "num_experts": 16,
         "num_hidden_layers": 4, "num_attention_heads": 4, "head_dim": 32}  # fmt: skip
EXPERT_BYTES = 3 * 128 * 128 * 4  # F32


def checkpoint_and_tokens(folder) -> tuple:
    """(checkpoint path, the full model's greedy tokens on cuda:0) for SHAPE, seed 11."""
    path = make_random_checkpoint(folder / "m", seed=11, **SHAPE)
    expected = reference_greedy(full_model(path, device="cuda"), PROMPT, GREEDY.max_new_tokens)
    torch.cuda.empty_cache()
    return path, expected
