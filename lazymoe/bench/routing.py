"""Routing regimes: which experts the benchmark's tokens ask for, since a random model cannot say.

A model with random weights routes with far more reuse than real text (its routers pick nearly
the same experts token after token), so a cache looks better on it than it will be. The benchmark
therefore replays a routing trace (`EngineConfig.routing_trace`) made by one of these regimes,
each a (tokens, MoE layers, top-k) array of expert ids, seeded:

- ``independent``: every token draws its top-k experts in every layer independently and
  uniformly. The worst case for any cache: the hit rate is about the resident fraction.
- ``real-text``: temporal locality calibrated to the public measurement of real routing in
  llama.cpp pull request #27861 ("per-layer expert cache", a 512-expert, 10-routed
  Qwen3-Next-class model over a 54k-token mix of code, math, prose and multilingual text): a
  per-layer LRU cache of 12.5% of the experts hits about 67%, of 25% about 81%, and a hot list of
  the top 32 experts learned on one half of the text covers only about 10% of the other half's
  accesses (6.2% for uniform): strong locality in time, little static skew. See `RealTextParams`.
- ``zipf``: static skew (the r-th most popular expert of a layer is chosen with weight 1/r**skew),
  the teaching case of module 06. Real routing has little of it (the hot-list figure above).

``model-own`` (not a regime here) means no trace: the model's own routers decide. For a
random-weight benchmark model that is the over-optimistic case above; never call it uniform.

    trace = make_trace("real-text", tokens=4096, num_layers=48, num_experts=128, top_k=8, seed=0)
    lru_curve(trace, [0.125, 0.25])         # per-layer LRU hit rate at those resident fractions
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from lazymoe.engine.parts.trace import RoutingTrace

REGIMES = ("independent", "real-text", "zipf")
MODEL_OWN = "model-own"  # no trace: the model's own routers (random weights: far too much reuse)
SOURCE = ('llama.cpp pull request #27861 ("per-layer expert cache"): Qwen3-Next-class model, '
          "512 experts, 10 routed, 54k tokens of code, math, prose and multilingual text")
# What that measurement found, and what `real-text` is fitted to (fractions of the experts of a layer)
REFERENCE = {
    "source": SOURCE,
    "num_experts": 512,
    "top_k": 10,
    "lru_hit_rate": {0.125: 0.67, 0.25: 0.81},  # per-layer LRU of 64 and of 128 experts
    "hot_list": {"size": 32, "coverage": 0.10, "uniform": 32 / 512},
}
ZIPF_SKEW = 1.0


@dataclass(frozen=True)
class RealTextParams:
    """The temporal-locality model behind ``real-text``, per layer and token, for each of the k picks:

    - with probability `reuse`, copy an expert that this layer used `lag` tokens ago (one of that
      token's k, at random), where lag = ceil(lag_min_tokens * X) and X is Pareto with tail
      exponent `lag_alpha` - 1 (P(X > x) = x**-(lag_alpha - 1), x >= 1): mostly the last few
      tokens, sometimes far back;
    - otherwise (or if that expert is already picked, or the lag reaches before the first token)
      draw a fresh expert from the layer's static popularity, weight 1/rank**skew (ranks shuffled
      per layer): the small static skew the hot-list figure shows.

    Fitted (by a grid search over reuse, lag_alpha and skew) to the measurement above at its shape,
    512 experts, top-10, with lag_min_tokens = 1: 8,000 tokens x 4 layers give a per-layer LRU hit
    rate of 67.6% at 12.5% resident, 79.9% at 25%, and a top-32 hot list covering 10.2%.

    Scaling to another model (`scaled`): lag_min_tokens grows with E/k, the tokens it takes to
    touch a given fraction of a layer's experts, so the LRU curve keeps its shape in resident
    fraction: lag_min_tokens = (E / k) / (512 / 10). A coarse model (few experts, each a large
    share of a layer) still hits less at a small fraction, because its cache then holds only a
    token or two of experts: Qwen3-30B-A3B (128 experts, top-8) gets about 56% at 12.5% and 72% at
    25%; OLMoE (64, top-8) about 37% and 65% (tests/test_routing_regimes.py checks these bands).
    """

    reuse: float = 0.97
    lag_alpha: float = 1.40
    lag_min_tokens: float = 1.0
    skew: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 <= self.reuse <= 1.0:
            raise ValueError(f"reuse={self.reuse}: give a probability in [0, 1]")
        if self.lag_alpha <= 1.0:
            raise ValueError(f"lag_alpha={self.lag_alpha}: give more than 1 (a Pareto tail)")
        if self.lag_min_tokens <= 0 or self.skew < 0:
            raise ValueError("lag_min_tokens must be > 0 and skew >= 0")

    @classmethod
    def scaled(cls, num_experts: int, top_k: int, **overrides: float) -> RealTextParams:
        """The fitted parameters for a model of `num_experts` experts and `top_k` routed."""
        ratio = (num_experts / top_k) / (REFERENCE["num_experts"] / REFERENCE["top_k"])
        return cls(**{"lag_min_tokens": cls.lag_min_tokens * ratio, **overrides})


def _check(tokens: int, num_layers: int, num_experts: int, top_k: int) -> None:
    if tokens < 1 or num_layers < 1:
        raise ValueError(f"tokens={tokens}, num_layers={num_layers}: give at least 1 of each")
    if not 0 < top_k <= num_experts:
        raise ValueError(f"top_k={top_k} must be in 1..num_experts={num_experts}")


def _popularity(rng: np.random.Generator, num_layers: int, num_experts: int, skew: float) -> np.ndarray:
    """(L, E) weights 1/rank**skew, ranks shuffled per layer, each row summing to 1."""
    base = 1.0 / np.arange(1, num_experts + 1, dtype=np.float64) ** skew
    weights = np.stack([rng.permutation(base) for _ in range(num_layers)])
    return weights / weights.sum(axis=1, keepdims=True)


def _sample_without_replacement(rng, log_weights: np.ndarray, tokens: int, top_k: int) -> np.ndarray:
    """(T, L, k) draws of k distinct experts per (token, layer) with probabilities exp(log_weights)
    (L, E): the top k of log-weight + Gumbel noise (the Gumbel-top-k trick), in chunks of tokens."""
    num_layers, num_experts = log_weights.shape
    out = np.empty((tokens, num_layers, top_k), dtype=np.int32)
    chunk = max(1, (1 << 22) // (num_layers * num_experts))  # ~32 MB of float64 noise at a time
    for start in range(0, tokens, chunk):
        n = min(chunk, tokens - start)
        keys = log_weights + rng.gumbel(size=(n, num_layers, num_experts))
        top = np.argpartition(-keys, top_k - 1, axis=-1)[..., :top_k]
        order = np.argsort(-np.take_along_axis(keys, top, -1), axis=-1)  # most likely first
        out[start : start + n] = np.take_along_axis(top, order, -1)
    return out


def independent_trace(tokens: int, num_layers: int, num_experts: int, top_k: int, seed: int = 0) -> RoutingTrace:
    """Every token's k experts per layer drawn uniformly and independently (distinct within a token)."""
    _check(tokens, num_layers, num_experts, top_k)
    rng = np.random.default_rng(seed)
    experts = _sample_without_replacement(rng, np.zeros((num_layers, num_experts)), tokens, top_k)
    return RoutingTrace(experts, num_experts, meta={"regime": "independent", "seed": seed})


