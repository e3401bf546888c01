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
of lazymoe.engine.compute.triton_quant read the slots in place (`SlotLayout` says where).
"""

from __future__ import annotations

import torch

from lazymoe import quant
from lazymoe.engine.storage.gguf_file import QuantizedExpert


class QuantizedPool:
    """`n_slots` slots of `slot_nbytes` bytes each, in host memory or on `device`."""

    quantized = True

    def __init__(self, n_slots: int, slot_nbytes: int, name: str = "pool", device="cpu") -> None:
        if n_slots <= 0 or slot_nbytes <= 0:
            raise ValueError(
                f"pool {name!r}: n_slots and slot_nbytes must be positive, got {n_slots}, {slot_nbytes}"
            )
        self.name = name
        self.n_slots = n_slots
        self.slot_nbytes = slot_nbytes  # bytes
        self.device = torch.device(device)
        self.data = torch.empty(n_slots, slot_nbytes, dtype=torch.uint8, device=self.device)  # once
        self._experts: list[QuantizedExpert | None] = [None] * n_slots

    @property
    def nbytes(self) -> int:
        return self.n_slots * self.slot_nbytes

    def fill(self, slot: int, src: QuantizedExpert) -> int:
        """Copy `src`'s stored bytes into `slot` (one copy per projection); returns the bytes copied."""
        if src.nbytes > self.slot_nbytes:
            raise ValueError(
                f"pool {self.name!r}: an expert of {src.nbytes} bytes does not fit a "
                f"slot of {self.slot_nbytes}: size the slots with the store's max_expert_qbytes"
            )
        parts, pos = [], 0
        for t in (src.gate, src.up, src.down):
            n = t.nbytes
            dst = self.data[slot, pos : pos + n].view(t.data.shape)
            dst.copy_(t.data)
            parts.append(quant.QuantizedTensor(t.format, t.shape, dst))
            pos += n
        self._experts[slot] = QuantizedExpert(*parts)
        return pos

    def expert(self, slot: int) -> QuantizedExpert:
        """The expert in `slot`, as views into the pool (valid until the slot is filled again)."""
        q = self._experts[slot]
        if q is None:
            raise KeyError(f"pool {self.name!r}: slot {slot} was never filled")
        return q

    # the float pool's GPU bookkeeping: nothing to wait for in host memory
    def sync_slot(self, slot: int) -> None:
        pass

    def __repr__(self) -> str:
        return (
            f"QuantizedPool({self.name!r}, slots={self.n_slots}, {self.slot_nbytes} bytes each, "
            f"{self.nbytes / 2**20:.1f} MiB)"
        )
