"""llama.cpp through llama-cpp-python: the --cpu-moe override, and the same answer as transformers."""

from __future__ import annotations

import ctypes

import pytest
import torch

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[llama]')")

from lazymoe.bench.llamacpp import (
    CPU_MOE_PATTERN,
    LlamaCppConfig,
    LlamaCppRunner,
    buft_overrides,
    cpu_buffer_type,
)
from lazymoe.bench.shapes import TINY
from lazymoe.bench.writer import write_model

PROMPT = list(b"def main():\n    print(")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-llama")
    write_model(TINY, out)
    return out


def test_the_override_array_is_null_terminated_and_points_at_the_cpu_buffer_type():
    buft = cpu_buffer_type()
    array = buft_overrides([CPU_MOE_PATTERN], buft)
    assert buft != 0 and len(array) == 2
    assert array[0].pattern == CPU_MOE_PATTERN.encode() and array[0].buft == buft
    assert array[1].pattern is None and not array[1].buft
    assert ctypes.sizeof(array[0]) == 2 * ctypes.sizeof(ctypes.c_void_p)


@pytest.mark.parametrize("api", ["lowlevel", "highlevel"])
def test_cpu_moe_puts_every_expert_tensor_and_nothing_else_on_the_cpu(tiny_dir, api):
    cfg = LlamaCppConfig(str(tiny_dir / "model-bf16.gguf"), cpu_moe=True, n_threads=1, api=api)
    with LlamaCppRunner(cfg) as r:
        overridden = [line.split()[1] for line in r.log if "buffer type overridden" in line]
        assert len(list(r.stream(PROMPT, 3))) == 3
    expected = {f"blk.{i}.ffn_{p}_exps.weight" for i in range(TINY.num_layers) for p in ("gate", "up", "down")}
    assert set(overridden) == expected


def test_n_cpu_moe_keeps_only_the_first_layers_experts_on_the_cpu(tiny_dir):
    cfg = LlamaCppConfig(str(tiny_dir / "model-bf16.gguf"), n_cpu_moe=1, n_threads=1)
    with LlamaCppRunner(cfg) as r:
        overridden = [line.split()[1] for line in r.log if "buffer type overridden" in line]
        assert len(list(r.stream(PROMPT, 2))) == 2
    assert TINY.num_layers > 1 and set(overridden) == {f"blk.0.ffn_{p}_exps.weight" for p in ("gate", "up", "down")}


def test_without_cpu_moe_nothing_is_overridden(tiny_dir):
    with LlamaCppRunner(LlamaCppConfig(str(tiny_dir / "model-bf16.gguf"), cpu_moe=False, n_threads=1)) as r:
        assert not [line for line in r.log if "buffer type overridden" in line]


def test_greedy_tokens_and_logits_match_transformers_on_the_same_bits(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    with torch.no_grad():
        ref_logits = model(torch.tensor([PROMPT])).logits[0, -1].numpy()
        ref_tokens = model.generate(torch.tensor([PROMPT]), max_new_tokens=6, do_sample=False)[0, len(PROMPT):]
    with LlamaCppRunner(LlamaCppConfig(str(tiny_dir / "model-bf16.gguf"), n_threads=1)) as r:
        logits = r.logits(PROMPT)
        tokens = list(r.stream(PROMPT, 6))
        assert list(r.stream(PROMPT, 6)) == tokens  # the KV cache is cleared between prompts
    assert abs(logits - ref_logits).max() / abs(ref_logits).max() < 1e-2  # bf16 weights, f32 maths
    assert tokens == ref_tokens.tolist()


def test_config_refuses_a_missing_file_and_a_bad_load_mode(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF not found"):
        LlamaCppConfig(str(tmp_path / "nope.gguf"))
    (tmp_path / "x.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="load_mode"):
        LlamaCppConfig(str(tmp_path / "x.gguf"), load_mode="fast")


def test_sampled_decoding_is_seeded_and_does_not_repeat_one_token(tiny_dir):
    with LlamaCppRunner(LlamaCppConfig(str(tiny_dir / "model-bf16.gguf"), n_threads=1)) as r:
        r.temperature, r.seed = 1.0, 3
        first = list(r.stream(PROMPT, 12))
        assert list(r.stream(PROMPT, 12)) == first  # the same seed, the same tokens
        assert len(set(first)) > 3  # a random model's near-flat logits: varied tokens
