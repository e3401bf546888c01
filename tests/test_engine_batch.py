"""Continuous batching (lazymoe.engine.batch): several requests decode together, each one's tokens
exactly what it gets alone, and each step fetches the union of the batch's experts once."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from lazymoe.engine import Engine, GenerationConfig
from lazymoe.models.random import SUPPORTED_ARCHS, make_random_checkpoint
from lazymoe.paths import bundled_model_dir

MODEL = bundled_model_dir()
needs_bundled = pytest.mark.skipif(
    not (MODEL / "model.safetensors").exists(),
    reason="the bundled model is not built: `python -m lazymoe.models.prepare`",
)
TEXTS = [
    "def read_config(path):\n    with open(path) as f:\n",
    "import numpy as np\n",
    "SELECT name FROM users",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n",
]
MORE_TEXTS = ["for i in range(10):\n", "print('hello')\n", "x = [1, 2, 3]\n", "# read the file\n"]
N_NEW = 24
GREEDY = GenerationConfig(max_new_tokens=N_NEW, stop_token_ids=())
BUNDLED_EXPERT_BYTES = 3 * 128 * 128 * 4  # 3 * I * D * 4 bytes (F32): 192 KiB
RANDOM_PROMPTS = [
    list(range(40, 60)),
    list(range(70, 77)),
    [5, 9, 200, 31, 31, 7, 100, 101, 3, 66, 12],
]
RANDOM_EXPERT_BYTES = 3 * 16 * 32 * 4  # the tiny random checkpoints


def bundled(n_slots: int | None, **fields) -> Engine:
    """The bundled model on the CPU in float32; n_slots experts of 64 cached (None: all)."""
    budget = None if n_slots is None else n_slots * BUNDLED_EXPERT_BYTES
    return Engine.from_pretrained(MODEL, device="cpu", vram_budget=budget, **fields)


def alone(engine: Engine, prompts, gen=GREEDY) -> list[list[int]]:
    return [engine.generate(p, gen) for p in prompts]


def run_together(engine: Engine, prompts, gen=GREEDY) -> list[list[int]]:
    """Every prompt added up front, then steps until none is live."""
    with engine.batch() as batch:
        handles = [batch.add(p, gen)[0] for p in prompts]
        while len(batch):
            batch.step()
        return [batch.tokens(h) for h in handles]


@pytest.fixture(scope="module")
def prompts():
    tokenizer = bundled(None).tokenizer
    return [tokenizer.encode(text) for text in TEXTS]


# -- the same tokens as alone ---------------------------------------------------------------------
@needs_bundled
@pytest.mark.parametrize("n_slots", [3, 12, None])  # 3 of 64: fetches in every layer; None: all
def test_batched_tokens_equal_each_request_alone(prompts, n_slots):
    assert len({len(p) for p in prompts}) == len(prompts)  # different lengths
    engine = bundled(n_slots)
    expected = alone(engine, prompts)
    assert run_together(engine, prompts) == expected


@needs_bundled
@pytest.mark.parametrize("n_slots", [3, None])
def test_requests_join_and_leave_between_steps(prompts, n_slots):
    """Two start, a third joins after 4 steps, the second is removed after 8 steps and a fourth
    joins then: every sequence's tokens are (a prefix of) its tokens alone."""
    engine = bundled(n_slots)
    expected = alone(engine, prompts)
    with engine.batch() as batch:
        first = [batch.add(prompts[0], GREEDY), batch.add(prompts[1], GREEDY)]
        handles = [h for h, _ in first]
        assert [t for _, t in first] == [expected[0][0], expected[1][0]]
        for n_step in range(1, 100):
            if n_step == 5:
                handles.append(batch.add(prompts[2], GREEDY)[0])
            if n_step == 9:
                assert batch.tokens(handles[1]) == expected[1][:9]  # its first + 8 steps
                batch.remove(handles[1])
                handles.append(batch.add(prompts[3], GREEDY)[0])
            new = batch.step()
            assert handles[1] not in new or n_step < 9
            if not len(batch):
                break
        assert batch.tokens(handles[0]) == expected[0]
        assert batch.tokens(handles[2]) == expected[2]
        assert batch.tokens(handles[3]) == expected[3]
        assert len(batch) == 0 and batch.step() == {}
        with pytest.raises(KeyError, match="removed"):
            batch.tokens(handles[1])
    assert engine.stats().tokens == 4 * N_NEW + 3 * N_NEW + 9  # alone, then the batch


