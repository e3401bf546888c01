"""Lab 02 and lab 05 checks: a correct answer passes, the usual mistakes get a specific message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lazymoe.exercises import lab02, lab05
from lazymoe.models import corpus, recipe
from lazymoe.models.tokenizer import as_transformers, train_tokenizer

TINY = recipe.RecipeConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=2,
                           num_kv_heads=1, head_dim=32, num_experts=8, top_k=2,
                           moe_intermediate_size=64, steps=2, warmup_steps=1)


# ---- lab02: KV cache bytes -------------------------------------------------------------------

def test_kv_cache_correct_passes():
    assert lab02.check_kv_cache_bytes(lab02.kv_cache_bytes).passed


@pytest.mark.parametrize("wrong,says", [
    (lambda L, H, d, T, b: L * H * d * T * b, "both K and V"),
    (lambda L, H, d, T, b: 2 * L * H * d * T * b * 8, "do not multiply by 8"),
    (lambda L, H, d, T, b: 2 * L * d * T * b, "KV heads"),
    (lambda L, H, d, T, b: 2 * L * H * d * b, "every token"),
    (lambda L, H, d, T, b: 3 * L * H * d * T * b, "ratio 1.5"),
    (lambda L, H, d, T, b: 2 * L * H * d * T, "multiply by bytes_per_value"),
    (lambda L, H, d, T, b: 2 * H * d * T * b, "every layer"),
    (lambda L, H, d, T, b: None, "returned None"),
])
def test_kv_cache_mistakes_are_named(wrong, says):
    result = lab02.check_kv_cache_bytes(wrong)
    assert not result.passed and says in result.message


# ---- lab02: roofline fit --------------------------------------------------------------------

def _fit(x, y):
    slope, intercept = np.polyfit(x, y, 1)
    return slope, intercept


def test_roofline_correct_passes():
    def fit(x, y):
        slope, intercept = _fit(x, y)
        return 1 / slope / 1e9, intercept
    assert lab02.check_fit_roofline(fit).passed


@pytest.mark.parametrize("wrong,says", [
    (lambda x, y: _fit(x, y), "the slope"),
    (lambda x, y: (1 / _fit(x, y)[0], _fit(x, y)[1]), "1e9x too large"),
    (lambda x, y: (1 / _fit(x, y)[0] / 2**30, _fit(x, y)[1]), "GiB/s"),
    (lambda x, y: (1 / _fit(x, y)[0] / 1e9, 0.0), "overhead wrong"),
    (lambda x, y: (1 / (np.dot(x, y) / np.dot(x, x)) / 1e9, 0.0), "through the origin"),
    (lambda x, y: None, "returned None"),
])
def test_roofline_mistakes_are_named(wrong, says):
    result = lab02.check_fit_roofline(wrong)
    assert not result.passed and says in result.message, result.message


# ---- lab05: the router ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    tok = as_transformers(train_tokenizer([f.text for f in corpus.source_files()[:20]], 512), 1024)
    model = recipe.new_model(TINY, tok.eos_token_id).eval()
    with torch.no_grad():  # a confident router, as after training
        for layer in model.model.layers:
            layer.mlp.gate.weight.mul_(50)
    return model, tok


def _softmax_topk(hidden, w, k, renorm=True, dim=-1, largest=True):
    probs = torch.softmax(hidden @ w.T, dim=dim)
    weights, experts = probs.topk(k, dim=-1, largest=largest)
    return (weights / weights.sum(-1, keepdim=True) if renorm else weights), experts


def test_route_correct_passes_in_any_order(tiny):
    model, tok = tiny
    assert lab05.check_route(lab05.route, model, tok, layer=1).passed

    def reversed_order(h, w, k):
        weights, experts = lab05.route(h, w, k)
        return weights.flip(-1), experts.flip(-1)
    assert lab05.check_route(reversed_order, model, tok, layer=0).passed


def test_softmax_of_the_topk_logits_is_the_same_thing(tiny):
    model, tok = tiny

    def via_logits(h, w, k):
        logits, experts = (h @ w.T).topk(k, dim=-1)
        return logits.softmax(-1), experts
    assert lab05.check_route(via_logits, model, tok).passed


@pytest.mark.parametrize("wrong,says", [
    (lambda h, w, k: _softmax_topk(h, w, k, renorm=False), "renormalize"),
    (lambda h, w, k: (h @ w.T).topk(k, dim=-1), "raw logits"),
    (lambda h, w, k: _softmax_topk(h, w, k, dim=0), "different experts"),
    (lambda h, w, k: _softmax_topk(h, w, k, largest=False), "LARGEST"),
    (lambda h, w, k: _softmax_topk(h, w.T, k), "raised"),
    (lambda h, w, k: None, "returned None"),
    (lambda h, w, k: lab05.route(h, w, k)[0], "pair"),
])
def test_route_mistakes_are_named(tiny, wrong, says):
    model, tok = tiny
    result = lab05.check_route(wrong, model, tok)
    assert not result.passed and says in result.message, result.message
