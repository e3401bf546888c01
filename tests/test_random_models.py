"""make_random_checkpoint: tiny random checkpoints of every supported MoE architecture."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lazymoe.models.random import SUPPORTED_ARCHS, make_random_checkpoint


@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
def test_checkpoint_loads_in_transformers_and_runs(tmp_path, arch):
    path = make_random_checkpoint(tmp_path / arch, arch=arch, seed=3)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == arch
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = torch.tensor([tokenizer.encode("def f(x): return x")])
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], config["vocab_size"])
    assert torch.isfinite(logits).all()


def test_overrides_change_the_config_and_the_seed_the_weights(tmp_path):
    a = make_random_checkpoint(tmp_path / "a", num_experts=6, num_hidden_layers=2, seed=0)
    b = make_random_checkpoint(tmp_path / "b", num_experts=6, num_hidden_layers=2, seed=1)
    config = AutoConfig.from_pretrained(a)  # the file may spell it num_local_experts
    assert (config.num_experts, config.num_hidden_layers) == (6, 2)
    wa = AutoModelForCausalLM.from_pretrained(a).model.layers[0].mlp.gate.weight
    wb = AutoModelForCausalLM.from_pretrained(b).model.layers[0].mlp.gate.weight
    assert not torch.equal(wa, wb)


def test_routing_is_decisive_not_a_tie(tmp_path):
    """Router weights are large enough that top-k is not decided by rounding noise."""
    path = make_random_checkpoint(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(path)
    hidden = torch.randn(64, model.config.hidden_size)
    logits = torch.nn.functional.linear(hidden, model.model.layers[0].mlp.gate.weight)
    top = torch.topk(logits, model.config.num_experts_per_tok + 1).values
    assert (top[:, -2] - top[:, -1]).median() > 1e-3  # the k-th and (k+1)-th are apart


def test_unknown_architecture_names_the_supported_ones(tmp_path):
    with pytest.raises(ValueError, match="qwen3_moe"):
        make_random_checkpoint(tmp_path / "x", arch="llama")
