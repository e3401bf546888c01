"""Quantization: store weights in fewer bits, read them back, multiply with them.

The whole API, in the order a reader meets it:

    from lazymoe import quant
    qt = quant.quantize(w, "q4_0")          # any float tensor, rows along its last dimension
    qt.format, qt.shape, qt.nbytes, qt.bits_per_weight
    w_hat = qt.dequantize()                 # float32, same shape (dtype= to choose)
    y = quant.qmatmul(x, qt)                # x @ W^T, dequantizing on the fly (CPU or CUDA)
    quant.qmatmul_reference(x, qt)          # the slow, obviously correct version beside it
    raw = qt.to_bytes()                     # the blocks, row after row (for files)
    qt = quant.QuantizedTensor.from_bytes("q4_0", shape, raw)   # QuantError if they do not fit

Formats: "f32", "f16", "bf16", "int8_row", "int8_g{N}", "int4_g{N}", "q8_0", "q4_0", "q4_1",
"q4_k", "q5_k", "q6_k"; the q* formats are byte-for-byte GGUF's (lazymoe/quant/formats.py has
the table, lazymoe/quant/kquants.py the K-quants' super-blocks of 256 weights).
A row length that is not a multiple of the group size is a QuantError (pad with pad_cols).

One MoE expert straight from its quantized bytes (the engine's CPU path for GGUF files):
    from lazymoe.quant.expert import expert_forward      # slab by slab, never a whole float copy
    y = expert_forward(x, gate_qt, up_qt, down_qt)       # python -m lazymoe.quant.expert: GB/s

For a file format (the expert store): record the format name and the shape next to the bytes;
from_bytes refuses a buffer whose size does not match them.

Metrics: quant.relative_error, quant.compare_formats (per tensor); quant.quantized_copy (per
model: its report counts bytes; lazymoe.models.evaluate.heldout_perplexity scores the copy).
"""

from __future__ import annotations

from lazymoe.quant.evaluate import (
    ModelQuantReport,
    quantize_weights_,
    quantized_copy,
)
from lazymoe.quant.formats import (
    FORMAT_NAMES,
    QuantError,
    QuantFormat,
    bits_per_weight,
    get_format,
)
from lazymoe.quant.matmul import qmatmul, qmatmul_reference
from lazymoe.quant.metrics import TensorReport, compare_formats, relative_error, report
from lazymoe.quant.packing import pack_nibbles, pad_cols, unpack_nibbles
from lazymoe.quant.tensor import QuantizedTensor, dequantize, quantize

__all__ = [
    "FORMAT_NAMES",
    "ModelQuantReport",
    "QuantError",
    "QuantFormat",
    "QuantizedTensor",
    "TensorReport",
    "bits_per_weight",
    "compare_formats",
    "dequantize",
    "get_format",
    "pack_nibbles",
    "pad_cols",
    "qmatmul",
    "qmatmul_reference",
    "quantize",
    "quantize_weights_",
    "quantized_copy",
    "relative_error",
    "report",
    "unpack_nibbles",
]
