"""The batch's KV cache (lazymoe.engine.batch_kv) and the one attention call per layer it allows:
each row's token written at its own position, rows freed and reused, buffers that grow and
shrink with the rows in use, and the tokens of each request still exactly its tokens alone."""

from __future__ import annotations

import pytest
import torch

from lazymoe.engine import Engine, GenerationConfig
from lazymoe.engine.batch_kv import BatchKV, _fitted
from lazymoe.models.random import make_random_checkpoint
from lazymoe.paths import bundled_model_dir

MODEL = bundled_model_dir()
needs_bundled = pytest.mark.skipif(
    not (MODEL / "model.safetensors").exists(),
    reason="the bundled model is not built: `python -m lazymoe.models.prepare`",
)
CPU = torch.device("cpu")
KVH, HD = 2, 3  # KV heads, head dim of the unit tests' buffers
GREEDY = GenerationConfig(max_new_tokens=16, stop_token_ids=())
BUNDLED_EXPERT_BYTES = 3 * 128 * 128 * 4  # 3 * I * D * 4 bytes (F32)


def kv_of(n_layers: int = 2, devices=None) -> BatchKV:
    return BatchKV(devices or [CPU] * n_layers, KVH, HD, torch.float32)


def prefix(length: int, fill: float) -> torch.Tensor:
    """A sequence's keys as a prefill cache holds them: (1, KV heads, length, head dim)."""
    return torch.full((1, KVH, length, HD), fill)


# -- the buffers, without a model -----------------------------------------------------------------
@torch.inference_mode()
def test_update_writes_each_rows_token_at_its_own_position_and_the_mask_hides_the_rest():
    kv = kv_of()
    kv.reserve(3, 5)
    lengths = {"a": 2, "b": 0, "c": 4}  # positions already cached; the new token goes there
    for fill, (owner, length) in enumerate(lengths.items(), start=1):
        kv.write(kv.add(owner), [prefix(length, fill)] * 2, [prefix(length, -fill)] * 2, length)
    assert kv.owners == ["a", "b", "c"] and kv.max_len >= 5
    kv.prepare(list(lengths.values()))
    new_keys = torch.arange(3 * KVH * HD, dtype=torch.float32).view(3, KVH, 1, HD) + 100
    keys, values = kv.update(new_keys, -new_keys, layer_idx=1)
    assert keys.shape == values.shape == (3, KVH, kv.max_len, HD)  # the 3 rows in use
    for row, length in enumerate(lengths.values()):
        assert torch.equal(keys[row, :, length], new_keys[row, :, 0])  # at its own position
        assert torch.equal(values[row, :, length], -new_keys[row, :, 0])
        assert (keys[row, :, :length] == row + 1).all()  # its prefix untouched
        assert (keys[row, :, length + 1 :] == 0).all()  # nothing after it
    assert (kv.keys[0][1, :, 0] == 0).all()  # layer 0 not written by layer 1's update
    mask = kv.mask(CPU)
    assert mask.shape == (3, 1, 1, kv.max_len)
    for row, length in enumerate(lengths.values()):
        seen = mask[row, 0, 0] == 0
        assert seen[: length + 1].all() and torch.isinf(mask[row, 0, 0, length + 1 :]).all()


@torch.inference_mode()
def test_prepare_from_a_device_tensor_gives_the_same_rows_positions_and_mask():
    """What a recorded (CUDA graph) batched step prepares from the positions on the device:
    the same as `prepare` from the host's list; one device only."""
    kv = kv_of()
    kv.reserve(3, 6)
    for owner in "abc":
        kv.add(owner)
    kv.prepare([2, 0, 5])
    want = kv._step[CPU]
    kv.prepare_static(torch.tensor([2, 0, 5]))
    got = kv._step[CPU]
    for w, g in zip(want, got, strict=True):
        assert torch.equal(w, g)
    split = kv_of(devices=[CPU, torch.device("meta")])
    with pytest.raises(ValueError, match="every layer on cpu"):
        split.prepare_static(torch.tensor([0]))


