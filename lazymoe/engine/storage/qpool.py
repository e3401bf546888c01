"""QuantizedPool: expert slots that hold experts as stored bytes (a GGUF file's Q8_0, Q4_K, ...).

The float `ExpertPool` keeps each expert as (2I, D) + (D, I) numbers in the engine's dtype. A
quantized model's experts are 2-7x smaller than that, so a pool of raw bytes holds 2-7x more
experts in the same budget, and a cache miss copies the stored bytes as they are (no dequantize):

    data[slot]   (slot_nbytes,) uint8    gate | up | down, back to back, each in its own format

    slot_nbytes = the largest expert of any layer as stored (a Q4_K_M file mixes formats per
                  tensor, so experts of different layers differ in size; a slot fits any of them)
    pool bytes  = n_slots * slot_nbytes

`fill` copies one expert's bytes in and remembers its layout (format and shape per projection);
`expert(slot)` gives QuantizedTensor views into the slot for the CPU kernel
(`lazymoe.quant.expert.expert_forward`). On a GPU the pool lives in VRAM and the Triton kernels
of lazymoe.engine.compute.triton_quant read the slots in place (`SlotLayout` says where); a miss
reaches it like a float one (tiers.py): the file's bytes -> a pinned staging pool of this kind
(`fill`, a host copy) -> the VRAM slot (`copy_slot`, one async copy on the copy stream), or
straight from a page-locked file (`fill(..., non_blocking=True)`). The slots' CUDA events
(`SlotEvents`, shared with the float pool) order those copies with the compute.
"""

from __future__ import annotations

import torch

from lazymoe import quant
from lazymoe.engine.storage.gguf_file import QuantizedExpert
from lazymoe.engine.storage.pool import SlotEvents


class QuantizedPool(SlotEvents):
    """`n_slots` slots of `slot_nbytes` bytes each, in host memory (page-locked with
    `pin_memory=True`: a staging pool) or on `device`."""

    quantized = True

    def __init__(
        self,
        n_slots: int,
        slot_nbytes: int,
        name: str = "pool",
        device="cpu",
        pin_memory: bool = False,
    ) -> None:
        if n_slots <= 0 or slot_nbytes <= 0:
            raise ValueError(
                f"pool {name!r}: n_slots and slot_nbytes must be positive, got {n_slots}, {slot_nbytes}"
            )
        self.name = name
        self.n_slots = n_slots
        self.slot_nbytes = slot_nbytes  # bytes
        self.device = torch.device(device)
        # page-locking needs CUDA: without it (the CPU tests of the staging bookkeeping) a
        # staging pool is plain memory
        pin = pin_memory and self.device.type == "cpu" and torch.cuda.is_available()
        self.data = torch.empty(
            n_slots, slot_nbytes, dtype=torch.uint8, device=self.device, pin_memory=pin
        )  # allocated once
        self._experts: list[QuantizedExpert | None] = [None] * n_slots
        self._init_events(n_slots)

    @property
    def nbytes(self) -> int:
        return self.n_slots * self.slot_nbytes

    def place(self, slot: int, src: QuantizedExpert) -> QuantizedExpert:
        """Lay `src` out in `slot` (gate | up | down, back to back) without copying: the views
        a copy fills and the kernels read. Reuses the slot's views when the layout is the same."""
        if src.nbytes > self.slot_nbytes:
            raise ValueError(
                f"pool {self.name!r}: an expert of {src.nbytes} bytes does not fit a "
                f"slot of {self.slot_nbytes}: size the slots with the store's max_expert_qbytes"
            )
        parts = (src.gate, src.up, src.down)
        old = self._experts[slot]
        if old is not None and all(
            (a.format, a.shape) == (b.format, b.shape)
            for a, b in zip((old.gate, old.up, old.down), parts, strict=True)
        ):
            return old  # same formats and shapes: same byte ranges (most misses)
        views, pos = [], 0
        for t in parts:
            n = t.nbytes
            dst = self.data[slot, pos : pos + n].view(t.data.shape)
            views.append(quant.QuantizedTensor(t.format, t.shape, dst))
            pos += n
        self._experts[slot] = QuantizedExpert(*views)
        return self._experts[slot]

    def fill(self, slot: int, src: QuantizedExpert, non_blocking: bool = False) -> int:
        """Copy `src`'s stored bytes into `slot` (one copy per projection); returns the bytes
        copied. non_blocking: a GPU pool and a page-locked `src`: the copies are only enqueued
        on the current stream (the caller records the slot's event)."""
        dst = self.place(slot, src)
        for d, s in zip((dst.gate, dst.up, dst.down), (src.gate, src.up, src.down), strict=True):
            d.data.copy_(s.data, non_blocking=non_blocking)
        return src.nbytes

    def copy_slot(self, slot: int, src: QuantizedPool, src_slot: int) -> int:
        """`src`'s expert in `src_slot` into `slot`: one copy of its bytes (pinned staging ->
        VRAM, enqueued on the current stream); returns the bytes copied."""
        q = src.expert(src_slot)
        n = q.nbytes
        self.place(slot, q)
        self.data[slot, :n].copy_(src.data[src_slot, :n], non_blocking=True)
        return n

    def expert(self, slot: int) -> QuantizedExpert:
        """The expert in `slot`, as views into the pool (valid until the slot is filled again)."""
        q = self._experts[slot]
        if q is None:
            raise KeyError(f"pool {self.name!r}: slot {slot} was never filled")
        return q

    def __repr__(self) -> str:
        return (
            f"QuantizedPool({self.name!r}, slots={self.n_slots}, {self.slot_nbytes} bytes each, "
            f"{self.nbytes / 2**20:.1f} MiB)"
        )
