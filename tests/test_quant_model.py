"""Quantizing a model's experts: the report counts the bytes, perplexity moves the right way."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from lazymoe import quant
from lazymoe.models.evaluate import heldout_perplexity


@pytest.fixture(scope="module")
def tiny_moe():
    torch.manual_seed(0)
    config = Qwen3MoeConfig(
        vocab_size=96, hidden_size=64, intermediate_size=64, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, max_position_embeddings=128,
    )
    model = Qwen3MoeForCausalLM(config).eval()
    with torch.no_grad():  # larger weights than the init's, so quantization noise shows in the loss
        for name, p in model.named_parameters():
            if ".experts." in name:
                p.normal_(0, 0.2)
    return model


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 96, (200,), generator=g)


def expert_weights(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)


def test_quantized_copy_leaves_the_original_alone(tiny_moe):
    before = {n: p.clone() for n, p in tiny_moe.named_parameters()}
    clone, _ = quant.quantized_copy(tiny_moe, "q4_0")
    assert all(torch.equal(p, before[n]) for n, p in tiny_moe.named_parameters())
    assert any(not torch.equal(p, before[n]) for n, p in clone.named_parameters())


@pytest.mark.parametrize(("name", "bits"), [("q8_0", 8.5), ("q4_0", 4.5), ("int8_g32", 9.0)])
def test_report_counts_expert_bytes_and_bits(tiny_moe, name, bits):
    _, report = quant.quantized_copy(tiny_moe, name)
    n = expert_weights(tiny_moe)
    assert report.n_weights == n and report.n_tensors == 2 * 2  # gate_up + down per layer
    assert report.bytes_before == 4 * n  # float32 checkpoint
    assert report.bytes_after == n * bits / 8
    assert report.bits_per_weight == bits


def test_only_experts_change_unless_asked_for_all(tiny_moe):
    clone, _ = quant.quantized_copy(tiny_moe, "q4_0", select="experts")
    changed = {n for (n, p), q in zip(tiny_moe.named_parameters(), clone.parameters(), strict=True) if not torch.equal(p, q)}
    assert changed and all(".experts." in n for n in changed)
    clone, report = quant.quantized_copy(tiny_moe, "q4_0", select="all")
    assert report.n_weights > expert_weights(tiny_moe)
    assert torch.equal(clone.model.layers[0].mlp.gate.weight, tiny_moe.model.layers[0].mlp.gate.weight)


def test_perplexity_grows_as_bits_shrink(tiny_moe, ids):
    ppl = {"f32": heldout_perplexity(tiny_moe, ids, seq_len=64)}
    errors = {}
    for name in ["q8_0", "q4_0"]:
        clone, report = quant.quantized_copy(tiny_moe, name)
        ppl[name] = heldout_perplexity(clone, ids, seq_len=64)
        errors[name] = report.rel_error
    assert errors["q8_0"] < errors["q4_0"]
    assert abs(ppl["q8_0"] - ppl["f32"]) < abs(ppl["q4_0"] - ppl["f32"])
    assert 1 < ppl["f32"] < 10 * 96  # an untrained model: near the vocabulary size, not inf or nan


def test_selecting_nothing_is_an_error():
    with pytest.raises(ValueError, match="mixture-of-experts"):
        quant.quantize_weights_(torch.nn.Linear(32, 32), "q8_0")