@pytest.fixture(scope="module")
def random_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch-random")
    models = {
        arch: make_random_checkpoint(root / arch, arch=arch, seed=7) for arch in SUPPORTED_ARCHS
    }
    models["dense-layer"] = make_random_checkpoint(
        root / "dense", arch="qwen3_moe", seed=5, num_hidden_layers=4, mlp_only_layers=[1]
    )
    return models


@pytest.mark.parametrize("arch", [*SUPPORTED_ARCHS, "dense-layer"])
@pytest.mark.parametrize("n_slots", [2, None])  # 2 = one token's top-k, the smallest budget
def test_every_architecture_batches_to_the_same_tokens(random_models, arch, n_slots):
    budget = None if n_slots is None else n_slots * RANDOM_EXPERT_BYTES
    engine = Engine.from_pretrained(random_models[arch], device="cpu", vram_budget=budget)
    gen = GenerationConfig(max_new_tokens=12, stop_token_ids=())
    assert run_together(engine, RANDOM_PROMPTS, gen) == alone(engine, RANDOM_PROMPTS, gen)


@pytest.mark.parametrize("placement", ["cpu", "auto"])
def test_placements_and_prefetch_batch_to_the_same_tokens(random_models, placement):
    engine = Engine.from_pretrained(random_models["qwen2_moe"], device="cpu", prefetch=True,
                                    vram_budget=3 * RANDOM_EXPERT_BYTES, placement=placement)  # fmt: skip
    gen = GenerationConfig(max_new_tokens=12, stop_token_ids=())
    assert run_together(engine, RANDOM_PROMPTS, gen) == alone(engine, RANDOM_PROMPTS, gen)


def test_a_learners_router_batches_to_the_same_tokens(random_models):
    def softmax_top_k(router_logits, top_k, norm_topk_prob):  # (T, E) for all T tokens at once
        weights, ids = torch.topk(torch.softmax(router_logits, dim=-1), top_k, dim=-1)
        return (weights / weights.sum(-1, keepdim=True) if norm_topk_prob else weights), ids

    engine = Engine.from_pretrained(random_models["qwen3_moe"], device="cpu",
                                    vram_budget=3 * RANDOM_EXPERT_BYTES)  # fmt: skip
    gen = GenerationConfig(max_new_tokens=12, stop_token_ids=())
    expected = alone(engine, RANDOM_PROMPTS, gen)
    engine.set_router(softmax_top_k)
    assert run_together(engine, RANDOM_PROMPTS, gen) == expected


@needs_bundled
def test_quantized_gguf_experts_batch_to_the_same_tokens(prompts, tmp_path):
    """A Q8_0 GGUF file on the CPU: experts stay quantized in the slots, computed from their bytes."""
    from gguf_models import twin

    from lazymoe.engine.storage.gguf_file import GGUFExpertStore

    path = twin("q8_0", tmp_path)
    slot_nbytes = GGUFExpertStore.open(path).max_expert_qbytes
    engine = Engine.from_pretrained(path, device="cpu", vram_budget=3 * slot_nbytes)
    assert engine.quantized_experts
    assert run_together(engine, prompts[:3]) == alone(engine, prompts[:3])


@needs_bundled
def test_seeded_sampling_gives_the_same_tokens_batched(prompts):
    engine = bundled(6)
    gens = [GenerationConfig(max_new_tokens=N_NEW, temperature=0.9, top_p=0.95, seed=s,
                             stop_token_ids=()) for s in (1, 2, 3)]  # fmt: skip
    expected = [engine.generate(p, g) for p, g in zip(prompts, gens, strict=False)]
    with engine.batch() as batch:
        handles = [batch.add(p, g)[0] for p, g in zip(prompts, gens, strict=False)]
        while len(batch):
            batch.step()
        assert [batch.tokens(h) for h in handles] == expected
    assert expected[0] != alone(engine, prompts[:1])[0]  # the seed matters: not greedy


