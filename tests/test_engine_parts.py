"""The engine's parts: the MoE runtime against the slow reference, sampling, streaming, stats,
prefetch bookkeeping, and a learner's own policy and router plugged into real generation."""

from __future__ import annotations

import pytest
import torch

from lazymoe.engine import Engine, GenerationConfig
from lazymoe.engine.compute.moe import reference_experts
from lazymoe.engine.config import parse_bytes
from lazymoe.engine.parts.policies import LRU
from lazymoe.engine.parts.router import topk_route
from lazymoe.engine.sampler import Sampler
from lazymoe.models.random import make_random_checkpoint

EXPERT_BYTES = 3 * 16 * 32 * 4
PROMPT = list(range(40, 52))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("m") / "qwen3", seed=2)


def test_the_cached_moe_matches_the_slow_reference_even_when_a_layer_needs_more_than_fits(tiny):
    engine = Engine.from_pretrained(tiny, device="cpu", vram_budget=3 * EXPERT_BYTES)
    hidden = torch.randn(6, 32)  # 6 tokens x top-2: up to 8 distinct experts, 3 slots
    weights, index = topk_route(torch.randn(6, 8), 2, True)
    got = engine.runtime.forward(0, hidden, index, weights)
    expected = reference_experts(
        hidden, index, weights, lambda e: engine.store.read(0, e), engine.runtime.act
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_without_prefetch_every_miss_reads_exactly_one_expert(tiny):
    engine = Engine.from_pretrained(tiny, device="cpu", vram_budget=8 * EXPERT_BYTES, prefetch=False)
    engine.generate(PROMPT, GenerationConfig(max_new_tokens=6, stop_token_ids=()))
    stats = engine.stats()
    assert stats.misses > 0 and stats.hits > 0
    assert stats.bytes_moved == stats.misses * EXPERT_BYTES
    assert stats.tiers["ram"]["misses"] == stats.misses
    assert sum(stats.links["disk->ram"]["bytes_per_layer"].values()) == stats.bytes_moved


def test_prefetch_guesses_top_k_for_every_next_layer_of_every_decode_step(tiny):
    engine = Engine.from_pretrained(tiny, device="cpu", vram_budget=5 * EXPERT_BYTES)
    new = engine.generate(PROMPT, GenerationConfig(max_new_tokens=6, stop_token_ids=()))
    p = engine.stats().prefetch
    layers, top_k = len(engine.moe_layers), engine.top_k
    assert p["predicted"] == (len(new) - 1) * (layers - 1) * top_k
    assert 0 <= p["correct"] <= p["predicted"] and p["fetched_used"] <= p["fetched"]
    assert engine.stats().prefetch_accuracy == pytest.approx(p["correct"] / p["predicted"])


def test_reset_stats_starts_counting_again(tiny):
    engine = Engine.from_pretrained(tiny, device="cpu", vram_budget=3 * EXPERT_BYTES)
    engine.generate(PROMPT, GenerationConfig(max_new_tokens=3))
    engine.reset_stats()
    s = engine.stats()
    assert (s.tokens, s.hits, s.misses, s.bytes_moved) == (0, 0, 0, 0)
    assert set(s.as_dict()) >= {"decode_tok_s", "prefill_tok_s", "hit_rate", "vram_in_use_bytes"}


def test_stream_yields_tokens_one_by_one_and_close_stops_it(tiny):
    engine = Engine.from_pretrained(tiny, device="cpu", vram_budget=3 * EXPERT_BYTES)
    gen = GenerationConfig(max_new_tokens=8, stop_token_ids=())
    full = engine.generate(PROMPT, gen)
    engine.reset_stats()
    stream = engine.stream(PROMPT, gen)
    first_three = [next(stream) for _ in range(3)]
    stream.close()
    assert first_three == full[:3]
    assert engine.stats().tokens == 3
    assert engine.generate(PROMPT, gen) == full  # nothing left over from the cancelled stream


def test_stop_tokens_and_stop_strings_end_generation(tiny):
    engine = Engine.from_pretrained(tiny, device="cpu")
    free = engine.generate(PROMPT, GenerationConfig(max_new_tokens=8, stop_token_ids=()))
    by_id = engine.generate(PROMPT, GenerationConfig(max_new_tokens=8, stop_token_ids=(free[2],)))
    assert by_id == free[: free.index(free[2]) + 1]
    text = engine.tokenizer.decode(free[:4])
    by_text = engine.generate(PROMPT, GenerationConfig(max_new_tokens=8, stop_token_ids=(),
                                                       stop_strings=(text[-1],)))  # fmt: skip
    assert text[-1] in engine.tokenizer.decode(by_text) and len(by_text) <= 4


def test_sampling_is_repeatable_with_a_seed_and_narrows_to_greedy():
    logits = torch.randn(50)
    draws = [Sampler(GenerationConfig(temperature=1.0, seed=5), "cpu")(logits) for _ in range(2)]
    assert draws[0] == draws[1]
    greedy = int(logits.argmax())
    assert Sampler(GenerationConfig(), "cpu")(logits) == greedy
    assert Sampler(GenerationConfig(temperature=1.0, top_k=1, seed=1), "cpu")(logits) == greedy
    assert Sampler(GenerationConfig(temperature=1.0, top_p=1e-6, seed=1), "cpu")(logits) == greedy
    seen = {Sampler(GenerationConfig(temperature=2.0, seed=s), "cpu")(logits) for s in range(30)}
    assert len(seen) > 1  # a real draw, not argmax in disguise


def test_a_learners_policy_object_drives_the_real_cache(tiny):
    class CountingLRU(LRU):
        name = "counting-lru"

        def __init__(self):
            super().__init__()
            self.victims = 0

        def victim(self, resident, protected):
            self.victims += 1
            return super().victim(resident, protected)

    policy = CountingLRU()
    engine = Engine.from_pretrained(tiny, device="cpu", vram_budget=3 * EXPERT_BYTES, policy=policy)
    expected = Engine.from_pretrained(tiny, device="cpu").generate(PROMPT, GenerationConfig(max_new_tokens=5, stop_token_ids=()))
    assert engine.generate(PROMPT, GenerationConfig(max_new_tokens=5, stop_token_ids=())) == expected
    assert policy.victims > 0 and engine.stats().tiers["ram"]["policy"] == "counting-lru"


def test_a_learners_router_drives_generation(tiny):
    engine = Engine.from_pretrained(tiny, device="cpu", vram_budget=3 * EXPERT_BYTES)
    gen = GenerationConfig(max_new_tokens=6, stop_token_ids=())
    expected = engine.generate(PROMPT, gen)
    engine.set_router(topk_route)
    assert engine.generate(PROMPT, gen) == expected

    def worst_experts(logits, top_k, norm):
        return topk_route(-logits, top_k, norm)

    engine.set_router(worst_experts)
    assert engine.generate(PROMPT, gen) != expected
    engine.set_router(None)
    assert engine.generate(PROMPT, gen) == expected


def test_parse_bytes_units():
    assert parse_bytes("6GiB") == 6 * 2**30
    assert parse_bytes("512 MiB") == 512 * 2**20
    assert parse_bytes("2GB") == 2 * 10**9
    assert parse_bytes(1024) == 1024 and parse_bytes(None) is None


def test_close_frees_the_engine_and_is_idempotent(tiny):
    with Engine.from_pretrained(tiny, device="cpu", vram_budget=3 * EXPERT_BYTES) as engine:
        engine.generate(PROMPT, GenerationConfig(max_new_tokens=2))
    assert engine.model is None and engine.tiers is None
    engine.close()  # a second close does nothing


def test_a_policy_class_gives_each_tier_a_fresh_instance(tiny):
    engine = Engine.from_pretrained(tiny, device="cpu", vram_budget=3 * EXPERT_BYTES, policy=LRU)
    assert isinstance(engine.tiers.device.book.policy, LRU)
