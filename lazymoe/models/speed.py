"""Timing prefill and decode on the CPU, and fitting the "roofline" of decode speed (module 02, lab02).

Decode reads every weight a token uses once per token, so for a model of B bytes on a machine
that streams W bytes/s, seconds per token ~ overhead + B / W. Prefill pushes many tokens through
the same weights at once, so it is limited by arithmetic instead.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from transformers import DynamicCache, Qwen3Config, Qwen3ForCausalLM

GB = 1e9  # bandwidths in decimal GB/s, as datasheets give them


def dense_model(hidden_size: int, num_layers: int, vocab_size: int = 4096, seed: int = 0):
    """A random dense Qwen3 model (float32): same parts as the tiny MoE, one MLP per layer.

    Parameters ~ vocab * D * 2 + num_layers * 12 * D^2 (attention 4 D^2 + MLP 3 * D * 8D/3 ~ 8 D^2).
    """
    if hidden_size % 64:
        raise ValueError(f"hidden_size={hidden_size}: use a multiple of 64 (head_dim is 64)")
    config = Qwen3Config(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        intermediate_size=(8 * hidden_size // 3 + 63) // 64 * 64,
        num_attention_heads=hidden_size // 64, num_key_value_heads=max(1, hidden_size // 256),
        head_dim=64, max_position_embeddings=2048, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).float().eval()


def weight_bytes(model) -> int:
    """Bytes of all parameters (what the model occupies in memory)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def decode_bytes_per_token(model) -> int:
    """Bytes one decode step must read: every weight except the embedding table (one row of it
    is looked up, the rest is not read). For an MoE, only the top-k experts of each layer count.
    """
    embed = model.get_input_embeddings().weight
    total = weight_bytes(model) - embed.numel() * embed.element_size()
    cfg = model.config
    if getattr(cfg, "num_experts", None):
        per_expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size * embed.element_size()
        unused = cfg.num_experts - cfg.num_experts_per_tok
        total -= cfg.num_hidden_layers * unused * per_expert
    return total


@torch.no_grad()
def time_prefill(model, n_tokens: int, repeats: int = 3) -> float:
    """Best-of-`repeats` seconds for one forward pass over `n_tokens` tokens (no cache kept)."""
    ids = torch.randint(0, model.config.vocab_size, (1, n_tokens), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids[:, :8], use_cache=False)  # warm-up: first calls allocate and dispatch
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def time_decode(model, n_new: int = 32, prompt_tokens: int = 16) -> float:
    """Median seconds per decoded token: prefill a prompt, then feed one token at a time,
    reusing the KV cache (the way every generation loop works)."""
    ids = torch.randint(0, model.config.vocab_size, (1, prompt_tokens), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache()
    out = model(input_ids=ids, cache=cache, use_cache=True)
    token = out.logits[:, -1:].argmax(-1)  # (1, 1)
    times = []
    for step in range(n_new + 1):  # step 0 is a warm-up, not timed
        t0 = time.perf_counter()
        out = model(input_ids=token, cache=out.cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        if step:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fit_roofline(bytes_per_token, seconds_per_token) -> tuple[float, float]:
    """Least-squares fit of seconds = overhead_s + bytes / (bandwidth_gbps * 1e9).

    Returns (bandwidth_gbps, overhead_s): the effective bandwidth decode achieves, and the fixed
    per-token cost (Python, kernel launches) that no amount of bandwidth removes.
    """
    x = np.asarray(bytes_per_token, dtype=float)
    y = np.asarray(seconds_per_token, dtype=float)
    if x.size < 2 or x.size != y.size:
        raise ValueError("need at least two (bytes, seconds) points of equal count")
    slope, overhead_s = np.polyfit(x, y, 1)  # seconds per byte, seconds
    if slope <= 0:
        raise ValueError("time does not grow with bytes in these points: use larger models")
    return 1.0 / slope / GB, float(overhead_s)
