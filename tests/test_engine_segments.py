"""The segmented decoder (lazymoe.engine.compute.graphs) gives transformers' tokens, and the same cache.

On a CPU it runs as decode="segments": the engine's own layer loop cut at the routers, a fixed
KV buffer with a mask, the slots chosen on the host and read from a device index: everything a
CUDA graph replays, without the capture (tests/gpu checks the captured graphs).
"""

from __future__ import annotations

import pytest

from lazymoe.engine import Engine, GenerationConfig
from lazymoe.engine.reference import full_model, reference_greedy
from lazymoe.models.random import make_random_checkpoint
from lazymoe.paths import bundled_model_dir

PROMPT = list(range(40, 60))
NEW_TOKENS = 12
GREEDY = GenerationConfig(max_new_tokens=NEW_TOKENS, stop_token_ids=())
EXPERT_BYTES = 3 * 16 * 32 * 4  # the random checkpoint: 3 * I * D * 4 bytes (F32)


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    path = make_random_checkpoint(tmp_path_factory.mktemp("seg") / "m", arch="qwen3_moe", seed=7)
    return path, reference_greedy(full_model(path), PROMPT, NEW_TOKENS)


@pytest.mark.parametrize("n_slots", [2, 5, None])  # 2 = one layer's top-k; None = all resident
@pytest.mark.parametrize("prefetch", [False, True])
def test_segments_give_the_full_models_tokens(qwen3, n_slots, prefetch):
    path, expected = qwen3
    budget = None if n_slots is None else n_slots * EXPERT_BYTES
    engine = Engine.from_pretrained(
        path, device="cpu", vram_budget=budget, prefetch=prefetch, decode="segments"
    )
    assert engine.decode_path == "segments"
    assert engine.generate(PROMPT, GREEDY) == expected
    assert engine.stats().tokens == NEW_TOKENS


@pytest.mark.parametrize("arch", ["olmoe", "mixtral"])
@pytest.mark.parametrize("n_slots", [2, None])
def test_segments_run_olmoe_and_mixtral_too(tmp_path, arch, n_slots):
    """Same layer form (norm, attention, norm, routed experts): OLMoE's q/k norms over the
    whole projection, Mixtral's renormalized top-2; both give the full model's tokens."""
    path = make_random_checkpoint(tmp_path / arch, arch=arch, seed=3)
    expected = reference_greedy(full_model(path), PROMPT, NEW_TOKENS)
    budget = None if n_slots is None else n_slots * EXPERT_BYTES
    engine = Engine.from_pretrained(path, device="cpu", vram_budget=budget, decode="segments")
    assert engine.generate(PROMPT, GREEDY) == expected


def test_segments_keep_the_same_cache_book_as_the_model_path(qwen3):
    """Same lookups, fetches and prefetches in the same order: identical counters."""
    path, _ = qwen3
    stats = {}
    for decode in ("model", "segments"):
        engine = Engine.from_pretrained(path, device="cpu", vram_budget=3 * EXPERT_BYTES, decode=decode)
        engine.generate(PROMPT, GREEDY)
        s = engine.stats()
        stats[decode] = (s.hits, s.misses, s.bytes_moved, s.prefetch_accuracy)
    assert stats["segments"] == stats["model"]
    assert stats["model"][1] > 0  # the comparison covered misses


def test_the_bundled_model_past_the_first_buffer_size():
    """A prompt near 256 positions: the decoder grows its KV buffers and still matches."""
    path = bundled_model_dir()
    text = "import os\nimport sys\n\n\ndef main(argv):\n    return argv\n" * 40
    results = {}
    for decode in ("model", "segments"):
        engine = Engine.from_pretrained(path, device="cpu", decode=decode)
        prompt = engine.tokenizer.encode(text)[:250]
        assert len(prompt) == 250
        gen = GenerationConfig(max_new_tokens=20, stop_token_ids=())
        results[decode] = engine.generate(prompt, gen)
        if decode == "segments":
            assert engine._decoder.max_len == 512  # 250 + 20 did not fit 256
            short = engine.generate(prompt[:10], GenerationConfig(max_new_tokens=5))
            assert engine._decoder.max_len == 512  # reused, not rebuilt smaller
            assert len(short) >= 1
    assert results["segments"] == results["model"]


def test_auto_is_the_model_path_on_a_cpu(qwen3):
    engine = Engine.from_pretrained(qwen3[0], device="cpu")
    assert engine.decode_path == "model"
    assert "decode model" in engine.describe()


def test_graphs_on_a_cpu_say_what_to_use(qwen3):
    with pytest.raises(ValueError, match="needs a CUDA device: use 'segments' or 'model'"):
        Engine.from_pretrained(qwen3[0], device="cpu", decode="graphs")


def test_an_unknown_decode_path_lists_the_choices(qwen3):
    with pytest.raises(ValueError, match="choose one of auto, model, segments, graphs"):
        Engine.from_pretrained(qwen3[0], device="cpu", decode="fast")


@pytest.mark.parametrize(
    ("arch", "kwargs", "reason"),
    [
        ("qwen2_moe", {}, "model type 'qwen2_moe'"),
        ("qwen3_moe", {"placement": "cpu", "vram_budget": 2 * EXPERT_BYTES}, "placement='cpu'"),
    ],
)
def test_segments_refuse_what_they_cannot_run_and_say_why(tmp_path, arch, kwargs, reason):
    path = make_random_checkpoint(tmp_path / arch, arch=arch, seed=3)
    with pytest.raises(ValueError, match=reason):
        Engine.from_pretrained(path, device="cpu", decode="segments", **kwargs)
    assert Engine.from_pretrained(path, device="cpu", **kwargs).decode_path == "model"


def test_a_learner_router_drops_the_segmented_decoder(qwen3):
    path, expected = qwen3
    engine = Engine.from_pretrained(path, device="cpu", decode="segments")
    assert engine.generate(PROMPT, GREEDY) == expected and engine._decoder is not None

    def softmax_top_k(logits, top_k, norm):
        import torch

        weights, ids = torch.topk(torch.softmax(logits.float(), -1), top_k)
        return (weights / weights.sum(-1, keepdim=True) if norm else weights), ids

    with pytest.raises(ValueError, match="learner router"):
        engine.set_router(softmax_top_k)
    engine.set_router(None)
    assert engine.decode_path == "segments"
    assert engine.generate(PROMPT, GREEDY) == expected


def test_one_new_token_makes_no_decoder(qwen3):
    path, expected = qwen3
    engine = Engine.from_pretrained(path, device="cpu", decode="segments")
    assert engine.generate(PROMPT, GenerationConfig(max_new_tokens=1, stop_token_ids=())) == expected[:1]
    assert engine._decoder is None



def test_pin_checkpoint_is_ignored_on_a_cpu(qwen3):
    path, expected = qwen3
    engine = Engine.from_pretrained(path, device="cpu", vram_budget=2 * EXPERT_BYTES, pin_checkpoint=True)
    assert engine.pinned_bytes == 0 and not engine.tiers.direct
    assert engine.generate(PROMPT, GREEDY) == expected