@torch.inference_mode()
def test_a_freed_row_takes_the_last_row_and_no_row_left_drops_the_buffers():
    kv = kv_of()
    kv.reserve(3, 4)
    for fill, owner in enumerate("abc", start=1):
        kv.write(kv.add(owner), [prefix(3, fill)] * 2, [prefix(3, fill)] * 2, 3)
    kv.release("a")
    assert kv.owners == ["c", "b"]  # "c" moved into row 0, its keys with it
    assert (kv.read("c", 3)[1][0] == 3).all() and (kv.read("b", 3)[0][1] == 2).all()
    kv.release("unknown")  # not an error
    kv.release("b")
    assert kv.owners == ["c"] and kv.n_rows >= 1
    row = kv.add("d")  # a free row is reused, no reallocation
    assert row == 1 and kv.owners == ["c", "d"]
    kv.release("c")
    kv.release("d")
    assert len(kv) == 0 and kv.keys == [] and kv.nbytes == 0 and kv.n_rows == kv.max_len == 0


@torch.inference_mode()
def test_growing_keeps_every_rows_keys_and_sizes_stay_within_four_times_the_need():
    kv = kv_of()
    kv.reserve(2, 3)
    assert (kv.n_rows, kv.max_len) == (4, 6)  # twice the need
    kv.write(kv.add("a"), [prefix(3, 7.0)] * 2, [prefix(3, 8.0)] * 2, 3)
    kv.reserve(9, 40, cap=50)  # more rows, longer: reallocated, copied over
    assert (kv.n_rows, kv.max_len) == (18, 50)  # positions capped by the longest request
    keys, values = kv.read("a", 3)[1]
    assert (keys == 7.0).all() and (values == 8.0).all()
    assert (kv.keys[1][0, :, 3:] == 0).all()
    kv.reserve(3, 40)
    assert (kv.n_rows, kv.max_len) == (6, 50)  # 18 > 4 x 3 rows: shrunk; 50 <= 4 x 40 kept
    assert (kv.read("a", 3)[0][0] == 7.0).all()
    with pytest.raises(ValueError, match="1 are in use"):
        kv.reserve(0, 1)
    with pytest.raises(ValueError, match="past max_len"):
        kv.prepare([50])
    assert [_fitted(0, 5), _fitted(8, 5), _fitted(20, 5), _fitted(21, 5), _fitted(0, 5, cap=7)] == [
        10, 8, 20, 10, 7]  # fmt: skip


@torch.inference_mode()
def test_kept_buffers_only_grow_and_stay_when_no_row_is_left():
    """Once CUDA graphs read the buffers (`keep`), a smaller need keeps them as they are, a
    larger one grows them (rows copied), and the last row leaving leaves them in place."""
    kv = kv_of()
    kv.reserve(8, 20)
    kv.write(kv.add("a"), [prefix(3, 7.0)] * 2, [prefix(3, 8.0)] * 2, 3)
    kv.keep = True
    buffers = list(kv.keys)
    kv.reserve(1, 4)  # would shrink to (2, 8) otherwise
    assert (kv.n_rows, kv.max_len) == (16, 40)
    assert all(k is b for k, b in zip(kv.keys, buffers, strict=True))  # the same tensors
    kv.reserve(20, 50)
    assert (kv.n_rows, kv.max_len) == (40, 100) and (kv.read("a", 3)[0][0] == 7.0).all()
    kv.release("a")
    assert len(kv) == 0 and (kv.n_rows, kv.max_len) == (40, 100) and kv.nbytes > 0


@torch.inference_mode()
def test_each_layers_buffers_and_mask_sit_on_that_layers_device():
    """A split engine: layers 0-1 on one device, 2 on another ("meta" stands in for a second GPU:
    an op mixing it with the CPU raises)."""
    meta = torch.device("meta")
    kv = kv_of(devices=[CPU, CPU, meta])
    kv.reserve(1, 2)
    kv.add("a")
    kv.prepare([0])
    assert [k.device for k in kv.keys] == [CPU, CPU, meta]
    assert kv.mask(CPU).device == CPU and kv.mask(meta).device == meta
    keys, _ = kv.update(torch.ones(1, KVH, 1, HD, device=meta), torch.ones(1, KVH, 1, HD,
                        device=meta), layer_idx=2)  # fmt: skip
    assert keys.device == meta


# -- the batch: one attention call per layer, rows that come and go -------------------------------
def bundled(n_slots: int | None = None, **fields) -> Engine:
    budget = None if n_slots is None else n_slots * BUNDLED_EXPERT_BYTES
    return Engine.from_pretrained(MODEL, vram_budget=budget, **{"device": "cpu", **fields})