# -- the union of the experts, fetched once -------------------------------------------------------
@needs_bundled
@pytest.mark.parametrize("n_slots", [2, 16])  # 2: chunks of the union; 16: misses every step
def test_a_step_runs_each_moe_layer_once_and_fetches_each_expert_once(
    prompts, n_slots, monkeypatch
):
    engine = bundled(n_slots)
    runtime = engine.runtime
    calls = []  # (layer, tokens) per MoE call
    forward = runtime.forward
    monkeypatch.setattr(runtime, "forward", lambda layer, hidden, *a: calls.append(
        (layer, hidden.shape[0])) or forward(layer, hidden, *a))  # fmt: skip
    runtime.computed_experts = Counter()
    books = engine.tiers.device.book.stats
    with engine.batch() as batch:
        for p in prompts:
            batch.add(p, GREEDY)
        for _ in range(6):
            calls.clear()
            runtime.computed_experts.clear()
            before = dict(books.misses_per_layer)
            batch.step()
            assert calls == [(layer, len(prompts)) for layer in engine.moe_layers]
            routed = Counter(layer for layer, _ in runtime.computed_experts)  # distinct experts
            assert (
                sum(runtime.computed_experts.values()) == len(calls) * len(prompts) * engine.top_k
            )
            misses = {
                layer: books.misses_per_layer[layer] - before.get(layer, 0) for layer in routed
            }
            assert sum(misses.values()) > 0
            for layer in engine.moe_layers:
                assert misses[layer] <= routed[layer] <= len(prompts) * engine.top_k


@needs_bundled
def test_batching_moves_fewer_bytes_than_one_after_another(prompts):
    """8 requests, a cache of one layer's top-k (2 of 64 experts, no prefetch): alone, every token
    fetches its experts; together, one fetch serves every sequence routed to that expert.
    Measured: 1.73x fewer bytes together (1028 vs 1780 fetches); asserted with margin.
    (With 16-32 slots it turns: one request alone gets cache hits from its own recent tokens,
    while the batch's union of experts no longer fits; see lazymoe/engine/batch.py.)"""
    tokenizer = bundled(None).tokenizer
    eight = prompts + [tokenizer.encode(t) for t in MORE_TEXTS]
    engine = bundled(2, prefetch=False)
    alone(engine, eight)
    one_by_one = engine.stats()
    engine = bundled(2, prefetch=False)
    run_together(engine, eight)
    together = engine.stats()
    assert together.tokens == one_by_one.tokens == len(eight) * N_NEW
    tokens_per_fetch_alone = one_by_one.tokens / one_by_one.misses
    tokens_per_fetch_together = together.tokens / together.misses
    assert tokens_per_fetch_together > 1.4 * tokens_per_fetch_alone
    assert together.bytes_moved < 0.7 * one_by_one.bytes_moved


# -- stopping and bad input -----------------------------------------------------------------------
@needs_bundled
def test_stop_ids_and_max_new_tokens_end_a_sequence(prompts):
    engine = bundled(None)
    want = alone(engine, prompts[:2])
    stop_at = want[0][4]  # the fifth greedy token of prompt 0 (its first occurrence ends it)
    cut = want[0].index(stop_at) + 1
    with engine.batch() as batch:
        a, _ = batch.add(
            prompts[0], GenerationConfig(max_new_tokens=N_NEW, stop_token_ids=(stop_at,))
        )
        b, first = batch.add(prompts[1], GenerationConfig(max_new_tokens=1, stop_token_ids=()))
        assert batch.finished(b) and batch.tokens(b) == [first] == want[1][:1]
        assert len(batch) == 1
        steps = 0
        while len(batch):
            assert b not in batch.step()
            steps += 1
        assert batch.finished(a) and batch.tokens(a) == want[0][:cut]
        assert steps == cut - 1
        assert batch.step() == {}


@needs_bundled
def test_stop_strings_end_a_sequence(prompts):
    engine = bundled(None)
    text = engine.tokenizer.decode(alone(engine, prompts[:1])[0])
    stop = text.strip()[:3]
    with engine.batch() as batch:
        h, _ = batch.add(prompts[0], GenerationConfig(max_new_tokens=N_NEW, stop_strings=(stop,)))
        while len(batch):
            batch.step()
        got = engine.tokenizer.decode(batch.tokens(h))
        assert stop in got and stop not in engine.tokenizer.decode(batch.tokens(h)[:-1])


