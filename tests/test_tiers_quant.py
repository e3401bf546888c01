"""A GGUF file's experts reaching GPU slots, checked on a CPU: the tiers' bookkeeping of copies.

On a GPU a quantized miss goes like a float one (lazymoe/engine/storage/tiers.py): the file's
map -> a pinned staging slot (host copy) -> the VRAM slot (one async copy on the copy stream),
or straight from a page-locked file. CUDA events order those copies with the compute. Here the
CUDA calls are stand-ins that write down what they are asked (`fake_cuda`) and the "VRAM" pool
is host memory, so the order of copies, waits and reuses is checked without a GPU, and the bytes
really move. tests/gpu/test_segments_quant_gpu.py runs the real thing.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from gguf_models import wide_random_gguf

from lazymoe.engine.compute import expert_compute
from lazymoe.engine.compute.moe import ExpertRuntime, reference_experts
from lazymoe.engine.parts.cache import CacheBook
from lazymoe.engine.storage.gguf_file import GGUFExpertStore
from lazymoe.engine.storage.qpool import QuantizedPool
from lazymoe.engine.storage.tiers import STAGING_SLOTS, Tier, TierStack

ROLES = ("gate", "up", "down")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Q4_K_M: layers 0-1 hold smaller experts than layers 2-3 (Q6_K down)."""
    return GGUFExpertStore.open(wide_random_gguf(tmp_path_factory.mktemp("tiers-quant")))


class Log(list):
    """What the CUDA stand-ins were asked, in order; `current` is the stack of current streams."""

    current: list


@pytest.fixture
def log(monkeypatch) -> Log:
    """torch.cuda's streams and events replaced by stand-ins that append to the returned log:
    ("wait_stream", waiter, waited), ("record", event, stream), ("wait_event", stream, event),
    ("sync", event); the tests add ("copy", stream, ...) entries of their own."""
    entries = Log()

    class Stream:
        def __init__(self, name: str) -> None:
            self.name = name

        def wait_stream(self, other) -> None:
            entries.append(("wait_stream", self.name, other.name))

        def wait_event(self, event) -> None:
            entries.append(("wait_event", self.name, event))

    class Event:
        def record(self, stream) -> None:
            entries.append(("record", self, stream.name))

        def synchronize(self) -> None:
            entries.append(("sync", self))

    current = [Stream("compute")]

    @contextlib.contextmanager
    def stream(s):
        current.append(s)
        try:
            yield
        finally:
            current.pop()

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: Stream("copy"))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[-1])
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    entries.current = current
    return entries


def gpu_tiers(store, n_slots: int) -> TierStack:
    """A TierStack that takes its host pool for VRAM (the bytes stay in RAM)."""
    pool = QuantizedPool(n_slots, store.max_expert_qbytes, name="vram")
    pool.device = torch.device("cuda")
    return TierStack(store, Tier("vram", pool, CacheBook(n_slots, "lru")))


def spy(log: Log, pool: QuantizedPool, method: str, tag: str) -> None:
    """Log ("copy", current stream, tag, slot) each time `pool.method(slot, ...)` is called."""
    original = getattr(pool, method)

    def wrapper(slot, *args, **kwargs):
        log.append(("copy", log.current[-1].name, tag, slot))
        return original(slot, *args, **kwargs)

    setattr(pool, method, wrapper)


def fetch(tiers: TierStack, key) -> int:
    assert tiers.lookup(key) is None  # a counted miss
    return tiers.fetch(key, frozenset())


def assert_slot_holds(pool: QuantizedPool, slot: int, store, key) -> None:
    got, want = pool.expert(slot), store.read_quantized(*key)
    for role in ROLES:
        a, b = getattr(got, role), getattr(want, role)
        assert (a.format, a.shape) == (b.format, b.shape) and torch.equal(a.data, b.data)


