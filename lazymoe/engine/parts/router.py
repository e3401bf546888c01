"""Top-k routing: which experts each token uses, and with what weights.

    probs   = softmax(router_logits)                       (T, E), in float32
    weights, indices = top-k of probs                      (T, K) each
    weights = weights / weights.sum(-1) if norm_topk_prob  (Qwen3-MoE, Mixtral: yes)

`LearnerRouter` lets a learner's own routing function drive the real engine (lab08).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

RouteFn = Callable[[torch.Tensor, int, bool], tuple[torch.Tensor, torch.Tensor]]


def topk_route(
    router_logits: torch.Tensor, top_k: int, norm_topk_prob: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits (T, E) -> (weights (T, K) float32, indices (T, K)), as transformers does."""
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    weights, indices = torch.topk(probs, top_k, dim=-1)
    if norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, indices


class LearnerRouter(torch.nn.Module):
    """Wraps a transformers router (`mlp.gate`), keeping its weight, routing with `route`."""

    def __init__(self, original: torch.nn.Module, route: RouteFn) -> None:
        super().__init__()
        self.original = original
        self.__dict__["route"] = route  # a plain function, not a submodule

    def forward(self, hidden_states: torch.Tensor):
        gate = self.original
        hidden_states = hidden_states.reshape(-1, gate.weight.shape[-1])  # (T, D)
        router_logits = F.linear(hidden_states, gate.weight)  # (T, E)
        norm = bool(getattr(gate, "norm_topk_prob", True))  # Mixtral always renormalizes
        weights, indices = self.route(router_logits, gate.top_k, norm)
        return router_logits, weights.to(router_logits.dtype), indices
