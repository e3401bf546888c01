"""The architecture registry: every record is complete and agrees with transformers and llama.cpp.

Together with the tests parametrized over the registry (random checkpoints in
test_random_models.py, token-identical generation in test_engine_generation.py, GGUF export and
llama.cpp logits in test_gguf_export.py), adding a record is all it takes to add an architecture.
"""

from __future__ import annotations

import math

import gguf
import pytest
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from lazymoe.engine.arch import spec_for
from lazymoe.engine.errors import UnsupportedArchitectureError
from lazymoe.models.archs import (
    ARCHS,
    ROLES,
    UnknownArchitectureError,
    arch_of,
    get_arch,
    llamacpp_would_compute_differently,
    moe_block_pattern,
)
from lazymoe.models.random import make_random_checkpoint

GGUF_ARCH = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}


def tiny_config(arch):
    return AutoConfig.for_model(arch.model_type, **arch.tiny_config)


@pytest.mark.parametrize("name", list(ARCHS))
def test_every_record_is_complete(name):
    arch = ARCHS[name]
    assert arch.model_type == name
    config = tiny_config(arch)  # transformers knows the model type and every tiny field
    model = AutoModelForCausalLM.from_config(config)
    assert type(model).__name__ == arch.hf_class
    assert arch.num_experts(config) == arch.num_experts(dict(arch.tiny_config)) > config.num_experts_per_tok
    assert arch.expert_width(config) == arch.expert_width(dict(arch.tiny_config)) > 0
    assert len(set(arch.expert_projections)) == 3 and arch.moe_block
    assert arch.qk_norm in ("", "per_head", "full")
    if arch.qkv_bias_field is not None:
        assert hasattr(config, arch.qkv_bias_field)
    if arch.top_k_renorm_field is not None:  # the router reads the field the record names
        assert hasattr(config, arch.top_k_renorm_field)
        assert hasattr(model.model.layers[0].mlp.gate, arch.top_k_renorm_field)
    else:  # no field: the model always renormalizes
        assert not hasattr(config, "norm_topk_prob") and arch.renormalizes_top_k({})
    assert arch.gguf_arch in GGUF_ARCH, f"llama.cpp has no architecture {arch.gguf_arch!r}"
    assert isinstance(arch.segmented_decoder, bool) and isinstance(arch.shared_expert, bool)


@pytest.mark.parametrize("name", list(ARCHS))
def test_tensor_list_is_exactly_the_checkpoints_tensors(tmp_path, name):
    """Every tensor a saved checkpoint holds is in `Arch.tensors`, with its shape, and nothing else."""
    arch = ARCHS[name]
    path = make_random_checkpoint(tmp_path / name, arch=name, seed=1)
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        saved = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    config = tiny_config(arch)
    config.vocab_size = saved["model.embed_tokens.weight"][0]
    slots = arch.tensors(config)
    listed = {source: slot for slot in slots for source in slot.sources}
    assert set(listed) == set(saved)
    for source, slot in listed.items():
        want = slot.shape[1:] if slot.kind == "experts" else slot.shape
        # same trailing dims and size: Qwen2-MoE's shared_expert_gate is (1, D), GGUF wants (D,)
        assert saved[source][-len(want):] == want and math.prod(saved[source]) == math.prod(want), source
    experts = [slot for slot in slots if slot.kind == "experts"]
    assert [slot.role for slot in experts[:3]] == list(ROLES)
    assert experts[0].sources[3] == arch.expert_key(0, 3, "gate")


@pytest.mark.parametrize("name", list(ARCHS))
def test_gguf_names_are_llamacpps(name):
    """The registry's GGUF names are the ones gguf-py's map gives for the transformers 5 names."""
    arch = ARCHS[name]
    config = tiny_config(arch)
    name_map = gguf.get_tensor_name_map(GGUF_ARCH[arch.gguf_arch], config.num_hidden_layers)
    for slot in arch.tensors(config):
        base, suffix = slot.gguf_name.rsplit(".", 1)
        if slot.kind == "experts":  # the stacked tensor's transformers name
            hf = f"model.layers.{slot.layer}.mlp.experts.{slot.role}_proj"
        else:
            hf = arch.module_key(slot.sources[0]).rsplit(".", 1)[0]
        assert name_map.get_name(hf) == base, hf
        assert slot.sources[0].endswith(f".{suffix}")  # weight or bias


