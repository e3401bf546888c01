"""Reading the expert files `extract()` writes: one file per MoE layer, experts back to back.

The layout (written by lazymoe/engine/storage/extract.py):

    out_dir/manifest.json                  arch, config, format, the layer files
    out_dir/layer_003.experts              one MoE layer:
        b"LZMOEXP1"                        8 bytes magic
        header_len                         8 bytes, little-endian
        header (JSON)                      version, layer, format, dtype, shapes, per-expert offsets
                                           (from the data start) and crc32 checksums
        zero padding to a 4096-byte boundary
        expert 0: gate | up | down         each in `format` (lazymoe.quant's byte layout)
        expert 1 ...                       expert e starts at data_offset + e * expert_stride

Every check that can fail says which file and what to do: a missing file, a wrong magic, a
header that disagrees with the manifest (format, shapes), a file shorter than its header says
(truncated), and a checksum that does not match (flipped bytes; checked on an expert's first read).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lazymoe import quant
from lazymoe.engine.storage.safetensors_file import ExpertStoreError
from lazymoe.engine.storage.weights import ExpertSource, ExpertWeights
from lazymoe.i18n import _
from lazymoe.models.archs import get_arch, moe_layers_from_config

MAGIC = b"LZMOEXP1"
VERSION = 1
ALIGN_BYTES = 4096
ROLES = ("gate", "up", "down")
DTYPE_NAMES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
DTYPE_OF = {v: k for k, v in DTYPE_NAMES.items()}


def expert_shapes(intermediate: int, hidden: int) -> dict[str, list[int]]:
    return {
        "gate": [intermediate, hidden],
        "up": [intermediate, hidden],
        "down": [hidden, intermediate],
    }


def data_start(header_len: int) -> int:
    """Where a layer file's expert data begins (bytes): after magic, length and header, aligned."""
    return -(-(len(MAGIC) + 8 + header_len) // ALIGN_BYTES) * ALIGN_BYTES


class ExtractedStore(ExpertSource):
    """An ExpertStore over `extract()`'s output. `dtype` is the checkpoint's: quantized experts
    are dequantized into it on read; `stored_nbytes` is what one expert costs on disk (bytes)."""

    def __init__(
        self, out_dir: Path, manifest: dict, layers: dict[int, dict], verify: bool
    ) -> None:
        self.model_dir = out_dir
        self.config = manifest["config"]
        self.arch = manifest["arch"]
        self.format = manifest["format"]
        self.num_layers = self.config["num_hidden_layers"]
        self.moe_layers = sorted(layers)
        any_header = next(iter(layers.values()))["header"]
        self.num_experts = any_header["num_experts"]
        self.intermediate_size, self.hidden_size = any_header["shapes"]["gate"]
        self.dtype = DTYPE_OF[manifest["source_dtype"]]
        self.stored_nbytes = any_header["expert_stride"]
        self.verify = verify
        self._layers = layers
        self._verified: set[tuple[int, int]] = set()

    @classmethod
    def open(cls, out_dir: str | Path, verify: bool = True) -> ExtractedStore:  # type: ignore[override]
        """Open an extraction; `verify` checks each expert's crc32 on its first read."""
        out_dir = Path(out_dir)
        path = out_dir / "manifest.json"
        try:
            manifest = json.loads(path.read_text())
            assert manifest["kind"] == "lazymoe-experts", "not a lazymoe expert manifest"
            files, fmt = manifest["files"], manifest["format"]
        except (OSError, ValueError, KeyError, AssertionError) as err:
            raise ExpertStoreError(f"{path} is unreadable ({err}): run extract() again") from err
        if manifest.get("version") != VERSION:
            raise ExpertStoreError(
                f"{path} has version {manifest.get('version')}, this lazymoe reads {VERSION}: run extract() again"
            )
        expected = moe_layers_from_config(manifest["config"])
        if sorted(int(k) for k in files) != expected:
            raise ExpertStoreError(
                f"{path} lists layers {sorted(files)}, the config has MoE layers {expected}: run extract() again"
            )
        layers = {
            int(k): _open_layer(out_dir / name, fmt, manifest["config"])
            for k, name in files.items()
        }
        return cls(out_dir, manifest, layers, verify)

    def keys(self) -> list[tuple[int, int]]:
        return [(layer, e) for layer in self.moe_layers for e in range(self.num_experts)]

    def read_raw(self, layer: int, expert: int) -> np.ndarray:
        """The stored bytes of one expert (a uint8 view into the memory-mapped file)."""
        info = self._layers.get(layer)
        if info is None or not 0 <= expert < self.num_experts:
            raise KeyError(
                f"no expert ({layer}, {expert}) in {self.model_dir}: MoE layers are {self.moe_layers}, experts 0..{self.num_experts - 1}"
            )
        h = info["header"]
        start = info["data_offset"] + h["offsets"][expert]
        raw = info["map"][start : start + h["expert_stride"]]
        if self.verify and (layer, expert) not in self._verified:
            if zlib.crc32(raw) != h["crc32"][expert]:
                raise ExpertStoreError(
                    _("{path}: expert {expert} fails its checksum (the file was changed or damaged "
                      "on disk): delete the folder and run extract() again").format(
                        path=info["path"], expert=expert
                    )
                )
            self._verified.add((layer, expert))
        return raw

    def read_quantized(self, layer: int, expert: int) -> dict[str, quant.QuantizedTensor]:
        """gate/up/down as QuantizedTensors in the stored format (for engines that qmatmul)."""
        raw, h = self.read_raw(layer, expert), self._layers[layer]["header"]
        out, pos = {}, 0
        for role in ROLES:
            n = h["tensor_nbytes"][role]
            out[role] = quant.QuantizedTensor.from_bytes(
                self.format, h["shapes"][role], raw[pos : pos + n]
            )
            pos += n
        return out

    def _weights(self, layer: int, expert: int) -> tuple[ExpertWeights, bool]:
        """(weights, True if they are views into the mapped file rather than new tensors)."""
        q = self.read_quantized(layer, expert)
        if self.format in quant.formats.PLAIN_DTYPES and DTYPE_OF[self.format] == self.dtype:
            return ExpertWeights(
                *(q[r].data.view(self.dtype).view(q[r].shape) for r in ROLES)
            ), True
        return ExpertWeights(*(q[r].dequantize(self.dtype) for r in ROLES)), False

    def read(self, layer: int, expert: int) -> ExpertWeights:
        w, is_view = self._weights(layer, expert)
        return ExpertWeights(*(getattr(w, r).clone() for r in ROLES)) if is_view else w

    def read_into(self, layer: int, expert: int, out: ExpertWeights, non_blocking: bool = False) -> int:
        """Copy one expert into `out` (bit-exact formats: straight from the mapped file); returns
        the bytes read from disk (`stored_nbytes`)."""
        w, _ = self._weights(layer, expert)
        for role in ROLES:
            getattr(out, role).copy_(getattr(w, role), non_blocking=non_blocking)
        return self.stored_nbytes

    def verify_all(self) -> None:
        """Check every expert's checksum now (tqdm); raises ExpertStoreError on the first bad one."""
        for layer, e in tqdm(self.keys(), desc="verifying experts", unit="expert"):
            self._verified.discard((layer, e))
            self.read_raw(layer, e)

    def pin_for_cuda(self) -> int:
        raise ExpertStoreError(
            "pin_checkpoint page-locks the checkpoint's own safetensors; it does not apply to "
            "experts extracted with experts_path: drop one of the two"
        )

    @property
    def pinned(self) -> bool:
        return False

    def close(self) -> None:
        for info in self._layers.values():
            info["map"] = None


def _open_layer(path: Path, fmt: str, config: dict) -> dict:
    if not path.is_file():
        raise ExpertStoreError(f"{path} is missing: run extract() again")
    with open(path, "rb") as f:
        prefix = f.read(len(MAGIC) + 8)
        if len(prefix) < len(MAGIC) + 8 or prefix[: len(MAGIC)] != MAGIC:
            raise ExpertStoreError(
                f"{path} is not a lazymoe expert file (bad magic): run extract() again"
            )
        (head_len,) = struct.unpack("<Q", prefix[len(MAGIC) :])
        try:
            header = json.loads(f.read(head_len))
        except (ValueError, UnicodeDecodeError) as err:
            raise ExpertStoreError(
                f"{path}: its header is damaged ({err}): run extract() again"
            ) from err
    data_offset = data_start(head_len)
    want_shapes = expert_shapes(get_arch(config["model_type"]).expert_width(config), config["hidden_size"])
    if header.get("format") != fmt:
        raise ExpertStoreError(
            f"{path} holds format {header.get('format')!r} but manifest.json says {fmt!r}: run extract() again"
        )
    if header.get("shapes") != want_shapes:
        raise ExpertStoreError(
            f"{path} holds experts shaped {header.get('shapes')}, the config needs {want_shapes}: it belongs to another model, run extract() again"
        )
    n, stride = header["num_experts"], header["expert_stride"]
    if header.get("offsets") != [e * stride for e in range(n)] or len(header.get("crc32", [])) != n:
        raise ExpertStoreError(
            f"{path}: its header's offsets or checksums are damaged: run extract() again"
        )
    want_bytes = data_offset + n * stride
    size = path.stat().st_size
    if size != want_bytes:
        raise ExpertStoreError(
            f"{path} has {size} bytes, its header says {want_bytes}: the file is truncated or padded, run extract() again"
        )
    return {
        "path": path,
        "header": header,
        "data_offset": data_offset,
        "map": np.memmap(path, dtype=np.uint8, mode="c"),
    }
