"""A GGUF file's metadata as a Hugging Face config.json dict, and its non-expert tensors as floats.

The keys are llama.cpp's (`{arch}.embedding_length`, `{arch}.expert_count`, ...), the same ones
`lazymoe.models.gguf_write` writes. transformers can read GGUF configs too, but in 5.24 its
qwen3_moe mapping drops the experts' width (moe_intermediate_size), so we map the few fields the
supported architectures need ourselves, with the architecture registry's names.

Also here, for both GGUF modules: the ggml types the engine reads (`GGML_FORMATS`), `GGUFError`,
and opening a file (`open_reader`); gguf_file.py (the expert store) builds on this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from lazymoe.engine.storage.safetensors_file import ExpertStoreError
from lazymoe.models.archs import ARCHS, Arch

_Q = gguf.GGMLQuantizationType
# ggml type -> lazymoe.quant format name (same bytes)
GGML_FORMATS: dict[gguf.GGMLQuantizationType, str] = {
    _Q.F32: "f32", _Q.F16: "f16", _Q.BF16: "bf16", _Q.Q8_0: "q8_0", _Q.Q4_0: "q4_0",
    _Q.Q4_1: "q4_1", _Q.Q4_K: "q4_k", _Q.Q5_K: "q5_k", _Q.Q6_K: "q6_k",
}  # fmt: skip
SUPPORTED_TYPES = ", ".join(t.name for t in GGML_FORMATS)


class GGUFError(ExpertStoreError):
    """A GGUF file the engine cannot use: the message names what and what to do."""


def arch_of_gguf(reader: gguf.GGUFReader, path: Path) -> Arch:
    """The registry's record for the file's general.architecture (Mixtral is llama with experts)."""
    name = field_value(reader, "general.architecture")
    for arch in ARCHS.values():
        if arch.gguf_arch == name:
            return arch
    known = ", ".join(sorted(a.gguf_arch for a in ARCHS.values()))
    raise GGUFError(f"{path}: GGUF architecture {name!r} is not one the engine runs ({known})")


def field_value(reader: gguf.GGUFReader, key: str, default=None):
    """A metadata value as a Python scalar, string or list; `default` when absent."""
    f = reader.get_field(key)
    if f is None:
        return default
    return f.contents()


def open_reader(path: Path) -> gguf.GGUFReader:
    if not path.is_file():
        raise GGUFError(f"{path} does not exist: give the path of a .gguf file")
    try:
        return gguf.GGUFReader(path, mode="c")  # copy-on-write map: writable views, no copies
    except (ValueError, OSError, KeyError) as err:
        raise GGUFError(f"{path} is not a readable GGUF file ({err}): download it again") from err


def _float(value: float) -> float:
    """A float32 from the file as the decimal it was written from (1e-06, not 9.99999997e-07)."""
    return float(f"{float(value):.7g}")


def config_from_gguf(reader: gguf.GGUFReader, path: Path) -> dict[str, Any]:
    """config.json fields of the model in `reader` (model_type from the registry)."""
    arch = arch_of_gguf(reader, path)
    a = arch.gguf_arch

    def need(key: str):
        value = field_value(reader, f"{a}.{key}")
        if value is None:
            raise GGUFError(f"{path} lacks the metadata {a}.{key}: the file is incomplete")
        return value

    if field_value(reader, f"{a}.expert_count") is None:
        raise GGUFError(
            f"{path} is not a mixture-of-experts model (no {a}.expert_count): the "
            "engine offloads experts, so it runs MoE models only"
        )
    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    names = {t.name for t in reader.tensors}
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    config: dict[str, Any] = {
        "model_type": arch.model_type,
        "architectures": [arch.hf_class],
        "hidden_size": hidden,
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(field_value(reader, f"{a}.attention.head_count_kv", heads)),
        "head_dim": int(field_value(reader, f"{a}.attention.key_length", hidden // heads)),
        "max_position_embeddings": int(need("context_length")),
        "rms_norm_eps": _float(need("attention.layer_norm_rms_epsilon")),
        "rope_parameters": {
            "rope_theta": _float(field_value(reader, f"{a}.rope.freq_base", 10000.0)),
            "rope_type": "default",
        },
        "num_experts_per_tok": int(need("expert_used_count")),
        arch.num_experts_fields[0]: int(need("expert_count")),
        "intermediate_size": int(field_value(reader, f"{a}.feed_forward_length", 0)),
        arch.expert_width_field: int(
            field_value(reader, f"{a}.expert_feed_forward_length", 0) or need("feed_forward_length")
        ),
        "vocab_size": len(tokens) if tokens is not None else int(need("vocab_size")),
        "tie_word_embeddings": "output.weight" not in names,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    if arch.top_k_renorm_field:  # None: the architecture always renormalizes (Mixtral)
        config[arch.top_k_renorm_field] = arch.llamacpp_renormalizes_top_k
    if arch.qkv_bias_field:
        config[arch.qkv_bias_field] = "blk.0.attn_q.bias" in names
    if arch.shared_expert:
        config["shared_expert_intermediate_size"] = int(need("expert_shared_feed_forward_length"))
    for key in ("bos", "eos", "pad"):
        token_id = field_value(reader, f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            config[f"{key}_token_id"] = int(token_id)
    return config


def _unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's interleaved rotary rows back to HF's halves (inverse of gguf_export's permute)."""
    return (
        w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def iter_gguf_resident(path: Path, arch: Arch, config: dict) -> Iterator[tuple[str, torch.Tensor]]:
    """(module parameter name, float32 tensor) for every non-expert tensor of the GGUF file,
    dequantized with gguf-py (the resident part is small; the experts stay in the map)."""
    reader = open_reader(path)
    tensors = {t.name: t for t in reader.tensors}
    for slot in arch.tensors(config):
        if slot.kind == "experts":
            continue
        t = tensors.get(slot.gguf_name)
        if t is None:
            if slot.kind == "output" and config.get("tie_word_embeddings"):
                continue
            raise GGUFError(f"{path} lacks the tensor {slot.gguf_name}: the file is incomplete")
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(slot.shape)
        if arch.permute_qk_for_gguf and slot.gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
            kv = config.get("num_key_value_heads") or config["num_attention_heads"]
            n = config["num_attention_heads"] if slot.gguf_name.endswith("attn_q.weight") else kv
            values = _unpermute_rotary(values, n)
        name = arch.module_key(slot.sources[0])
        if slot.gguf_name.endswith("ffn_gate_inp_shexp.weight"):
            values = values.reshape(1, -1)  # the checkpoint's (1, D)
        yield name, torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