@needs_bundled
def test_bad_prompts_raise_and_leave_the_batch_usable(prompts):
    engine = bundled(None)
    want = alone(engine, prompts[:1])[0]
    assert engine.generate(torch.tensor(prompts[0]), GREEDY) == want  # a tensor of ids is ids
    with engine.batch() as batch:
        h, _ = batch.add(prompts[0], GREEDY)
        batch.step()
        with pytest.raises(ValueError, match="empty"):
            batch.add([], GREEDY)
        with pytest.raises(ValueError, match=r"prompt_ids\[1\] = 99999 is not a token"):
            batch.add([5, 99999], GREEDY)
        with pytest.raises(ValueError, match=r"prompt_ids\[0\] = -1"):
            batch.add([-1], GREEDY)
        with pytest.raises(TypeError, match=r"is text .* not token ids: encode it first"):
            batch.add("def add(a, b):", GREEDY)
        with pytest.raises(TypeError, match=r"prompt_ids\[1\] = 2.5 is a float, not a token id"):
            batch.add([5, 2.5], GREEDY)
        joined = batch.add_many(["text", [5, 2.5]], [GREEDY, GREEDY])  # each refused, none joins
        assert [type(j) for j in joined] == [TypeError, TypeError]
        with pytest.raises(ValueError, match="max_new_tokens=0"):
            batch.add(prompts[1], GenerationConfig(max_new_tokens=0))
        batch.remove(12345)  # unknown: no error
        batch.remove(h + 100)
        assert len(batch) == 1
        while len(batch):
            batch.step()
        assert batch.tokens(h) == want
    assert len(batch) == 0  # leaving the context removed everything


@needs_bundled
def test_stats_count_batched_work(prompts):
    engine = bundled(None)
    engine.reset_stats()
    run_together(engine, prompts[:3])
    stats = engine.stats()
    assert stats.tokens == 3 * N_NEW
    assert stats.prompt_tokens == sum(len(p) for p in prompts[:3])
    assert stats.prefill_seconds > 0 and stats.decode_seconds > 0


# -- one live sequence: the engine's single-sequence path -----------------------------------------
def staggered(engine: Engine, prompts, gens) -> tuple[list[list[int]], list[dict]]:
    """The first request alone for 5 steps, the second joins for 4, the third joins, the second
    is removed 3 steps later (the first may end), and the rest run to the end: each one's tokens,
    and the batch's step counts after each phase."""
    with engine.batch() as batch:
        a, _ = batch.add(prompts[0], gens[0])
        counts = []
        for _ in range(5):
            batch.step()
        counts.append(dict(batch.step_counts))  # alone
        b, _ = batch.add(prompts[1], gens[1])
        for _ in range(4):
            batch.step()
        counts.append(dict(batch.step_counts))  # two together
        c, _ = batch.add(prompts[2], gens[2])
        for _ in range(3):
            batch.step()
        b_tokens = batch.tokens(b)
        batch.remove(b)
        while len(batch):
            batch.step()
        counts.append(dict(batch.step_counts))  # the last one alone again at the end
        return [batch.tokens(a), b_tokens, batch.tokens(c)], counts


@needs_bundled
@pytest.mark.parametrize("decode", ["model", "segments", "device-cache"])  # the GPU decoders' loops
def test_a_lone_sequence_takes_the_single_path_and_moves_into_the_batch_when_others_join(
    prompts, decode
):
    """One request alone decodes as engine.generate does (segments: in the decoder's buffers);
    the second one's arrival moves it into the batched loop between two tokens, and back when it
    is alone again: the tokens are those of each request alone."""
    engine = bundled(12, decode=decode)
    gens = [GREEDY, GREEDY, GenerationConfig(max_new_tokens=N_NEW + 8, stop_token_ids=())]
    expected = [engine.generate(p, g) for p, g in zip(prompts, gens, strict=False)]
    decoded_alone = engine._decoder.timings["tokens"] if decode != "model" else 0
    got, counts = staggered(engine, prompts, gens)
    assert got[0] == expected[0] and got[2] == expected[2]
    assert got[1] == expected[1][: len(got[1])] and len(got[1]) == 8  # removed after 7 steps
    assert counts[0] == {"single": 5, "batched": 0}  # the first one alone: the single path
    assert counts[1] == {"single": 5, "batched": 4}  # the second joined: batched at once
    # the first (24 tokens) has 13 after 12 steps: 11 more with the third, batched; the third
    # (32 tokens) then has 15: 17 more alone, on the single path again
    assert counts[2] == {"single": 5 + 17, "batched": 4 + 3 + 11}
    if decode != "model":  # the single steps really ran on the engine's decoder
        assert engine._decoder.timings["tokens"] - decoded_alone == counts[2]["single"]
    if decode == "device-cache":  # the device's tables came back to the host's book each time
        assert engine.runtime.lent_to is None
        book = engine.tiers.device.book
        assert len(book) == 12 and book.stats.hits and book.stats.evictions


