"""Trace replay: the routers still run, but the experts fetched and computed come from a trace.

For benchmarking a cache with routing that the model itself cannot produce (a random-weight
model reuses experts far more than real text does; `lazymoe.bench.routing` makes traces with
real text's statistics). `EngineConfig.routing_trace` turns it on; everything else (the cache,
copies, placement, kernels, prefetch) runs as usual.

- Token t of the engine's run, MoE layer j (the j-th MoE layer of the model) uses the trace's
  experts[t, j, :]. Each layer keeps its own position in the trace and moves on by the number of
  tokens it routed (a prompt of P tokens takes P rows, each decode step one). Successive
  generations continue where the last one stopped, as one long conversation would; past the
  end of the trace, replay starts again from its first token (`wraps` counts how often).
- Weights: the trace's k-th expert takes the router's k-th top-k weight (the router's weights
  sorted as it chose them, largest first), so the sum and spread of the weights stay the
  model's own. The computed output is therefore not the model's: replay is for speed and hit
  rates, never for text.
- Prefetch still guesses from the model's routers, so against a trace its guesses are mostly
  wrong (its accuracy is counted as usual); benchmarks of replayed routing turn it off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lazymoe.engine.parts.trace import RoutingTrace


class TraceReplay:
    """Hands out a `RoutingTrace`'s expert ids layer by layer, in place of the router's."""

    def __init__(self, trace: RoutingTrace, moe_layers: list[int], num_experts: int, top_k: int) -> None:
        problems = []
        if trace.num_layers != len(moe_layers):
            problems.append(f"{trace.num_layers} MoE layers in the trace, {len(moe_layers)} in the model")
        if trace.num_experts != num_experts:
            problems.append(f"{trace.num_experts} experts per layer in the trace, {num_experts} in the model")
        if trace.top_k != top_k:
            problems.append(f"top-{trace.top_k} in the trace, top-{top_k} in the model")
        if problems:
            raise ValueError(
                "routing_trace does not fit this model: " + "; ".join(problems) + ". Make one for "
                "its shape, e.g. lazymoe.bench.routing.make_trace(regime, tokens, num_layers, "
                "num_experts, top_k)"
            )
        ordered = np.sort(trace.experts, axis=-1)
        if (ordered[..., 1:] == ordered[..., :-1]).any():
            raise ValueError("routing_trace picks one expert twice for a token: each token's k must differ")
        self.trace = trace
        self.row_of = {layer: j for j, layer in enumerate(moe_layers)}  # model layer -> trace column
        self.served = dict.fromkeys(moe_layers, 0)  # per layer: tokens routed so far

    @classmethod
    def from_config(cls, value, moe_layers: list[int], num_experts: int, top_k: int) -> TraceReplay | None:
        """`EngineConfig.routing_trace` (None, a RoutingTrace, or a path to one saved as .npz)."""
        if value is None:
            return None
        if isinstance(value, str | Path):
            value = RoutingTrace.load(value)
        if not isinstance(value, RoutingTrace):
            raise TypeError(
                f"routing_trace={value!r}: give a lazymoe.engine.parts.trace.RoutingTrace or the "
                "path of one saved with RoutingTrace.save"
            )
        return cls(value, moe_layers, num_experts, top_k)

    def take(self, layer: int, n_tokens: int) -> np.ndarray:
        """The next `n_tokens` tokens' experts for `layer`: (n_tokens, k) int32."""
        start = self.served[layer]
        self.served[layer] += n_tokens
        rows = (start + np.arange(n_tokens)) % self.trace.tokens
        return self.trace.experts[rows, self.row_of[layer]]

    def take_token(self) -> np.ndarray:
        """The next token's experts for every MoE layer at once: (layers, k) int64 (one decode
        step of the device-cache decoder; the same as `take(layer, 1)` layer by layer)."""
        served = np.fromiter(self.served.values(), dtype=np.int64)
        for layer in self.served:
            self.served[layer] += 1
        rows = served % self.trace.tokens
        return self.trace.experts[rows, np.arange(len(rows))].astype(np.int64)

    def ids_like(self, layer: int, top_k_index: torch.Tensor) -> torch.Tensor:
        """The trace's ids in the shape, dtype and device of the router's `top_k_index` (T, k)."""
        ids = torch.from_numpy(self.take(layer, top_k_index.shape[0]))
        return ids.to(device=top_k_index.device, dtype=top_k_index.dtype)

    @property
    def wraps(self) -> int:
        """How many times replay has started again from the trace's first token."""
        most = max(self.served.values())
        return (most - 1) // self.trace.tokens if most else 0

    def reset(self) -> None:
        """Back to the trace's first token in every layer."""
        self.served = dict.fromkeys(self.served, 0)
