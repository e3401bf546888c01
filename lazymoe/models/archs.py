"""Every fact about a MoE architecture that lazymoe needs, in one record per transformers model type.

The engine (which config fields count the experts, where the experts sit in the checkpoint, the
attention form the segmented decoder handles), the expert store (per-expert tensor names), the GGUF
exporter and the benchmark writer (llama.cpp's architecture name, every tensor's GGUF name and
shape, what llama.cpp's graph computes), and the random-model writer (a tiny default config) all
read these records. Adding an architecture is one `Arch` record here plus its tests
(CONTRIBUTING.md, "Adding a model architecture").

transformers 5 gives all four the same MoE block: `mlp.gate` (the router) and `mlp.experts`
(gate, up and down projections of every expert); checkpoints keep older names (Mixtral's
`block_sparse_moe.experts.E.w1/w3/w2`), which `Arch.module_key` maps to the model's names.

    arch = get_arch("olmoe")            # or arch_of(config) for a config dict / transformers config
    arch.num_experts(config), arch.expert_width(config)
    arch.tensors(config)                # every GGUF tensor: name, numpy shape, checkpoint sources
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


class UnknownArchitectureError(ValueError):
    """A model type without a record in `ARCHS`; the message names the supported ones."""


@dataclass(frozen=True)
class TensorSlot:
    """One tensor of the model as llama.cpp's GGUF holds it, and where it comes from in a checkpoint.

    shape is numpy order (GGUF lists the same dims reversed); expert tensors are stacked over
    experts: gate and up (E, I, D), down (E, D, I). sources are the checkpoint's keys in the Hub
    layout: one per expert for kind "experts" (in expert order), else exactly one.
    """

    gguf_name: str  # e.g. "blk.3.ffn_gate_exps.weight"
    shape: tuple[int, ...]
    kind: str  # embedding | norm | attention | bias | router | experts | shared | output
    sources: tuple[str, ...]
    layer: int | None = None
    role: str = ""  # gate | up | down for kinds "experts" and "shared"


@dataclass(frozen=True)
class Arch:
    """What lazymoe needs to know about one transformers MoE model type."""

    model_type: str  # transformers' config.model_type
    hf_class: str  # config.json "architectures"
    # -- config fields ----------------------------------------------------------------------------
    num_experts_fields: tuple[str, ...]  # routed experts per layer; the first one present counts
    expert_width_field: str  # each routed expert's intermediate size I
    # whether the router renormalizes its top-k weights to sum to 1 ("norm_topk_prob"); None: the
    # config has no such field and the model always renormalizes (Mixtral)
    top_k_renorm_field: str | None
    # -- checkpoint layout (engine loading, expert store, exporter) -------------------------------
    moe_block: str  # the MoE block's name in checkpoint keys ("mlp"; Mixtral's "block_sparse_moe")
    expert_projections: tuple[str, str, str]  # per-expert checkpoint names of gate, up, down
    # -- attention form and extra parts ------------------------------------------------------------
    qk_norm: str  # "" none | "per_head" (head_dim weights) | "full" (over all heads' width)
    qkv_bias_field: str | None  # config field that switches q/k/v biases on; None: never
    shared_expert: bool  # a dense expert every token runs (mlp.shared_expert), kept resident
    segmented_decoder: bool  # the engine's own layer loop (decode="segments"/"graphs") handles it
    # -- llama.cpp ------------------------------------------------------------------------------------
    gguf_arch: str  # llama.cpp's architecture name (general.architecture)
    llamacpp_renormalizes_top_k: bool  # what llama.cpp's graph does with the top-k router weights
    permute_qk_for_gguf: bool  # llama.cpp's `llama` graph wants q/k rows in interleaved rotary order
    # -- random checkpoints (lazymoe.models.random) ------------------------------------------------
    tiny_config: Mapping[str, Any]  # a small config with every feature (several layers, E > top-k)
    notes: str = ""

    # -- config ------------------------------------------------------------------------------------
    def num_experts(self, config: Any) -> int:
        """Routed experts per layer (config: a config.json dict or a transformers config)."""
        for field in self.num_experts_fields:
            value = _field(config, field)
            if value:
                return int(value)
        raise UnknownArchitectureError(
            f"the {self.model_type} config names none of {', '.join(self.num_experts_fields)}: "
            "is it an MoE model? Check config.json"
        )

    def expert_width(self, config: Any) -> int:
        """I, each routed expert's intermediate size."""
        return int(_field(config, self.expert_width_field))

    def has_qkv_bias(self, config: Any) -> bool:
        return self.qkv_bias_field is not None and bool(_field(config, self.qkv_bias_field))

    def renormalizes_top_k(self, config: Any) -> bool:
        """Whether the router's top-k weights are divided by their sum (a missing field: no)."""
        if self.top_k_renorm_field is None:
            return True
        return bool(_field(config, self.top_k_renorm_field, False))

    # -- checkpoint names --------------------------------------------------------------------------
    def module_key(self, checkpoint_key: str) -> str:
        """The model's parameter name for a checkpoint key (Mixtral: block_sparse_moe -> mlp)."""
        return checkpoint_key.replace(f".{self.moe_block}.", ".mlp.")

    def expert_key(self, layer: int, expert: int, role: str) -> str:
        """The checkpoint key of one expert's projection; role is gate | up | down."""
        proj = self.expert_projections[ROLES.index(role)]
        return f"model.layers.{layer}.{self.moe_block}.experts.{expert}.{proj}.weight"

    # -- every tensor, in llama.cpp's order ----------------------------------------------------
    def tensors(self, config: Any) -> list[TensorSlot]:
        """Every tensor of a model whose layers are all MoE, in the order llama.cpp's converter
        writes them; the GGUF exporter, the benchmark writer and GGUF readers use these names."""
        d, vocab = int(_field(config, "hidden_size")), int(_field(config, "vocab_size"))
        heads = int(_field(config, "num_attention_heads"))
        kv_heads = int(_field(config, "num_key_value_heads") or heads)
        head_dim = int(_field(config, "head_dim") or d // heads)
        n_exp, inter = self.num_experts(config), self.expert_width(config)
        q_rows, kv_rows = heads * head_dim, kv_heads * head_dim
        slots = [TensorSlot("token_embd.weight", (vocab, d), "embedding", ("model.embed_tokens.weight",))]
        for n in range(int(_field(config, "num_hidden_layers"))):
            p, b = f"model.layers.{n}.", f"blk.{n}."

            def one(gguf: str, shape: tuple[int, ...], kind: str, source: str, role: str = "") -> TensorSlot:
                return TensorSlot(b + gguf, shape, kind, (p + source,), n, role)  # noqa: B023 (called at once)

            slots.append(one("attn_norm.weight", (d,), "norm", "input_layernorm.weight"))
            for part, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows)):
                slots.append(one(f"attn_{part}.weight", (rows, d), "attention", f"self_attn.{part}_proj.weight"))
                if self.has_qkv_bias(config):
                    slots.append(one(f"attn_{part}.bias", (rows,), "bias", f"self_attn.{part}_proj.bias"))
            slots.append(one("attn_output.weight", (d, q_rows), "attention", "self_attn.o_proj.weight"))
            if self.qk_norm:
                full = self.qk_norm == "full"
                slots.append(one("attn_q_norm.weight", (q_rows if full else head_dim,), "norm", "self_attn.q_norm.weight"))
                slots.append(one("attn_k_norm.weight", (kv_rows if full else head_dim,), "norm", "self_attn.k_norm.weight"))
            slots.append(one("ffn_norm.weight", (d,), "norm", "post_attention_layernorm.weight"))
            slots.append(one("ffn_gate_inp.weight", (n_exp, d), "router", f"{self.moe_block}.gate.weight"))
            for role, dims in (("gate", (inter, d)), ("up", (inter, d)), ("down", (d, inter))):
                sources = tuple(self.expert_key(n, e, role) for e in range(n_exp))
                slots.append(TensorSlot(gguf_expert_name(n, role), (n_exp, *dims), "experts", sources, n, role))
            if self.shared_expert:
                s = int(_field(config, "shared_expert_intermediate_size"))
                for role, dims in (("gate", (s, d)), ("up", (s, d)), ("down", (d, s))):
                    slots.append(one(f"ffn_{role}_shexp.weight", dims, "shared", f"mlp.shared_expert.{role}_proj.weight", role))
                # the shared expert's gate: the checkpoint holds it as (1, D); llama.cpp wants (D,)
                slots.append(one("ffn_gate_inp_shexp.weight", (d,), "shared", "mlp.shared_expert_gate.weight"))
        slots.append(TensorSlot("output_norm.weight", (d,), "norm", ("model.norm.weight",)))
        slots.append(TensorSlot("output.weight", (vocab, d), "output", ("lm_head.weight",)))
        return slots


