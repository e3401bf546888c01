"""Write a Qwen3-MoE checkpoint (HF layout, safetensors) as a GGUF file llama.cpp can run.

    python -m lazymoe.models.gguf_export data/models/tiny-moe /tmp/tiny-moe-f32.gguf --type f32

Why our own exporter: llama.cpp's convert_hf_to_gguf.py refuses tokenizers it does not know by
hash, and ours is freshly trained. We use the gguf package's writer and its tensor-name map, and
stream one tensor at a time, so a large checkpoint never has to fit in memory at once.

Experts are read either as the hub's per-expert tensors (`mlp.experts.E.gate_proj.weight`, what
transformers v5 `save_pretrained` writes) or as fused tensors (`mlp.experts.gate_up_proj` (E, 2I, D),
`mlp.experts.down_proj` (E, D, I)), and written stacked: ffn_gate_exps / ffn_up_exps (E, I, D),
ffn_down_exps (E, D, I) in numpy order.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors import safe_open
from tqdm.auto import tqdm

Q = gguf.GGMLQuantizationType
OUT_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}


class GGUFExportError(ValueError):
    """The checkpoint cannot be exported as asked; the message says why and what to do."""


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


Loader = Callable[[], np.ndarray]


def _tensor_plan(ck: _Checkpoint, cfg: dict) -> list[tuple[str, Loader, tuple[int, ...]]]:
    """(hf-style name, loader, numpy shape) for every tensor, in llama.cpp's usual order."""
    n_layers, n_experts = cfg["num_hidden_layers"], cfg.get("num_experts") or cfg["num_local_experts"]
    inter = cfg["moe_intermediate_size"]

    def plain(name: str, source: str | None = None) -> tuple[str, Loader, tuple[int, ...]]:
        source = source or name
        return name, lambda: ck.get(source), ck.shape(source)

    plan = [plain("model.embed_tokens.weight")]
    for b in range(n_layers):
        p = f"model.layers.{b}"
        for part in ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                     "self_attn.o_proj", "self_attn.q_norm", "self_attn.k_norm",
                     "post_attention_layernorm", "mlp.gate"):
            plan.append(plain(f"{p}.{part}.weight"))
        if f"{p}.mlp.experts.gate_up_proj" in ck:  # fused: gate rows first, then up rows
            fused = f"{p}.mlp.experts.gate_up_proj"
            e, _, d = ck.shape(fused)  # (E, 2I, D)
            plan += [
                (f"{p}.mlp.experts.gate_proj", lambda n=fused: ck.get(n)[:, :inter, :], (e, inter, d)),
                (f"{p}.mlp.experts.up_proj", lambda n=fused: ck.get(n)[:, inter:, :], (e, inter, d)),
                plain(f"{p}.mlp.experts.down_proj"),  # (E, D, I)
            ]
        elif f"{p}.mlp.experts.0.gate_proj.weight" in ck:  # per expert (the hub's names)
            for proj in ("gate_proj", "up_proj", "down_proj"):
                names = [f"{p}.mlp.experts.{e}.{proj}.weight" for e in range(n_experts)]
                plan.append((f"{p}.mlp.experts.{proj}",
                             lambda ns=names: np.stack([ck.get(n) for n in ns]),  # (E, out, in)
                             (n_experts, *ck.shape(names[0]))))
        else:
            raise GGUFExportError(f"layer {b} has no experts in a layout we know: is it a dense layer? "
                                  "only all-MoE Qwen3-MoE checkpoints are supported")
    plan.append(plain("model.norm.weight"))
    tied = "lm_head.weight" not in ck
    plan.append(plain("lm_head.weight", "model.embed_tokens.weight" if tied else None))
    return plan


def _target_type(gguf_name: str, shape: tuple[int, ...], qtype: Q) -> Q:
    """Norms and the router stay F32 (tiny, and precision matters there); the rest takes qtype."""
    if len(shape) == 1 or gguf_name.endswith("ffn_gate_inp.weight"):
        return Q.F32
    if qtype == Q.Q8_0 and shape[-1] % 32:
        return Q.F16  # Q8_0 works on blocks of 32 along a row
    return qtype