def test_checkpoint_keys_map_to_the_models_names():
    mixtral = get_arch("mixtral")
    key = mixtral.expert_key(2, 5, "up")
    assert key == "model.layers.2.block_sparse_moe.experts.5.w3.weight"
    assert mixtral.module_key("model.layers.2.block_sparse_moe.gate.weight") == "model.layers.2.mlp.gate.weight"
    assert get_arch("qwen3_moe").module_key("model.layers.0.mlp.gate.weight") == "model.layers.0.mlp.gate.weight"


def test_configs_spell_the_expert_count_either_way():
    """transformers 5 writes a Qwen3-MoE config.json with num_local_experts; the Hub's say num_experts."""
    qwen3 = get_arch("qwen3_moe")
    assert qwen3.num_experts({"num_experts": 128}) == qwen3.num_experts({"num_local_experts": 128}) == 128
    with pytest.raises(UnknownArchitectureError, match="num_experts"):
        qwen3.num_experts({"hidden_size": 8})


def test_an_unknown_type_names_the_supported_ones():
    with pytest.raises(UnknownArchitectureError, match=r"'llama'.*qwen3_moe, olmoe, qwen2_moe, mixtral"):
        get_arch("llama")
    with pytest.raises(UnknownArchitectureError, match="None"):
        arch_of({})
    with pytest.raises(UnsupportedArchitectureError, match="without expert offloading"):
        spec_for(AutoConfig.for_model("llama"))
    assert spec_for(tiny_config(ARCHS["olmoe"])) is ARCHS["olmoe"]


def test_the_router_renormalizes_as_the_config_says():
    qwen3, mixtral = get_arch("qwen3_moe"), get_arch("mixtral")
    assert qwen3.renormalizes_top_k({"norm_topk_prob": True})
    assert not qwen3.renormalizes_top_k({"norm_topk_prob": False})
    assert not qwen3.renormalizes_top_k({})  # transformers' default for the field
    assert mixtral.renormalizes_top_k({"norm_topk_prob": False})  # it has no such field
    olmoe = dict(ARCHS["olmoe"].tiny_config, model_type="olmoe", norm_topk_prob=True)
    assert "norm_topk_prob=True" in llamacpp_would_compute_differently(olmoe)
    assert llamacpp_would_compute_differently(dict(mixtral.tiny_config, model_type="mixtral")) is None


def test_one_pattern_names_every_moe_block():
    """The expert store, the engine's key filter and record_trace's router hooks use this one."""
    import re

    from lazymoe.engine.arch import is_expert_key
    from lazymoe.engine.storage.store import _LAYER

    pattern = re.compile(rf"^(?:{moe_block_pattern()})$")
    blocks = {"mlp"} | {arch.moe_block for arch in ARCHS.values()}
    assert {name for name in blocks if pattern.match(name)} == blocks
    assert not pattern.match("mlp_x") and not pattern.match("experts")
    for arch in ARCHS.values():
        key = arch.expert_key(3, 1, "down")
        assert is_expert_key(key) and _LAYER.search(key).group(1, 2) == ("3", arch.moe_block)


@pytest.mark.parametrize("name", list(ARCHS))
def test_a_gguf_files_config_says_how_its_router_renormalizes(tmp_path, name):
    """The config read from a GGUF names the renormalization field only where the record has one,
    set to what llama.cpp's graph does (Mixtral: no field, it always renormalizes)."""
    from lazymoe.engine.storage.gguf_config import config_from_gguf, open_reader
    from lazymoe.models.gguf_export import export_gguf

    arch = ARCHS[name]
    overrides = {"num_key_value_heads": 4} if arch.qk_norm == "full" else {}
    if arch.top_k_renorm_field:
        overrides[arch.top_k_renorm_field] = arch.llamacpp_renormalizes_top_k
    checkpoint = make_random_checkpoint(tmp_path / name, arch=name, **overrides)
    path = export_gguf(checkpoint, tmp_path / f"{name}.gguf", progress=False)
    config = config_from_gguf(open_reader(path), path)
    if arch.top_k_renorm_field:
        assert config[arch.top_k_renorm_field] is arch.llamacpp_renormalizes_top_k
    else:
        assert "norm_topk_prob" not in config
    assert arch.renormalizes_top_k(config) == arch.llamacpp_renormalizes_top_k
