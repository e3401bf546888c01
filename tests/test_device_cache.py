"""decode="device-cache": the cache's lookups, evictions and fills done by the device's own kernels
(lazymoe.engine.compute.device_cache), checked against the host's cache on the same model.

On the CPU the kernels run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
float32. The reference is decode="segments" (the same layer loop, the host's CacheBook deciding,
checked token for token against transformers by tests/test_segments_quant.py): with prefetch off
both keep one LRU order, so the tokens, every layer's hits, misses and evictions, and which
expert ends in which slot must all agree. tests/gpu/test_device_cache_gpu.py runs it as one CUDA
graph a token on a GPU, reading misses from the page-locked file over PCIe.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gguf_models import half_for_auto, twin

from lazymoe.bench.routing import make_trace
from lazymoe.engine import Engine, EngineConfig, GenerationConfig
from lazymoe.engine.compute import device_cache, triton_quant
from lazymoe.engine.loading import load_tokenizer
from lazymoe.engine.parts.cache import CacheBook
from lazymoe.engine.storage.gguf_file import GGUFExpertStore
from lazymoe.paths import bundled_model_dir

pytestmark = pytest.mark.skipif(
    triton_quant.unavailable_reason(torch.device("cpu"), torch.float32) is not None,
    reason="Triton is not installed (the dev extra installs it)",
)

PROMPTS = ("def load(self, path):\n", "import os\n")
GEN = GenerationConfig(max_new_tokens=4, stop_token_ids=())


@pytest.fixture(scope="module")
def q4_0(tmp_path_factory):
    return twin("q4_0", tmp_path_factory.mktemp("device-cache"))


def engine(path, decode, slots=7, **fields):
    """The bundled model's GGUF twin on the CPU; `slots` experts' worth of budget (a layer
    uses 2 of 16: with 7 there are hits, misses and evictions across layers)."""
    budget = None if slots is None else slots * GGUFExpertStore.open(path).max_expert_qbytes
    config = EngineConfig(model_path=path, device="cpu", vram_budget=budget, decode=decode,
                          kernel="fused", prefetch=False, **fields)  # fmt: skip
    return Engine(config)


def cache_state(e: Engine) -> tuple:
    """Everything the host's book says: per-layer counts, which expert is in which slot, the
    LRU order and the free slots."""
    book = e.tiers.device.book
    stats = book.stats
    links = {name: (link.transfers, link.nbytes, dict(link.bytes_per_layer))
             for name, link in e.tiers.links.items() if link.transfers}  # fmt: skip
    return (
        dict(stats.hits_per_layer), dict(stats.misses_per_layer), dict(stats.evictions_per_layer),
        sorted(book._slot_of.items()), book.policy.oldest_first(), book.free_slots(), links,
    )  # fmt: skip


def test_two_generations_match_the_host_cache_hit_for_hit(q4_0):
    """Tokens, counts, slots and LRU order agree after each generation; the second starts from
    the book the first wrote back (its prefill runs on the host's cache)."""
    prompts = [load_tokenizer(q4_0).encode(p) for p in PROMPTS]
    host, device = engine(q4_0, "segments"), engine(q4_0, "device-cache")
    assert device.decode_path == "device-cache"
    assert "keeps the expert cache itself" in device.describe()
    assert "keeps the expert cache itself" not in host.describe()
    for prompt in prompts:
        assert device.generate(prompt, GEN) == host.generate(prompt, GEN)
        assert cache_state(device) == cache_state(host)
    stats = device.tiers.device.book.stats
    assert stats.hits > 0 and stats.evictions > 0  # the budget makes both happen
    assert device.runtime.computed_on == host.runtime.computed_on  # experts computed, per place
    assert device.runtime.lent_to is None  # the host holds the cache between generations
    # each slot's bytes and the host pool's views of it are the expert the book says (what the
    # host's CPU and eager paths read next)
    pool, store = device.tiers.device.pool, device.store
    for (layer, expert), slot in device.tiers.device.book._slot_of.items():
        want = store.read_quantized(layer, expert)
        got = pool.expert(slot)
        for part in ("gate", "up", "down"):
            assert torch.equal(getattr(got, part).data, getattr(want, part).data)


def test_a_prompt_runs_its_experts_on_the_device_tables_as_the_host_would(q4_0):
    """With slots for every expert a layer has (16 of 64 here: 20), a generation's prompt runs
    its experts on the device's tables too (`batch_experts`: no host lookups): the same tokens
    and the same book as the host's cache."""
    prompt = load_tokenizer(q4_0).encode(PROMPTS[0])
    host, device = engine(q4_0, "segments", slots=20), engine(q4_0, "device-cache", slots=20)
    assert device.generate(prompt, GEN) == host.generate(prompt, GEN)
    assert cache_state(device) == cache_state(host)
    assert device._decoder.batch_layer_passes == len(device.moe_layers)  # the prompt, one pass
    assert device._decoder.grouped_layer_passes == len(device.moe_layers)  # in tiles of tokens
    small = engine(q4_0, "device-cache", slots=7)  # a layer's 16 might not fit: the host's path
    small.generate(prompt, GEN)
    assert small._decoder.batch_layer_passes == 0


def test_a_replayed_trace_hits_and_misses_as_on_the_host(q4_0):
    e0 = engine(q4_0, "segments")
    trace = make_trace("real-text", 64, len(e0.moe_layers), e0.num_experts, e0.top_k, seed=5)
    prompt = load_tokenizer(q4_0).encode(PROMPTS[0])
    host = engine(q4_0, "segments", routing_trace=trace)
    device = engine(q4_0, "device-cache", routing_trace=trace)
    host.generate(prompt, GEN)
    device.generate(prompt, GEN)
    assert cache_state(device) == cache_state(host)
    assert device.runtime.replay.served == host.runtime.replay.served


def test_stats_between_tokens_and_a_host_pass_mid_stream_change_nothing(q4_0):
    """What `lazymoe run` and the server do: engine.stats() after every token (the counts come
    over, the cache stays on the device), and a pass through the host's path in the middle of a
    generation (it takes the cache back; the next token loads it again): the same tokens and
    the same book as the host's cache doing the same."""
    prompts = [load_tokenizer(q4_0).encode(p) for p in PROMPTS]
    runs = {}
    for decode in ("segments", "device-cache"):
        e = engine(q4_0, decode)
        tokens, hits = [], []
        for i, token in enumerate(e.stream(prompts[0], GEN)):
            tokens.append(token)
            hits.append(e.stats().hit_rate)  # between tokens, as the live line does
            if i == 2:
                if decode == "device-cache":  # the device holds the cache mid-stream
                    assert e.runtime.lent_to is e._decoder
                e.forward_logits(prompts[1])  # the host's path, mid-generation
        runs[decode] = (tokens, hits, cache_state(e))
        if decode == "device-cache":
            assert e.runtime.lent_to is None and e._decoder.timings["tokens"] == GEN.max_new_tokens - 1
    assert runs["device-cache"] == runs["segments"]


def test_every_expert_resident_misses_only_the_first_time(tmp_path_factory):
    path = twin("q8_0", tmp_path_factory.mktemp("device-cache-q8"))
    prompt = load_tokenizer(path).encode(PROMPTS[0])
    host, device = engine(path, "segments", slots=None), engine(path, "device-cache", slots=None)
    assert device.generate(prompt, GEN) == host.generate(prompt, GEN)
    assert cache_state(device) == cache_state(host)
    assert device.tiers.device.book.stats.evictions == 0


def lru_reference(n_slots: int, steps: list[tuple[int, list[int]]], free_first: list[int]):
    """What the host's CacheBook (LRU) does with each step's experts, as ascending lookups."""
    book = CacheBook(n_slots, "lru")
    book._free = list(free_first)[::-1]
    out = []
    for layer, ids in steps:
        protected = frozenset((layer, e) for e in ids)
        slots, missed = {}, []
        for e in sorted(ids):
            slot = book.lookup((layer, e))
            if slot is None:
                slot, _ = book.admit((layer, e), protected)
                missed.append(slot)
            slots[e] = slot
        out.append(([slots[e] for e in sorted(ids)], missed))
    return book, out


def empty_tables(layers: int, experts: int, n_slots: int, free_first: list[int]) -> tuple:
    """The device tables of an empty cache whose free slots are handed out in `free_first`'s
    order: where, owner, stamp, clock, counts."""
    where = torch.full((layers * experts,), -1, dtype=torch.int32)
    owner = torch.full((n_slots,), -1, dtype=torch.int32)
    stamp = torch.tensor([device_cache.FREE_STAMP - n_slots + free_first.index(s)
                          for s in range(n_slots)], dtype=torch.int64)  # fmt: skip
    return where, owner, stamp, torch.zeros(1, dtype=torch.int64), torch.zeros(layers, 3, dtype=torch.int64)


def assert_tables_are_the_book(book, where, owner, stamp, counts, layers: int, experts: int):
    """The device tables after the kernels hold what the host's book holds: which expert in
    which slot (and the map back), the LRU order, every layer's hits, misses and evictions."""
    placed = sorted(((int(o) // experts, int(o) % experts), s)
                    for s, o in enumerate(owner.tolist()) if o >= 0)  # fmt: skip
    assert placed == sorted(book._slot_of.items())
    assert all(where[o].item() == s for s, o in enumerate(owner.tolist()) if o >= 0)
    assert int((where >= 0).sum()) == len(placed)
    order = [(int(owner[s]) // experts, int(owner[s]) % experts)
             for s in np.argsort(stamp.numpy(), kind="stable") if owner[s] >= 0]  # fmt: skip
    assert order == book.policy.oldest_first()
    st = book.stats
    assert counts[:, 0].tolist() == [st.hits_per_layer.get(i, 0) for i in range(layers)]
    assert counts[:, 1].tolist() == [st.misses_per_layer.get(i, 0) for i in range(layers)]
    assert counts[:, 2].tolist() == [st.evictions_per_layer.get(i, 0) for i in range(layers)]


@pytest.mark.parametrize("n_slots", [4, 11, 40])
def test_the_assign_kernel_is_the_books_lru(n_slots):
    """The kernel alone against CacheBook: random layers and top-k ids, free slots handed out in
    a shuffled order; every step's slots, then the final contents, order and counts agree."""
    rng = np.random.default_rng(n_slots)
    layers, experts, k = 3, 16, 4
    steps = [(int(rng.integers(layers)), rng.choice(experts, k, replace=False).tolist())
             for _ in range(60)]  # fmt: skip
    free_first = rng.permutation(n_slots).tolist()
    book, want = lru_reference(n_slots, steps, free_first)

    where, owner, stamp, clock, counts = empty_tables(layers, experts, n_slots, free_first)
    index = torch.zeros(2, k, dtype=torch.int64)
    fill = torch.zeros(2 * k, dtype=torch.int32)
    cpu = torch.zeros(2 * k, dtype=torch.int32)
    for (layer, ids), (slots, missed) in zip(steps, want, strict=True):
        device_cache._assign_kernel[(1,)](
            torch.tensor(ids), where, owner, stamp, clock, index, fill, counts, cpu,
            torch.tensor([256], dtype=torch.int32), layer, experts, n_slots, k, 0, K=k, KP=k, SP=64,
        )  # fmt: skip
        assert cpu.tolist() == [-1] * 2 * k  # every miss fetched: none for the CPU
        assert index[0].tolist() == slots  # ascending expert order
        assert [ids[p] for p in index[1].tolist()] == sorted(ids)  # each slot's top-k position
        assert [s for s in fill[:k].tolist() if s >= 0] == missed  # the slots to fill, in order
    assert_tables_are_the_book(book, where, owner, stamp, counts, layers, experts)


@pytest.mark.parametrize("width", [1, 2, 4, 8])
@pytest.mark.parametrize("split", [False, True], ids=["one-pool", "float-pool"])
def test_the_fill_kernel_copies_each_part_from_its_own_place(width, split):
    """Three parts of different sizes, scattered in a source, land in their slot: back to back
    in one byte pool, or gate and up in one tensor and down in another (a float pool); slots
    of experts that hit (-1) are left alone."""
    dtype = device_cache._WORD_DTYPES[width]
    src = torch.randint(-100, 100, (5000,)).to(dtype)
    sizes = (700, 700, 1500)  # words; more than one program's FILL_WORDS for the last
    offsets = torch.tensor([[10, 2000, 3100], [1, 900, 3300]], dtype=torch.int64)  # 2 keys
    stride = 3000 if not split else 1400
    pool = torch.zeros(3 * stride, dtype=dtype)
    down = torch.zeros(3 * 1500, dtype=dtype) if split else pool
    starts = (0, 700, 1400) if not split else (0, 700, 0)
    fill = torch.tensor([2, -1, 0, 1], dtype=torch.int32)  # key 0 -> slot 2; the second: a hit
    grid = (2, 3, -(-max(sizes) // device_cache.FILL_WORDS))
    device_cache._fill_kernel[grid](
        src, pool, down, fill, offsets.reshape(-1), stride, 1500 if split else stride, *sizes,
        *starts, K=2, WORDS=device_cache.FILL_WORDS,
    )  # fmt: skip
    parts = [src[o : o + n] for o, n in zip(offsets[0].tolist(), sizes, strict=True)]
    if split:
        assert torch.equal(pool[2 * stride :], torch.cat(parts[:2]))
        assert torch.equal(down[2 * 1500 :], parts[2])
        assert not pool[: 2 * stride].any() and not down[: 2 * 1500].any()
    else:
        slot = pool[2 * stride :]
        assert torch.equal(slot[: sum(sizes)], torch.cat(parts))
        assert not pool[: 2 * stride].any() and not slot[sum(sizes) :].any()


def test_word_width_is_the_widest_that_divides_everything():
    assert device_cache.word_bytes(16, 1152, 884736) == 8
    assert device_cache.word_bytes(16, 36, 4) == 4
    assert device_cache.word_bytes(34, 16) == 2
    assert device_cache.word_bytes(17, 16) == 1


def test_a_float_checkpoint_matches_the_host_cache_too():
    """The bundled model's own safetensors (float32): gate and up land in the pool's gate_up
    slot, down in its down slot."""
    prompt = load_tokenizer(bundled_model_dir()).encode(PROMPTS[0])
    budget = 7 * 3 * 4 * 128 * 128  # 7 experts of float32 (I 128, D 128): hits and misses
    runs = []
    for decode in ("segments", "device-cache"):
        e = Engine(EngineConfig(model_path=bundled_model_dir(), device="cpu", dtype="float32",
                                vram_budget=budget, decode=decode, prefetch=False))  # fmt: skip
        assert e.decode_path == decode and e.tiers.device.book.n_slots == 7
        runs.append((e.generate(prompt, GEN), cache_state(e)))
    assert runs[0] == runs[1]
    assert runs[1][1][0] and runs[1][1][2]  # hits and evictions happened


def test_what_it_cannot_run_says_why(q4_0):
    with pytest.raises(ValueError, match="least-recently-used order only"):
        engine(q4_0, "device-cache", policy="lfu")
    e = engine(q4_0, "device-cache")
    with pytest.raises(ValueError, match="cannot run a learner router"):  # nothing changed
        e.set_router(lambda logits, k, norm: torch.topk(logits.softmax(-1), k))
    assert e.decode_path == "device-cache"
    assert not any(hasattr(block.gate, "original") for block in e.blocks.values())
    with pytest.raises(ValueError, match="give dtype='float32'"):
        Engine(EngineConfig(model_path=bundled_model_dir(), device="cpu", dtype="bfloat16",
                            decode="device-cache"))  # fmt: skip
    assert engine(q4_0, "auto").decode_path == "model"  # on a CPU auto keeps transformers' forward


def test_file_nbytes_is_what_pinning_would_lock(q4_0):
    """The size describe()'s --pin-checkpoint tip quotes: the whole file(s)."""
    from lazymoe.engine.storage.store import ExpertStore

    assert GGUFExpertStore.open(q4_0).file_nbytes == q4_0.stat().st_size
    folder = bundled_model_dir()
    assert ExpertStore.open(folder).file_nbytes == sum(
        p.stat().st_size for p in folder.glob("*.safetensors")
    )


# -- a batched step's experts (EngineBatch on decode="device-cache") ------------------------------


def batch_reference(n_slots: int, steps: list[tuple[int, list[list[int]]]], free_first: list[int]):
    """What the host's batched path does with each step's tokens: their distinct experts
    looked up once each, ascending, all of them protected (they fit the slots)."""
    return lru_reference(n_slots, [(layer, sorted({e for ids in tokens for e in ids}))
                                   for layer, tokens in steps], free_first)  # fmt: skip


@pytest.mark.parametrize("n_slots", [12, 40])
def test_the_batch_assign_kernel_is_the_books_lru(n_slots):
    """Random steps of 1-5 tokens whose top-k ids repeat across tokens: the distinct experts
    decide the cache as the host's batched path does; every token gets the slots of its own
    experts in ascending order, with the top-k place of each."""
    rng = np.random.default_rng(n_slots)
    layers, experts, k = 3, 16, 4
    steps = []
    for _ in range(50):
        n_tokens = int(rng.integers(1, 6))
        pool = rng.choice(experts, 6, replace=False)  # few choices: tokens share experts
        steps.append((int(rng.integers(layers)),
                      [rng.choice(pool, k, replace=False).tolist() for _ in range(n_tokens)]))  # fmt: skip
    free_first = rng.permutation(n_slots).tolist()
    book, want = batch_reference(n_slots, steps, free_first)

    where, owner, stamp, clock, counts = empty_tables(layers, experts, n_slots, free_first)
    seen = torch.zeros(experts, dtype=torch.int32)
    for (layer, tokens), (slots, missed) in zip(steps, want, strict=True):
        n = len(tokens) * k
        index = torch.full((2, n), -7, dtype=torch.int64)
        fill = torch.full((2 * experts,), -7, dtype=torch.int32)
        ids = torch.tensor(tokens).reshape(-1)
        device_cache._assign_batch_kernel[(1,)](
            ids, where, owner, stamp, clock, index, fill, counts, seen, layer, experts, n_slots,
            n, K=k, EP=16, SP=64, BLOCK=8,  # blocks of 8 pairs: the loops take several steps
        )  # fmt: skip
        assert not seen.any()  # zeros again for the next call
        slot_of = dict(zip(sorted({e for t in tokens for e in t}), slots, strict=True))
        for t, token_ids in enumerate(tokens):
            mine = slice(t * k, t * k + k)
            assert index[0, mine].tolist() == [slot_of[e] for e in sorted(token_ids)]
            assert [token_ids[p] for p in index[1, mine].tolist()] == sorted(token_ids)
        distinct = len(slot_of)
        assert [s for s in fill[:distinct].tolist() if s >= 0] == missed  # in order
        assert fill[distinct:experts].tolist() == [-1] * (experts - distinct)  # nothing else
        keys = fill[experts : experts + distinct].tolist()
        assert keys == [layer * experts + e for e in sorted(slot_of)]
    assert_tables_are_the_book(book, where, owner, stamp, counts, layers, experts)


def batched(e: Engine, prompts: list[list[int]], device_experts: bool,
            together: bool = False) -> tuple[list, object]:  # fmt: skip
    """Requests that join one after another (or all at once, prefilled in one pass) and decode
    together: their tokens, the batch."""
    with e.batch() as batch:
        batch.device_experts = device_experts
        handles = []
        if together:
            handles = [h for h, _ in batch.add_many(prompts, [GEN] * len(prompts))]
        for prompt in [] if together else prompts:
            handles.append(batch.add(prompt, GEN)[0])
            batch.step()
        while len(batch):
            batch.step()
        return [batch.tokens(h) for h in handles], batch


@pytest.mark.parametrize(("source", "together"), [("q4_0", False), ("float32", False),
                                                  ("float32", True)])  # fmt: skip
def test_batched_steps_on_the_device_match_the_hosts_batch(q4_0, source, together):
    """EngineBatch on decode="device-cache": the batched steps' experts (and the prefills')
    looked up, filled and computed on the device's tables give each request the tokens of
    generating it alone (prompts prefilled one by one, or together in one padded pass), and
    leave the cache (counts, slots, LRU order, link bytes) exactly as the host's batched path
    does; the cache is back in the host's book once nobody decodes."""
    # 20 slots of the 64 experts: misses and evictions, and room for the 16 a layer has (so
    # any pass can run on the device's tables: `can_batch`)
    if source == "q4_0":
        make = lambda decode: engine(q4_0, decode, slots=20)  # noqa: E731
        tokenizer = load_tokenizer(q4_0)
    else:
        budget = 20 * 3 * 4 * 128 * 128  # 20 experts of float32 (I 128, D 128)
        make = lambda decode: Engine(EngineConfig(  # noqa: E731
            model_path=bundled_model_dir(), device="cpu", dtype="float32", vram_budget=budget,
            decode=decode, prefetch=False))  # fmt: skip
        tokenizer = load_tokenizer(bundled_model_dir())
    # the quantized kernels are slow under the interpreter: two requests there, three in float32
    prompts = [tokenizer.encode(p) for p in (*PROMPTS, "SELECT name FROM")][: 2 if source == "q4_0" else 3]
    alone = make("device-cache")
    expected = [alone.generate(p, GEN) for p in prompts]
    runs = {}
    for device_experts in (False, True):
        e = make("device-cache")
        tokens, batch = batched(e, prompts, device_experts, together)
        assert tokens == expected
        assert batch.step_counts["batched"] > 0
        assert batch.device_steps == (batch.step_counts["batched"] if device_experts else 0)
        # each prefill pass too (one for the three prompts together)
        assert batch.device_prefills == device_experts * (1 if together else len(prompts))
        assert e.runtime.lent_to is None
        runs[device_experts] = (cache_state(e), dict(e.runtime.computed_on))
    assert runs[True] == runs[False]
    state = runs[True][0]
    assert state[1] and state[2]  # misses and evictions happened


@pytest.mark.parametrize("fields", [{"placement": "cpu"}, {"placement": "auto", "fetch_per_layer": 1},
                                    {"placement": "auto"}], ids=["cpu", "auto-fetch-1", "auto-half"])
def test_misses_computed_on_the_cpu_give_the_tokens_of_fetching_them(q4_0, fields, monkeypatch):
    """placement cpu/auto on the device-cache decoder (cpu_misses.py): a layer's misses past
    fetch_per_layer (or past auto's share of them: half here, as a GPU machine whose link and
    CPU are equally fast measures) take the zero slot on the device and are computed by the
    host's CPU path; float32, so the tokens are those of fetching every miss. With placement cpu
    a decode step fetches nothing: the cache holds what the prompt left, less the zero slot's
    expert."""
    from lazymoe.engine.compute import cpu_misses

    half = "fetch_per_layer" not in fields and fields["placement"] == "auto"
    if half:  # a CPU-only machine measures no link: auto's share as a GPU machine's
        monkeypatch.setattr(cpu_misses, "fetch_split", half_for_auto(cpu_misses.fetch_split))
    prompt = load_tokenizer(q4_0).encode(PROMPTS[0])
    host, split = engine(q4_0, "segments"), engine(q4_0, "device-cache", **fields)
    assert split.generate(prompt, GEN) == host.generate(prompt, GEN)
    decoder = split._decoder
    if half:
        assert decoder.split == cpu_misses.FetchSplit(split.top_k, 128)
        assert "fetches 50% of a layer's missed experts (rounded up)" in split.describe()
    else:
        assert decoder.split.limit == (0 if fields["placement"] == "cpu" else 1)
        assert f"fetches at most {decoder.split.limit} of a layer's missed experts" in split.describe()
    assert decoder.mailbox.compute_s > 0  # the host's seconds computing (the bench reports them)
    assert "missed experts; the CPU" not in host.describe()
    assert decoder.zero_slot == split.tiers.device.book.n_slots - 1
    on_cpu, on_device = split.runtime.computed_on["cpu"], split.runtime.computed_on["device"]
    assert on_cpu > 0 and on_device > 0
    assert on_cpu + on_device == host.runtime.computed_on["device"]  # every expert, once
    stats, host_stats = split.tiers.device.book.stats, host.tiers.device.book.stats
    assert stats.hits + stats.misses == host_stats.hits + host_stats.misses
    fetched = split.tiers.links["disk->ram"].transfers  # prefill's fetches and decode's
    assert fetched == stats.misses - on_cpu
    if fields["placement"] == "cpu":
        assert stats.evictions <= host_stats.evictions
        assert decoder.zero_slot not in split.tiers.device.book._slot_of.values()


def test_misses_on_the_cpu_of_a_float_checkpoint():
    prompt = load_tokenizer(bundled_model_dir()).encode(PROMPTS[0])
    runs = []
    for fields in ({"decode": "segments"}, {"decode": "device-cache", "placement": "cpu"}):
        e = Engine(EngineConfig(model_path=bundled_model_dir(), device="cpu", dtype="float32",
                                vram_budget=7 * 3 * 4 * 128 * 128, prefetch=False, **fields))  # fmt: skip
        runs.append(e.generate(prompt, GEN))
    assert runs[0] == runs[1]
    assert e.runtime.computed_on["cpu"] > 0
    assert e.tiers.links["disk->cpu"].transfers == e.runtime.computed_on["cpu"]  # read in place


def test_how_many_misses_are_fetched():
    """fetch: all; cpu: none; auto: at most fetch_per_layer, else the share of each layer's
    misses that keeps the link and the CPU equally busy, rounded up (one lone miss is fetched)."""
    from types import SimpleNamespace

    from lazymoe.engine.compute.cpu_misses import FetchSplit, fetch_split
    from lazymoe.engine.compute.placement import CostModel

    def fake(placement, fetch_per_layer=None, cost_model=None, n_slots=40):
        runtime = SimpleNamespace(cost_model=cost_model, expert_flops_per_token=6,
                                  miss_cost=lambda layer: (55_000_000, None))  # fmt: skip
        config = SimpleNamespace(placement=placement, fetch_per_layer=fetch_per_layer)
        tiers = SimpleNamespace(device=SimpleNamespace(book=SimpleNamespace(n_slots=n_slots)))
        return SimpleNamespace(config=config, runtime=runtime, moe_layers=[0], tiers=tiers,
                               total_experts=64)  # fmt: skip

    def fetched(split):
        return [split.fetched(misses) for misses in range(9)]

    assert fetched(fetch_split(fake("fetch"), 8)) == list(range(9))
    assert fetched(fetch_split(fake("cpu"), 8)) == [0] * 9
    assert fetch_split(fake("auto"), 8) == FetchSplit(8)  # no cost model: a CPU-only machine
    assert fetched(fetch_split(fake("auto", 3), 8)) == [0, 1, 2, 3, 3, 3, 3, 3, 3]
    assert fetch_split(fake("auto", 20), 8) == FetchSplit(8)
    link_55 = CostModel(h2d_bandwidth_gbps=55, cpu_bandwidth_gbps=55, cpu_gflops=1e6)
    half = fetch_split(fake("auto", cost_model=link_55), 8)  # equal speeds: half each
    assert (half.share, half.percent) == (128, 50)
    assert fetched(half) == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    cpu_slow = CostModel(h2d_bandwidth_gbps=55, cpu_bandwidth_gbps=55 / 3, cpu_gflops=1e6)
    three_quarters = fetch_split(fake("auto", cost_model=cpu_slow), 8)  # the CPU takes a quarter
    assert fetched(three_quarters) == [0, 1, 2, 3, 3, 4, 5, 6, 6]
    assert half.splits(8) and not FetchSplit(8).splits(8) and FetchSplit(0).splits(8)
    assert not FetchSplit(8, 250).splits(8)  # 8 * 250/256 rounds up to 8: never a CPU share
    for placement in ("auto", "cpu"):  # every expert resident: no miss, so nothing to split
        assert fetch_split(fake(placement, 3, link_55, n_slots=64), 8) == FetchSplit(8)
    assert (half.fraction, three_quarters.fraction) == (0.5, 0.75)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_fetch_per_layer_must_be_a_whole_number(bad):
    with pytest.raises(ValueError, match="fetch_per_layer"):
        EngineConfig(model_path=bundled_model_dir(), fetch_per_layer=bad)


def test_a_cpu_split_needs_a_slot_more_than_a_layer_uses(q4_0):
    with pytest.raises(ValueError, match="keeps one of the 2 slots"):
        engine(q4_0, "device-cache", slots=2, placement="cpu")
    assert engine(q4_0, "device-cache", slots=2).decode_path == "device-cache"  # fetch: fine


def test_a_host_that_never_answers_fails_the_token_not_the_machine(monkeypatch):
    """The GPU's wait gives up after WAIT_SPINS reads and says so (`failed`); later layers do not
    wait; the host's next step raises. A host that fails mid-token releases every layer."""
    from lazymoe.engine.compute import cpu_misses

    monkeypatch.setattr(cpu_misses, "WAIT_SPINS", 3)
    box = cpu_misses.MissMailbox(2, 2, 8, torch.float32, torch.device("cpu"))
    box.next_token()
    box.seq.add_(1)
    cpu = torch.tensor([5, -1, 0, -1], dtype=torch.int32)  # expert 5 is the CPU's, weight 0
    out = torch.ones(1, 8)
    box.wait_add(0, cpu, out)  # nobody answered
    assert torch.equal(out, torch.ones(1, 8))  # nothing added
    with pytest.raises(RuntimeError, match="stopped waiting for the CPU"):
        box.next_token()
    box.check()  # said once: the next generation starts clean
    box.reset()
    box.next_token()

    class Broken:
        def _compute_cpu(self, *args):
            raise MemoryError("host out of memory")

    box.req[0][0] = cpu
    box.posted[0][:] = 1
    with pytest.raises(MemoryError):
        box.serve(Broken(), range(2))
    assert box.done[0].tolist() == [1, 1]  # the GPU would run on


def test_a_host_answer_is_added_to_the_gpus_sum():
    from lazymoe.engine.compute import cpu_misses

    box = cpu_misses.MissMailbox(1, 2, 8, torch.float32, torch.device("cpu"))
    box.next_token()
    box.seq.add_(1)
    cpu = torch.tensor([5, -1, 0, -1], dtype=torch.int32)
    box.part[0][0] = torch.arange(8.0)
    box.done[0][0] = 1
    out = torch.ones(1, 8)
    box.wait_add(0, cpu, out)
    assert torch.equal(out, torch.arange(8.0).view(1, 8) + 1)
    box.check()  # no failure


def test_the_cpu_starts_before_the_fills(q4_0, monkeypatch):
    """Per layer the graph posts the CPU's misses before it fills the fetched ones, so the CPU
    computes while they cross the link (posting after the fills halved the speed on an H200)."""
    e = engine(q4_0, "device-cache", placement="auto", fetch_per_layer=1)
    decoder = e._decoder_for(64)
    calls = []
    post, fill = decoder.mailbox.post, decoder._fill
    monkeypatch.setattr(decoder.mailbox, "post", lambda i, *a: (calls.append(("post", i)), post(i, *a)))
    monkeypatch.setattr(decoder, "_fill", lambda i: (calls.append(("fill", i)), fill(i)))
    e.generate(load_tokenizer(q4_0).encode(PROMPTS[0]), GenerationConfig(max_new_tokens=2, stop_token_ids=()))
    n = len(e.moe_layers)
    assert calls == [(what, i) for i in range(n) for what in ("post", "fill")]


def test_auto_weighs_a_float_miss_at_the_cpu_matmuls_measured_rate():
    """A float expert on the CPU costs its bytes at the slower of the RAM's rate and torch's
    matmul's for one token (measured: on an H200 host BF16 is a third of the RAM's rate)."""
    from lazymoe.engine.compute import placement

    fast_ram = placement.CostModel(55, 90, 1e6, cpu_float_gbps=30)
    assert fast_ram.read_seconds(30 * 10**9) == pytest.approx(1.0)
    assert placement.CostModel(55, 20, 1e6, cpu_float_gbps=30).read_seconds(20 * 10**9) == pytest.approx(1.0)
    assert placement.CostModel(55, 90, 1e6).read_seconds(90 * 10**9) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="cpu_float_gbps"):
        placement.CostModel(55, 90, 1e6, cpu_float_gbps=0)
    assert "float expert matmul 30.0 GB/s (numba)" in fast_ram.describe()
    # one token: the measured rate already holds the arithmetic; a low 16-row matmul figure (a
    # noisy measurement) does not override it. Sixteen tokens: it does
    slow_matmul = placement.CostModel(55, 90, 1.0, cpu_float_gbps=30)
    assert slow_matmul.cpu_seconds(30 * 10**9, 1, 6 * 10**9) == pytest.approx(1.0)
    assert slow_matmul.cpu_seconds(30 * 10**9, 16, 6 * 10**9) == pytest.approx(96.0)
    assert placement.CostModel(55, 90, 1.0).cpu_seconds(90 * 10**9, 1, 6 * 10**9) == pytest.approx(6.0)
    with pytest.raises(ValueError, match=r"cpu_float_kernel='mkl'.*numba, torch"):
        placement.CostModel(55, 90, 1e6, cpu_float_gbps=30, cpu_float_kernel="mkl")
    for dtype, kernels in ((torch.float32, {"torch"}), (torch.bfloat16, {"torch", "numba"})):
        gbps, kernel = placement.measure_float_gbps(64, 32, dtype)  # BF16: the faster of the two
        assert 0.05 < gbps < 10_000 and kernel in kernels


def test_the_cpu_float_rate_is_timed_past_the_cpus_cache(monkeypatch):
    """measure_float_gbps reads past_cache's bytes of matrices (at most 256 of them), so that an
    H200 host's 300 MiB L3 does not time its cache: 2I x D matrices of 8 KiB here, 100 of them."""
    from lazymoe import measure
    from lazymoe.engine.compute import placement
    from lazymoe.quant import kernels_bf16

    asked, seen = [], set()
    monkeypatch.setattr(measure, "past_cache", lambda size, buffers=1: asked.append(size) or 100 * 8192)
    real = kernels_bf16.matvec_many
    monkeypatch.setattr(kernels_bf16, "matvec_many",
                        lambda x, mats, threads=None: seen.update(m.data_ptr() for m in mats) or real(x, mats))  # fmt: skip
    placement.measure_float_gbps(64, 32, torch.bfloat16)
    assert asked == [256 * 2**20] and len(seen) == 100  # 100 distinct matrices, each read


def test_the_assign_kernel_gives_the_misses_past_the_limit_to_the_cpu():
    """FETCH_LIMIT 1: of a step's misses in ascending id order the first is fetched (an LRU
    victim), the others take the zero slot and are listed for the CPU with their top-k places;
    hits stay hits and nothing the CPU computes enters the cache."""
    layers, experts, k, n_slots, zero = 1, 16, 4, 6, 5
    where, owner, stamp, clock, counts = empty_tables(layers, experts, n_slots, list(range(n_slots)))
    stamp[zero] = device_cache.ZERO_STAMP  # the decoder reserves it so
    owner[zero] = -2
    index = torch.zeros(2, k, dtype=torch.int64)
    fill = torch.zeros(2 * k, dtype=torch.int32)
    cpu = torch.zeros(2 * k, dtype=torch.int32)

    def step(ids, limit=1, share=256):
        device_cache._assign_kernel[(1,)](
            torch.tensor(ids), where, owner, stamp, clock, index, fill, counts, cpu,
            torch.tensor([share], dtype=torch.int32), 0, experts, n_slots, limit, zero, K=k, KP=k, SP=8,
        )  # fmt: skip

    step([9, 3, 12, 5])  # all miss: 3 fetched, 5, 9, 12 the CPU's
    assert cpu.tolist() == [5, 9, 12, -1, 3, 0, 2, -1]  # ids, then their places in the top-k
    fetched = index[0, 0].item()
    assert fetched != zero and index[0, 1:].tolist() == [zero] * 3
    assert [s for s in fill[:k].tolist() if s >= 0] == [fetched]
    assert where[3].item() == fetched and where[[5, 9, 12]].tolist() == [-1, -1, -1]
    step([3, 7, 1, 2])  # 3 hits; 1 fetched; 2 and 7 the CPU's
    assert cpu.tolist() == [2, 7, -1, -1, 3, 1, -1, -1]
    assert index[0].tolist()[2] == fetched  # expert 3, third in ascending order, still in its slot
    assert counts[0].tolist()[:2] == [1, 7]  # hits, misses (the CPU's count as misses)
    step([3, 1, 7, 2])  # 3 and 1 hit; 2 fetched; 7 the CPU's
    assert cpu.tolist()[:2] == [7, -1] and zero not in fill[:k].tolist()
    # a share (FetchSplit): half of each step's misses, rounded up, fetched; the limit above it
    step([13, 8, 11, 10], limit=4, share=128)  # 4 misses: 8 and 10 fetched, 11 and 13 the CPU's
    assert cpu.tolist() == [11, 13, -1, -1, 2, 0, -1, -1]
    assert where[[8, 10]].min().item() >= 0 and where[[11, 13]].tolist() == [-1, -1]
    step([8, 15, 3, 10], limit=4, share=128)  # 8, 10 and 3 hit; the one miss is fetched
    assert cpu.tolist() == [-1] * 2 * k and where[15].item() >= 0


def test_the_share_tuner_climbs_to_the_fastest_share():
    """Seconds per token lowest at a share of 160 of 256: from the cost model's 64 the tuner ends
    within a small step of it; the first window (compiles, the prompt's copies) is not timed."""
    from lazymoe.engine.compute.cpu_misses import ShareTuner

    tuner = ShareTuner(64)

    def run_window():
        new = None
        for _ in range(ShareTuner.WINDOW):
            new = tuner.add(0.01 * (1 + abs(tuner.share - 160) / 256))
        return new

    assert run_window() is None and not tuner.history  # the warm-up window
    for _ in range(40):
        run_window()
    assert abs(tuner.share - 160) <= 2 * tuner.min_step
    assert len(tuner.history) == 40 and tuner.history[0][0] == 64
    assert max(share for share, _ in list(tuner.history)[:8]) > 64 + 2 * 32  # steps grew while it gained
    noisy, rng = ShareTuner(64), np.random.default_rng(0)  # each token 3% either way: still near
    for _ in range(60 * ShareTuner.WINDOW):
        noisy.add(0.01 * (1 + abs(noisy.share - 160) / 256) * rng.uniform(0.97, 1.03))
    assert abs(np.mean([share for share, _ in list(noisy.history)[-20:]]) - 160) < 40
    for _ in range((ShareTuner.HISTORY + 5) * ShareTuner.WINDOW):  # a long-running server
        noisy.add(0.01)
    assert len(noisy.history) == ShareTuner.HISTORY  # the newest windows only: bounded memory


def test_the_share_tuner_bounces_at_the_bounds_and_restarts_on_a_prompt():
    from lazymoe.engine.compute.cpu_misses import SHARE_ONE, ShareTuner

    tuner = ShareTuner(SHARE_ONE)
    for _ in range(ShareTuner.WINDOW):  # the warm-up window
        assert tuner.add(0.01) is None
    for _ in range(ShareTuner.WINDOW - 1):
        assert tuner.add(0.01) is None
    assert tuner.add(0.01) == SHARE_ONE - tuner.step  # at the top: down is the only way
    assert ShareTuner(0).direction == 1  # at the bottom: up
    tuner.restart()  # a new prompt: the next window is a warm-up again, not compared with this one
    assert all(tuner.add(5.0) is None for _ in range(ShareTuner.WINDOW))
    assert len(tuner.history) == 1 and tuner.last is None


def test_tuning_needs_auto_a_cost_model_misses_to_split_and_a_slot_to_spare():
    from lazymoe.engine.compute.cpu_misses import tunes_share

    def fake(placement="auto", fetch_per_layer=None, cost_model="measured", slots=20):
        return SimpleNamespace(config=SimpleNamespace(placement=placement, fetch_per_layer=fetch_per_layer),
                               runtime=SimpleNamespace(cost_model=cost_model), top_k=8, total_experts=64,
                               tiers=SimpleNamespace(device=SimpleNamespace(book=SimpleNamespace(n_slots=slots))))  # fmt: skip

    assert tunes_share(fake())
    assert not tunes_share(fake("fetch")) and not tunes_share(fake(fetch_per_layer=3))
    assert not tunes_share(fake(cost_model=None))  # a CPU-only machine
    assert not tunes_share(fake(slots=64)) and not tunes_share(fake(slots=8))  # all resident; no room


def test_the_kernel_takes_the_share_the_tuner_sets_and_the_tokens_stay(q4_0, monkeypatch):
    """Placement auto's tuner on the device-cache decoder (forced on: a CPU-only machine has no
    cost model), one token a window, its shares scripted: a token under share 0 leaves every
    miss to the CPU, one under 256 fetches them all, and the tokens stay those of fetching
    every miss."""
    from lazymoe.engine.compute import cpu_misses, device_cache

    monkeypatch.setattr(cpu_misses, "fetch_split", half_for_auto(cpu_misses.fetch_split))
    monkeypatch.setattr(cpu_misses, "tunes_share", lambda engine: engine.config.placement == "auto")
    monkeypatch.setattr(cpu_misses.ShareTuner, "WINDOW", 1)
    script = iter([0, 256] * 20)
    monkeypatch.setattr(cpu_misses.ShareTuner, "add", lambda self, seconds: next(script))
    seen = []  # per token: (the share it ran with, misses, of those the CPU's)
    tune, last = device_cache.DeviceCacheDecoder._tune, [0, 0]

    def watched(self, seconds):
        misses, on_cpu = int(self.counts[:, 1].sum()), int(self.mailbox.cpu_per_layer.sum())
        seen.append((int(self.share.item()), misses - last[0], on_cpu - last[1]))
        last[:] = misses, on_cpu
        tune(self, seconds)

    monkeypatch.setattr(device_cache.DeviceCacheDecoder, "_tune", watched)
    prompt = load_tokenizer(q4_0).encode(PROMPTS[0])
    gen = GenerationConfig(max_new_tokens=8, stop_token_ids=())
    host, tuned = engine(q4_0, "segments"), engine(q4_0, "device-cache", placement="auto")
    assert tuned.generate(prompt, gen) == host.generate(prompt, gen)
    assert [share for share, _, _ in seen[:3]] == [128, 0, 256]  # the first estimate, then the script
    assert all(cpu == misses for share, misses, cpu in seen if share == 0)
    assert all(cpu == 0 for share, _, cpu in seen if share == 256)
    assert sum(misses for share, misses, _ in seen if share == 0) > 0  # (the share-0 tokens missed)
    assert "at first, then the share that gives the fastest tokens" in tuned.describe()