@needs_bundled
def test_seeded_sampling_carries_its_generator_through_the_moves(prompts):
    """The sampler (and its seeded torch.Generator) stays the sequence's own when it moves between
    the single path and the batch, so seeded draws equal engine.generate's."""
    engine = bundled(6, decode="segments")
    seeded = {"temperature": 0.9, "top_p": 0.95, "stop_token_ids": ()}
    gens = [GenerationConfig(max_new_tokens=N_NEW, seed=4, **seeded),
            GenerationConfig(max_new_tokens=N_NEW, seed=5, **seeded),
            GenerationConfig(max_new_tokens=N_NEW + 8, seed=6, **seeded)]  # fmt: skip
    expected = [engine.generate(p, g) for p, g in zip(prompts, gens, strict=False)]
    got, counts = staggered(engine, prompts, gens)
    assert got[0] == expected[0] and got[2] == expected[2]
    assert got[1] == expected[1][: len(got[1])]
    assert counts == [{"single": 5, "batched": 0}, {"single": 5, "batched": 4},
                      {"single": 22, "batched": 18}]  # fmt: skip
    assert expected[0] != engine.generate(prompts[0], GREEDY)  # the seed matters: not greedy


@needs_bundled
def test_fast_lone_off_decodes_a_lone_sequence_in_the_batched_loop(prompts):
    from lazymoe.engine.batch import EngineBatch

    engine = bundled(None, decode="segments")
    expected = engine.generate(prompts[0], GREEDY)
    engine._decoder = None  # so we see whether the batch makes one
    with EngineBatch(engine, fast_lone=False) as batch:
        h, _ = batch.add(prompts[0], GREEDY)
        while len(batch):
            batch.step()
        assert batch.tokens(h) == expected
        assert batch.step_counts == {"single": 0, "batched": N_NEW - 1}
        assert batch.last_path == "batched"
    assert engine._decoder is None


@needs_bundled
def test_a_sequence_alone_on_the_decoder_that_stops_or_is_removed_frees_it(prompts):
    engine = bundled(None, decode="segments")
    want = engine.generate(prompts[0], GREEDY)
    with engine.batch() as batch:
        a, _ = batch.add(prompts[0], GREEDY)
        batch.step()
        assert batch._seqs[a].decoder is not None and batch._seqs[a].cache is None
        batch.remove(a)
        b, _ = batch.add(prompts[0], GREEDY)  # the same prompt again: the decoder is reused
        while len(batch):
            batch.step()
        assert batch.tokens(b) == want
        assert batch._seqs[b].decoder is None and batch._seqs[b].cache is None  # done: freed
        assert batch.last_path == "single"


@needs_bundled
def test_generating_on_the_engine_while_a_lone_sequence_holds_its_decoder_is_refused(prompts):
    """engine.generate between two steps overwrites the decoder's keys and values: the lone
    sequence's next step says so (and the sequence is dropped), instead of going on wrong."""
    engine = bundled(None, decode="segments")
    with engine.batch() as batch:
        batch.add(prompts[0], GREEDY)
        batch.step()
        engine.generate(prompts[1], GREEDY)
        with pytest.raises(RuntimeError, match="decoder ran another generation"):
            batch.step()
        assert len(batch) == 0
        b, _ = batch.add(prompts[1], GREEDY)  # the batch is usable again
        while len(batch):
            batch.step()
        assert batch.tokens(b) == engine.generate(prompts[1], GREEDY)


