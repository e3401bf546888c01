"""Write a MoE checkpoint (HF layout, safetensors) as a GGUF file llama.cpp can run.

    python -m lazymoe.models.gguf_export data/models/tiny-moe /tmp/tiny-moe-f32.gguf --type f32

Types: f32, f16, bf16, q8_0, q4_0, q4_k, q4_k_m (Q4_K with llama.cpp's Q6_K choices), q6_k.
`bundled_twin("q4_0")` writes the bundled model's GGUF twin once into data/cache/gguf/ and
returns its path (what the engine's GGUF tests and `lazymoe run tiny-moe-q4_0.gguf` use).

The architectures the engine runs: Qwen3-MoE (llama.cpp `qwen3moe`), OLMoE (`olmoe`), Qwen2-MoE
with its shared expert (`qwen2moe`) and Mixtral (llama.cpp runs it as `llama` with experts).

Why our own exporter: llama.cpp's convert_hf_to_gguf.py refuses tokenizers it does not know by
hash, and ours is freshly trained. The tensor names and shapes come from the architecture
registry (`lazymoe.models.archs`), the file from the one GGUF writer (`lazymoe.models.gguf_write`,
which the benchmark's random-model writer uses too), one tensor at a time, so a large checkpoint
never has to fit in memory at once.

Experts are read either as the hub's per-expert tensors (`mlp.experts.E.gate_proj.weight`, what
transformers v5 `save_pretrained` writes; Mixtral's `block_sparse_moe.experts.E.w1/w3/w2`) or as
fused tensors (`mlp.experts.gate_up_proj` (E, 2I, D), `mlp.experts.down_proj` (E, D, I)), and
written stacked: ffn_gate_exps / ffn_up_exps (E, I, D), ffn_down_exps (E, D, I) in numpy order.

What llama.cpp fixes per architecture, and the checkpoint must agree with (else an error says so):
whether the top-k router weights are renormalized (qwen3moe and Mixtral yes; olmoe and qwen2moe
no), and for olmoe that q_norm and k_norm span the whole hidden size (as many KV heads as heads).
Mixtral's q and k rows are permuted into the rotary layout of llama.cpp's `llama` graph (pairs
(i, i + d/2) of HF's rotate_half become adjacent), as llama.cpp's own converter does.
"""

from __future__ import annotations

import argparse
import json
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from lazymoe.models.archs import (
    Arch,
    TensorSlot,
    UnknownArchitectureError,
    get_arch,
)
from lazymoe.models.gguf_write import (
    OUT_TYPES,
    GGUFExportError,
    check_writable,
    vocab_from_tokenizer_files,
    write_gguf,
)

__all__ = ["OUT_TYPES", "GGUFExportError", "bundled_twin", "export_gguf"]


class _Checkpoint:
    """Tensor names -> the safetensors file holding them (one file or a sharded index)."""

    def __init__(self, model_dir: Path):
        index = model_dir / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.file_of = {name: model_dir / f for name, f in weight_map.items()}
        elif (model_dir / "model.safetensors").exists():
            with safe_open(model_dir / "model.safetensors", "pt") as f:
                self.file_of = dict.fromkeys(f.keys(), model_dir / "model.safetensors")
        else:
            raise GGUFExportError(f"no model.safetensors (or index) in {model_dir}")

    def __contains__(self, name: str) -> bool:
        return name in self.file_of

    def shape(self, name: str) -> tuple[int, ...]:
        with safe_open(self.file_of[name], "pt") as f:
            return tuple(f.get_slice(name).get_shape())

    def get(self, name: str) -> np.ndarray:
        """The tensor as float32 numpy (bf16 has no numpy dtype, so we widen everything)."""
        with safe_open(self.file_of[name], "pt") as f:
            return f.get_tensor(name).to(torch.float32).numpy()


Load = Callable[[], np.ndarray]


def _permute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF q/k rows (per head: first halves, then second halves) -> llama.cpp's interleaved pairs."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _loaders(ck: _Checkpoint, cfg: dict, arch: Arch) -> dict[str, Load]:
    """GGUF name -> how to read that tensor from the checkpoint, checked against the names and
    shapes the registry expects before anything is written."""
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    inter = arch.expert_width(cfg)
    loaders: dict[str, Load] = {}
    for slot in arch.tensors(cfg):
        if slot.kind == "experts":
            loaders[slot.gguf_name] = _experts_loader(ck, arch, slot, inter)
            continue
        source = slot.sources[0]
        if slot.kind == "output" and source not in ck:
            source = "model.embed_tokens.weight"  # tied embeddings
        if source not in ck:
            raise GGUFExportError(f"the checkpoint has no {source} (for {slot.gguf_name}): it is "
                                  f"incomplete or not the {arch.model_type} that config.json names")
        _check_size(ck, source, slot)
        if arch.permute_qk_for_gguf and slot.gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
            n = heads if slot.gguf_name.endswith("attn_q.weight") else kv_heads
            loaders[slot.gguf_name] = lambda s=source, n=n: _permute_rotary(ck.get(s), n)
        else:  # reshape: Qwen2-MoE's shared_expert_gate is (1, D) in the checkpoint, (D,) in GGUF
            loaders[slot.gguf_name] = lambda s=source, shape=slot.shape: ck.get(s).reshape(shape)
    return loaders


