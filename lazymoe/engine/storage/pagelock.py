"""Page-lock a mapped checkpoint for CUDA, read-only (cudaHostRegister), and unlock it.

A page-locked map lets a cache miss copy an expert's bytes straight from the file's pages to VRAM
at pinned bandwidth, with no host copy first; the pages stay in RAM until `unlock` (like
llama.cpp's --mlock). Both checkpoint readers (safetensors_file.py, gguf_file.py) use it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

PORTABLE, READ_ONLY = 1, 8  # cudaHostRegister flags: every CUDA context may use it; the GPU only
# reads it, which lets the driver pin a private (copy-on-write) file mapping without copying pages


def lock(mapped: np.ndarray, path: Path, error: type[Exception]) -> int:
    """Page-lock `mapped` (the whole file's map); returns the bytes locked. Raises `error`
    naming `path` and what to do when CUDA refuses."""
    err = torch.cuda.cudart().cudaHostRegister(
        mapped.ctypes.data, mapped.nbytes, PORTABLE | READ_ONLY
    )
    if int(err) != 0:
        raise error(
            f"{path}: CUDA could not page-lock the mapped file ({err}); run without pin_checkpoint"
        )
    return int(mapped.nbytes)


def unlock(mapped: np.ndarray) -> None:
    """Undo `lock`, before the map goes away."""
    torch.cuda.cudart().cudaHostUnregister(mapped.ctypes.data)