def test_misses_pass_through_the_staging_ring_in_turn_and_wait_for_its_slots(store, log):
    tiers = gpu_tiers(store, n_slots=2)
    staging = tiers._staging
    assert isinstance(staging, QuantizedPool) and staging.n_slots == STAGING_SLOTS
    assert staging.slot_nbytes == tiers.device.pool.slot_nbytes and not tiers.direct
    spy(log, staging, "fill", "disk->pinned")
    spy(log, tiers.device.pool, "copy_slot", "pinned->vram")
    keys = [(0, 0), (0, 1), (3, 2), (3, 3), (1, 4), (2, 5)]  # six misses, four staging slots
    slots = [fetch(tiers, key) for key in keys]

    staged = [e[3] for e in log if e[0] == "copy" and e[2] == "disk->pinned"]
    assert staged == [0, 1, 2, 3, 0, 1]  # round robin
    # the host fills staging slots on its own thread, each copy to the "GPU" is on the copy
    # stream, after the copy stream waited for the compute (the evicted expert's readers)
    assert {e[1] for e in log if e[0] == "copy" and e[2] == "disk->pinned"} == {"compute"}
    assert [e[1] for e in log if e[0] == "copy" and e[2] == "pinned->vram"] == ["copy"] * 6
    assert [e[1:] for e in log if e[0] == "wait_stream"] == [("copy", "compute")] * 6
    assert {e[2] for e in log if e[0] == "record"} == {"copy"}
    # before staging slot 0 is refilled, the host waits for the copy that read it
    refill = [i for i, e in enumerate(log) if e[:3] == ("copy", "compute", "disk->pinned")][4]
    event = staging._events[0]  # recorded on the copy stream once slot 0's copy was issued
    recorded = [i for i, e in enumerate(log) if e[0] == "record" and e[1] is event]
    synced = [i for i, e in enumerate(log) if e[0] == "sync" and e[1] is event]
    assert recorded[0] < synced[0] < refill
    for slot, key in zip(slots[-2:], keys[-2:], strict=True):
        assert_slot_holds(tiers.device.pool, slot, store, key)  # the bytes really moved

    links = tiers.as_dict()["links"]
    stored = {layer: store.expert_qbytes(layer) for layer in range(4)}
    want = sum(stored[layer] for layer, _ in keys)
    assert stored[0] < stored[3]  # slots fit the largest; a copy moves what the expert holds
    for name in ("disk->pinned", "disk->vram"):
        assert (links[name]["transfers"], links[name]["bytes"]) == (6, want)
        assert links[name]["bytes_per_layer"] == {0: 2 * stored[0], 1: stored[1], 2: stored[2],
                                                  3: 2 * stored[3]}  # fmt: skip
    assert "pinned file->vram" not in links
    assert tiers.bytes_moved == want  # disk->pinned is the same bytes on their way


def test_compute_waits_once_per_copy_before_it_reads_the_slots(store, log, monkeypatch):
    tiers = gpu_tiers(store, n_slots=4)
    tiers.device.pool.device = torch.device("cpu")  # the CPU kernels compute (tiers stay "GPU")
    runtime = ExpertRuntime(
        tiers, torch.nn.functional.silu, "fetch", None, None,
        expert_flops_per_token=0, top_k=2, kernel="grouped",
    )  # fmt: skip
    computed = expert_compute.expert_forward

    def compute(*args, **options):
        log.append(("compute",))
        return computed(*args, **options)

    monkeypatch.setattr(expert_compute, "expert_forward", compute)
    torch.manual_seed(0)
    hidden = torch.randn(3, store.hidden_size)
    index = torch.tensor([[1, 5], [5, 2], [1, 2]])
    weights = torch.rand(3, 2)
    out = runtime.forward(3, hidden, index, weights)
    want = reference_experts(
        hidden, index, weights, lambda e: store.read(3, e), torch.nn.functional.silu
    )
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)

    first_compute = log.index(("compute",))
    waited = [e[2] for e in log if e[0] == "wait_event"]
    pool = tiers.device.pool
    fetched = [pool._events[tiers.device.book.slot_of((3, e))] for e in (1, 2, 5)]
    assert sorted(map(id, waited)) == sorted(map(id, fetched))  # each fetched slot, once
    assert all(e[0] != "wait_event" for e in log[first_compute:])  # waits come first
    assert {e[1] for e in log if e[0] == "wait_event"} == {"compute"}

    del log[:]
    runtime.forward(3, hidden, index, weights)  # all hits: the copies were waited for already
    assert not [e for e in log if e[0] in ("wait_event", "wait_stream", "record")]


def test_a_page_locked_file_is_copied_straight_into_the_slot(store, log, monkeypatch):
    monkeypatch.setattr(store, "pinned", True)  # as after pin_for_cuda (needs CUDA)
    tiers = gpu_tiers(store, n_slots=2)
    assert tiers.direct and tiers._staging is None
    spy(log, tiers.device.pool, "fill", "pinned file->vram")
    slot = fetch(tiers, (2, 6))
    assert [e[1:] for e in log if e[0] == "copy"] == [("copy", "pinned file->vram", slot)]
    assert [e[2] for e in log if e[0] == "record"] == ["copy"]
    assert_slot_holds(tiers.device.pool, slot, store, (2, 6))
    links = tiers.as_dict()["links"]
    assert set(links) == {"pinned file->vram"}
    assert (links["pinned file->vram"]["transfers"], links["pinned file->vram"]["bytes"]) == (
        1, store.expert_qbytes(2),
    )  # fmt: skip


def test_pool_copies_a_slot_in_one_piece_and_keeps_the_layout_views(store):
    staging = QuantizedPool(2, store.max_expert_qbytes, name="staging", pin_memory=True)
    vram = QuantizedPool(2, store.max_expert_qbytes, name="vram")
    assert staging.fill(1, store.read_quantized(3, 7)) == store.expert_qbytes(3)
    assert vram.copy_slot(0, staging, 1) == store.expert_qbytes(3)
    assert_slot_holds(vram, 0, store, (3, 7))
    views = vram.expert(0)
    staging.fill(0, store.read_quantized(3, 1))
    vram.copy_slot(0, staging, 0)
    assert vram.expert(0) is views  # same formats and shapes: the slot's views are reused
    assert_slot_holds(vram, 0, store, (3, 1))
    staging.fill(1, store.read_quantized(0, 2))  # another layer's formats: new views
    vram.copy_slot(0, staging, 1)
    assert vram.expert(0) is not views
    assert_slot_holds(vram, 0, store, (0, 2))
