"""The tiers: VRAM -> pinned RAM -> disk on a GPU machine; RAM -> disk on a CPU-only one.

Each cached tier is an `ExpertPool` (the bytes) plus a `CacheBook` (which expert is in which
slot, and the hit/miss counts). This class moves bytes between them and counts every transfer:

    device tier hit   -> nothing moves
    device tier miss  -> RAM tier hit:  RAM slot -> device slot        ("ram->vram")
                      -> RAM tier miss: disk -> RAM slot -> device slot ("disk->ram", "ram->vram")
                      -> no RAM tier:   disk -> pinned staging -> device ("disk->vram")
                      -> page-locked checkpoint (pin_checkpoint): mapping -> device
                                                                 ("pinned file->vram")
    on a CPU device the device tier *is* RAM:  disk -> RAM slot         ("disk->ram")

A GGUF file's experts kept quantized (`QuantizedPool`: slots of stored bytes) take the same
roads without a RAM tier: the file's map -> a pinned staging slot ("disk->pinned", a host copy
of gate, up and down into one run) -> the VRAM slot ("disk->vram", one copy per expert), or with
a page-locked file straight from the map ("pinned file->vram", one copy per projection).

Copies to the GPU go on a side CUDA stream; each slot's event tells compute when it may read
(`wait_slot`), and a staging slot is rewritten only once its copy to the GPU is done.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from lazymoe.engine.parts.cache import CacheBook
from lazymoe.engine.parts.policies import ExpertKey
from lazymoe.engine.storage.pool import ExpertPool
from lazymoe.engine.storage.qpool import QuantizedPool
from lazymoe.engine.storage.store import ExpertStore, ExpertWeights

STAGING_SLOTS = 4  # pinned host slots a miss passes through: one can fill while others copy


@dataclass
class LinkStats:
    """Bytes and host seconds spent on one link (e.g. "disk->ram"), in total and per layer."""

    transfers: int = 0
    nbytes: int = 0  # bytes
    seconds: float = 0.0  # host seconds (reads; for async GPU copies only the time to issue them)
    bytes_per_layer: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, layer: int, nbytes: int, seconds: float, transfers: int = 1) -> None:
        """`transfers` copies of `nbytes` bytes in all (one unless a caller counts several)."""
        self.transfers += transfers
        self.nbytes += nbytes
        self.seconds += seconds
        self.bytes_per_layer[layer] += nbytes

    def as_dict(self) -> dict:
        return {
            "transfers": self.transfers,
            "bytes": self.nbytes,
            "seconds": self.seconds,
            "bytes_per_layer": dict(sorted(self.bytes_per_layer.items())),
        }


@dataclass
class Tier:
    name: str  # "vram" or "ram"
    pool: ExpertPool | QuantizedPool
    book: CacheBook


class TierStack:
    """The device tier, an optional pinned-RAM tier under it (GPU only), and the store."""

    def __init__(self, store: ExpertStore, device: Tier, ram: Tier | None = None) -> None:
        self.store = store
        self.device = device
        self.ram = ram
        self.on_gpu = device.pool.device.type == "cuda"
        self.links: dict[str, LinkStats] = defaultdict(LinkStats)
        self.copy_stream = torch.cuda.Stream(device.pool.device) if self.on_gpu else None
        self._staging: ExpertPool | QuantizedPool | None = None
        self._next_staging = 0
        # stored bytes as they are (qpool.py): a GGUF file's experts, kept quantized
        self.quantized = getattr(device.pool, "quantized", False)
        # a page-locked checkpoint whose bytes the slots hold as they are (the engine's dtype,
        # or a GGUF file's stored bytes): misses copy straight from the mapping (a GGUF file's
        # experts in float slots are dequantized on the host first: they go through staging)
        same_bytes = self.quantized or (
            not getattr(store, "quantized", False) and store.dtype == device.pool.gate_up.dtype
        )
        self.direct = self.on_gpu and ram is None and store.pinned and same_bytes
        if self.on_gpu and ram is None and not self.direct:  # disk -> staging -> VRAM
            pool = device.pool
            if self.quantized:
                self._staging = QuantizedPool(
                    STAGING_SLOTS, pool.slot_nbytes, name="staging", pin_memory=True
                )
            else:
                self._staging = ExpertPool(
                    STAGING_SLOTS, pool.gate_up.shape[1] // 2, pool.gate_up.shape[2],
                    pool.gate_up.dtype, "cpu", pin_memory=True, name="staging",
                )  # fmt: skip

    @property
    def tiers(self) -> list[Tier]:
        return [self.device] if self.ram is None else [self.device, self.ram]

    # -- the device tier ---------------------------------------------------------------------
    def lookup(self, key: ExpertKey) -> int | None:
        """The device slot of `key` (a counted hit) or None (a counted miss)."""
        return self.device.book.lookup(key)

    def fetch(self, key: ExpertKey, protected: frozenset[ExpertKey]) -> int:
        """Bring `key` into the device tier (after a miss, or to prefetch it); its slot."""
        slot, _evicted = self.device.book.admit(key, protected)
        if self.copy_stream is None:  # host slots: one synchronous copy from the file
            link = "disk->vram" if self.on_gpu else "disk->ram"  # (tests dress a CPU as a GPU)
            self._read_from_disk(key, self.device.pool, slot, link)
            return slot
        stream = self.copy_stream
        stream.wait_stream(torch.cuda.current_stream())  # the evicted expert's readers are done
        if self.direct:
            self._copy_from_mapping(key, slot, stream)
            return slot
        if self.ram is not None:
            src_pool, src_slot = self.ram.pool, self._ram_slot(key)
        else:
            src_pool, src_slot = self._stage(key)
        start = time.perf_counter()
        pool = self.device.pool
        with torch.cuda.stream(stream):
            if self.quantized:  # one copy of the stored bytes
                nbytes = pool.copy_slot(slot, src_pool, src_slot)
            else:
                pool.gate_up[slot].copy_(src_pool.gate_up[src_slot], non_blocking=True)
                pool.down[slot].copy_(src_pool.down[src_slot], non_blocking=True)
                nbytes = pool.slot_nbytes
        pool.mark_copy(slot, stream)
        src_pool.mark_copy(src_slot, stream)  # the host slot is busy until this copy is done
        link = "ram->vram" if self.ram is not None else "disk->vram"
        self.links[link].add(key[0], nbytes, time.perf_counter() - start)
        return slot

    def _copy_from_mapping(self, key: ExpertKey, slot: int, stream: torch.cuda.Stream) -> None:
        """The page-locked checkpoint straight into the device slot: three DMA copies, no host
        copy and no staging buffer (the file's pages are never rewritten, so nothing to wait for)."""
        with torch.cuda.stream(stream):
            self._read_from_disk(
                key, self.device.pool, slot, "pinned file->vram", non_blocking=True
            )
        self.device.pool.mark_copy(slot, stream)

    def wait_slot(self, slot: int, stream: torch.cuda.Stream | None = None) -> None:
        """Before a kernel reads device slot `slot`: on a GPU, `stream` (default the current
        one) waits until every copy into the slot is done; nothing to wait for on a CPU."""
        if self.on_gpu:
            self.device.pool.wait_ready(slot, stream)

    def device_weights(self, slot: int, stream: torch.cuda.Stream | None = None) -> ExpertWeights:
        """A float device slot's weights, once every copy into it is done (`wait_slot`)."""
        self.wait_slot(slot, stream)
        return self.device.pool.weights(slot)

    # -- host copies, for experts computed on the CPU --------------------------------------------
    def host_weights(self, key: ExpertKey) -> tuple[torch.Tensor | None, ExpertWeights]:
        """`key`'s weights in host memory, from the RAM tier or read from the file.

        Returns (gate_up (2I, D) or None, weights): the fused view when the RAM tier holds it.
        """
        if self.ram is not None:
            slot = self._ram_slot(key)
            return self.ram.pool.gate_up[slot], self.ram.pool.weights(slot)
        start = time.perf_counter()
        weights = self.store.read(*key)
        self.links["disk->cpu"].add(key[0], weights.nbytes, time.perf_counter() - start)
        return None, weights

    # -- internals -------------------------------------------------------------------------------
    def _ram_slot(self, key: ExpertKey) -> int:
        """`key`'s slot in the pinned-RAM tier, reading it from disk on a RAM miss."""
        book = self.ram.book
        slot = book.lookup(key)
        if slot is None:
            slot, _ = book.admit(key)
            self.ram.pool.sync_slot(slot)  # an earlier H2D copy may still read this slot
            self._read_from_disk(key, self.ram.pool, slot, "disk->ram")
        return slot

    def _stage(self, key: ExpertKey) -> tuple[ExpertPool | QuantizedPool, int]:
        """Read `key` into the next pinned staging slot (round robin); (staging pool, slot)."""
        staging = self._staging
        slot = self._next_staging
        self._next_staging = (slot + 1) % staging.n_slots
        staging.sync_slot(slot)  # its previous expert's copy to the GPU may still be reading it
        self._read_from_disk(key, staging, slot, "disk->pinned")
        return staging, slot

    def _read_from_disk(
        self, key: ExpertKey, pool, slot: int, link: str, non_blocking: bool = False
    ) -> None:
        """`key` from the store into `pool`'s `slot`: a float pool's buffers (dequantized from
        a GGUF file if need be), or a quantized pool's bytes as stored; counted on `link`.
        (On a CPU torch's copy already runs on its intra-op threads: one 2.65 MB Q4_0 expert
        copied at 26 GB/s on one thread, 34 on two, 15 split over two Python threads.)"""
        start = time.perf_counter()
        if self.quantized:
            nbytes = pool.fill(slot, self.store.read_quantized(*key), non_blocking=non_blocking)
        else:
            out = pool.weights(slot)
            nbytes = self.store.read_into(key[0], key[1], out, non_blocking=non_blocking)
        self.links[link].add(key[0], nbytes, time.perf_counter() - start)

    # -- reporting -------------------------------------------------------------------------------
    @property
    def bytes_moved(self) -> int:
        return sum(link.nbytes for name, link in self.links.items() if name != "disk->pinned")

    def reset_stats(self) -> None:
        for tier in self.tiers:
            tier.book.reset_stats()
        self.links.clear()

    def as_dict(self) -> dict:
        return {
            "tiers": {
                t.name: {
                    **t.book.stats.as_dict(),
                    "slots": t.pool.n_slots,
                    "pool_bytes": t.pool.nbytes,
                    "policy": t.book.policy.name,
                }
                for t in self.tiers
            },
            "links": {name: link.as_dict() for name, link in sorted(self.links.items())},
        }
