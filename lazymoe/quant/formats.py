"""Quantization formats by name: how many bits, how big a block, what the scales are.

Every format stores a matrix row by row, and each row as a run of blocks:

    block = [scale(s)][payload]          one block covers `group_size` weights of one row

    format     group   scale(s) per block          payload per block          bits/weight
    f32/f16/bf16  row  none                        the values themselves      32 / 16 / 16
    int8_row   row     float32 absmax/127          `cols` int8                8 + 32/cols
    int8_g{N}  N       float32 absmax/127          N int8                     8 + 32/N
    int4_g{N}  N       float32 absmax/7            N/2 bytes of nibbles       4 + 32/N
    q8_0       32      float16 d = absmax/127      32 int8                    8.5   (GGUF)
    q4_0       32      float16 d = signed max/-8   16 bytes of nibbles        4.5   (GGUF)
    q4_1       32      float16 d, float16 min      16 bytes of nibbles        5.0   (GGUF)
    q4_k       256     f16 d, f16 dmin, 8x6-bit    128 bytes of nibbles       4.5   (GGUF K-quant)
    q5_k       256     as q4_k, + 32 bytes high bits                          5.5   (GGUF K-quant)
    q6_k       256     16 int8 sub-scales, f16 d   192 bytes, 6 bits each     6.5625 (GGUF K-quant)

q8_0, q4_0 and q4_1 are byte-for-byte the blocks of GGUF / llama.cpp (ggml-quants.c), so a
tensor quantized here can be written into a .gguf file and llama.cpp reads the same numbers.
4-bit payloads put element j of a block in the low nibble of byte j and element j + group/2 in
the high nibble (GGUF's order). All numbers are little-endian. The K-quants' own layouts (scales
inside the block, not only in front of it) are in lazymoe/quant/kquants.py.

A row length (`cols`, the last dimension) that is not a multiple of the group size is an error,
as in llama.cpp: pad the rows yourself (`lazymoe.quant.pad_cols`) or pick a per-row format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

PLAIN_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
GGUF_BLOCK = 32  # weights per block in q8_0 / q4_0 / q4_1
K_BLOCK = 256  # weights per super-block in q4_k / q5_k / q6_k (ggml's QK_K)
K_KINDS = ("q4_k", "q5_k", "q6_k")


class QuantError(ValueError):
    """A format name, a shape or a byte buffer that does not fit: the message says what to change."""


@dataclass(frozen=True)
class QuantFormat:
    """One quantization format: the layout of one block and how to read it.

    `group_size` None means one block per row (its size is the row length).
    """

    name: str
    kind: str  # "plain" | "int8" | "int4" | "q8_0" | "q4_0" | "q4_1" | "q4_k" | "q5_k" | "q6_k"
    group_size: int | None
    payload_bits: int  # bits per stored weight value, before scales
    scale_dtype: torch.dtype | None  # dtype of each scale in a block header
    n_scales: int  # scales per block: 0 (plain), 1 (symmetric), 2 (scale and minimum)
    value_dtype: torch.dtype | None = None  # plain formats only
    fixed_block_bytes: int | None = None  # K-quants: the whole block, scales mixed in (kquants.py)

    @property
    def is_gguf(self) -> bool:
        return self.kind in ("q8_0", "q4_0", "q4_1", *K_KINDS)

    @property
    def header_bytes(self) -> int:
        if self.scale_dtype is None:
            return 0
        return self.n_scales * torch.empty((), dtype=self.scale_dtype).element_size()

    def group(self, cols: int) -> int:
        """Weights per block for rows of `cols` weights; raises if `cols` does not split evenly."""
        if cols <= 0:
            raise QuantError(f"{self.name}: rows must have at least one weight, got {cols}")
        if self.group_size is None:
            if self.payload_bits == 4 and cols % 2:
                raise QuantError(f"{self.name}: 4-bit rows need an even length, got {cols}")
            return cols
        if cols % self.group_size:
            raise QuantError(
                f"{self.name}: the row length {cols} is not a multiple of the group size "
                f"{self.group_size}. Pad the rows with lazymoe.quant.pad_cols(w, {self.group_size}) "
                "or choose a per-row format such as 'int8_row'."
            )
        return self.group_size

    def block_bytes(self, cols: int) -> int:
        """Bytes of one block (header + payload) for rows of `cols` weights."""
        if self.fixed_block_bytes is not None:
            self.group(cols)  # raises if the rows do not split into whole blocks
            return self.fixed_block_bytes
        return self.header_bytes + self.group(cols) * self.payload_bits // 8

    def row_bytes(self, cols: int) -> int:
        return cols // self.group(cols) * self.block_bytes(cols)

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of a whole tensor: rows x row_bytes, rows = product of all but the last dim."""
        rows, cols = rows_cols(shape)
        return rows * self.row_bytes(cols)

    def bits_per_weight(self, cols: int | None = None) -> float:
        """Stored bits per weight, scales included: 8 * block_bytes / group_size.

        Per-row formats need the row length `cols` (a scale per row costs 32/cols bits).
        """
        if self.group_size is None:
            if cols is None:
                if self.header_bytes == 0:
                    return float(self.payload_bits)
                raise QuantError(f"{self.name} keeps one scale per row: pass cols= (the row length)")
            return 8 * self.block_bytes(cols) / cols
        return 8 * self.block_bytes(self.group_size) / self.group_size


def rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    """A tensor is quantized as rows of its last dimension: (E, O, I) -> (E*O, I); (I,) -> (1, I)."""
    if len(shape) == 0:
        raise QuantError("cannot quantize a scalar: give a tensor with at least one dimension")
    rows = 1
    for dim in shape[:-1]:
        rows *= dim
    return rows, shape[-1]


_GROUP_RE = re.compile(r"^(int8|int4)_g(\d+)$")
_FIXED = {
    "f32": QuantFormat("f32", "plain", None, 32, None, 0, torch.float32),
    "f16": QuantFormat("f16", "plain", None, 16, None, 0, torch.float16),
    "bf16": QuantFormat("bf16", "plain", None, 16, None, 0, torch.bfloat16),
    "int8_row": QuantFormat("int8_row", "int8", None, 8, torch.float32, 1),
    "q8_0": QuantFormat("q8_0", "q8_0", GGUF_BLOCK, 8, torch.float16, 1),
    "q4_0": QuantFormat("q4_0", "q4_0", GGUF_BLOCK, 4, torch.float16, 1),
    "q4_1": QuantFormat("q4_1", "q4_1", GGUF_BLOCK, 4, torch.float16, 2),
    "q4_k": QuantFormat("q4_k", "q4_k", K_BLOCK, 4, torch.float16, 2, fixed_block_bytes=144),
    "q5_k": QuantFormat("q5_k", "q5_k", K_BLOCK, 5, torch.float16, 2, fixed_block_bytes=176),
    "q6_k": QuantFormat("q6_k", "q6_k", K_BLOCK, 6, torch.float16, 1, fixed_block_bytes=210),
}
FORMAT_NAMES = (*_FIXED, "int8_g{N}", "int4_g{N}")


def get_format(name: str | QuantFormat) -> QuantFormat:
    """The format called `name` ('q4_0', 'int8_row', 'int8_g64', 'int4_g32', ...)."""
    if isinstance(name, QuantFormat):
        return name
    key = str(name).strip().lower()
    if key in _FIXED:
        return _FIXED[key]
    match = _GROUP_RE.match(key)
    if match:
        kind, group = match.group(1), int(match.group(2))
        if group < 2 or group % 2:
            raise QuantError(f"{name}: the group size must be an even number >= 2, got {group}")
        return QuantFormat(key, kind, group, 8 if kind == "int8" else 4, torch.float32, 1)
    raise QuantError(f"unknown quantization format {name!r}: choose one of {', '.join(FORMAT_NAMES)}")


def bits_per_weight(name: str | QuantFormat, cols: int | None = None) -> float:
    """Stored bits per weight of a format, scales included (see QuantFormat.bits_per_weight)."""
    return get_format(name).bits_per_weight(cols)