@needs_bundled
def test_a_batched_step_calls_each_layers_attention_once_for_all_sequences():
    engine = bundled(12)
    texts = ["def f(x):\n", "import os\n", "SELECT 1", "# a comment\n"]
    prompts = [engine.tokenizer.encode(t) for t in texts]
    calls = []  # (layer, hidden states' shape) per attention call

    def spy(i):
        return lambda module, args, kwargs, out: calls.append((i, kwargs["hidden_states"].shape))

    hooks = [layer.self_attn.register_forward_hook(spy(i), with_kwargs=True)
             for i, layer in enumerate(engine.model.model.layers)]  # fmt: skip
    try:
        with engine.batch() as batch:
            for p in prompts:
                batch.add(p, GREEDY)
            for _ in range(3):
                calls.clear()
                batch.step()
                assert batch.last_path == "batched"
                n_layers, dim = len(engine.model.model.layers), engine.hidden
                assert calls == [(i, (len(prompts), 1, dim)) for i in range(n_layers)]
    finally:
        for hook in hooks:
            hook.remove()


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("batch-kv") / "m", seed=11)


@pytest.mark.parametrize("fast_lone", [True, False])
def test_rows_are_freed_and_reused_across_many_joins_and_leaves(random_model, fast_lone):
    """Twelve requests of different lengths join two at a time while others finish or are
    removed: the rows in use are always the batched live ones, the buffers stay within four
    times what the step needs, they are gone when the batch is empty, and every request's
    tokens are its tokens alone."""
    from lazymoe.engine.batch import EngineBatch

    engine = Engine.from_pretrained(random_model, device="cpu", vram_budget=None)
    requests = [(list(range(10 + i, 14 + 3 * i)), GenerationConfig(
        max_new_tokens=3 + (5 * i) % 11, stop_token_ids=())) for i in range(12)]  # fmt: skip
    expected = [engine.generate(p, g) for p, g in requests]
    got, removed, sizes = {}, {}, []
    with EngineBatch(engine, fast_lone=fast_lone) as batch:
        kv = batch._kv
        prepare = kv.prepare  # each batched step's sizes: (rows in use, rows, positions, need)
        kv.prepare = lambda at: sizes.append((len(kv), kv.n_rows, kv.max_len, max(at) + 1)) or (
            prepare(at))  # fmt: skip
        handles = {}
        for n_step in range(200):
            if n_step % 3 == 0 and len(handles) < len(requests):
                for i in range(len(handles), min(len(handles) + 2, len(requests))):
                    handles[i] = batch.add(*requests[i])[0]
            if n_step == 7:  # one leaves early
                removed[1] = batch.tokens(handles[1])
                batch.remove(handles[1])
            if not len(batch) and len(handles) == len(requests):
                break
            batch.step()
            live = {h for h in handles.values() if h in batch._seqs and not batch.finished(h)}
            assert set(kv.owners) <= live  # finished and removed ones gave their row back
            if batch.last_path == "single":
                assert len(kv) == 0 and kv.nbytes == 0  # alone: out of the rows
        for i, handle in handles.items():
            if i != 1:
                got[i] = batch.tokens(handle)
        assert len(kv) == 0 and kv.nbytes == 0
    assert batch.step_counts["batched"] == len(sizes) > 15
    for in_use, n_rows, max_len, need in sizes:
        assert in_use <= n_rows <= 4 * in_use and need <= max_len <= 4 * need
    assert max(n_rows for _, n_rows, _, _ in sizes) <= 2 * max(in_use for in_use, *_ in sizes)
    assert got == {i: want for i, want in enumerate(expected) if i != 1}
    assert removed[1] == expected[1][: len(removed[1])]


@needs_bundled
@pytest.mark.parametrize("devices", [None, ("cpu", "cpu")])  # ("cpu", "cpu"): layers split in two
def test_a_long_prompt_joining_later_grows_the_positions_and_stays_exact(devices):
    engine = bundled(12, **({"devices": devices, "device": "auto"} if devices else {}))
    short = [engine.tokenizer.encode(t) for t in ("import numpy as np\n", "SELECT name")]
    long = engine.tokenizer.encode("def read_config(path):\n    with open(path) as f:\n" * 12)
    assert len(long) > 4 * max(len(p) + GREEDY.max_new_tokens for p in short)
    expected = [engine.generate(p, GREEDY) for p in [*short, long]]
    with engine.batch() as batch:
        handles = [batch.add(p, GREEDY)[0] for p in short]
        for _ in range(3):
            batch.step()
        max_len_before = batch._kv.max_len
        handles.append(batch.add(long, GREEDY)[0])
        batch.step()
        assert max_len_before < len(long) < batch._kv.max_len <= len(long) + GREEDY.max_new_tokens
        assert len(batch._kv) == 3
        while len(batch):
            batch.step()
        assert [batch.tokens(h) for h in handles] == expected