def _tokenizer_kv(writer: gguf.GGUFWriter, model_dir: Path, tokenizer_pre: str | None) -> None:
    tj = json.loads((model_dir / "tokenizer.json").read_text())
    model = tj["model"]
    if model.get("type") != "BPE":
        raise GGUFExportError(f"tokenizer type {model.get('type')!r}: only byte-level BPE is supported")
    vocab: dict[str, int] = dict(model["vocab"])
    special = {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
    vocab.update(special)
    tokens = [""] * (max(vocab.values()) + 1)
    for tok, i in vocab.items():
        tokens[i] = tok
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    if tokenizer_pre is None:
        pre = tj.get("pre_tokenizer") or {}
        if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
            tokenizer_pre = "gpt-2"  # ByteLevel's built-in split regex is GPT-2's
        else:
            raise GGUFExportError("cannot tell which pre-tokenizer llama.cpp should use: "
                                  "pass tokenizer_pre= (e.g. 'qwen2' for Qwen's own tokenizer)")
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text()) \
        if (model_dir / "tokenizer_config.json").exists() else {}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer_pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("pad_token", writer.add_pad_token_id)):
        content = cfg.get(key)
        content = content.get("content") if isinstance(content, dict) else content
        if content in vocab:
            add(vocab[content])
    writer.add_add_bos_token(False)  # transformers does not prepend BOS to this tokenizer either


def export_gguf(model_dir: str | Path, out_path: str | Path, out_type: str = "f32",
                tokenizer_pre: str | None = None, progress: bool = True) -> Path:
    """Export a Qwen3-MoE HF checkpoint to GGUF with `out_type` in f32 | f16 | bf16 | q8_0.

    Size on disk ~ n_params * bytes_per_weight, with bytes_per_weight = 4, 2, 2, 34/32 (Q8_0: 32
    int8 weights + one f16 scale per block). Returns out_path.
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    if out_type not in OUT_TYPES:
        raise GGUFExportError(f"out_type={out_type!r}: choose one of {sorted(OUT_TYPES)}")
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") != "qwen3_moe":
        raise GGUFExportError(f"model_type {cfg.get('model_type')!r}: this exporter writes qwen3_moe "
                              "checkpoints only (use llama.cpp's convert_hf_to_gguf.py for others)")
    qtype, ftype = OUT_TYPES[out_type]
    arch = gguf.MODEL_ARCH.QWEN3MOE
    name_map = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    writer = gguf.GGUFWriter(out_path, gguf.MODEL_ARCH_NAMES[arch])

    writer.add_name(model_dir.name)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    rope = cfg.get("rope_parameters") or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_expert_count(cfg.get("num_experts") or cfg["num_local_experts"])
    writer.add_expert_used_count(cfg["num_experts_per_tok"])
    writer.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    writer.add_file_type(ftype)
    if qtype not in (Q.F32, Q.F16, Q.BF16):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _tokenizer_kv(writer, model_dir, tokenizer_pre)

    # Pass 1: names, shapes and types from the safetensors headers, without reading any data.
    ck = _Checkpoint(model_dir)
    entries = []
    for hf_name, load, shape in _tensor_plan(ck, cfg):
        gg = name_map.get_name(hf_name.removesuffix(".weight"))
        if gg is None:
            raise GGUFExportError(f"no GGUF name for {hf_name}")
        t = _target_type(gg + ".weight", shape, qtype)
        entries.append((gg + ".weight", load, t))
        if t in (Q.F32, Q.F16):
            nbytes = int(np.prod(shape)) * (4 if t == Q.F32 else 2)
            writer.add_tensor_info(gg + ".weight", shape, np.dtype(np.float32 if t == Q.F32
                                                                 else np.float16), nbytes)
        else:
            byte_shape = gguf.quant_shape_to_byte_shape(shape, t)
            writer.add_tensor_info(gg + ".weight", byte_shape, np.dtype(np.uint8),
                                   int(np.prod(byte_shape)), raw_dtype=t)
    # Pass 2 streams: header, key-values, tensor infos, then each tensor's bytes in order.
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _name, load, t in tqdm(entries, desc=f"GGUF {out_type}", disable=not progress,
                                 unit="tensor"):
        writer.write_tensor_data(gguf.quants.quantize(load(), t))
    writer.close()
    return out_path


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
