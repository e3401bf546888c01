"""The yardstick: the whole model in memory with transformers, decoded greedily.

The engine is correct when it produces the same tokens as this, for every cache size.
Used by the tests, the labs and the GPU table script.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, DynamicCache


def full_model(path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Every weight in memory; transformers' own per-expert loop (`experts_implementation="eager"`)."""
    return (
        AutoModelForCausalLM.from_pretrained(path, dtype=dtype, experts_implementation="eager")
        .to(device)
        .eval()
    )


@torch.inference_mode()
def reference_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy new tokens of the full model (no stop tokens: exactly `max_new_tokens`)."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids)], device=device)
    cache, out = DynamicCache(config=model.config), []
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids, cache=cache, use_cache=True).logits[0, -1]
        out.append(int(logits.argmax()))
        ids = torch.tensor([[out[-1]]], device=device)
    return out
