"""Experts straight from a GGUF file (llama.cpp's format), in their quantized form.

A GGUF file keeps each layer's experts stacked in three tensors (names from the architecture
registry, `lazymoe.models.archs`):

    blk.{L}.ffn_gate_exps.weight   (E, I, D)   numpy order; GGUF lists the dims reversed
    blk.{L}.ffn_up_exps.weight     (E, I, D)
    blk.{L}.ffn_down_exps.weight   (E, D, I)

each in one ggml type (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K here). Rows are runs
of blocks and the expert index is the outermost dimension, so expert e of a tensor is one
contiguous byte range: e * bytes_per_expert. `read_quantized` returns those ranges as
`QuantizedTensor` views into the file's memory map (copy-on-write mapping: nothing is copied
until someone writes, and nobody does). A Q4_K_M file mixes types per tensor (e.g. Q4_K gate/up,
Q6_K down in some layers), so each (layer, role) records its own format and the size of one
expert varies by layer (`expert_qbytes(layer)`).

    store = GGUFExpertStore.open("model.gguf")
    q = store.read_quantized(layer, expert)   # QuantizedExpert: gate, up, down (QuantizedTensor)
    w = store.read(layer, expert)             # ExpertWeights, dequantized to float32 (reference)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from lazymoe import quant
from lazymoe.engine.storage import pagelock
from lazymoe.engine.storage.gguf_config import (
    GGML_FORMATS,
    SUPPORTED_TYPES,
    GGUFError,
    arch_of_gguf,
    config_from_gguf,
    iter_gguf_resident,
    open_reader,
)
from lazymoe.engine.storage.weights import ExpertSource, ExpertWeights
from lazymoe.models.archs import ROLES

__all__ = [
    "GGML_FORMATS",
    "GGUFError",
    "GGUFExpertStore",
    "QuantizedExpert",
    "write_dequantized_checkpoint",
]


@dataclass(frozen=True)
class QuantizedExpert:
    """One expert's three projections in their stored formats: gate (I, D), up (I, D), down (D, I)."""

    gate: quant.QuantizedTensor
    up: quant.QuantizedTensor
    down: quant.QuantizedTensor

    @property
    def nbytes(self) -> int:
        return self.gate.nbytes + self.up.nbytes + self.down.nbytes  # bytes as stored

    @property
    def formats(self) -> tuple[str, str, str]:
        return self.gate.format, self.up.format, self.down.format

    def dequantize(self, dtype: torch.dtype = torch.float32) -> ExpertWeights:
        """The whole expert in floats (the reference path; the fast one never does this)."""
        return ExpertWeights(*(t.dequantize(dtype) for t in (self.gate, self.up, self.down)))


