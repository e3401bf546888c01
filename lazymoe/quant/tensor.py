"""QuantizedTensor: a format name, a shape, and the bytes, with a checked way in and out of files."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lazymoe.quant.codecs import decode, encode
from lazymoe.quant.formats import QuantError, QuantFormat, get_format, rows_cols


@dataclass(frozen=True)
class QuantizedTensor:
    """A tensor stored in a quantization format.

    `data` is a (rows, row_bytes) uint8 tensor holding exactly the bytes of `to_bytes()`;
    rows = the product of all but the last dimension of `shape`.
    """

    format: str
    shape: tuple[int, ...]
    data: torch.Tensor

    def __post_init__(self) -> None:
        fmt = get_format(self.format)
        rows, cols = rows_cols(self.shape)
        want = (rows, fmt.row_bytes(cols))
        if self.data.dtype != torch.uint8 or tuple(self.data.shape) != want:
            raise QuantError(
                f"{fmt.name} data for shape {self.shape} must be uint8 {want}, "
                f"got {self.data.dtype} {tuple(self.data.shape)}"
            )

    @property
    def fmt(self) -> QuantFormat:
        return get_format(self.format)

    @property
    def nbytes(self) -> int:
        """Stored bytes, scales included."""
        return self.data.numel()

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))

    @property
    def bits_per_weight(self) -> float:
        """8 * nbytes / numel: what one weight costs, scales included."""
        return 8 * self.nbytes / self.numel

    @property
    def device(self) -> torch.device:
        return self.data.device

    def to(self, device: str | torch.device) -> QuantizedTensor:
        return QuantizedTensor(self.format, self.shape, self.data.to(device))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weights the bytes stand for, in `shape`, on the data's device."""
        _, cols = rows_cols(self.shape)
        return decode(self.data, self.fmt, cols).reshape(self.shape).to(dtype)

    def to_bytes(self) -> bytes:
        """The raw blocks, row after row (the layout of lazymoe.quant.formats)."""
        return self.data.cpu().contiguous().numpy().tobytes()

    @classmethod
    def from_bytes(
        cls, format: str, shape: tuple[int, ...] | list[int], buffer: bytes | bytearray | memoryview | np.ndarray
    ) -> QuantizedTensor:
        """Rebuild a tensor from `to_bytes()` output; raises QuantError if the size does not fit.

        A wrong format or shape changes the byte count, so it is caught here. The one exception is a
        shape with the same number of weights whose rows split into the same blocks (q8_0 (2, 64) vs
        (4, 32)): the bytes then mean the same weights, only reshaped. The store records format,
        shape and a checksum next to the bytes. The buffer is copied only if it is not writable.
        """
        fmt = get_format(format)
        shape = tuple(int(s) for s in shape)
        rows, cols = rows_cols(shape)
        want = fmt.nbytes(shape)
        raw = np.frombuffer(buffer, dtype=np.uint8) if not isinstance(buffer, np.ndarray) else buffer
        raw = raw.reshape(-1).view(np.uint8)
        if raw.size != want:
            raise QuantError(
                f"{fmt.name} tensor of shape {shape} needs {want} bytes, the buffer has {raw.size}: "
                "the format or shape recorded with these bytes is not the one they were written with"
            )
        if not raw.flags.writeable:
            raw = raw.copy()
        data = torch.from_numpy(raw).reshape(rows, fmt.row_bytes(cols))
        return cls(fmt.name, shape, data)


def quantize(w: torch.Tensor | np.ndarray, format: str | QuantFormat) -> QuantizedTensor:
    """Quantize `w` (any float dtype, rank >= 1) row by row of its last dimension.

    Symmetric absmax (int8_*, int4_*, q8_0):  scale = max|w_group| / qmax,  q = round(w / scale)
    q4_0:  d = (signed max-magnitude weight) / -8,  q = trunc(w / d + 8.5) in 0..15
    q4_1:  d = (max - min) / 15,  q = trunc((w - min) / d + 0.5) in 0..15
    q4_k / q5_k / q6_k:  GGUF's K-quant super-blocks of 256 (lazymoe/quant/kquants.py); rows must
        be a multiple of 256 long
    """
    fmt = get_format(format)
    t = torch.as_tensor(w)
    if not t.is_floating_point():
        raise QuantError(f"quantize needs floating-point weights, got {t.dtype}")
    rows, cols = rows_cols(tuple(t.shape))
    fmt.group(cols)  # raises with a clear message before any work
    data = encode(t.reshape(rows, cols), fmt)
    return QuantizedTensor(fmt.name, tuple(t.shape), data)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Same as qt.dequantize(dtype)."""
    return qt.dequantize(dtype)
