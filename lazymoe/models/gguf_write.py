"""The one GGUF writer: metadata, vocabulary and tensors of a MoE model, streamed one tensor at a time.

Two callers: `lazymoe.models.gguf_export` (a checkpoint on disk -> GGUF, for llama.cpp) and
`lazymoe.bench.writer` (random weights of a real model's shape, drawn once and written as both
safetensors and GGUF). Both hand `write_gguf` the architecture record, the config and a function
that returns one tensor's values; the names, order and shapes come from the registry
(`Arch.tensors`), so the two files cannot drift apart.

Memory stays bounded: the tensor table is written from shapes alone, then each tensor is asked
for, converted and written before the next, so a 60 GB model needs about one tensor of RAM (the
largest is one layer's stacked experts, e.g. 128 x 768 x 2048 float32 = 0.8 GB for Qwen3-30B-A3B).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from tqdm.auto import tqdm

from lazymoe.models.archs import (
    Arch,
    TensorSlot,
    llamacpp_would_compute_differently,
    moe_layers_from_config,
)
from lazymoe.quant import quantize

Q = gguf.GGMLQuantizationType
OUT_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (Q.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    "q4_k": (Q.Q4_K, gguf.LlamaFileType.MOSTLY_Q4_K_S),  # every big matrix Q4_K
    "q4_k_m": (Q.Q4_K, gguf.LlamaFileType.MOSTLY_Q4_K_M),  # Q4_K, some ffn_down/attn_v Q6_K
    "q6_k": (Q.Q6_K, gguf.LlamaFileType.MOSTLY_Q6_K),
}
# gguf-py quantizes the legacy types; the K-quants come from lazymoe.quant (valid blocks, simpler
# scale search than llama-quantize's, decoded identically by both)
K_FORMATS = {Q.Q4_K: "q4_k", Q.Q5_K: "q5_k", Q.Q6_K: "q6_k"}

# one tensor's values, shaped as slot.shape: float32 numpy, or a torch tensor (bfloat16 bits are
# written as they are when the target type is BF16)
Loader = Callable[[TensorSlot], "np.ndarray | torch.Tensor"]


class GGUFExportError(ValueError):
    """The model cannot be written as asked; the message says why and what to do."""


@dataclass
class GGUFVocab:
    """The tokenizer as llama.cpp reads it (tokenizer.ggml.*): a byte-level BPE."""

    tokens: list[str]
    types: list[gguf.TokenType]
    merges: list[str]
    pre: str  # llama.cpp's pre-tokenizer name: "gpt-2", "qwen2", ...
    special_ids: dict[str, int] = field(default_factory=dict)  # "bos" | "eos" | "pad" -> id


def vocab_from_tokenizer_files(
    model_dir: Path, tokenizer_pre: str | None = None, vocab_size: int | None = None
) -> GGUFVocab:
    """Read tokenizer.json (+ tokenizer_config.json) of a Hugging Face folder.

    vocab_size: the model's embedding rows; the token list is padded to it with unused tokens
    (llama.cpp needs one token per row).
    """
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
    if vocab_size is not None and vocab_size > len(tokens):
        pad = [f"<|pad{n}|>" for n in range(vocab_size - len(tokens))]
        tokens, types = tokens + pad, types + [gguf.TokenType.UNUSED] * len(pad)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    if tokenizer_pre is None:
        pre = tj.get("pre_tokenizer") or {}
        if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
            tokenizer_pre = "gpt-2"  # ByteLevel's built-in split regex is GPT-2's
        else:
            raise GGUFExportError("cannot tell which pre-tokenizer llama.cpp should use: "
                                  "pass tokenizer_pre= (e.g. 'qwen2' for Qwen's own tokenizer)")
    config_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(config_path.read_text()) if config_path.exists() else {}
    special_ids = {}
    for key in ("bos", "eos", "pad"):
        content = cfg.get(f"{key}_token")
        content = content.get("content") if isinstance(content, dict) else content
        if content in vocab:
            special_ids[key] = vocab[content]
    return GGUFVocab(tokens, types, merges, tokenizer_pre, special_ids)


def _more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's Q4_K_M rule (use_more_bits): the first and last eighth of the layers and every
    third one between them keep ffn_down and attn_v in Q6_K."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def target_type(slot: TensorSlot, qtype: Q, out_type: str = "", n_layers: int = 0) -> Q:
    """Norms, biases and routers stay F32 (tiny, and precision matters there); the rest takes qtype.

    A row length the type's blocks do not divide falls back, as llama.cpp does: K-quants (256
    weights a block) to Q8_0, Q8_0 / Q4_0 (32) to F16.
    """
    if len(slot.shape) == 1 or slot.kind == "router":
        return Q.F32
    if out_type == "q4_k_m" and (
        slot.kind == "output"
        or (slot.layer is not None and _more_bits(slot.layer, n_layers)
            and slot.gguf_name.endswith(("ffn_down_exps.weight", "attn_v.weight")))
    ):
        qtype = Q.Q6_K
    if qtype in K_FORMATS and slot.shape[-1] % 256:
        qtype = Q.Q8_0
    if qtype in (Q.Q8_0, Q.Q4_0) and slot.shape[-1] % 32:
        return Q.F16
    return qtype


def check_writable(config: dict[str, Any]) -> None:
    """Refuse a model llama.cpp would compute differently, or one with dense layers."""
    problem = llamacpp_would_compute_differently(config)
    if problem:
        raise GGUFExportError(problem)
    if moe_layers_from_config(config) != list(range(config["num_hidden_layers"])):
        raise GGUFExportError("some layers are dense (mlp_only_layers / decoder_sparse_step): only "
                              "checkpoints with a MoE block in every layer are supported")


def write_gguf(out_path: str | Path, arch: Arch, config: dict[str, Any], load: Loader,
               out_type: str, vocab: GGUFVocab, name: str = "", progress: bool = True) -> Path:
    """Write the GGUF of a model of `arch` with `config` (config.json as a dict): metadata, vocab,
    then every tensor of `arch.tensors(config)`, asking `load(slot)` for each in file order.

    Refuses (before creating the file) a type it does not write, a model with dense layers, and a
    config llama.cpp would compute differently. Returns out_path.
    """
    out_path = Path(out_path)
    if out_type not in OUT_TYPES:
        raise GGUFExportError(f"out_type={out_type!r}: choose one of {sorted(OUT_TYPES)}")
    check_writable(config)
    qtype, ftype = OUT_TYPES[out_type]
    slots = arch.tensors(config)
    writer = gguf.GGUFWriter(str(out_path), arch.gguf_arch)
    _add_metadata(writer, arch, config, name)
    writer.add_file_type(ftype)
    if qtype not in (Q.F32, Q.F16, Q.BF16):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_vocab(writer, vocab)

    # Pass 1: the tensor table from shapes alone. Pass 2 streams each tensor's bytes in order.
    types = [target_type(slot, qtype, out_type, config["num_hidden_layers"]) for slot in slots]
    for slot, t in zip(slots, types, strict=True):
        if t in (Q.F32, Q.F16):
            nbytes = int(np.prod(slot.shape)) * (4 if t == Q.F32 else 2)
            writer.add_tensor_info(slot.gguf_name, slot.shape,
                                   np.dtype(np.float32 if t == Q.F32 else np.float16), nbytes)
        else:
            byte_shape = gguf.quant_shape_to_byte_shape(slot.shape, t)
            writer.add_tensor_info(slot.gguf_name, byte_shape, np.dtype(np.uint8),
                                   int(np.prod(byte_shape)), raw_dtype=t)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for slot, t in tqdm(list(zip(slots, types, strict=True)), desc=f"GGUF {out_type}",
                        disable=not progress, unit="tensor"):
        writer.write_tensor_data(_encode(load(slot), slot, t))
    writer.close()
    return out_path


def _encode(values: np.ndarray | torch.Tensor, slot: TensorSlot, t: Q) -> np.ndarray:
    if tuple(values.shape) != slot.shape:
        raise GGUFExportError(f"{slot.gguf_name}: got shape {tuple(values.shape)}, the config "
                              f"needs {slot.shape}: the weights and config.json do not belong together")
    if isinstance(values, torch.Tensor):
        if values.dtype == torch.bfloat16 and t == Q.BF16:
            return values.cpu().contiguous().view(torch.uint16).numpy()  # the bits as they are
        if t in LEGACY_TORCH or t in K_FORMATS:
            # on a GPU when there is one: gguf-py's numpy, and torch on the CPU for a K-quant's
            # scale search, use one core (a 30B model's Q4_K_M took ~15 minutes that way)
            device = "cuda" if torch.cuda.is_available() else values.device
            x = values.to(device, torch.float32)
            blocks = LEGACY_TORCH[t](x) if t in LEGACY_TORCH else quantize(x, K_FORMATS[t]).data
            return blocks.cpu().numpy().reshape(gguf.quant_shape_to_byte_shape(tuple(values.shape), t))
        values = values.to(torch.float32).cpu().numpy()
    values = np.asarray(values, dtype=np.float32)
    if t in K_FORMATS:
        blocks = quantize(torch.from_numpy(values), K_FORMATS[t]).data.numpy()
        return blocks.reshape(gguf.quant_shape_to_byte_shape(values.shape, t))
    return gguf.quants.quantize(values, t)


def q8_0_blocks(x: torch.Tensor) -> torch.Tensor:
    """gguf-py's Q8_0 (the reference in ggml-quants.c) in torch, byte for byte: (n_blocks, 34) uint8."""
    blocks = x.reshape(-1, 32)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    scaled = blocks * inv
    a = scaled.abs()
    rounded = torch.sign(scaled) * (a.floor() + (2 * (a - a.floor())).floor())  # roundf: half away from 0
    qs = rounded.to(torch.int8).view(torch.uint8)
    return torch.cat([d.to(torch.float16).view(torch.uint8), qs], dim=1)


