"""Every way to start the engine wrongly ends in an error that says what to do."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from lazymoe.engine import Engine, EngineConfig, GenerationConfig
from lazymoe.engine.errors import BudgetTooSmallError, CheckpointError, UnsupportedArchitectureError
from lazymoe.engine.storage.store import ExpertStoreError
from lazymoe.models.random import make_random_checkpoint

EXPERT_BYTES = 3 * 16 * 32 * 4  # the tiny qwen3_moe: 3 * I * D * 4 bytes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("m") / "qwen3", seed=1)


def test_a_budget_below_one_layers_top_k_names_the_minimum(tiny):
    with pytest.raises(BudgetTooSmallError) as err:
        Engine.from_pretrained(tiny, device="cpu", vram_budget=2 * EXPERT_BYTES - 1)
    message = str(err.value)
    assert "holds 1 experts" in message and "uses 2 at once" in message
    assert f"({2 * EXPERT_BYTES} bytes)" in message  # the minimum, exactly


def test_the_smallest_working_budget_is_exactly_top_k_experts(tiny):
    engine = Engine.from_pretrained(tiny, device="cpu", vram_budget=2 * EXPERT_BYTES)
    assert engine.tiers.device.pool.n_slots == 2
    assert len(engine.generate([5, 6, 7], GenerationConfig(max_new_tokens=3))) <= 3


@pytest.mark.parametrize(
    ("field", "value", "hint"),
    [
        ("vram_budget", "6 gigs", "'6GiB'"),
        ("vram_budget", -5, "negative"),
        ("device", "tpu", "cpu"),
        ("dtype", "int4", "bfloat16"),
        ("placement", "disk", "fetch, cpu, auto"),
        ("policy", 3, "EvictionPolicy"),
    ],
)
def test_bad_config_values_say_what_to_write(tiny, field, value, hint):
    with pytest.raises((ValueError, TypeError), match=hint):
        EngineConfig(model_path=tiny, **{field: value})


def test_budget_strings_parse_with_binary_and_decimal_units(tiny):
    cfg = EngineConfig(model_path=tiny, vram_budget="1.5GiB", ram_budget="500MB")
    assert cfg.vram_budget_bytes == 3 * 2**29 and cfg.ram_budget_bytes == 500 * 10**6


def test_a_missing_model_folder_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        EngineConfig(model_path=tmp_path / "nowhere")


def test_missing_weights_name_the_folder(tiny, tmp_path):
    broken = shutil.copytree(tiny, tmp_path / "broken")
    (broken / "model.safetensors").unlink()
    with pytest.raises((CheckpointError, ExpertStoreError), match="broken"):
        Engine.from_pretrained(broken, device="cpu")


def test_a_truncated_file_is_named_with_what_to_do(tiny, tmp_path):
    broken = shutil.copytree(tiny, tmp_path / "truncated")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises((CheckpointError, ExpertStoreError)) as err:
        Engine.from_pretrained(broken, device="cpu")
    assert "model.safetensors" in str(err.value) and "again" in str(err.value)


def test_weights_that_do_not_match_the_config_are_caught(tiny, tmp_path):
    broken = shutil.copytree(tiny, tmp_path / "mismatch")
    config = json.loads((broken / "config.json").read_text())
    config["moe_intermediate_size"] = 24
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises((CheckpointError, ExpertStoreError), match="do not belong together"):
        Engine.from_pretrained(broken, device="cpu")


def test_an_unsupported_architecture_lists_the_supported_ones(tmp_path):
    config = AutoConfig.for_model(
        "llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "llama")
    with pytest.raises(UnsupportedArchitectureError) as err:
        Engine.from_pretrained(tmp_path / "llama", device="cpu")
    assert "'llama'" in str(err.value) and "qwen3_moe" in str(err.value)
    assert "without expert offloading" in str(err.value)


def test_cuda_on_a_machine_without_one_says_what_to_use(tiny, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="device='cpu'"):
        Engine.from_pretrained(tiny, device="cuda")


def test_generation_settings_are_checked():
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ValueError, match="greedy"):
        GenerationConfig(temperature=-1)