# -- prompts prefilled together (add_many) -------------------------------------------------------
@needs_bundled
@pytest.mark.parametrize("n_slots", [3, None])
def test_prompts_prefilled_together_give_each_its_tokens_alone(prompts, n_slots):
    """Four prompts of different lengths in one padded pass (and a refused one between them):
    each gets the first token and the tokens it gets alone; the refused one gets its error and
    the others join anyway."""
    engine = bundled(n_slots)
    expected = alone(engine, prompts)
    engine.reset_stats()
    with engine.batch() as batch:
        joined = batch.add_many([prompts[0], [], prompts[1], prompts[2], prompts[3]],
                                [GREEDY] * 5)  # fmt: skip
        assert isinstance(joined[1], ValueError) and "empty" in str(joined[1])
        handles = [joined[i][0] for i in (0, 2, 3, 4)]
        assert [joined[i][1] for i in (0, 2, 3, 4)] == [e[0] for e in expected]
        assert len(batch) == 4
        while len(batch):
            batch.step()
        assert [batch.tokens(h) for h in handles] == expected
    assert engine.stats().prompt_tokens == sum(len(p) for p in prompts)


def test_prefill_groups_bound_the_padding():
    """By length; a group's padded tokens at most twice its real ones and at most
    PREFILL_TOKENS; a prompt longer than that alone."""
    from lazymoe.engine.batch import PREFILL_TOKENS, prefill_groups

    def groups(lengths):
        ready = [(i, [1] * n, None) for i, n in enumerate(lengths)]
        return [[i for i, *_ in group] for group in prefill_groups(ready)]

    assert groups([5, 5, 5]) == [[0, 1, 2]]
    assert groups([10, 3, 9]) == [[1, 2, 0]]  # 30 padded tokens for 22 real
    assert groups([1, 1, 1, 9]) == [[0, 1, 2], [3]]  # 36 padded for 12 real: the 9 apart
    assert groups([24] * 100) == [list(range(85)), list(range(85, 100))]  # 85 * 24 <= 2048
    assert groups([PREFILL_TOKENS + 1, 4]) == [[1], [0]]
    assert groups([]) == []


@needs_bundled
def test_a_failed_pass_refuses_its_prompts_and_leaves_the_batch_usable(prompts, monkeypatch):
    engine = bundled(None)
    want = alone(engine, prompts[:1])[0]
    with engine.batch() as batch:
        h, _ = batch.add(prompts[0], GREEDY)
        original = engine.model.model.forward

        def broken(*args, **kwargs):
            raise RuntimeError("out of memory (simulated)")

        monkeypatch.setattr(engine.model.model, "forward", broken)
        joined = batch.add_many(prompts[1:3], [GREEDY, GREEDY])
        assert all(isinstance(j, RuntimeError) for j in joined)
        monkeypatch.setattr(engine.model.model, "forward", original)
        assert len(batch) == 1
        while len(batch):
            batch.step()
        assert batch.tokens(h) == want


@needs_bundled
def test_buffers_kept_for_graphs_go_when_far_bigger_than_the_last_burst_needed(prompts):
    """`BatchKV.keep` (set once a GPU recorded a step) keeps the buffers between bursts only
    while they are within 4x of what the last burst needed; the graphs go with them."""
    engine = bundled(None)
    for grow, kept in ((None, True), ((64, 512), False)):
        with engine.batch() as batch:
            for p in prompts[:2]:
                batch.add(p, GenerationConfig(max_new_tokens=4, stop_token_ids=()))
            batch.step()  # both in rows now
            batch._kv.keep = True  # as after recording a graph
            batch._graphs = {2: "a recorded step"}
            if grow is not None:  # a burst of 64 long requests left them this big
                batch._kv.reserve(*grow)
            size = (batch._kv.n_rows, batch._kv.max_len)
            while len(batch):
                batch.step()
            assert ((batch._kv.n_rows, batch._kv.max_len) == size) == kept
            assert bool(batch._graphs) == kept and batch._kv.keep == kept
            assert batch._burst == (0, 0)


@needs_bundled
def test_a_failing_hand_back_of_the_cache_does_not_stop_the_removals(prompts, monkeypatch, caplog):
    engine = bundled(None)
    with engine.batch() as batch:
        handles = [batch.add(p, GREEDY)[0] for p in prompts[:2]]
        batch.step()

        def broken():
            raise RuntimeError("CUDA error: an illegal memory access (simulated)")

        monkeypatch.setattr(engine.runtime, "reclaim", broken)
        for h in handles:
            batch.remove(h)
        assert len(batch) == 0 and not batch._seqs
    assert "handing the device's cache back to the host failed" in caplog.text