def zipf_trace(tokens: int, num_layers: int, num_experts: int, top_k: int, skew: float = ZIPF_SKEW,
               seed: int = 0) -> RoutingTrace:
    """Static skew: in each layer the r-th most popular expert has weight 1/r**skew (ranks shuffled
    per layer), every token drawn independently from it. The teaching case: a frequency-based
    cache thrives on it, and real routing has little of it (see the module docstring)."""
    _check(tokens, num_layers, num_experts, top_k)
    rng = np.random.default_rng(seed)
    log_weights = np.log(_popularity(rng, num_layers, num_experts, skew))
    experts = _sample_without_replacement(rng, log_weights, tokens, top_k)
    return RoutingTrace(experts, num_experts, meta={"regime": "zipf", "skew": skew, "seed": seed})


def real_text_trace(tokens: int, num_layers: int, num_experts: int, top_k: int,
                    params: RealTextParams | None = None, seed: int = 0) -> RoutingTrace:
    """Routing with real text's temporal locality (`RealTextParams`; None: scaled to this shape)."""
    _check(tokens, num_layers, num_experts, top_k)
    params = params or RealTextParams.scaled(num_experts, top_k)
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(_popularity(rng, num_layers, num_experts, params.skew), axis=1)
    cdf[:, -1] = 1.0
    # every layer's CDF shifted by its index, so one searchsorted samples all layers at once
    flat_cdf = (cdf + np.arange(num_layers)[:, None]).ravel()
    layers = np.arange(num_layers)

    def fresh(n_picks: int) -> np.ndarray:
        """(L, n_picks) draws from each layer's popularity."""
        rows = np.repeat(layers, n_picks)
        u = rng.random(rows.size) + rows
        drawn = np.searchsorted(flat_cdf, u, side="right") - rows * num_experts
        return np.minimum(drawn, num_experts - 1).reshape(num_layers, n_picks)

    experts = np.empty((tokens, num_layers, top_k), dtype=np.int32)
    tail = -1.0 / (params.lag_alpha - 1.0)
    earlier = np.tril(np.ones((top_k, top_k), dtype=bool), -1)  # [i, j]: pick j comes before i
    for t in range(tokens):
        pick = fresh(top_k)  # (L, k)
        lag = np.ceil(params.lag_min_tokens * rng.random((num_layers, top_k)) ** tail)
        source = t - np.minimum(lag, t + 1).astype(np.int64)  # -1: before the first token
        copy = (rng.random((num_layers, top_k)) < params.reuse) & (source >= 0)
        if copy.any():
            which = rng.integers(0, top_k, (num_layers, top_k))
            copied = experts[np.maximum(source, 0), np.broadcast_to(layers[:, None], copy.shape), which]
            pick = np.where(copy, copied, pick)
        while True:  # an expert picked twice for one token: its later copies are drawn fresh
            taken = ((pick[:, :, None] == pick[:, None, :]) & earlier).any(axis=2)
            if not taken.any():
                break
            pick = np.where(taken, fresh(top_k), pick)
        experts[t] = pick
    return RoutingTrace(experts, num_experts,
                        meta={"regime": "real-text", "seed": seed, **asdict(params), "source": SOURCE})


