"""Pick the next token from the logits: greedy, or a seeded draw after temperature, top-k, top-p.

    p = softmax(logits / temperature), keep the top_k largest (0: all), then the smallest set whose
    probability adds up to top_p (1.0: all), renormalize, draw once.
"""

from __future__ import annotations

import torch

from lazymoe.engine.config import GenerationConfig


class Sampler:
    """One per generation: holds the seeded random generator, so a seed repeats a run exactly."""

    def __init__(self, gen: GenerationConfig, device: torch.device | str) -> None:
        self.gen = gen
        self.generator = None
        if gen.temperature > 0:
            self.generator = torch.Generator(device=device)
            if gen.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(gen.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        """logits (V,) -> the next token id (one host sync: we need the id to stop or stream)."""
        gen = self.gen
        if gen.temperature == 0:
            return int(torch.argmax(logits))
        scores = logits.float() / gen.temperature
        if gen.top_k > 0:
            kth = torch.topk(scores, min(gen.top_k, scores.shape[-1])).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if gen.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of better tokens
            sorted_probs = sorted_probs.masked_fill(before >= gen.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs / probs.sum(), 1, generator=self.generator))
