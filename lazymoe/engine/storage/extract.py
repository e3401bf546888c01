"""One-time extraction of a checkpoint's experts into a per-layer contiguous layout.

A Hub checkpoint scatters one expert over three tensors anywhere in a multi-GB shard. After
`extract(model_dir, out_dir)` each MoE layer is one file, with its experts back to back, so a cache
miss is one contiguous read of `stored_nbytes` at a known offset. Optionally the experts are stored
quantized (any `lazymoe.quant` format: "q8_0", "int8_row", "q4_0" ...), which makes every miss move
fewer bytes.

The file layout, and the reader `ExtractedStore`, are in lazymoe/engine/storage/extracted.py;
`ExpertStore.open(out_dir)` opens an extraction. This module only writes (it reads the checkpoint
through `ExpertStore`), so the dependencies point one way: extract -> store -> extracted.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lazymoe import quant
from lazymoe.engine.storage.extracted import (
    DTYPE_NAMES,
    DTYPE_OF,
    MAGIC,
    ROLES,
    VERSION,
    ExtractedStore,
    data_start,
    expert_shapes,
)
from lazymoe.engine.storage.safetensors_file import ExpertStoreError
from lazymoe.engine.storage.store import ExpertStore
from lazymoe.i18n import _

__all__ = ["ExtractedStore", "extract"]  # ExtractedStore lives in extracted.py (the reader)


def extract(
    model_dir: str | Path, out_dir: str | Path, fmt: str = "same", overwrite: bool = False
) -> Path:
    """Write every expert of `model_dir` into `out_dir` in format `fmt` ("same": the checkpoint's
    own dtype, bit-exact; or a lazymoe.quant format name). Returns `out_dir`.

    Skips the work if `out_dir` already holds an extraction of the same format (unless overwrite).
    """
    store = ExpertStore.open(model_dir)
    fmt_name = DTYPE_NAMES[store.dtype] if fmt == "same" else quant.get_format(fmt).name
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    if (
        manifest_path.is_file()
        and not overwrite
        and json.loads(manifest_path.read_text()).get("format") == fmt_name
    ):
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = expert_shapes(store.intermediate_size, store.hidden_size)
    try:
        tensor_nbytes = {r: quant.get_format(fmt_name).nbytes(tuple(s)) for r, s in shapes.items()}
        for s in shapes.values():
            quant.get_format(fmt_name).group(s[-1])  # a row length the format cannot hold fails now
    except quant.QuantError as err:
        raise ExpertStoreError(f"cannot extract {model_dir} as {fmt_name}: {err}") from err
    stride = sum(tensor_nbytes.values())
    files = {}
    with tqdm(
        total=len(store.keys()), desc=_("extracting experts ({format})").format(format=fmt_name), unit="expert"
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
                "dtype": DTYPE_NAMES[store.dtype], "shapes": shapes, "tensor_nbytes": tensor_nbytes,
                "expert_stride": stride, "offsets": [e * stride for e in range(store.num_experts)],
                "crc32": [zlib.crc32(b) for b in blobs],
            }  # fmt: skip
            _write_layer(out_dir / name, header, blobs)
            files[str(layer)] = name
    manifest = {
        "kind": "lazymoe-experts", "version": VERSION, "arch": store.arch, "format": fmt_name,
        "source_dtype": DTYPE_NAMES[store.dtype], "source": str(Path(model_dir).resolve()),
        "moe_layers": store.moe_layers, "files": files, "config": store.config,
    }  # fmt: skip
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return out_dir


def _encode(t: torch.Tensor, fmt_name: str) -> bytes:
    if fmt_name in quant.formats.PLAIN_DTYPES and t.dtype == DTYPE_OF[fmt_name]:
        return t.contiguous().view(torch.uint8).numpy().tobytes()  # bit-exact, no arithmetic
    return quant.quantize(t, fmt_name).to_bytes()


def _write_layer(path: Path, header: dict, blobs: list[bytes]) -> None:
    head = json.dumps(header).encode()
    data_offset = data_start(len(head))
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", len(head)) + head)
        f.write(b"\0" * (data_offset - f.tell()))
        for blob in blobs:
            f.write(blob)
    tmp.replace(path)  # a crash mid-write never leaves a file that looks complete


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