def regime_params(regime: str, num_experts: int, top_k: int, **overrides: float) -> dict:
    """The parameters a regime runs with for this shape: what a results row records."""
    if regime == "real-text":
        return asdict(RealTextParams.scaled(num_experts, top_k, **overrides))
    if regime == "zipf":
        return {"skew": overrides.get("skew", ZIPF_SKEW)}
    if regime == "independent":
        return {}
    raise ValueError(f"routing regime {regime!r}: choose one of {', '.join(REGIMES)}")


def make_trace(regime: str, tokens: int, num_layers: int, num_experts: int, top_k: int, seed: int = 0,
               **overrides: float) -> RoutingTrace:
    """A trace of `regime` for this shape; `overrides` change its parameters (`regime_params`)."""
    params = regime_params(regime, num_experts, top_k, **overrides)
    if regime == "independent":
        return independent_trace(tokens, num_layers, num_experts, top_k, seed)
    if regime == "zipf":
        return zipf_trace(tokens, num_layers, num_experts, top_k, params["skew"], seed)
    return real_text_trace(tokens, num_layers, num_experts, top_k, RealTextParams(**params), seed)


# -- the statistics the calibration is stated in --------------------------------------------------
def per_layer_lru_hit_rate(trace: RoutingTrace, n_slots: int) -> float:
    """Hit rate of one LRU cache of `n_slots` experts per layer (the measurement's definition):
    every access counts, in execution order, the first (cold) ones included."""
    if n_slots < 1:
        raise ValueError(f"n_slots={n_slots}: give at least 1")
    hits = 0
    for j in range(trace.num_layers):
        cache: OrderedDict[int, None] = OrderedDict()
        for e in trace.experts[:, j].ravel().tolist():  # token-major: token t's k, then t+1's
            if e in cache:
                hits += 1
                cache.move_to_end(e)
            else:
                cache[e] = None
                if len(cache) > n_slots:
                    cache.popitem(last=False)
    return hits / trace.experts.size