ROLES = ("gate", "up", "down")
_HUB_NAMES = ("gate_proj", "up_proj", "down_proj")

# Small shapes that still exercise everything: several layers, more experts than top-k.
_COMMON: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "num_experts_per_tok": 2,
}


def _tiny(**fields: Any) -> Mapping[str, Any]:
    return MappingProxyType({**_COMMON, **fields})


ARCHS: dict[str, Arch] = {
    "qwen3_moe": Arch(
        "qwen3_moe", "Qwen3MoeForCausalLM",
        num_experts_fields=("num_experts", "num_local_experts"),  # transformers 5 writes the second
        expert_width_field="moe_intermediate_size", top_k_renorm_field="norm_topk_prob",
        moe_block="mlp", expert_projections=_HUB_NAMES,
        qk_norm="per_head", qkv_bias_field="attention_bias", shared_expert=False,
        segmented_decoder=True,
        gguf_arch="qwen3moe", llamacpp_renormalizes_top_k=True, permute_qk_for_gguf=False,
        tiny_config=_tiny(head_dim=8, intermediate_size=64, moe_intermediate_size=16,
                          num_experts=8, norm_topk_prob=True),
    ),
    "olmoe": Arch(
        "olmoe", "OlmoeForCausalLM",
        num_experts_fields=("num_experts",), expert_width_field="intermediate_size",
        top_k_renorm_field="norm_topk_prob",
        moe_block="mlp", expert_projections=_HUB_NAMES,
        qk_norm="full", qkv_bias_field="attention_bias", shared_expert=False,
        segmented_decoder=True,
        gguf_arch="olmoe", llamacpp_renormalizes_top_k=False, permute_qk_for_gguf=False,
        tiny_config=_tiny(intermediate_size=16, num_experts=8, norm_topk_prob=False),
        notes="llama.cpp's olmoe normalizes k over the whole hidden size: it needs as many KV heads "
              "as heads (OLMoE-1B-7B has)",
    ),
    "qwen2_moe": Arch(
        "qwen2_moe", "Qwen2MoeForCausalLM",
        num_experts_fields=("num_experts",), expert_width_field="moe_intermediate_size",
        top_k_renorm_field="norm_topk_prob",
        moe_block="mlp", expert_projections=_HUB_NAMES,
        qk_norm="", qkv_bias_field="qkv_bias", shared_expert=True,
        segmented_decoder=False,  # the layer loop has no place for the shared expert yet
        gguf_arch="qwen2moe", llamacpp_renormalizes_top_k=False, permute_qk_for_gguf=False,
        tiny_config=_tiny(intermediate_size=64, moe_intermediate_size=16,
                          shared_expert_intermediate_size=32, num_experts=8, norm_topk_prob=False),
        notes="the shared expert (mlp.shared_expert) stays resident like attention",
    ),
    "mixtral": Arch(
        "mixtral", "MixtralForCausalLM",
        num_experts_fields=("num_local_experts",), expert_width_field="intermediate_size",
        top_k_renorm_field=None,  # always renormalizes: its config has no norm_topk_prob
        moe_block="block_sparse_moe", expert_projections=("w1", "w3", "w2"),
        qk_norm="", qkv_bias_field=None, shared_expert=False,
        segmented_decoder=True,
        gguf_arch="llama", llamacpp_renormalizes_top_k=True, permute_qk_for_gguf=True,
        tiny_config=_tiny(intermediate_size=16, num_local_experts=8),
        notes="Mixtral always renormalizes the top-k weights (its config has no norm_topk_prob)",
    ),
}  # fmt: skip
SUPPORTED_ARCHS = tuple(ARCHS)


