"""Reading safetensors files without a library call per tensor: the header and a memory map.

A .safetensors file is an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and byte offsets (counted from the end of the header), then the raw tensor bytes.
Parsing the header ourselves lets the expert store find one expert's bytes and copy them straight
from the mapped file into a preallocated buffer, and check the file's length against the header
(a truncated download is caught when the store opens, not in the middle of generation).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lazymoe.engine.errors import CheckpointError
from lazymoe.engine.storage import pagelock
from lazymoe.i18n import _


class ExpertStoreError(CheckpointError):
    """A checkpoint or extracted expert file is missing, corrupt, truncated or does not match."""


def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = sorted({model_dir / name for name in weight_map.values()})
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ExpertStoreError(
            f"{model_dir} holds no *.safetensors file: the store reads safetensors checkpoints"
        )
    for file in files:
        if not file.is_file():
            raise ExpertStoreError(
                f"{file} is listed in the index but missing: download the model again"
            )
    return files


class SafetensorsFile:
    """One .safetensors file: its header, checked against the file size, and a lazy memory map."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                if header_len > size - 8:
                    raise ValueError(f"the header claims {header_len} bytes, the file has {size}")
                self.tensors: dict[str, dict] = json.loads(f.read(header_len))
        except (OSError, struct.error, ValueError, UnicodeDecodeError) as err:
            raise ExpertStoreError(
                _("{path} cannot be read as safetensors ({err}): it is corrupt or truncated, "
                  "download it again").format(path=path, err=err)
            ) from err
        self.tensors.pop("__metadata__", None)
        self.data_start = 8 + header_len  # bytes; tensor offsets count from here
        end = max((t["data_offsets"][1] for t in self.tensors.values()), default=0)
        if self.data_start + end > size:
            raise ExpertStoreError(
                _("{path} is truncated: its header needs {needed} bytes, the file has {size}: it is "
                  "corrupt or truncated, download it again").format(
                    path=path, needed=self.data_start + end, size=size
                )
            )
        self._map: np.memmap | None = None
        self._pinned = False  # page-locked for CUDA (pin_for_cuda)

    def span(self, name: str, first_element: int, shape: tuple[int, ...]) -> Span:
        """The bytes of `shape` elements of tensor `name`, starting at element `first_element`."""
        info = self.tensors[name]
        dtype = torch_dtype(info["dtype"])
        start = self.data_start + info["data_offsets"][0] + first_element * dtype.itemsize
        return Span(self, start, tuple(shape), dtype)

    def map(self) -> np.memmap:
        if self._map is None:  # copy-on-write: writable views for torch, the file never changes
            self._map = np.memmap(self.path, dtype=np.uint8, mode="c")
        return self._map

    def pin_for_cuda(self) -> int:
        """Page-lock the whole mapped file for CUDA, read-only (cudaHostRegister): copies from it
        to the GPU then run at pinned bandwidth, with no host copy first. The file's pages stay
        in RAM until close(). Returns the bytes locked."""
        if self._pinned:
            return 0
        nbytes = pagelock.lock(self.map(), self.path, ExpertStoreError)
        self._pinned = True
        return nbytes

    def __del__(self) -> None:  # never closed: unlock before the map goes (pagelock.lock)
        if getattr(self, "_pinned", False) and self._map is not None:
            pagelock.unlock(self._map)

    def close(self) -> None:
        if self._pinned:  # unlock before the mapping goes away
            pagelock.unlock(self._map)
            self._pinned = False
        self._map = None


@dataclass(frozen=True)
class Span:
    """A contiguous run of one tensor's bytes in a mapped file (one projection of one expert)."""

    file: SafetensorsFile
    start: int  # bytes from the start of the file
    shape: tuple[int, ...]
    dtype: torch.dtype

    def view(self) -> torch.Tensor:
        """A tensor over the mapped bytes (no copy: the OS reads the pages on first touch)."""
        nbytes = math.prod(self.shape) * self.dtype.itemsize
        raw = self.file.map()[self.start : self.start + nbytes]
        return torch.from_numpy(raw).view(self.dtype).view(self.shape)


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def torch_dtype(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ExpertStoreError(
            f"expert dtype {name} is not supported: use an F32, F16 or BF16 checkpoint "
            "(FP8 checkpoints with block scales are not supported yet)"
        )
    return _DTYPES[name]