def q4_0_blocks(x: torch.Tensor) -> torch.Tensor:
    """gguf-py's Q4_0 in torch, byte for byte: (n_blocks, 18) uint8."""
    blocks = x.reshape(-1, 32)
    signed_max = blocks.gather(1, blocks.abs().argmax(dim=1, keepdim=True))
    d = signed_max / -8
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    qs = torch.trunc(blocks * inv + 8.5).to(torch.uint8).clamp(0, 15)
    packed = qs[:, :16] | (qs[:, 16:] << 4)
    return torch.cat([d.to(torch.float16).view(torch.uint8), packed], dim=1)


LEGACY_TORCH: dict[Q, Callable[[torch.Tensor], torch.Tensor]] = {Q.Q8_0: q8_0_blocks, Q.Q4_0: q4_0_blocks}


def _add_metadata(writer: gguf.GGUFWriter, arch: Arch, cfg: dict[str, Any], name: str) -> None:
    writer.add_name(name)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])  # olmoe, llama: the experts' width
    heads = cfg["num_attention_heads"]
    writer.add_head_count(heads)
    writer.add_head_count_kv(cfg.get("num_key_value_heads") or heads)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    rope = cfg.get("rope_parameters") or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_expert_count(arch.num_experts(cfg))
    writer.add_expert_used_count(cfg["num_experts_per_tok"])
    writer.add_expert_feed_forward_length(arch.expert_width(cfg))
    if arch.shared_expert:
        writer.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])


def _add_vocab(writer: gguf.GGUFWriter, vocab: GGUFVocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id,
              "pad": writer.add_pad_token_id}
    for key, token_id in vocab.special_ids.items():
        adders[key](token_id)
    writer.add_add_bos_token(False)  # transformers does not prepend BOS to these tokenizers either
