"""Benchmark-scale shapes: byte counts match the published model sizes; the Zipf router skews routing."""

from __future__ import annotations

import numpy as np
import pytest

from lazymoe.bench.shapes import (
    OLMOE_1B_7B,
    QWEN3_30B_A3B,
    ModelShape,
    expected_frequencies,
    get_shape,
    router_row_scales,
    static_hit_rate,
)


def active_params(shape: ModelShape) -> int:
    b = shape.nbytes("float32")
    return (b["dense_resident_bytes"] + b["active_expert_bytes_per_token"]) // 4


@pytest.mark.parametrize(("shape", "total_b", "active_b"), [
    (QWEN3_30B_A3B, 30.5, 3.3),  # Qwen/Qwen3-30B-A3B model card: 30.5B total, 3.3B activated
    (OLMOE_1B_7B, 6.9, 1.3),  # allenai/OLMoE-1B-7B-0924: 6.9B total, 1.3B active
])
def test_parameter_counts_match_the_model_cards(shape, total_b, active_b):
    assert shape.total_params / 1e9 == pytest.approx(total_b, rel=0.02)
    assert active_params(shape) / 1e9 == pytest.approx(active_b, rel=0.05)


def test_bf16_bytes_are_two_per_parameter_and_experts_dominate():
    b = QWEN3_30B_A3B.nbytes("bfloat16")
    assert b["total_bytes"] == 2 * QWEN3_30B_A3B.total_params
    assert b["experts_total_bytes"] / b["total_bytes"] > 0.9
    assert b["active_expert_bytes_per_token"] == 48 * 8 * b["expert_bytes"]


def test_from_config_reads_a_hugging_face_config():
    config = {"num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "hidden_size": 32,
              "num_hidden_layers": 2, "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16}
    shape = ModelShape.from_config(config, "x")
    assert (shape.head_dim, shape.num_experts, shape.top_k) == (8, 8, 2)


def test_bad_shapes_and_names_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="top_k"):
        QWEN3_30B_A3B.scaled(top_k=0)
    with pytest.raises(ValueError, match="choose one of"):
        get_shape("gpt-5")


def test_zero_skew_is_uniform_and_zipf_concentrates_the_picks():
    rng = np.random.default_rng(0)
    assert np.all(router_row_scales(16, 0.0, rng) == 1.0)
    uniform = expected_frequencies(np.ones(128, np.float32), top_k=8)
    skewed = expected_frequencies(router_row_scales(128, 1.0, rng), top_k=8)
    assert static_hit_rate(uniform, 10) == pytest.approx(10 / 128, abs=0.02)
    assert static_hit_rate(skewed, 10) > 3 * static_hit_rate(uniform, 10)
