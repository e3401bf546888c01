"""The engine's parts: the MoE runtime against the slow reference, sampling, streaming, stats,
prefetch bookkeeping, and a learner's own policy and router plugged into real generation."""

from __future__ import annotations

import pytest
import torch

from lazymoe.engine import Engine, GenerationConfig
from lazymoe.engine.compute.moe import reference_experts
from lazymoe.engine.config import parse_bytes
from lazymoe.engine.parts.policies import LRU, EvictionPolicy
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


# -- an engine built from four parts written as a learner would (labs 05, 05b, 06, 07 -> lab08) ---
def _learner_route(hidden, gate_weight, top_k):  # lab05: plain torch, no package helper
    probs = torch.softmax(hidden @ gate_weight.T, dim=-1)
    weights, experts = probs.topk(top_k, dim=-1)
    return weights / weights.sum(dim=-1, keepdim=True), experts


def _learner_reader(calls):
    import struct

    import numpy as np

    def read_expert(path, header, layer, expert):  # lab05b: seek + read + np.frombuffer
        calls.append((layer, expert))
        with open(path, "rb") as f:
            data_start = 8 + struct.unpack("<Q", f.read(8))[0]
            out = []
            for role in ("gate", "up", "down"):
                info = header[f"model.layers.{layer}.mlp.experts.{expert}.{role}_proj.weight"]
                start, end = info["data_offsets"]
                f.seek(data_start + start)
                out.append(np.frombuffer(f.read(end - start), dtype=np.float32).reshape(info["shape"]))
        return tuple(out)

    return read_expert


class _LearnerLRU(EvictionPolicy):  # lab06: a list, least recently used first
    name = "learner-lru"

    def __init__(self):
        self.order = []

    def on_hit(self, key):
        self.order.remove(key)
        self.order.append(key)

    def on_insert(self, key):
        self.order.append(key)

    def on_evict(self, key):
        self.order.remove(key)

    def victim(self, resident, protected):
        for key in self.order:
            if key not in protected:
                return key
        return None


def test_an_engine_of_four_learner_parts_writes_the_tokens_of_transformers():
    from lazymoe.engine.reference import full_model, reference_greedy
    from lazymoe.exercises.lab08 import assemble
    from lazymoe.paths import bundled_model_dir

    model_dir, reads, guesses = bundled_model_dir(), [], []

    def my_predict(hidden, router_weight, top_k):  # lab07
        guesses.append(top_k)
        return torch.topk(router_weight @ hidden, top_k).indices

    parts = assemble(_learner_route, _learner_reader(reads), _LearnerLRU, my_predict)
    assert all("yours" in note for note in parts.notes), parts.notes
    reads.clear()  # the checks read and guessed too; count the engine's calls only
    guesses.clear()
    probe = Engine.from_pretrained(model_dir, device="cpu")
    budget = (probe.total_experts // 4) * probe.expert_nbytes  # a quarter of the experts: misses
    engine = parts.engine(model_path=model_dir, device="cpu", vram_budget=budget)
    prompt = engine.tokenizer.encode("def parse_args(argv):\n    ")
    mine = engine.generate(prompt, GenerationConfig(max_new_tokens=16, stop_token_ids=()))
    assert mine == reference_greedy(full_model(model_dir), prompt, 16)
    stats = engine.stats()
    assert stats.misses > 0 and len(reads) >= stats.misses  # every miss went through the reader
    assert stats.prefetch["predicted"] > 0  # every scored guess was my_predict's
    assert len(guesses) * engine.top_k >= stats.prefetch["predicted"]
    assert engine.runtime.tiers.device.book.policy.name == "learner-lru"


def test_a_part_not_written_yet_is_replaced_by_the_packages_with_a_note():
    from lazymoe.exercises.lab08 import assemble

    def empty_predict(hidden, router_weight, top_k):
        return None

    parts = assemble(route=_learner_route, predict=empty_predict)
    assert parts.route is _learner_route and parts.predict is None and parts.read_expert is None
    assert "not written yet" in parts.notes[3] and "package's guess" in parts.notes[3]
    assert "not written yet" in parts.notes[1]


def test_a_reader_that_returns_the_wrong_matrix_is_stopped_with_a_message(tiny):
    def swapped(path, header, layer, expert):
        gate, up, down = _learner_reader([])(path, header, layer, expert)
        return gate, up, down.T  # (I, D) where (D, I) belongs

    engine = Engine.from_pretrained(tiny, device="cpu", vram_budget=3 * EXPERT_BYTES, expert_reader=swapped)
    with pytest.raises(Exception, match="your expert reader gave down"):
        engine.generate(PROMPT, GenerationConfig(max_new_tokens=2))