def slots_for(fraction: float, trace: RoutingTrace) -> int:
    """Per-layer cache slots for a resident fraction (at least one token's k experts)."""
    return max(trace.top_k, round(fraction * trace.num_experts))


def lru_curve(trace: RoutingTrace, fractions: Sequence[float]) -> list[float]:
    """Per-layer LRU hit rate at each resident fraction of a layer's experts."""
    return [per_layer_lru_hit_rate(trace, slots_for(f, trace)) for f in fractions]


def hot_list_coverage(trace: RoutingTrace, n_hot: int) -> float:
    """Learn each layer's `n_hot` most used experts on the first half of the trace; the share of
    the second half's accesses they cover (static skew; uniform routing gives n_hot / E)."""
    half = trace.tokens // 2
    if half < 1:
        raise ValueError("the trace needs at least 2 tokens to split in halves")
    covered = []
    for j in range(trace.num_layers):
        counts = np.bincount(trace.experts[:half, j].ravel(), minlength=trace.num_experts)
        hot = np.argsort(-counts, kind="stable")[:n_hot]
        covered.append(np.isin(trace.experts[half:, j], hot).mean())
    return float(np.mean(covered))


def bundled_reference(fractions: Sequence[float] = (0.125, 0.25, 0.5), max_tokens: int = 4096,
                      seed: int = 0) -> dict:
    """The bundled tiny model's own routing of held-out Python source (files it was not trained
    on) beside the `real-text` generator at the same shape: two LRU curves over resident fractions.

    An independent reference: a real (small, trained) model on real text, with coarse experts
    (16 per layer, top-2), where each expert is a large share of a layer. Measured on 4,096
    tokens: the model hits about 17%, 36% and 63% with 2, 4 and 8 of 16 slots per layer, above
    independent routing (10%, 22%, 48%) but far below the generator scaled to 16 experts, top-2
    (51%, 71%, 85%): locality differs by model, so results must say which regime they assume.
    Returns {"fractions", "slots", "model": curve, "real-text": curve, "independent": curve,
    "tokens", "text"}.
    """
    from lazymoe.engine.parts.trace import record_trace
    from lazymoe.models.bundled import heldout_ids, load_model, load_tokenizer

    ids = heldout_ids(load_tokenizer(), max_tokens).tolist()
    model = load_model()
    window = int(model.config.max_position_embeddings)  # the model's context: one recording each
    parts = [record_trace(model, ids[i : i + window]) for i in range(0, len(ids), window)]
    recorded = RoutingTrace(np.concatenate([p.experts for p in parts]), parts[0].num_experts,
                            parts[0].layer_ids)
    shape = (recorded.tokens, recorded.num_layers, recorded.num_experts, recorded.top_k)
    generated = make_trace("real-text", *shape, seed=seed)
    independent = make_trace("independent", *shape, seed=seed)
    return {
        "fractions": list(fractions),
        "slots": [slots_for(f, recorded) for f in fractions],
        "model": lru_curve(recorded, fractions),
        "real-text": lru_curve(generated, fractions),
        "independent": lru_curve(independent, fractions),
        "tokens": recorded.tokens,
        "text": "held-out Python standard-library files (lazymoe.models.bundled.heldout_ids), "
                f"recorded in windows of {window} tokens (the model's context)",
    }