def get_arch(model_type: str | None) -> Arch:
    """The record of `model_type`, or an error naming the supported ones."""
    arch = ARCHS.get(model_type) if isinstance(model_type, str) else None
    if arch is None:
        raise UnknownArchitectureError(
            f"model_type {model_type!r} is not supported by lazymoe; supported: {', '.join(ARCHS)}"
        )
    return arch


def arch_of(config: Any) -> Arch:
    """The record of a config.json dict or a transformers config."""
    return get_arch(_field(config, "model_type"))


def llamacpp_would_compute_differently(config: Any) -> str | None:
    """Why llama.cpp's graph for this checkpoint's architecture computes another function, or None.

    llama.cpp fixes per architecture what the config leaves open: whether the top-k router weights
    are renormalized, and for olmoe that k_norm spans every head (as many KV heads as heads).
    """
    arch = arch_of(config)
    renorm = arch.renormalizes_top_k(config)
    if renorm != arch.llamacpp_renormalizes_top_k:
        always = "always" if arch.llamacpp_renormalizes_top_k else "never"
        field = arch.top_k_renorm_field  # not None: an architecture without it always renormalizes
        return (
            f"{arch.model_type} with {field}={renorm}: llama.cpp's {arch.gguf_arch} graph "
            f"{always} renormalizes the top-k router weights, so it would compute another model; set "
            f"{field}={arch.llamacpp_renormalizes_top_k} in config.json (and retrain), or run "
            "it with transformers"
        )
    heads = _field(config, "num_attention_heads")
    if arch.qk_norm == "full" and _field(config, "num_key_value_heads", heads) != heads:
        return (
            f"{arch.model_type} with fewer KV heads than heads: llama.cpp's {arch.gguf_arch} graph "
            "normalizes k over the whole hidden size (k_norm of hidden_size weights), so it needs "
            "num_key_value_heads == num_attention_heads, as OLMoE-1B-7B has"
        )
    return None


def gguf_expert_name(layer: int, role: str) -> str:
    """The GGUF name of one layer's experts stacked (E, out, in), role gate | up | down: the same
    in every llama.cpp MoE architecture. For everything else, look the name up in `Arch.tensors`."""
    if role not in ROLES:
        raise ValueError(f"role={role!r}: choose one of {', '.join(ROLES)}")
    return f"blk.{layer}.ffn_{role}_exps.weight"


def moe_block_pattern() -> str:
    """A regular expression alternative for every name a MoE block has: "mlp" (the model's, in
    transformers 5) and each record's checkpoint name (`moe_block`), e.g. "block_sparse_moe|mlp"."""
    names = {"mlp"} | {arch.moe_block for arch in ARCHS.values()}
    return "|".join(re.escape(name) for name in sorted(names))


def moe_layers_from_config(config: Mapping[str, Any]) -> list[int]:
    """The decoder layers that hold routed experts (Qwen MoE configs can keep some layers dense)."""
    n = config["num_hidden_layers"]
    dense = set(config.get("mlp_only_layers") or [])
    step = config.get("decoder_sparse_step") or 1
    return [i for i in range(n) if i not in dense and (i + 1) % step == 0]


def _field(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)
