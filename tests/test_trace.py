"""Routing traces: recorded from the real router, saved and loaded, replayed through a cache,
with Belady's optimum as the ceiling no policy beats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lazymoe.engine.parts.cache import CacheBook
from lazymoe.engine.parts.trace import (
    Belady,
    RoutingTrace,
    hit_rate_curve,
    record_trace,
    simulate,
    synthetic_trace,
)


def random_trace(tokens=60, layers=3, experts=8, top_k=2, seed=0, skew=1.5) -> RoutingTrace:
    """A trace with Zipf-like expert popularity, like a trained router's."""
    return synthetic_trace(tokens, layers, experts, top_k, skew=skew, seed=seed)


def brute_force_hits(trace: RoutingTrace, n_slots: int) -> int:
    """LRU by the book: a list ordered by last use, no CacheBook involved."""
    order, hits = [], 0
    for _, keys in trace.steps():
        for key in keys:
            if key in order:
                hits += 1
                order.remove(key)
            elif len(order) == n_slots:
                order.remove(next(k for k in order if k not in keys))
            order.append(key)
    return hits


def test_accesses_come_token_by_token_then_layer_by_layer():
    trace = RoutingTrace(np.array([[[1, 2], [3, 0]], [[2, 1], [0, 3]]]), 4, layer_ids=(1, 3))
    assert list(trace.iter_accesses())[:4] == [(1, 1), (1, 2), (3, 3), (3, 0)]
    assert (trace.tokens, trace.num_layers, trace.top_k) == (2, 2, 2)
    assert trace.counts()[0].tolist() == [0, 2, 2, 0]


@pytest.mark.parametrize("n_slots", [2, 5, 11])
def test_simulated_lru_matches_a_brute_force_lru(n_slots):
    trace = random_trace()
    stats = simulate(trace, n_slots, "lru")
    assert stats.hits == brute_force_hits(trace, n_slots)
    assert stats.lookups == trace.tokens * trace.num_layers * trace.top_k


def test_optimal_beats_or_ties_every_policy_and_everything_fits_at_full_size():
    trace = random_trace(seed=1)
    curves = hit_rate_curve(trace, sizes=[2, 4, 8, 24], policies=["lru", "lfu", "fifo", "opt"])
    for name in ("lru", "lfu", "fifo"):
        assert all(o >= p - 1e-12 for o, p in zip(curves["opt"], curves[name], strict=True)), name
    unique = len(set(trace.iter_accesses()))
    full = 1 - unique / (trace.tokens * trace.num_layers * trace.top_k)  # only cold misses left
    assert all(curves[name][-1] == pytest.approx(full) for name in curves)
    assert curves["opt"][1] > curves["fifo"][1]  # the future is worth something on a small cache


def test_belady_evicts_the_key_used_farthest_ahead():
    accesses = [(0, 0), (0, 1), (0, 2), (0, 0), (0, 1)]
    book = CacheBook(2, Belady(accesses))
    for key in accesses[:2]:
        book.lookup(key)
        book.admit(key)
    book.lookup((0, 2))
    assert book.admit((0, 2))[1] == (0, 1)  # (0, 0) comes back sooner


def test_synthetic_skew_makes_a_cache_worth_more_than_uniform_routing():
    skewed, uniform = random_trace(tokens=200, skew=1.5), random_trace(tokens=200, skew=0.0)
    assert (uniform.top_k, uniform.num_layers) == (2, 3) and uniform.meta["synthetic"]
    assert simulate(skewed, 8, "lru").hit_rate > simulate(uniform, 8, "lru").hit_rate + 0.1
    counts = skewed.counts()
    assert (counts.max(axis=1) > 3 * counts.min(axis=1).clip(min=1)).all()  # favourites per layer


def test_simulate_refuses_a_cache_smaller_than_top_k():
    with pytest.raises(ValueError, match="n_slots >= 2"):
        simulate(random_trace(), 1, "lru")


def test_save_and_load_round_trip(tmp_path):
    trace = random_trace()
    trace.weights = np.full(trace.experts.shape, 0.5, np.float32)
    loaded = RoutingTrace.load(trace.save(tmp_path / "t.npz"))
    assert np.array_equal(loaded.experts, trace.experts)
    assert np.array_equal(loaded.weights, trace.weights)
    assert loaded.num_experts == trace.num_experts and loaded.layer_ids == trace.layer_ids


def test_loading_something_else_says_so(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a routing trace"):
        RoutingTrace.load(path)


def test_record_trace_matches_the_routers_own_choice(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "qwen3_moe", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, intermediate_size=48, moe_intermediate_size=16,
        num_experts=8, num_experts_per_tok=2, max_position_embeddings=64,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, 64, (40,)).tolist()
    trace = record_trace(model, ids, chunk_tokens=16)  # chunked through the KV cache
    assert (trace.tokens, trace.num_layers, trace.top_k, trace.num_experts) == (40, 2, 2, 8)
    with torch.no_grad():  # the reference: transformers' own router logits, one forward pass
        logits = model(torch.tensor([ids]), output_router_logits=True).router_logits
    for layer in range(2):
        want = np.sort(logits[layer].topk(2, dim=-1).indices.numpy(), axis=1)
        got = np.sort(trace.experts[:, layer], axis=1)
        assert (want == got).all(axis=1).mean() >= 0.95  # chunking may flip a near-tie or two
    assert np.allclose(trace.weights.sum(-1), 1.0, atol=1e-5) == bool(config.norm_topk_prob)
    assert record_trace(model, ids, max_tokens=10).tokens == 10
