"""Write a MoE checkpoint (HF layout, safetensors) as a GGUF file llama.cpp can run.

    python -m lazymoe.models.gguf_export data/models/tiny-moe /tmp/tiny-moe-f32.gguf --type f32

The architectures the engine runs: Qwen3-MoE (llama.cpp `qwen3moe`), OLMoE (`olmoe`), Qwen2-MoE
with its shared expert (`qwen2moe`) and Mixtral (llama.cpp runs it as `llama` with experts).

Why our own exporter: llama.cpp's convert_hf_to_gguf.py refuses tokenizers it does not know by
hash, and ours is freshly trained. We use the gguf package's writer and its tensor-name map, and
stream one tensor at a time, so a large checkpoint never has to fit in memory at once.

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
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Arch:
    """What differs per architecture between the HF checkpoint and llama.cpp's GGUF."""

    gguf_arch: gguf.MODEL_ARCH
    block: str  # the MoE block's name in checkpoint keys ("mlp", Mixtral's "block_sparse_moe")
    projections: tuple[str, str, str]  # per-expert checkpoint names of gate, up, down
    norms_in_attention: bool  # q_norm / k_norm weights
    renormalizes_top_k: bool  # what llama.cpp's graph does with the top-k router weights
    expert_width_field: str
    shared_expert: bool = False
    permute_qk: bool = False  # llama.cpp's `llama` graph uses the interleaved rotary layout


ARCHS: dict[str, _Arch] = {
    "qwen3_moe": _Arch(gguf.MODEL_ARCH.QWEN3MOE, "mlp", ("gate_proj", "up_proj", "down_proj"),
                       True, True, "moe_intermediate_size"),
    "olmoe": _Arch(gguf.MODEL_ARCH.OLMOE, "mlp", ("gate_proj", "up_proj", "down_proj"),
                   True, False, "intermediate_size"),
    "qwen2_moe": _Arch(gguf.MODEL_ARCH.QWEN2MOE, "mlp", ("gate_proj", "up_proj", "down_proj"),
                       False, False, "moe_intermediate_size", shared_expert=True),
    "mixtral": _Arch(gguf.MODEL_ARCH.LLAMA, "block_sparse_moe", ("w1", "w3", "w2"),
                     False, True, "intermediate_size", permute_qk=True),
}  # fmt: skip


def _permute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF q/k rows (per head: first halves, then second halves) -> llama.cpp's interleaved pairs."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor_plan(ck: _Checkpoint, cfg: dict, arch: _Arch) -> list[tuple[str, Loader, tuple[int, ...]]]:
    """(canonical hf-style name, loader, numpy shape) for every tensor, in llama.cpp's usual order.

    Canonical names are the ones the gguf package maps for every architecture
    (`model.layers.N.mlp.gate`, `...mlp.experts.gate_proj`), with `.weight` or `.bias` at the end.
    """
    n_layers, n_experts = cfg["num_hidden_layers"], cfg.get("num_experts") or cfg["num_local_experts"]
    inter = cfg[arch.expert_width_field]
    n_heads, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def plain(name: str, source: str | None = None) -> tuple[str, Loader, tuple[int, ...]]:
        source = source or name
        return name, lambda: ck.get(source), ck.shape(source)

    plan = [plain("model.embed_tokens.weight")]
    for b in range(n_layers):
        p = f"model.layers.{b}"
        attn = ["q_proj", "k_proj", "v_proj", "o_proj"] + (["q_norm", "k_norm"] if arch.norms_in_attention else [])
        plan.append(plain(f"{p}.input_layernorm.weight"))
        for part in attn:
            name = f"{p}.self_attn.{part}.weight"
            if arch.permute_qk and part in ("q_proj", "k_proj"):
                heads = n_heads if part == "q_proj" else n_kv
                plan.append((name, lambda n=name, h=heads: _permute_rotary(ck.get(n), h), ck.shape(name)))
            else:
                plan.append(plain(name))
            if part in ("q_proj", "k_proj", "v_proj") and f"{p}.self_attn.{part}.bias" in ck:
                plan.append(plain(f"{p}.self_attn.{part}.bias"))
        plan.append(plain(f"{p}.post_attention_layernorm.weight"))
        plan.append(plain(f"{p}.mlp.gate.weight", f"{p}.{arch.block}.gate.weight"))
        fused = next((f"{p}.{blk}.experts.gate_up_proj" for blk in (arch.block, "mlp")
                      if f"{p}.{blk}.experts.gate_up_proj" in ck), None)
        first = f"{p}.{arch.block}.experts.0.{arch.projections[0]}.weight"
        if fused is not None:  # fused: gate rows first, then up rows
            e, _, d = ck.shape(fused)  # (E, 2I, D)
            down = fused.replace("gate_up_proj", "down_proj")
            plan += [
                (f"{p}.mlp.experts.gate_proj.weight", lambda n=fused: ck.get(n)[:, :inter, :], (e, inter, d)),
                (f"{p}.mlp.experts.up_proj.weight", lambda n=fused: ck.get(n)[:, inter:, :], (e, inter, d)),
                plain(f"{p}.mlp.experts.down_proj.weight", down),  # (E, D, I)
            ]
        elif first in ck:  # per expert (the hub's names)
            for role, proj in zip(("gate_proj", "up_proj", "down_proj"), arch.projections, strict=True):
                names = [f"{p}.{arch.block}.experts.{e}.{proj}.weight" for e in range(n_experts)]
                plan.append((f"{p}.mlp.experts.{role}.weight",
                             lambda ns=names: np.stack([ck.get(n) for n in ns]),  # (E, out, in)
                             (n_experts, *ck.shape(names[0]))))
        else:
            raise GGUFExportError(f"layer {b} has no experts in a layout we know: is it a dense layer? "
                                  "only checkpoints with a MoE block in every layer are supported")
        if arch.shared_expert:
            for proj in ("gate_proj", "up_proj", "down_proj"):
                plan.append(plain(f"{p}.mlp.shared_expert.{proj}.weight"))
            gate = f"{p}.mlp.shared_expert_gate.weight"  # (1, D): llama.cpp wants (D,)
            plan.append((gate, lambda n=gate: ck.get(n).reshape(-1), (ck.shape(gate)[-1],)))
    plan.append(plain("model.norm.weight"))
    tied = "lm_head.weight" not in ck
    plan.append(plain("lm_head.weight", "model.embed_tokens.weight" if tied else None))
    return plan


