"""The checks of lab07 (prefetch guess) and lab08 (routing, same tokens): right answers pass, the
usual mistakes fail with a message that names the mistake, and nothing raises."""

from __future__ import annotations

import pytest
import torch

from lazymoe.engine.parts.router import topk_route
from lazymoe.exercises.lab07 import check_predict
from lazymoe.exercises.lab08 import check_route, check_same_tokens


def test_predict_right_answer_passes():
    assert check_predict(lambda h, w, k: torch.topk(w @ h, k).indices).passed


@pytest.mark.parametrize(
    ("wrong", "says"),
    [
        (lambda h, w, k: None, "returned None"),
        (lambda h, w, k: torch.topk(w @ h, k).values, "not scores"),
        (lambda h, w, k: torch.topk(w @ h, k + 1).indices, "exactly top_k"),
        (lambda h, w, k: torch.topk(-(w @ h), k).indices, "likes least"),
        (lambda h, w, k: torch.topk(h, k).indices + 8, "one per expert"),
        (lambda h, w, k: torch.topk(w[:, :3] @ h[:3], k).indices, "the router picks"),
        (lambda h, w, k: 1 / 0, "ZeroDivisionError"),
    ],
)
def test_predict_mistakes_are_named(wrong, says):
    result = check_predict(wrong)
    assert not result.passed and says in str(result)


def _softmax_topk(logits, k, norm):
    return torch.topk(torch.softmax(logits, -1), k)


@pytest.mark.parametrize(
    ("wrong", "says"),
    [
        (lambda logits, k, norm: None, "returned None"),
        (lambda logits, k, norm: torch.topk(logits, k), "raw logits"),
        (lambda logits, k, norm: tuple(_softmax_topk(logits, k, norm)), "sum to 1"),
        (lambda logits, k, norm: topk_route(logits, k, True), "do not renormalize"),
        (lambda logits, k, norm: topk_route(logits, k, norm)[::-1], "(weights, indices)"),
        (lambda logits, k, norm: topk_route(-logits, k, norm), "least likely"),
        (lambda logits, k, norm: topk_route(logits, k + 1, norm), "must be (tokens, top_k)"),
        (lambda logits, k, norm: topk_route(logits, k, norm)[0], "return a pair"),
    ],
)
def test_route_mistakes_are_named(wrong, says):
    result = check_route(wrong)
    assert not result.passed and says in str(result)


def test_route_right_answer_passes():
    assert check_route(topk_route).passed


def test_same_tokens_says_where_they_part():
    assert check_same_tokens([1, 2, 3], [1, 2, 3]).passed
    assert "first 2 tokens agree" in str(check_same_tokens([1, 2, 4], [1, 2, 3]))
    assert "same GenerationConfig" in str(check_same_tokens([1, 2], [1, 2, 3]))
    assert "returned None" in str(check_same_tokens(None, [1]))
