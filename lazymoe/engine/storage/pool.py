"""ExpertPool: the one place that owns expert buffers, allocated once, in equal slots.

A pool is `n_slots` experts' worth of memory on one device (VRAM, pinned RAM or plain RAM),
allocated when the engine starts and never again: a cache miss copies bytes into a slot, it does
not allocate. Each slot holds one expert in transformers' fused layout:

    gate_up[slot]  (2I, D)   rows [0, I) gate_proj, rows [I, 2I) up_proj
    down[slot]     (D, I)

    pool bytes = n_slots * 3 * I * D * bytes_per_param

On a GPU each slot also has a CUDA event, recorded when a copy into it is issued, that compute
waits on before reading the slot (copies run on a side stream). `SlotEvents` is that bookkeeping,
shared with the quantized pool (qpool.py).
"""

from __future__ import annotations

import torch

from lazymoe.engine.storage.store import ExpertWeights


def expert_nbytes(intermediate: int, hidden: int, dtype: torch.dtype) -> int:
    """Bytes of one expert: gate (I, D) + up (I, D) + down (D, I)."""
    return 3 * intermediate * hidden * dtype.itemsize


class SlotEvents:
    """One CUDA event per slot: when the last copy into (or out of) the slot was issued.

    Copies run on a side stream; the compute stream waits on a slot's event before reading it
    (`wait_ready`), and the host waits on it before rewriting a host slot whose copy to the GPU
    may still be in flight (`sync_slot`). Host pools without GPU copies never record one.
    """

    def _init_events(self, n_slots: int) -> None:
        self._events: list[torch.cuda.Event | None] = [None] * n_slots
        self._pending = [False] * n_slots  # a copy into the slot that no reader has waited for

    def mark_copy(self, slot: int, stream: torch.cuda.Stream) -> None:
        """Record that a copy into `slot` was issued on `stream` (GPU pools and pinned RAM)."""
        event = self._events[slot]
        if event is None:
            event = self._events[slot] = torch.cuda.Event()
        event.record(stream)
        self._pending[slot] = True

    def wait_ready(self, slot: int, stream: torch.cuda.Stream | None = None) -> None:
        """Make `stream` (default: the current one) wait until the last copy into `slot` is done.

        A slot's readers all run on one compute stream, so once that stream waits for a copy,
        later reads are ordered after it: the wait is enqueued once per copy, not per read.
        """
        if self._pending[slot]:
            (stream or torch.cuda.current_stream()).wait_event(self._events[slot])
            self._pending[slot] = False

    def sync_slot(self, slot: int) -> None:
        """Block the host until copies reading or writing `slot` are done (before a CPU write)."""
        event = self._events[slot]
        if event is not None:
            event.synchronize()


class ExpertPool(SlotEvents):
    """`n_slots` expert buffers on `device` (pinned host memory with `pin_memory=True`)."""

    def __init__(
        self,
        n_slots: int,
        intermediate: int,
        hidden: int,
        dtype: torch.dtype,
        device: str | torch.device = "cpu",
        pin_memory: bool = False,
        name: str = "pool",
    ) -> None:
        if n_slots <= 0:
            raise ValueError(f"pool {name!r}: n_slots must be positive, got {n_slots}")
        self.name = name
        self.n_slots = n_slots
        self.device = torch.device(device)
        kwargs = {"dtype": dtype, "device": self.device}
        if pin_memory and self.device.type == "cpu":
            kwargs["pin_memory"] = True
        self.gate_up = torch.empty(n_slots, 2 * intermediate, hidden, **kwargs)  # (S, 2I, D)
        self.down = torch.empty(n_slots, hidden, intermediate, **kwargs)  # (S, D, I)
        # Views per slot, made once: no allocation when a slot is filled or read.
        self._views = [
            ExpertWeights(
                self.gate_up[s, :intermediate], self.gate_up[s, intermediate:], self.down[s]
            )
            for s in range(n_slots)
        ]
        self.slot_nbytes = expert_nbytes(intermediate, hidden, dtype)
        self._init_events(n_slots)

    @property
    def nbytes(self) -> int:
        return self.n_slots * self.slot_nbytes

    def weights(self, slot: int) -> ExpertWeights:
        """The slot's three projections as views (gate (I, D), up (I, D), down (D, I))."""
        return self._views[slot]

    def __repr__(self) -> str:
        return (
            f"ExpertPool({self.name!r}, slots={self.n_slots}, device={self.device}, "
            f"{self.nbytes / 2**20:.1f} MiB)"
        )
