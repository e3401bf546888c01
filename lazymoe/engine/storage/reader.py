"""An expert store whose reads go through a function of yours (lab08: your lab05b reader).

    reader(path: str, header: dict, layer: int, expert: int) -> (gate (I, D), up (I, D), down (D, I))

`path` is the safetensors file that holds the expert and `header` its parsed JSON header (the
8-byte length, then JSON: dtype, shape, data_offsets per tensor). The arrays may be numpy or
torch; they must match the checkpoint's shapes and dtype exactly, so the engine computes the same
numbers as with its own reader. Everything else (sizes, keys, layers) comes from the wrapped store.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lazymoe.engine.storage.safetensors_file import ExpertStoreError
from lazymoe.engine.storage.store import ExpertStore, ExpertWeights

ExpertReader = Callable[[str, dict, int, int], object]


def _header(path: Path) -> dict:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))  # bytes, little-endian u64
        return json.loads(f.read(length))


def _tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.array(x, order="C"))  # a writable C-ordered copy
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().contiguous()
    raise ExpertStoreError(f"your expert reader returned {type(x).__name__} for {what}: return numpy "
                           "arrays or torch tensors (gate, up, down)")


class ReaderStore:
    """Wraps an `ExpertStore`: `read`, `views` and `read_into` call `reader` instead of its own."""

    pinned = False  # the learner's arrays are new CPU memory: the tiers copy them as usual

    def __init__(self, store: ExpertStore, reader: ExpertReader) -> None:
        if not callable(reader):
            raise TypeError(f"expert_reader={reader!r}: give a function "
                            "reader(path, header, layer, expert) -> (gate, up, down)")
        self._store, self.reader = store, reader
        self._headers: dict[Path, dict] = {}

    def __getattr__(self, name: str):  # sizes, keys, layers, close(): the wrapped store's
        return getattr(self._store, name)

    def read(self, layer: int, expert: int) -> ExpertWeights:
        where = self._store._where(layer, expert)
        path = Path(where["gate"].file.path)
        if path not in self._headers:
            self._headers[path] = _header(path)
        out = self.reader(str(path), self._headers[path], layer, expert)
        if out is None:
            raise ExpertStoreError("your expert reader returned None: write read_expert (lab05b) or "
                                   "make the engine without expert_reader")
        what = f"expert ({layer}, {expert})"
        got = [_tensor(x, f"{role} of {what}") for role, x in zip(("gate", "up", "down"), out, strict=True)]
        want = self._store.views(layer, expert)
        for role, tensor in zip(("gate", "up", "down"), got, strict=True):
            ref = getattr(want, role)
            if tensor.shape != ref.shape or tensor.dtype != ref.dtype:
                raise ExpertStoreError(
                    f"your expert reader gave {role} of {what} as {tuple(tensor.shape)} {tensor.dtype}; "
                    f"the checkpoint has {tuple(ref.shape)} {ref.dtype}: run check_read_expert on it"
                )
        return ExpertWeights(*got)

    views = read

    def read_into(self, layer: int, expert: int, out: ExpertWeights, non_blocking: bool = False) -> int:
        src = self.read(layer, expert)
        for role in ("gate", "up", "down"):
            getattr(out, role).copy_(getattr(src, role), non_blocking=non_blocking)
        return src.nbytes

    def __repr__(self) -> str:
        name = getattr(self.reader, "__name__", type(self.reader).__name__)
        return f"ReaderStore({self._store!r}, reader={name})"
