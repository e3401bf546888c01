"""Prefetch: guess the next MoE layer's experts before it runs, and start copying them.

While layer L runs, its hidden state is already a good stand-in for what layer L+1's router
will see (the residual stream changes little from one layer to the next). So we push it through
layer L+1's router now, take its top-k, and copy those experts into the device tier on a side
stream while layer L computes. If the guess was right, layer L+1 finds them resident: a hit that
cost no waiting.

    prefetch accuracy = predicted experts that the next layer used / predicted experts

Only during decode (one token): a prompt's tokens together need most experts anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch


def predict_experts(hidden: torch.Tensor, router_weight: torch.Tensor, top_k: int) -> torch.Tensor:
    """The experts a router would pick for one hidden state: top-k of W @ h.

    hidden (D,), router_weight (E, D) -> expert ids (top_k,), most likely first. Softmax keeps
    the order of the logits, so the top-k of the logits is the top-k of the probabilities.
    """
    logits = router_weight @ hidden  # (E,)
    return torch.topk(logits, top_k).indices


@dataclass
class PrefetchStats:
    predicted: int = 0  # experts guessed (top_k per layer step)
    correct: int = 0  # of those, used by the next layer
    fetched: int = 0  # guesses that were not resident, so a copy was issued
    fetched_used: int = 0  # of those copies, used by the next layer

    @property
    def accuracy(self) -> float:
        return self.correct / self.predicted if self.predicted else 0.0

    def as_dict(self) -> dict:
        return {**self.__dict__, "accuracy": self.accuracy}


PredictFn = Callable[[torch.Tensor, torch.Tensor, int], object]  # (hidden (D,), W (E, D), k) -> ids


class Prefetcher:
    """Predicts the next MoE layer's experts through that layer's own router.

    predictor: a function of yours (lab07) `predictor(hidden (D,), router_weight (E, D), top_k)`
    -> top_k expert ids, used instead of the router's own top-k; None: `block.gate`'s.
    """

    def __init__(self, blocks: dict[int, torch.nn.Module], predictor: PredictFn | None = None) -> None:
        layers = sorted(blocks)
        self.blocks = blocks  # layer -> MoE block (its .gate is read at call time)
        self.predictor = predictor
        self.next_layer = dict(pairwise(layers))
        self.stats = PrefetchStats()
        self._pending: dict[int, tuple[set[int], set[int]]] = {}  # layer -> (guessed, fetched)

    def predict(self, layer: int, hidden: torch.Tensor) -> tuple[int, torch.Tensor] | None:
        """(next layer, its predicted expert ids (K,) on the device), or None after the last."""
        nxt = self.next_layer.get(layer)
        if nxt is None:
            return None
        gate = self.blocks[nxt].gate
        if self.predictor is not None:
            gate = getattr(gate, "original", gate)  # a learner router wraps the real one
            ids = self.predictor(hidden.reshape(-1, gate.weight.shape[-1])[-1], gate.weight, gate.top_k)
            return nxt, torch.as_tensor(ids, device=hidden.device).long().flatten()
        _, _, indices = gate(hidden)  # (T, K)
        return nxt, indices[-1]

    def remember(self, layer: int, guessed: list[int], fetched: list[int]) -> None:
        self._pending[layer] = (set(guessed), set(fetched))

    def score(self, layer: int, used: set[int]) -> None:
        """Called when `layer` runs: compare what was guessed for it with what it uses."""
        pending = self._pending.pop(layer, None)
        if pending is None:
            return
        guessed, fetched = pending
        self.stats.predicted += len(guessed)
        self.stats.correct += len(guessed & used)
        self.stats.fetched += len(fetched)
        self.stats.fetched_used += len(fetched & used)

    def reset_pending(self) -> None:
        """Forget guesses not yet scored (a new generation starts)."""
        self._pending.clear()

    def reset(self) -> None:
        self.stats = PrefetchStats()
        self._pending.clear()


def _overlap(guess: torch.Tensor, actual: torch.Tensor) -> float:
    """Mean over tokens of |guess_t & actual_t| / k, for (T, k) id tensors."""
    hits = (guess.unsqueeze(-1) == actual.unsqueeze(-2)).any(-1).float()  # (T, k)
    return float(hits.mean()) if hits.numel() else 0.0


@torch.inference_mode()
def guess_accuracy(model, ids: list[int]) -> dict[str, list]:
    """How well three guesses name the experts each next MoE layer really uses (full model).

    For each pair of consecutive MoE layers (L, N), over the tokens of `ids`:
      "next router":    top-k of layer N's router applied to layer L's hidden state (what the
                        engine's prefetch does)
      "previous token": the experts the previous token used in layer N (temporal locality)
      "random":         k / E, what a blind guess gets
    Each value is the fraction of guessed experts that layer N used.
    """
    from lazymoe.engine.arch import moe_blocks

    blocks = dict(moe_blocks(model))
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (hidden (T, D), ids (T, k))

    def recorder(layer: int):
        def hook(module, args, output):
            seen[layer] = (args[0].detach(), output[2].detach())

        return hook

    handles = [block.gate.register_forward_hook(recorder(layer)) for layer, block in blocks.items()]
    try:
        device = next(model.parameters()).device
        model(input_ids=torch.tensor([list(ids)], device=device))
    finally:
        for handle in handles:
            handle.remove()
    out: dict[str, list] = {"transition": [], "next router": [], "previous token": [], "random": []}
    for layer, nxt in pairwise(sorted(blocks)):
        hidden, _ = seen[layer]
        _, actual = seen[nxt]
        _, _, guess = blocks[nxt].gate(hidden)  # (T, k)
        k, num_experts = actual.shape[-1], blocks[nxt].gate.weight.shape[0]
        out["transition"].append(f"{layer}->{nxt}")
        out["next router"].append(_overlap(guess, actual))
        out["previous token"].append(_overlap(actual[:-1], actual[1:]))
        out["random"].append(k / num_experts)
    return out