def _experts_loader(ck: _Checkpoint, arch: Arch, slot: TensorSlot, inter: int) -> Load:
    """Stacked (E, out, in) experts from per-expert tensors (the Hub's names) or fused ones
    (`experts.gate_up_proj` (E, 2I, D): gate rows first, then up rows; `experts.down_proj`)."""
    if all(name in ck for name in slot.sources):
        _check_size(ck, slot.sources[0], slot, slot.shape[1:])
        return lambda names=slot.sources: np.stack([ck.get(n) for n in names])  # (E, out, in)
    p = f"model.layers.{slot.layer}"
    fused = next((f"{p}.{blk}.experts.gate_up_proj" for blk in (arch.moe_block, "mlp")
                  if f"{p}.{blk}.experts.gate_up_proj" in ck), None)
    if fused is None:
        raise GGUFExportError(f"layer {slot.layer} has no experts in a layout we know (e.g. "
                              f"{slot.sources[0]}): the checkpoint is incomplete or not the "
                              f"{arch.model_type} that config.json names")
    if slot.role == "down":
        down = fused.replace("gate_up_proj", "down_proj")
        _check_size(ck, down, slot)
        return lambda: ck.get(down)
    rows = slice(0, inter) if slot.role == "gate" else slice(inter, 2 * inter)
    return lambda: ck.get(fused)[:, rows, :]


def _check_size(ck: _Checkpoint, source: str, slot: TensorSlot, shape: tuple[int, ...] | None = None) -> None:
    want = shape or slot.shape
    have = ck.shape(source)
    if int(np.prod(have)) != int(np.prod(want)):
        raise GGUFExportError(f"{source} has shape {have} but config.json says {want}: the weights "
                              "and the config do not belong together")


def export_gguf(model_dir: str | Path, out_path: str | Path, out_type: str = "f32",
                tokenizer_pre: str | None = None, progress: bool = True) -> Path:
    """Export a MoE HF checkpoint (an architecture of lazymoe.models.archs) to GGUF with
    `out_type` in f32 | f16 | bf16 | q8_0 | q4_0 | q4_k | q4_k_m | q6_k.

    Size on disk ~ n_params * bytes_per_weight, with bytes_per_weight = 4, 2, 2, 34/32 (Q8_0: 32
    int8 weights + one f16 scale per block), 18/32 (Q4_0), 144/256 (Q4_K), 210/256 (Q6_K); rows
    whose length is not a multiple of the block fall back to a wider type. Returns out_path.
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    if out_type not in OUT_TYPES:
        raise GGUFExportError(f"out_type={out_type!r}: choose one of {sorted(OUT_TYPES)}")
    cfg = json.loads((model_dir / "config.json").read_text())
    try:
        arch = get_arch(cfg.get("model_type"))
    except UnknownArchitectureError as err:
        raise GGUFExportError(f"{err} (use llama.cpp's convert_hf_to_gguf.py for others)") from err
    check_writable(cfg)  # before reading anything else
    vocab = vocab_from_tokenizer_files(model_dir, tokenizer_pre, cfg.get("vocab_size"))
    loaders = _loaders(_Checkpoint(model_dir), cfg, arch)
    return write_gguf(out_path, arch, cfg, lambda slot: loaders[slot.gguf_name](), out_type, vocab,
                      name=model_dir.name, progress=progress)


def bundled_twin(out_type: str = "q8_0", cache_dir: str | Path | None = None) -> Path:
    """The bundled tiny model as a GGUF file of `out_type`, written on first use (about a second)
    into `cache_dir` (default data/cache/gguf/). The name carries a checksum of the bundled
    weights' size and date, so a rebuilt model gets a fresh twin."""
    from lazymoe.paths import bundled_model_dir, data_dir

    model_dir = bundled_model_dir()
    weights = model_dir / "model.safetensors"
    if not weights.exists():
        raise GGUFExportError(f"{weights} is missing: build the bundled model with `make data` "
                              "(python -m lazymoe.models.prepare)")
    stamp = zlib.crc32(f"{weights.stat().st_size}:{weights.stat().st_mtime_ns}".encode())
    folder = Path(cache_dir) if cache_dir is not None else data_dir() / "cache" / "gguf"
    path = folder / f"{model_dir.name}-{out_type}-{stamp:08x}.gguf"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        export_gguf(model_dir, partial, out_type, progress=False)
        partial.replace(path)  # a crash mid-write never leaves a file that looks complete
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("out_path")
    parser.add_argument("--type", dest="out_type", default="f32", choices=sorted(OUT_TYPES))
    args = parser.parse_args(argv)
    path = export_gguf(args.model_dir, args.out_path, args.out_type)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
