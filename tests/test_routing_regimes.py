"""The benchmark's routing regimes (lazymoe.bench.routing) and trace replay in the engine."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from lazymoe import paths
from lazymoe.bench import routing
from lazymoe.engine import Engine, EngineConfig, GenerationConfig
from lazymoe.engine.parts.trace import RoutingTrace
from lazymoe.models.random import make_random_checkpoint

SHAPE = {"hidden_size": 64, "moe_intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2,
         "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 16}  # fmt: skip


@pytest.fixture(scope="module")
def reference_trace() -> RoutingTrace:
    """`real-text` at the measured model's shape: 512 experts, top-10 (8,000 tokens, 4 layers)."""
    return routing.make_trace("real-text", tokens=8000, num_layers=4, num_experts=512, top_k=10, seed=0)


def test_real_text_matches_the_measured_lru_hit_rates(reference_trace):
    at_12, at_25 = routing.lru_curve(reference_trace, [0.125, 0.25])
    assert routing.slots_for(0.125, reference_trace) == 64  # the measurement's cache sizes
    assert abs(at_12 - routing.REFERENCE["lru_hit_rate"][0.125]) <= 0.03, at_12
    assert abs(at_25 - routing.REFERENCE["lru_hit_rate"][0.25]) <= 0.03, at_25


def test_real_text_has_little_static_skew(reference_trace):
    coverage = routing.hot_list_coverage(reference_trace, 32)
    assert 0.08 <= coverage <= 0.12, coverage  # measured: about 10%, uniform 6.25%
    uniform = routing.make_trace("independent", 8000, 4, 512, 10, seed=0)
    assert abs(routing.hot_list_coverage(uniform, 32) - 32 / 512) < 0.01


