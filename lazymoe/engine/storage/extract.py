"""One-time extraction of a checkpoint's experts into a per-layer contiguous layout.

A Hub checkpoint scatters one expert over three tensors anywhere in a multi-GB shard. After
`extract(model_dir, out_dir)` each MoE layer is one file, with its experts back to back, so a cache
miss is one contiguous read of `stored_nbytes` at a known offset. Optionally the experts are stored
quantized (any `lazymoe.quant` format: "q8_0", "int8_row", "q4_0" ...), which makes every miss move
fewer bytes.

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
from lazymoe.engine.storage.store import (
    ARCHS,
    ExpertStore,
    ExpertStoreError,
    ExpertWeights,
    moe_layers_from_config,
)

MAGIC = b"LZMOEXP1"
VERSION = 1
ALIGN_BYTES = 4096
ROLES = ("gate", "up", "down")
_NAMES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
_DTYPE_OF = {v: k for k, v in _NAMES.items()}


def extract(
    model_dir: str | Path, out_dir: str | Path, fmt: str = "same", overwrite: bool = False
) -> Path:
    """Write every expert of `model_dir` into `out_dir` in format `fmt` ("same": the checkpoint's
    own dtype, bit-exact; or a lazymoe.quant format name). Returns `out_dir`.

    Skips the work if `out_dir` already holds an extraction of the same format (unless overwrite).
    """
    store = ExpertStore.open(model_dir)
    fmt_name = _NAMES[store.dtype] if fmt == "same" else quant.get_format(fmt).name
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    if (
        manifest_path.is_file()
        and not overwrite
        and json.loads(manifest_path.read_text()).get("format") == fmt_name
    ):
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = _shapes(store.intermediate_size, store.hidden_size)
    try:
        tensor_nbytes = {r: quant.get_format(fmt_name).nbytes(tuple(s)) for r, s in shapes.items()}
        for s in shapes.values():
            quant.get_format(fmt_name).group(s[-1])  # a row length the format cannot hold fails now
    except quant.QuantError as err:
        raise ExpertStoreError(f"cannot extract {model_dir} as {fmt_name}: {err}") from err
    stride = sum(tensor_nbytes.values())
    files = {}
    with tqdm(
        total=len(store.keys()), desc=f"extracting experts ({fmt_name})", unit="expert"
    ) as bar:
        for layer in store.moe_layers:
            name = f"layer_{layer:03d}.experts"
            blobs = []
            for e in range(store.num_experts):
                w = store.read(layer, e)
                blobs.append(b"".join(_encode(getattr(w, r), fmt_name) for r in ROLES))
                bar.update()
            header = {
                "version": VERSION, "layer": layer, "format": fmt_name, "num_experts": store.num_experts,
                "dtype": _NAMES[store.dtype], "shapes": shapes, "tensor_nbytes": tensor_nbytes,
                "expert_stride": stride, "offsets": [e * stride for e in range(store.num_experts)],
                "crc32": [zlib.crc32(b) for b in blobs],
            }  # fmt: skip
            _write_layer(out_dir / name, header, blobs)
            files[str(layer)] = name
    manifest = {
        "kind": "lazymoe-experts", "version": VERSION, "arch": store.arch, "format": fmt_name,
        "source_dtype": _NAMES[store.dtype], "source": str(Path(model_dir).resolve()),
        "moe_layers": store.moe_layers, "files": files, "config": store.config,
    }  # fmt: skip
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return out_dir


def _shapes(intermediate: int, hidden: int) -> dict[str, list[int]]:
    return {
        "gate": [intermediate, hidden],
        "up": [intermediate, hidden],
        "down": [hidden, intermediate],
    }


def _encode(t: torch.Tensor, fmt_name: str) -> bytes:
    if fmt_name in quant.formats.PLAIN_DTYPES and t.dtype == _DTYPE_OF[fmt_name]:
        return t.contiguous().view(torch.uint8).numpy().tobytes()  # bit-exact, no arithmetic
    return quant.quantize(t, fmt_name).to_bytes()


def _write_layer(path: Path, header: dict, blobs: list[bytes]) -> None:
    head = json.dumps(header).encode()
    data_offset = -(-(len(MAGIC) + 8 + len(head)) // ALIGN_BYTES) * ALIGN_BYTES
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", len(head)) + head)
        f.write(b"\0" * (data_offset - f.tell()))
        for blob in blobs:
            f.write(blob)
    tmp.replace(path)  # a crash mid-write never leaves a file that looks complete


class ExtractedStore(ExpertStore):
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
        self.dtype = _DTYPE_OF[manifest["source_dtype"]]
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
                    f"{info['path']}: expert {expert} fails its checksum (the file was changed or "
                    "damaged on disk): delete the folder and run extract() again"
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
        if self.format in quant.formats.PLAIN_DTYPES and _DTYPE_OF[self.format] == self.dtype:
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
    data_offset = -(-(len(MAGIC) + 8 + head_len) // ALIGN_BYTES) * ALIGN_BYTES
    want_shapes = _shapes(
        config[ARCHS[config["model_type"]].intermediate_key], config["hidden_size"]
    )
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


def main(argv: list[str] | None = None) -> int:
    """python -m lazymoe.engine.storage.extract MODEL_DIR OUT_DIR [--format q8_0] [--overwrite]"""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m lazymoe.engine.storage.extract", description=__doc__.split("\n")[0]
    )
    parser.add_argument("model_dir")
    parser.add_argument("out_dir")
    parser.add_argument(
        "--format", default="same", help="same (bit-exact) or a lazymoe.quant format, e.g. q8_0"
    )
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        out = extract(args.model_dir, args.out_dir, args.format, overwrite=args.overwrite)
    except ExpertStoreError as err:
        print(f"error: {err}")
        return 1
    print(ExpertStore.open(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
