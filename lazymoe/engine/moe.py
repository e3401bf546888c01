"""The MoE experts, run out of the tiered cache; and the slow reference they are tested against.

transformers' MoE block computes `router -> experts(hidden, top_k_index, top_k_weights)`. The
engine replaces `experts` with `OffloadedExperts`, which for one layer:

  1. reads the chosen expert ids (one host sync per layer: we must know what to fetch),
  2. looks each one up in the device tier; a miss is fetched (or computed on the CPU),
  3. during decode, guesses the next layer's experts and starts copying them (prefetch),
  4. computes each expert in ascending id order and adds `weight * expert(x)` into the output,
     exactly the order transformers uses, so greedy tokens match the full model.

Shapes: T tokens, K experts per token, D hidden size, I expert width.
    expert(x) = down @ (act(gate @ x) * (up @ x))        gate, up: (I, D), down: (D, I)
    out[t]    = sum over k of top_k_weights[t, k] * expert_{top_k_index[t, k]}(x[t])
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lazymoe.engine.placement import CostModel
from lazymoe.engine.prefetch import Prefetcher
from lazymoe.engine.store import ExpertWeights
from lazymoe.engine.tiers import TierStack


def expert_fused(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, act) -> torch.Tensor:
    """One expert on rows x (n, D) with fused gate_up (2I, D) and down (D, I): (n, D)."""
    gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
    return F.linear(act(gate) * up, down)


def expert_split(x: torch.Tensor, w: ExpertWeights, act) -> torch.Tensor:
    """One expert with separate gate (I, D), up (I, D), down (D, I): (n, D)."""
    return F.linear(act(F.linear(x, w.gate)) * F.linear(x, w.up), w.down)


def reference_experts(
    hidden: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    read_expert: Callable[[int], ExpertWeights],
    act,
) -> torch.Tensor:
    """The slow, obviously correct MoE: every token, every chosen expert, one at a time.

    hidden (T, D), top_k_index (T, K), top_k_weights (T, K) -> (T, D). `read_expert(e)` gives
    expert e's weights (e.g. `lambda e: store.read(layer, e)`).
    """
    out = torch.zeros_like(hidden)
    for t in range(hidden.shape[0]):
        for k in range(top_k_index.shape[1]):
            w = read_expert(int(top_k_index[t, k]))
            w = ExpertWeights(*(p.to(hidden.dtype) for p in (w.gate, w.up, w.down)))
            out[t] += top_k_weights[t, k] * expert_split(hidden[t : t + 1], w, act)[0]
    return out


class ExpertRuntime:
    """Everything the per-layer modules share: tiers, placement, prefetch, counters."""

    def __init__(
        self,
        tiers: TierStack,
        act,
        placement: str,
        cost_model: CostModel | None,
        prefetcher: Prefetcher | None,
        expert_flops_per_token: int,
    ) -> None:
        self.tiers = tiers
        self.act = act
        self.placement = placement
        self.cost_model = cost_model
        self.prefetcher = prefetcher
        self.expert_flops_per_token = expert_flops_per_token
        self.computed_on: defaultdict[str, int] = defaultdict(int)  # "device"/"cpu" -> experts

    def _compute_where(self, n_tokens: int) -> str:
        """Where a device-tier miss is computed: "device" (fetch it) or "cpu"."""
        if not self.tiers.on_gpu or self.placement == "gpu":
            return "device"
        if self.placement == "cpu":
            return "cpu"
        nbytes = self.tiers.device.pool.slot_nbytes
        choice = self.cost_model.choose(nbytes, n_tokens, self.expert_flops_per_token)
        return "cpu" if choice == "cpu" else "device"

    def forward(
        self, layer: int, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        n_tokens, k = top_k_index.shape
        guess = None
        if self.prefetcher is not None and n_tokens == 1:
            guess = self.prefetcher.predict(layer, hidden)
        if guess is not None:  # one host sync for both: this layer's ids and the guess
            flat = torch.cat([top_k_index.reshape(-1), guess[1].reshape(-1)]).tolist()
            ids, guessed = flat[: n_tokens * k], flat[n_tokens * k :]
        else:
            ids, guessed = top_k_index.reshape(-1).tolist(), []
        rows: dict[int, list[tuple[int, int]]] = defaultdict(list)  # expert -> [(token, k)]
        for i, e in enumerate(ids):
            rows[e].append(divmod(i, k))
        experts = sorted(rows)
        if self.prefetcher is not None:
            self.prefetcher.score(layer, set(experts))

        out = torch.zeros_like(hidden)
        capacity = self.tiers.device.pool.n_slots
        chunks = [experts[i : i + capacity] for i in range(0, len(experts), capacity)]
        host = None  # (hidden, top_k_weights) on the CPU, made once if some expert needs them
        for c, chunk in enumerate(chunks):
            protected = frozenset((layer, e) for e in chunk)
            plan = []
            for e in chunk:
                slot = self.tiers.lookup((layer, e))
                if slot is None and self._compute_where(len(rows[e])) == "device":
                    slot = self.tiers.fetch((layer, e), protected)
                plan.append((e, slot))
            if guess is not None and c == len(chunks) - 1:
                self._prefetch(guess[0], guessed, protected)
            for e, slot in plan:
                if slot is None:
                    if host is None:
                        host = (hidden.to("cpu"), top_k_weights.to("cpu"))
                    self._add_cpu_expert(out, (layer, e), rows[e], host)
                else:
                    w = self.tiers.device_weights(slot)
                    pool = self.tiers.device.pool
                    self._add(out, hidden, top_k_weights, rows[e], pool.gate_up[slot], w.down)
                    self.computed_on["device"] += 1
        return out

    def _add(self, out, hidden, top_k_weights, rows, gate_up, down) -> None:
        """out[t] += top_k_weights[t, k] * expert(hidden[t]) for (t, k) in rows."""
        if len(rows) == 1 and out.shape[0] == 1:  # decode: no index tensors to build
            _, k = rows[0]
            y = expert_fused(hidden, gate_up, down, self.act) * top_k_weights[:, k : k + 1]
            out.add_(y.to(out.dtype))  # round like transformers: to the output dtype, then add
            return
        tok = torch.tensor([t for t, _ in rows], device=hidden.device)
        pos = torch.tensor([k for _, k in rows], device=hidden.device)
        y = expert_fused(hidden[tok], gate_up, down, self.act) * top_k_weights[tok, pos, None]
        out.index_add_(0, tok, y.to(out.dtype))

    def _add_cpu_expert(self, out, key, rows, host) -> None:
        hidden_cpu, weights_cpu = host
        gate_up, w = self.tiers.host_weights(key)
        dtype = hidden_cpu.dtype
        tok = torch.tensor([t for t, _ in rows])
        pos = torch.tensor([k for _, k in rows])
        x = hidden_cpu[tok]
        if gate_up is not None:
            y = expert_fused(x, gate_up.to(dtype), w.down.to(dtype), self.act)
        else:
            y = expert_split(x, ExpertWeights(*(p.to(dtype) for p in (w.gate, w.up, w.down))), self.act)
        y = y * weights_cpu[tok, pos, None]
        out.index_add_(0, tok.to(out.device), y.to(out.device, out.dtype))
        self.computed_on["cpu"] += 1

    def _prefetch(self, layer: int, guessed: list[int], protected: frozenset) -> None:
        wanted = frozenset((layer, e) for e in guessed)
        if self.tiers.device.pool.n_slots < len(protected | wanted):
            self.prefetcher.remember(layer, guessed, [])  # no room: still score the guess
            return
        fetched = []
        for key in sorted(wanted):
            if self.tiers.device.book.slot_of(key) is None:
                self.tiers.fetch(key, protected | wanted)
                fetched.append(key[1])
        self.prefetcher.remember(layer, guessed, fetched)


class OffloadedExperts(torch.nn.Module):
    """Stands in for transformers' experts module of one layer; same call signature."""

    def __init__(self, layer: int, runtime: ExpertRuntime) -> None:
        super().__init__()
        self.layer = layer
        self.__dict__["runtime"] = runtime  # not a submodule: shared by every layer

    def forward(self, hidden_states, top_k_index, top_k_weights):  # (T, D), (T, K), (T, K)
        return self.runtime.forward(self.layer, hidden_states, top_k_index, top_k_weights)

    def extra_repr(self) -> str:
        return f"layer={self.layer}"