@pytest.mark.parametrize("num_experts, top_k, band_12, band_25", [
    (128, 8, (0.50, 0.62), (0.67, 0.78)),  # Qwen3-30B-A3B: about 56% and 72%
    (64, 8, (0.31, 0.43), (0.59, 0.71)),  # OLMoE-1B-7B: about 37% and 65%
])  # fmt: skip
def test_real_text_scaled_to_coarser_models(num_experts, top_k, band_12, band_25):
    """Lags scale with E/k; a coarse model still hits less at 12.5%, whose cache then holds only
    one or two tokens' experts (RealTextParams says why). Between independent and the reference."""
    trace = routing.make_trace("real-text", 4000, 4, num_experts, top_k, seed=1)
    assert trace.meta["lag_min_tokens"] == pytest.approx((num_experts / top_k) / 51.2)
    at_12, at_25, at_50 = routing.lru_curve(trace, [0.125, 0.25, 0.5])
    assert band_12[0] <= at_12 <= band_12[1] and band_25[0] <= at_25 <= band_25[1], (at_12, at_25)
    assert at_12 < at_25 < at_50
    independent = routing.lru_curve(routing.make_trace("independent", 4000, 4, num_experts, top_k), [0.25])
    assert independent[0] < at_25 - 0.3
    assert 0.06 <= routing.hot_list_coverage(trace, num_experts // 16) <= 0.13


def test_independent_hits_about_the_resident_fraction_and_zipf_more():
    independent = routing.make_trace("independent", 3000, 3, 128, 8, seed=2)
    for fraction, hit in zip([0.25, 0.5], routing.lru_curve(independent, [0.25, 0.5]), strict=True):
        assert abs(hit - fraction) < 0.03, (fraction, hit)
    zipf = routing.make_trace("zipf", 3000, 3, 128, 8, seed=2)
    assert zipf.meta["skew"] == routing.ZIPF_SKEW
    assert routing.lru_curve(zipf, [0.25])[0] > 0.4  # static skew: a small cache holds the hot ones
    assert routing.hot_list_coverage(zipf, 8) > 0.3


@pytest.mark.parametrize("regime", routing.REGIMES)
def test_traces_are_seeded_and_pick_distinct_experts(regime):
    a = routing.make_trace(regime, 300, 3, 32, 4, seed=5)
    assert a.experts.shape == (300, 3, 4) and a.num_experts == 32
    assert (np.sort(a.experts, -1)[..., 1:] != np.sort(a.experts, -1)[..., :-1]).all()
    assert np.array_equal(a.experts, routing.make_trace(regime, 300, 3, 32, 4, seed=5).experts)
    assert not np.array_equal(a.experts, routing.make_trace(regime, 300, 3, 32, 4, seed=6).experts)


def test_unknown_regime_and_bad_shapes_say_what_to_do():
    with pytest.raises(ValueError, match="independent, real-text, zipf"):
        routing.make_trace("uniform", 10, 1, 8, 2)
    with pytest.raises(ValueError, match="top_k=9"):
        routing.make_trace("independent", 10, 1, 8, 9)


# -- replay in the engine --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("replay") / "m", seed=3, **SHAPE)


def expected_counts(trace: RoutingTrace, n_tokens: int) -> Counter:
    """(layer, expert) -> token rows, for the first n_tokens tokens of the trace."""
    out: Counter = Counter()
    for t in range(n_tokens):
        for j, layer in enumerate(trace.layer_ids):
            out.update({(layer, int(e)): 1 for e in trace.experts[t, j]})
    return out


@pytest.mark.parametrize("decode", ["model", "segments"])
def test_replay_computes_exactly_the_traces_experts(checkpoint, tmp_path, decode):
    trace = routing.make_trace("independent", 64, 3, 8, 2, seed=9)
    path = trace.save(tmp_path / "trace.npz")
    engine = Engine(EngineConfig(checkpoint, device="cpu", vram_budget=4 * 3 * 64 * 32 * 4,
                                 placement="fetch", decode=decode, routing_trace=path))
    engine.runtime.computed_experts = Counter()
    prompt, gen = list(range(5, 17)), GenerationConfig(max_new_tokens=6, stop_token_ids=())
    engine.generate(prompt, gen)
    fed = len(prompt) + gen.max_new_tokens - 1  # the last new token is never fed back
    assert engine.runtime.computed_experts == expected_counts(trace, fed)
    stats = engine.stats()
    assert stats.hits + stats.misses == sum(  # one lookup per distinct expert of a layer's call
        len(set(trace.experts[: len(prompt), j].ravel().tolist())) for j in range(3)
    ) + 3 * 2 * (fed - len(prompt))  # decode: 3 layers x top-2 per token
    # the model's own routing computes other experts: replay did change what ran
    own = Engine(EngineConfig(checkpoint, device="cpu", vram_budget=4 * 3 * 64 * 32 * 4, decode=decode))
    own.runtime.computed_experts = Counter()
    own.generate(prompt, gen)
    assert own.runtime.computed_experts != engine.runtime.computed_experts


def test_replay_continues_across_generations_and_wraps(checkpoint):
    trace = routing.make_trace("real-text", 10, 3, 8, 2, seed=4)
    engine = Engine(EngineConfig(checkpoint, device="cpu", routing_trace=trace))
    engine.runtime.computed_experts = Counter()
    engine.generate([3, 4, 5, 6], GenerationConfig(max_new_tokens=3, stop_token_ids=()))  # 6 tokens
    engine.generate([7, 8, 9], GenerationConfig(max_new_tokens=3, stop_token_ids=()))  # 5 more
    expected = expected_counts(trace, 10) + expected_counts(trace, 1)  # the 11th is the first again
    assert engine.runtime.computed_experts == expected
    assert engine.runtime.replay.wraps == 1


def test_a_trace_of_another_shape_is_refused(checkpoint):
    trace = routing.make_trace("independent", 10, 2, 16, 2)
    with pytest.raises(ValueError, match="2 MoE layers in the trace, 3 in the model; 16 experts"):
        Engine(EngineConfig(checkpoint, device="cpu", routing_trace=trace))
    with pytest.raises(TypeError, match="RoutingTrace"):
        Engine(EngineConfig(checkpoint, device="cpu", routing_trace=[[1, 2]]))


@pytest.mark.skipif(not (paths.bundled_model_dir() / "config.json").is_file(),
                    reason="the bundled model is not built (python -m lazymoe.models.prepare)")
def test_the_bundled_models_own_routing_lies_between_independent_and_the_generator():
    """The independent reference: a trained model's routing of text it never saw, 1,024 tokens."""
    ref = routing.bundled_reference(max_tokens=1024)
    assert ref["slots"] == [2, 4, 8] and ref["tokens"] == 1024
    for own, independent, generated in zip(ref["model"], ref["independent"], ref["real-text"], strict=True):
        assert independent < own < generated, ref
