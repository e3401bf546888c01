"""Checks for lab08 (assemble the engine). They never raise on a wrong answer: they say what is wrong.

check_route(my_route)              your top-k router equals lazymoe's (transformers') routing
check_same_tokens(mine, reference) the engine built from your parts writes the package's tokens
assemble(route, read_expert, policy, predict)
                                   your four parts from labs 05-07, checked, ready for the engine
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lazymoe.engine import Engine, EngineConfig
from lazymoe.engine.parts.policies import EvictionPolicy
from lazymoe.engine.parts.router import topk_route
from lazymoe.exercises import lab05, lab05b, lab06, lab07
from lazymoe.exercises.base import CheckResult, failed, not_started, passed
from lazymoe.exercises.solutions import tracked
from lazymoe.i18n import _

ROUTE = _("lab08: top-k routing", lang="en")  # translated where shown (CheckResult)
TOKENS = _("lab08: your engine against the package's", lang="en")  # translated where shown (CheckResult)


def _cases():
    gen = torch.Generator().manual_seed(8)
    for norm in (True, False):
        for k in (2, 3):
            yield torch.randn(5, 8, generator=gen) * 2, k, norm  # (T tokens, E experts)


def _diagnose(weights, indices, logits, k, norm) -> str | None:
    """What a typical mistake looks like, or None if it is none of them."""
    probs = torch.softmax(logits.float(), dim=-1)
    want_w, want_i = topk_route(logits, k, norm)
    if set(map(tuple, indices.sort(-1).values.tolist())) == set(
        map(tuple, torch.topk(-logits, k).indices.sort(-1).values.tolist())
    ):
        return _("you picked the k least likely experts: take the largest (torch.topk's default).")
    if not torch.equal(indices.sort(-1).values, want_i.sort(-1).values):
        return _('your experts are not the k most likely per token: topk over the experts (dim=-1).')
    order = indices.argsort(-1)
    got_w = torch.gather(weights.float(), -1, order)
    want_sorted = torch.gather(want_w, -1, want_i.argsort(-1))
    raw = torch.gather(torch.gather(logits.float(), -1, indices), -1, order)
    if torch.allclose(got_w, raw, atol=1e-5):
        return _('your weights are raw logits: apply softmax over the experts first.')
    if torch.allclose(got_w, raw / raw.sum(-1, keepdim=True), atol=1e-5):
        return _('you renormalized the raw logits: softmax first, then (if norm_topk_prob) divide by the sum.')
    dim0 = torch.gather(torch.gather(torch.softmax(logits.float(), dim=0), -1, indices), -1, order)
    if any(torch.allclose(got_w, d, atol=1e-5) for d in (dim0, dim0 / dim0.sum(-1, keepdim=True))):
        return _('your softmax runs over tokens (dim=0): it must run over the experts (dim=-1).')
    plain = torch.gather(torch.gather(probs, -1, indices), -1, order)
    if norm and torch.allclose(got_w, plain, atol=1e-5):
        return _('with norm_topk_prob=True the k weights must sum to 1: divide them by their sum.')
    if not norm and torch.allclose(got_w, plain / plain.sum(-1, keepdim=True), atol=1e-5):
        return (
            _('with norm_topk_prob=False (OLMoE, Qwen2-MoE) keep the softmax probabilities as they are: do not renormalize.')
        )
    if not torch.allclose(got_w, want_sorted, atol=1e-5):
        return _('your expert ids are right but the weights are not softmax probabilities of them.')
    return None


def check_route(fn) -> CheckResult:
    """`fn(router_logits (T, E), top_k, norm_topk_prob) -> (weights (T, K), indices (T, K))`."""
    if fn is None:
        return not_started(ROUTE)
    for logits, k, norm in _cases():
        try:
            result = fn(logits.clone(), k, norm)
        except Exception as err:
            return failed(ROUTE, _('your function raised {error_type}: {err}').format(error_type=type(err).__name__, err=err))
        if result is None:
            return not_started(ROUTE)
        if not (isinstance(result, tuple) and len(result) == 2):
            return failed(ROUTE, _('return a pair (weights, indices), both shaped (tokens, top_k).'))
        weights, indices = (torch.as_tensor(x) for x in result)
        if indices.is_floating_point() and not weights.is_floating_point():
            return failed(ROUTE, _('you returned (indices, weights): the order is (weights, indices).'))
        if tuple(weights.shape) != (logits.shape[0], k) or tuple(indices.shape) != (logits.shape[0], k):
            return failed(
                ROUTE,
                _('shapes {value} and {value2}: both must be (tokens, top_k) = {value3}.').format(value=tuple(weights.shape), value2=tuple(indices.shape), value3=(logits.shape[0], k)),
            )
        problem = _diagnose(weights, indices.long(), logits, k, norm)
        if problem is not None:
            return failed(ROUTE, problem, _('case: top_k={k}, norm_topk_prob={norm}').format(k=k, norm=norm))
    return passed(ROUTE, _('your router picks the same experts with the same weights as transformers.'))


def check_same_tokens(mine: list[int] | None, reference: list[int], tokenizer=None) -> CheckResult:
    """Your engine's greedy tokens against the package engine's (or the full model's)."""
    if mine is None:
        return not_started(TOKENS)
    mine = list(mine)
    if mine == list(reference):
        return passed(TOKENS, _('all {n_mine} tokens are identical.').format(n_mine=len(mine)))
    i = next((i for i, (a, b) in enumerate(zip(mine, reference, strict=False)) if a != b), None)
    if i is None:
        return failed(
            TOKENS,
            _('you made {n_mine} tokens, the reference {n_reference}: use the same GenerationConfig (max_new_tokens, stop tokens) for both.').format(n_mine=len(mine), n_reference=len(reference)),
        )
    show = (lambda ids: repr(tokenizer.decode(ids))) if tokenizer is not None else str
    return failed(
        TOKENS,
        _('the first {i} tokens agree, then yours is {value} where the reference has {value2}.').format(i=i, value=show(mine[i:i + 1]), value2=show(reference[i:i + 1])),
        _('a cache policy cannot change tokens (it only decides what is resident): look at your router (check_route), and use temperature 0 (greedy) for both.'),
    )


# -- the engine from your own parts --------------------------------------------------------------
# lab08's exercise cells run the earlier labs' checks, recorded under lab08's keys.
check_route_lab05 = tracked("lab08.route")(lab05.check_route.__wrapped__)
check_read_expert = tracked("lab08.read_expert")(lab05b.check_read_expert.__wrapped__)
check_lru = tracked("lab08.policy")(lab06.check_lru.__wrapped__)
check_predict = tracked("lab08.predict")(lab07.check_predict.__wrapped__)


def engine_route(route: Callable) -> Callable:
    """lab05's `route(hidden (T, D), gate_weight (E, D), top_k)` as the engine's router hook
    `fn(router_logits (T, E), top_k, norm_topk_prob)`.

    The engine hands over the logits (hidden @ gate_weight.T, already computed); passing them as
    `hidden` with the identity as `gate_weight` gives your function the same logits bit for bit
    (each output is one product by 1.0 plus exact zeros). lab05's route always renormalizes, as
    the bundled model's norm_topk_prob=True says."""

    def hook(router_logits: torch.Tensor, top_k: int, norm_topk_prob: bool):
        if not norm_topk_prob:
            raise ValueError("this model has norm_topk_prob=False; lab05's route renormalizes: "
                             "use the package's router (set_router(None)) for it")
        eye = torch.eye(router_logits.shape[-1], dtype=router_logits.dtype, device=router_logits.device)
        return route(router_logits, eye, top_k)

    hook.__name__ = getattr(route, "__name__", "route")
    return hook


@dataclass
class MyParts:
    """The parts of yours that passed their checks (None: the package's part runs instead)."""

    route: Callable | None = None
    read_expert: Callable | None = None
    policy: type[EvictionPolicy] | EvictionPolicy | None = None
    predict: Callable | None = None
    notes: list[str] = field(default_factory=list)

    def config(self, **kwargs) -> EngineConfig:
        """An EngineConfig with your reader, policy and predictor (kwargs: the rest)."""
        if self.policy is not None:
            kwargs.setdefault("policy", self.policy() if isinstance(self.policy, type) else self.policy)
        return EngineConfig(expert_reader=self.read_expert, prefetch_predictor=self.predict, **kwargs)

    def engine(self, **kwargs) -> Engine:
        """`Engine(self.config(**kwargs))` with your router installed."""
        engine = Engine(self.config(**kwargs))
        engine.set_router(engine_route(self.route) if self.route is not None else None)
        return engine

    def __str__(self) -> str:
        return "\n".join(self.notes)

    def _repr_html_(self) -> str:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return f"<b>The engine's parts</b><ul>{items}</ul>"


PACKAGE_PARTS = {
    "route": "the package's router (lazymoe.engine.parts.router.topk_route)",
    "read_expert": "the package's reader (ExpertStore.read)",
    "policy": "the package's LRU",
    "predict": "the package's guess (the next router's own top-k)",
}


def assemble(route=None, read_expert=None, policy=None, predict=None) -> MyParts:
    """Check each of your four parts; those that pass drive the engine, the others are replaced
    by the package's part, with a note that says so."""
    checks = {
        "route": (route, lab05.check_route.__wrapped__, "your router (lab05)"),
        "read_expert": (read_expert, lab05b.check_read_expert.__wrapped__, "your expert reader (lab05b)"),
        "policy": (policy, lab06.check_lru.__wrapped__, "your eviction policy (lab06)"),
        "predict": (predict, lab07.check_predict.__wrapped__, "your prefetch guess (lab07)"),
    }
    parts = MyParts()
    for name, (part, check, label) in checks.items():
        result = check(part) if part is not None else None
        if result is not None and result.passed:
            setattr(parts, name, part)
            parts.notes.append(_('{label}: yours, it passes its check.').format(label=label))
        elif result is None or not result.started:
            parts.notes.append(_('{label}: not written yet, so the engine runs {value}.').format(label=label, value=PACKAGE_PARTS[name]))
        else:
            parts.notes.append(_('{label}: does not pass its check yet ({message}), so the engine runs {value}.').format(label=label, message=result.message, value=PACKAGE_PARTS[name]))
    return parts
