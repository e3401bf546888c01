"""Routing traces: which experts each token chose in each layer, recorded once, replayed many times.

A cache's hit rate depends only on the sequence of (layer, expert) accesses, so a policy can be
judged without running the model: record the routing of a text once (`record_trace`), save it
(.npz), and replay it through a `CacheBook` of any size and policy (`simulate`). The engine asks
for the experts in the same order: token by token, layer by layer, the top-k of each layer.

    trace = record_trace(bundled_model_dir(), text)          # (T tokens, L layers, k experts)
    simulate(trace, n_slots=16, policy="lru").hit_rate
    simulate(trace, n_slots=16, policy="opt").hit_rate       # Belady's optimum: knows the future
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lazymoe.engine.parts.cache import CacheBook, TierStats
from lazymoe.engine.parts.policies import EvictionPolicy, ExpertKey, PolicyLike, make_policy


@dataclass
class RoutingTrace:
    """experts[t, j, :] = the top-k expert ids token t chose in MoE layer layer_ids[j].

    experts: (T, L, k) integers; weights: (T, L, k) float32 routing weights (or None);
    token_ids: (T,) the tokens that were routed (or None).
    """

    experts: np.ndarray
    num_experts: int
    layer_ids: tuple[int, ...] = ()
    weights: np.ndarray | None = None
    token_ids: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.experts = np.asarray(self.experts, dtype=np.int32)
        if self.experts.ndim != 3:
            raise ValueError(
                f"experts must be (tokens, layers, top_k), got shape {self.experts.shape}"
            )
        if not self.layer_ids:
            self.layer_ids = tuple(range(self.experts.shape[1]))
        self.layer_ids = tuple(int(i) for i in self.layer_ids)
        if len(self.layer_ids) != self.experts.shape[1]:
            raise ValueError(
                f"{len(self.layer_ids)} layer ids for {self.experts.shape[1]} layers of experts"
            )
        if (
            self.experts.size
            and not 0 <= self.experts.min() <= self.experts.max() < self.num_experts
        ):
            raise ValueError(f"expert ids must lie in 0..{self.num_experts - 1}")
        if self.weights is not None and np.shape(self.weights) != self.experts.shape:
            raise ValueError(
                f"weights shape {np.shape(self.weights)} != experts {self.experts.shape}"
            )

    @property
    def tokens(self) -> int:
        return self.experts.shape[0]

    @property
    def num_layers(self) -> int:
        """MoE layers in the trace (dense layers route nothing and are left out)."""
        return self.experts.shape[1]

    @property
    def top_k(self) -> int:
        return self.experts.shape[2]

    def steps(self) -> Iterator[tuple[int, tuple[ExpertKey, ...]]]:
        """(token, keys of one layer's top-k) in execution order: token-major, then layer."""
        for t in range(self.tokens):
            for j, layer in enumerate(self.layer_ids):
                yield t, tuple((layer, int(e)) for e in self.experts[t, j])

    def iter_accesses(self) -> Iterator[ExpertKey]:
        """Every (layer, expert) access in execution order."""
        for _, keys in self.steps():
            yield from keys

    def counts(self) -> np.ndarray:
        """(L, E) how often each expert was chosen: the picture of expert specialization."""
        out = np.zeros((self.num_layers, self.num_experts), dtype=np.int64)
        for j in range(self.num_layers):
            out[j] = np.bincount(self.experts[:, j].ravel(), minlength=self.num_experts)
        return out

    def __getitem__(self, tokens: slice) -> RoutingTrace:
        """A trace of a slice of the tokens (e.g. trace[:256])."""
        return RoutingTrace(
            self.experts[tokens], self.num_experts, self.layer_ids,
            None if self.weights is None else self.weights[tokens],
            None if self.token_ids is None else self.token_ids[tokens], dict(self.meta),
        )  # fmt: skip

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        arrays = {"experts": self.experts, "layer_ids": np.asarray(self.layer_ids, np.int32)}
        if self.weights is not None:
            arrays["weights"] = np.asarray(self.weights, np.float32)
        if self.token_ids is not None:
            arrays["token_ids"] = np.asarray(self.token_ids, np.int64)
        meta = json.dumps(
            {**self.meta, "num_experts": self.num_experts, "format": "lazymoe-trace-1"}
        )
        np.savez_compressed(path, meta=np.array(meta), **arrays)
        return path if path.suffix == ".npz" else path.with_suffix(path.suffix + ".npz")

    @classmethod
    def load(cls, path: str | Path) -> RoutingTrace:
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                return cls(
                    experts=data["experts"], num_experts=meta.pop("num_experts"),
                    layer_ids=tuple(data["layer_ids"].tolist()),
                    weights=data.get("weights"),
                    token_ids=data.get("token_ids"),
                    meta={k: v for k, v in meta.items() if k != "format"},
                )  # fmt: skip
        except (KeyError, ValueError, OSError) as err:
            raise ValueError(
                f"{path} is not a routing trace saved by RoutingTrace.save ({err})"
            ) from err

    def __repr__(self) -> str:
        return (
            f"RoutingTrace(tokens={self.tokens}, layers={self.num_layers}, "
            f"experts={self.num_experts}, top_k={self.top_k})"
        )


def synthetic_trace(
    tokens: int, num_layers: int, num_experts: int, top_k: int, skew: float = 1.2, seed: int = 0
) -> RoutingTrace:
    """A trace with Zipf-like popularity: in each layer the r-th most popular expert is chosen with
    weight 1 / r**skew (a different ranking per layer). skew=0 is independent uniform routing: the
    worst case for a cache (a random-weight model's own routers are NOT this: they reuse experts
    far more than real text). Use it where no model is at hand (tests); for benchmarks, the
    regimes of `lazymoe.bench.routing` (independent, real-text calibrated to a measurement of
    real routing, zipf); say that a trace is synthetic when you report numbers measured with it."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, num_experts + 1) ** skew
    experts = np.empty((tokens, num_layers, top_k), dtype=np.int32)
    for j in range(num_layers):
        p = rng.permutation(popularity)
        p /= p.sum()
        for t in range(tokens):
            experts[t, j] = rng.choice(num_experts, size=top_k, replace=False, p=p)
    return RoutingTrace(experts, num_experts, meta={"synthetic": True, "skew": skew, "seed": seed})


class Belady(EvictionPolicy):
    """Belady's OPT: evict the resident key whose next use lies farthest in the future.

    No real cache can know the future; this one reads it from the trace, which makes it the upper
    bound on any policy's hit rate for a given cache size. It follows the trace by counting the
    hits and inserts it is told about (one per access), so use it only through `simulate`.
    """

    name = "opt"

    def __init__(self, accesses: Sequence[ExpertKey]) -> None:
        self._next_use = _next_uses(
            accesses
        )  # next_use[i]: index of the next access to the same key
        self._pos = 0
        self._next_of: dict[ExpertKey, int] = {}

    def _advance(self, key: ExpertKey) -> None:
        self._next_of[key] = self._next_use[self._pos]
        self._pos += 1

    on_hit = _advance
    on_insert = _advance

    def on_evict(self, key: ExpertKey) -> None:
        self._next_of.pop(key, None)

    def victim(self, resident: list[ExpertKey], protected: frozenset[ExpertKey]) -> ExpertKey:
        return max((k for k in resident if k not in protected), key=self._next_of.__getitem__)


def _next_uses(accesses: Sequence[ExpertKey]) -> list[int]:
    never = len(accesses)  # "never used again" sorts after every real position
    out, seen = [never] * len(accesses), {}
    for i in range(len(accesses) - 1, -1, -1):
        out[i] = seen.get(accesses[i], never)
        seen[accesses[i]] = i
    return out


def simulate(trace: RoutingTrace, n_slots: int, policy: PolicyLike | str = "lru") -> TierStats:
    """Replay `trace` through one tier of `n_slots` experts; returns its hit/miss counts.

    Each layer's top-k experts are needed together, so while they are fetched they are protected
    from eviction: the tier needs n_slots >= top_k. policy "opt" is Belady's optimum.
        hit_rate = hits / (tokens * layers * top_k)
    """
    if n_slots < trace.top_k:
        raise ValueError(
            f"n_slots={n_slots} cannot hold one layer's top_k={trace.top_k} experts: use n_slots >= {trace.top_k}"
        )
    if isinstance(policy, str) and policy.lower() in ("opt", "belady"):
        policy = Belady(list(trace.iter_accesses()))
    book = CacheBook(n_slots, make_policy(policy), tier="sim")
    for _, keys in trace.steps():
        needed = frozenset(keys)
        for key in keys:
            if book.lookup(key) is None:
                book.admit(key, protected=needed)
    return book.stats


def hit_rate_curve(
    trace: RoutingTrace,
    sizes: Sequence[int],
    policies: Sequence[PolicyLike] = ("lru", "lfu", "fifo", "opt"),
) -> dict[str, list[float]]:
    """Hit rate per policy (a name, or a class/factory giving a fresh policy) for each cache size."""
    from lazymoe.engine.parts.policies import policy_name

    curves: dict[str, list[float]] = {}
    for policy in policies:
        if isinstance(policy, EvictionPolicy):
            raise TypeError(
                "hit_rate_curve needs a fresh policy per size: pass the class (MyPolicy), not MyPolicy()"
            )
        curves[policy_name(policy)] = [simulate(trace, n, policy).hit_rate for n in sizes]
    return curves


def record_trace(
    model_or_dir, text_or_ids: str | Sequence[int], tokenizer=None, max_tokens: int | None = None,
    chunk_tokens: int = 256,
) -> RoutingTrace:  # fmt: skip
    """Run the full transformers model over a text and record every MoE layer's router choice.

    Hooks each router module (`model.layers.N.mlp.gate`, or another MoE block name of
    `lazymoe.models.archs`, such as Mixtral's `block_sparse_moe.gate`), which in
    transformers 5 returns (router_logits, top-k weights, top-k indices). The text is fed in chunks
    of `chunk_tokens` with the KV cache, so routing is what token-by-token generation would see;
    it stops at `max_tokens` or the model's context length. No lazymoe engine is involved.
    """
    import re

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lazymoe.models.archs import moe_block_pattern

    source = None
    if isinstance(model_or_dir, str | Path):
        source = Path(model_or_dir)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
        if tokenizer is None and isinstance(text_or_ids, str):
            tokenizer = AutoTokenizer.from_pretrained(source)
    else:
        model = model_or_dir
    if isinstance(text_or_ids, str):
        if tokenizer is None:
            raise ValueError("record_trace got a text and a model object: pass tokenizer=... too")
        ids = tokenizer(text_or_ids)["input_ids"]
    else:
        ids = [int(i) for i in text_or_ids]
    limit = min(
        x for x in (max_tokens, getattr(model.config, "max_position_embeddings", None)) if x
    )
    meta = {"model": str(source) if source else type(model).__name__}
    if len(ids) > limit:
        meta["truncated_from_tokens"] = len(ids)
        ids = ids[:limit]
    if not ids:
        raise ValueError("record_trace got no tokens to route")

    routers = {}
    for name, module in model.named_modules():
        m = re.search(rf"layers\.(\d+)\.(?:{moe_block_pattern()})\.gate$", name)
        if m:
            routers[int(m.group(1))] = module
    if not routers:
        raise ValueError(
            f"{type(model).__name__} has no router modules named layers.N.mlp.gate: is it an MoE model?"
        )
    picked: dict[int, list] = {layer: [] for layer in routers}

    def hook_for(layer: int):
        def hook(module, args, output):
            _, weights, indices = output  # (T, k), (T, k)
            picked[layer].append((indices.detach().cpu(), weights.detach().float().cpu()))

        return hook

    handles = [module.register_forward_hook(hook_for(layer)) for layer, module in routers.items()]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            cache = None
            for start in range(0, len(ids), chunk_tokens):
                chunk = torch.tensor([ids[start : start + chunk_tokens]], device=device)
                cache = model(input_ids=chunk, cache=cache, use_cache=True).cache
    finally:
        for handle in handles:
            handle.remove()
    layer_ids = sorted(routers)
    experts = torch.stack([torch.cat([i for i, _ in picked[layer]]) for layer in layer_ids], dim=1)
    weights = torch.stack([torch.cat([w for _, w in picked[layer]]) for layer in layer_ids], dim=1)
    num_experts = getattr(model.config, "num_experts", None) or model.config.num_local_experts
    return RoutingTrace(
        experts.numpy(), int(num_experts), tuple(layer_ids), weights.numpy(),
        np.asarray(ids, np.int64), meta,
    )  # fmt: skip