def _check_llamacpp_agrees(cfg: dict, arch: _Arch) -> None:
    """Refuse a checkpoint llama.cpp would load but compute differently."""
    model_type = cfg["model_type"]
    renorm = bool(cfg.get("norm_topk_prob", model_type == "mixtral"))  # Mixtral always renormalizes
    if renorm != arch.renormalizes_top_k:
        raise GGUFExportError(
            f"{model_type} with norm_topk_prob={renorm}: llama.cpp's {arch.gguf_arch.name.lower()} "
            f"graph {'always' if arch.renormalizes_top_k else 'never'} renormalizes the top-k router "
            f"weights, so it would compute another model; set norm_topk_prob="
            f"{arch.renormalizes_top_k} in config.json (and retrain), or run it with transformers"
        )
    if model_type == "olmoe" and cfg["num_key_value_heads"] != cfg["num_attention_heads"]:
        raise GGUFExportError(
            "olmoe with fewer KV heads than heads: llama.cpp's olmoe graph normalizes k over the whole "
            "hidden size (k_norm of hidden_size weights), so it needs num_key_value_heads == "
            "num_attention_heads, as OLMoE-1B-7B has"
        )


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
    """Export a MoE HF checkpoint (see ARCHS) to GGUF with `out_type` in f32 | f16 | bf16 | q8_0.

    Size on disk ~ n_params * bytes_per_weight, with bytes_per_weight = 4, 2, 2, 34/32 (Q8_0: 32
    int8 weights + one f16 scale per block). Returns out_path.
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    if out_type not in OUT_TYPES:
        raise GGUFExportError(f"out_type={out_type!r}: choose one of {sorted(OUT_TYPES)}")
    cfg = json.loads((model_dir / "config.json").read_text())
    spec = ARCHS.get(cfg.get("model_type"))
    if spec is None:
        raise GGUFExportError(f"model_type {cfg.get('model_type')!r}: this exporter writes "
                              f"{', '.join(ARCHS)} checkpoints (use llama.cpp's convert_hf_to_gguf.py "
                              "for others)")
    _check_llamacpp_agrees(cfg, spec)
    qtype, ftype = OUT_TYPES[out_type]
    arch = spec.gguf_arch
    name_map = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    writer = gguf.GGUFWriter(out_path, gguf.MODEL_ARCH_NAMES[arch])

    writer.add_name(model_dir.name)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])  # olmoe, llama: the experts' width
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    rope = cfg.get("rope_parameters") or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_expert_count(cfg.get("num_experts") or cfg["num_local_experts"])
    writer.add_expert_used_count(cfg["num_experts_per_tok"])
    writer.add_expert_feed_forward_length(cfg[spec.expert_width_field])
    if spec.shared_expert:
        writer.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    writer.add_file_type(ftype)
    if qtype not in (Q.F32, Q.F16, Q.BF16):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _tokenizer_kv(writer, model_dir, tokenizer_pre)

    # Pass 1: names, shapes and types from the safetensors headers, without reading any data.
    ck = _Checkpoint(model_dir)
    entries = []
    for hf_name, load, shape in _tensor_plan(ck, cfg, spec):
        base, suffix = hf_name.rsplit(".", 1)  # "....q_proj", "weight" or "bias"
        gg = name_map.get_name(base)
        if gg is None:
            raise GGUFExportError(f"no GGUF name for {hf_name}")
        name = f"{gg}.{suffix}"
        t = _target_type(name, shape, qtype)
        entries.append((name, load, t))
        if t in (Q.F32, Q.F16):
            nbytes = int(np.prod(shape)) * (4 if t == Q.F32 else 2)
            writer.add_tensor_info(name, shape, np.dtype(np.float32 if t == Q.F32
                                                         else np.float16), nbytes)
        else:
            byte_shape = gguf.quant_shape_to_byte_shape(shape, t)
            writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8),
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
