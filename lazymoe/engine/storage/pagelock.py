"""Page-lock a mapped checkpoint for CUDA, read-only (cudaHostRegister), and unlock it.

A page-locked map lets a cache miss copy an expert's bytes straight from the file's pages to VRAM
at pinned bandwidth, with no host copy first; the pages stay in RAM until `unlock` (like
llama.cpp's --mlock). Both checkpoint readers (safetensors_file.py, gguf_file.py) use it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

PORTABLE, MAPPED, READ_ONLY = 1, 2, 8  # cudaHostRegister flags: every CUDA context may use it;
# kernels may read it in place (compute/device_cache.py: a miss read over PCIe by the GPU); the
# GPU only reads it, which lets the driver pin a private (copy-on-write) file mapping without
# copying pages


ALREADY_REGISTERED = 712  # cudaErrorHostMemoryAlreadyRegistered


def lock(mapped: np.ndarray, path: Path, error: type[Exception]) -> int:
    """Page-lock `mapped` (the whole file's map); returns the bytes locked. Raises `error`
    naming `path` and what to do when CUDA refuses.

    A map freed while still locked (its owner never closed, e.g. in a crashed run) leaves CUDA
    holding the range; a new map at the same address is then refused as already registered:
    that stale registration is dropped and the lock tried once more. A refusal is cleared from
    CUDA's error state, so no later, unrelated CUDA call reports it."""
    cudart = torch.cuda.cudart()
    address, flags = mapped.ctypes.data, PORTABLE | MAPPED | READ_ONLY
    err = int(cudart.cudaHostRegister(address, mapped.nbytes, flags))
    if err == ALREADY_REGISTERED:
        _clear_error()
        cudart.cudaHostUnregister(address)
        _clear_error()
        err = int(cudart.cudaHostRegister(address, mapped.nbytes, flags))
    if err != 0:
        _clear_error()
        raise error(
            f"{path}: CUDA could not page-lock the mapped file (CUDA error {err}); run without "
            "pin_checkpoint"
        )
    return int(mapped.nbytes)


def unlock(mapped: np.ndarray) -> None:
    """Undo `lock`, before the map goes away."""
    if int(torch.cuda.cudart().cudaHostUnregister(mapped.ctypes.data)) != 0:
        _clear_error()  # already unregistered: nothing to undo, and nothing left to report


def _clear_error() -> None:
    """Take a refused call's error out of the CUDA runtime's state: torch reports a pending one
    at its next kernel launch (checked with cudaGetLastError, which clears it), so launch one."""
    with contextlib.suppress(RuntimeError):  # the pending error, now cleared
        torch.zeros(1, device="cuda")


def host_view(mapped: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """`mapped` as one flat CPU tensor of `dtype`, without a copy (a tail shorter than one
    element left out): what a kernel reads in place on the CPU (Triton's interpreter)."""
    usable = mapped[: mapped.nbytes - mapped.nbytes % dtype.itemsize]
    return torch.from_numpy(usable.view(np.ndarray)).view(dtype)


def device_view(address: int, nbytes: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A CUDA tensor over `nbytes` of host memory at `address`, page-locked by `lock` (no copy):
    kernels reading it read the host's pages over PCIe. With unified addressing (64-bit Linux,
    every GPU Triton runs on) a mapped page-locked range has the same address on the GPU as on
    the host. The tensor holds the whole `dtype` elements that fit."""
    typestr = {torch.uint8: "|u1", torch.int16: "<i2", torch.int32: "<i4", torch.int64: "<i8"}

    interface = {"shape": (nbytes // dtype.itemsize,), "typestr": typestr[dtype],
                 "data": (address, False), "version": 3}  # fmt: skip
    wrapper = type("HostPages", (), {"__cuda_array_interface__": interface})  # what as_tensor reads
    with torch.cuda.device(device):
        view = torch.as_tensor(wrapper(), device=device)
    if view.data_ptr() != address:  # torch copied it: the pages are not mapped for this GPU
        raise RuntimeError(
            f"the page-locked file is not readable in place by {device} (locked while another "
            "GPU was current?): use decode='graphs'"
        )
    return view