class GGUFExpertStore(ExpertSource):
    """The experts of one GGUF file. `read_quantized` gives views into the map; `read` and
    `read_into` dequantize to float32 (for float pools, e.g. on a GPU, and the reference)."""

    quantized = True

    def __init__(self, path: Path, reader: gguf.GGUFReader, config: dict) -> None:
        self.model_dir = path
        self.path = path
        self.config = config
        self.arch = config["model_type"]
        self.num_layers = int(config["num_hidden_layers"])
        self.dtype = torch.float32  # what read() returns
        self._reader = reader
        self.pinned = False  # the file's map page-locked for CUDA (pin_for_cuda)
        # (layer, expert) -> its QuantizedExpert of views into the map, made on first read: a
        # miss then costs a dict lookup, not six view constructions and checks (~75 us of
        # Python a miss on the dev machine, about 77 misses a token on Qwen3-30B-A3B at 8 GB)
        self._views: dict[tuple[int, int], QuantizedExpert] = {}
        tensors = {t.name: t for t in reader.tensors}
        # (layer, role) -> (stacked bytes (E, bytes per expert), format, one expert's shape)
        self._tensors: dict[tuple[int, str], tuple[np.ndarray, str, tuple[int, int]]] = {}
        for layer in range(self.num_layers):
            for role in ROLES:
                t = tensors.get(f"blk.{layer}.ffn_{role}_exps.weight")
                if t is not None:
                    self._tensors[layer, role] = _expert_bytes(reader, t, path)
        self.moe_layers = sorted({layer for layer, _ in self._tensors})
        if not self.moe_layers:
            raise GGUFError(
                f"{path} has no expert tensors (blk.N.ffn_gate_exps.weight): is it a MoE model?"
            )
        first = self._tensors[self.moe_layers[0], "gate"]
        self.num_experts = first[0].shape[0]
        self.intermediate_size, self.hidden_size = first[2]
        for layer in self.moe_layers:
            _check_layer(self._tensors, layer, self.num_experts, first[2], path)

    @classmethod
    def open(cls, path: str | Path) -> GGUFExpertStore:  # type: ignore[override]
        path = Path(path)
        reader = open_reader(path)
        return cls(path, reader, config_from_gguf(reader, path))

    # -- what the engine asks ------------------------------------------------------------------
    def keys(self) -> list[tuple[int, int]]:
        return [(layer, e) for layer in self.moe_layers for e in range(self.num_experts)]

    def formats(self, layer: int) -> tuple[str, str, str]:
        """The stored format of gate, up and down in `layer` (a Q4_K_M file mixes them)."""
        return tuple(self._tensors[layer, role][1] for role in ROLES)  # type: ignore[return-value]

    def expert_qbytes(self, layer: int) -> int:
        """Bytes of one expert of `layer` as stored (gate + up + down)."""
        return sum(self._tensors[layer, role][0].shape[1] for role in ROLES)

    @property
    def max_expert_qbytes(self) -> int:
        """The largest expert of any layer, as stored: a pool slot must hold this many bytes."""
        return max(self.expert_qbytes(layer) for layer in self.moe_layers)

    def read_quantized(self, layer: int, expert: int) -> QuantizedExpert:
        """One expert's three tensors as views into the file's map: no copy, no dequantize
        (made once per expert, then the same views: nothing ever writes to them)."""
        views = self._views.get((layer, expert))
        if views is not None:
            return views
        if (layer, "gate") not in self._tensors or not 0 <= expert < self.num_experts:
            raise KeyError(
                f"no expert ({layer}, {expert}) in {self.path}: MoE layers are {self.moe_layers}, "
                f"experts 0..{self.num_experts - 1}"
            )
        parts = []
        for role in ROLES:
            stacked, fmt, shape = self._tensors[layer, role]
            rows, cols = shape
            data = torch.from_numpy(stacked[expert]).view(
                rows, quant.get_format(fmt).row_bytes(cols)
            )
            parts.append(quant.QuantizedTensor(fmt, shape, data))
        views = self._views[layer, expert] = QuantizedExpert(*parts)
        return views

    def part_offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """Where each expert's gate, up and down lie in the file: (offsets (layers, E, 3) int64,
        bytes from the start of the file's map; sizes (layers, 3) int64 bytes), layers in
        `moe_layers` order. For a reader of the map itself (compute/device_cache.py)."""
        base = self._reader.data.ctypes.data
        offsets = np.empty((len(self.moe_layers), self.num_experts, 3), dtype=np.int64)
        sizes = np.empty((len(self.moe_layers), 3), dtype=np.int64)
        for j, layer in enumerate(self.moe_layers):
            for r, role in enumerate(ROLES):
                stacked = self._tensors[layer, role][0]
                sizes[j, r] = stacked.shape[1]
                start = stacked.ctypes.data - base
                offsets[j, :, r] = start + np.arange(self.num_experts, dtype=np.int64) * sizes[j, r]
        return offsets, sizes

    def map_tensor(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The whole file's map as one flat tensor of `dtype` (the tail that does not fill an
        element left out), without a copy: on the CPU the map itself, on a GPU the page-locked
        map read over PCIe (`pin_for_cuda` first)."""
        data = self._reader.data
        if device.type == "cuda":
            if not self.pinned:
                raise GGUFError(f"{self.path}: the GPU reads the file in place only once it is "
                                "page-locked: open the engine with pin_checkpoint=True")  # fmt: skip
            return pagelock.device_view(data.ctypes.data, data.nbytes, dtype, device)
        return pagelock.host_view(data, dtype)

    def read(self, layer: int, expert: int) -> ExpertWeights:
        return self.read_quantized(layer, expert).dequantize(self.dtype)

    def read_into(
        self, layer: int, expert: int, out: ExpertWeights, non_blocking: bool = False
    ) -> int:
        """Dequantize one expert into float buffers `out`; returns the bytes read from the file."""
        q = self.read_quantized(layer, expert)
        for role in ROLES:
            getattr(out, role).copy_(getattr(q, role).dequantize(), non_blocking=non_blocking)
        return q.nbytes

    @property
    def file_nbytes(self) -> int:
        """Bytes `pin_for_cuda` locks: the whole file."""
        return int(self._reader.data.nbytes)

    def pin_for_cuda(self) -> int:
        """Page-lock the file's whole map for CUDA, read-only (cudaHostRegister, like
        SafetensorsFile.pin_for_cuda): a miss then copies an expert's stored bytes straight from
        the map to VRAM at pinned bandwidth, with no host copy first. Needs RAM for the whole
        file (like llama.cpp's --mlock). Returns the bytes locked; close() unlocks them."""
        if self.pinned:
            return 0
        nbytes = pagelock.lock(self._reader.data, self.path, GGUFError)  # the file's np.memmap
        self.pinned = True
        return nbytes

    def __del__(self) -> None:  # never closed: unlock before the map goes (pagelock.lock)
        if getattr(self, "pinned", False) and self._reader is not None:
            pagelock.unlock(self._reader.data)

    def close(self) -> None:
        if self.pinned:  # unlock before the map goes away
            pagelock.unlock(self._reader.data)
            self.pinned = False
        self._tensors.clear()
        self._views.clear()  # they hold the map
        self._reader = None

    def __repr__(self) -> str:
        formats = sorted({f for layer in self.moe_layers for f in self.formats(layer)})
        return (
            f"GGUFExpertStore({str(self.path)!r}, arch={self.arch}, moe_layers={len(self.moe_layers)}, "
            f"experts={self.num_experts}, formats={'/'.join(formats)}, "
            f"expert={self.max_expert_qbytes} bytes stored)"
        )


def _expert_bytes(
    reader: gguf.GGUFReader, t, path: Path
) -> tuple[np.ndarray, str, tuple[int, int]]:
    """A stacked expert tensor as (E, bytes per expert) uint8 over the map, its format, (out, in)."""
    fmt = GGML_FORMATS.get(t.tensor_type)
    if fmt is None:
        raise GGUFError(
            f"{path}: tensor {t.name} is {t.tensor_type.name}, a type the engine does not read. "
            f"Supported: {SUPPORTED_TYPES}. Re-quantize the model to one of them (e.g. llama.cpp's "
            "llama-quantize model.gguf out.gguf Q4_K_M)"
        )
    shape = tuple(int(n) for n in reversed(t.shape))  # numpy order (E, out, in)
    if len(shape) != 3:
        raise GGUFError(f"{path}: {t.name} has shape {shape}, expected (experts, out, in)")
    n_experts, rows, cols = shape
    try:
        per_expert = quant.get_format(fmt).nbytes((rows, cols))
    except quant.QuantError as err:
        raise GGUFError(f"{path}: {t.name}: {err}") from err
    if per_expert * n_experts != t.n_bytes:
        raise GGUFError(
            f"{path}: {t.name} holds {t.n_bytes} bytes, {fmt} {shape} needs "
            f"{per_expert * n_experts}: the file is damaged"
        )
    raw = reader.data[t.data_offset : t.data_offset + t.n_bytes]
    if raw.size != t.n_bytes:
        raise GGUFError(
            f"{path} is shorter than its tensor table says (truncated): download it again"
        )
    return raw.view(np.ndarray).view(np.uint8).reshape(n_experts, per_expert), fmt, (rows, cols)


def _check_layer(
    tensors: dict, layer: int, n_experts: int, gate_shape: tuple[int, int], path: Path
) -> None:
    want = {"gate": gate_shape, "up": gate_shape, "down": gate_shape[::-1]}
    for role in ROLES:
        if (layer, role) not in tensors:
            raise GGUFError(
                f"{path}: layer {layer} has experts but no blk.{layer}.ffn_{role}_exps.weight"
            )
        stacked, _, shape = tensors[layer, role]
        if stacked.shape[0] != n_experts or shape != want[role]:
            raise GGUFError(
                f"{path}: blk.{layer}.ffn_{role}_exps.weight is ({stacked.shape[0]}, {shape}), expected "
                f"({n_experts}, {want[role]}) like the layer's gate: the file is inconsistent"
            )


def write_dequantized_checkpoint(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """The GGUF model as a float32 Hugging Face folder (config.json, model.safetensors with the
    Hub's per-expert names, tokenizer): what transformers runs as the reference for a quantized
    file (tests/test_engine_gguf.py). Returns out_dir."""
    import json

    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    gguf_path, out = Path(gguf_path), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = GGUFExpertStore.open(gguf_path)
    config = store.config
    arch = arch_of_gguf(open_reader(gguf_path), gguf_path)
    tensors = dict(iter_gguf_resident(gguf_path, arch, config))
    every_expert = store.keys()  # a list, not a dict view
    for layer, expert in every_expert:
        w = store.read(layer, expert)
        for role in ("gate", "up", "down"):
            tensors[arch.expert_key(layer, expert, role)] = getattr(w, role).contiguous()
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=1))
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer.save_pretrained(out)  # from the file's tokenizer.ggml.* metadata
    store.close()
    return out
