"""Checks for lab07 (prefetch). They never raise on a wrong answer: they say what is wrong.

check_predict(my_predict)   your guess of the next layer's experts equals lazymoe's
"""

from __future__ import annotations

import torch

from lazymoe.engine.parts.prefetch import predict_experts
from lazymoe.exercises.base import CheckResult, failed, not_started, passed
from lazymoe.exercises.solutions import tracked
from lazymoe.i18n import _

NAME = _("lab07: predict the next layer's experts", lang="en")  # translated where shown (CheckResult)


def _cases(n: int = 6, hidden: int = 16, experts: int = 8, top_k: int = 2):
    gen = torch.Generator().manual_seed(7)
    for i in range(n):
        k = top_k + i % 2  # top-2 and top-3
        yield torch.randn(hidden, generator=gen), torch.randn(experts, hidden, generator=gen), k


def _as_ids(result) -> list[int] | None:
    if isinstance(result, torch.Tensor):
        if result.is_floating_point():
            return None
        return [int(x) for x in result.flatten()]
    try:
        return [int(x) for x in result]
    except (TypeError, ValueError):
        return None


@tracked("lab07.predict")
def check_predict(fn) -> CheckResult:
    """`fn(hidden (D,), router_weight (E, D), top_k)` must return the top_k expert ids."""
    if fn is None:
        return not_started(NAME)
    for hidden, weight, k in _cases():
        try:
            result = fn(hidden.clone(), weight.clone(), k)
        except Exception as err:  # show the learner's bug, do not crash the notebook
            return failed(NAME, _('your function raised {error_type}: {err}').format(error_type=type(err).__name__, err=err))
        if result is None:
            return not_started(NAME)
        ids = _as_ids(result)
        want = predict_experts(hidden, weight, k).tolist()
        if ids is None:
            return failed(
                NAME,
                _('return expert ids (integers), not scores: torch.topk(...).indices, not .values.'),
            )
        if len(ids) != k:
            shape = tuple(result.shape) if isinstance(result, torch.Tensor) else len(ids)
            return failed(
                NAME,
                _('you returned {n_ids} ids (shape {shape}) for top_k={k}: return exactly top_k ids for this one hidden state.').format(n_ids=len(ids), shape=shape, k=k),
            )
        if any(not 0 <= i < weight.shape[0] for i in ids):
            return failed(
                NAME,
                _('ids {ids} are not expert numbers 0..{value}: the logits are router_weight @ hidden, one per expert (E,), not one per hidden dimension.').format(ids=ids, value=weight.shape[0] - 1),
            )
        if set(ids) == set(predict_experts(-hidden, weight, k).tolist()) and set(ids) != set(want):
            return failed(
                NAME,
                _('you picked the experts the router likes least: take the largest logits (torch.topk picks the largest by default; do not negate or sort ascending).'),
            )
        if set(ids) != set(want):
            return failed(
                NAME,
                _('for this case the router picks {value}, you guessed {value2}.').format(value=sorted(want), value2=sorted(ids)),
                _('logits = router_weight @ hidden (shape (E,)); the guess is torch.topk(logits, top_k).'),
            )
    return passed(NAME, _("your guesses match the router's top-k on every test case."))
