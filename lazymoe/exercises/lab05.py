"""Lab 05 check: the MoE router's top-k with renormalization, against the model's own router.

    check_route(fn)   fn(hidden (T, D), gate_weight (E, D), top_k) -> (weights (T, k), experts (T, k))

The check feeds real hidden states (the input of one layer's router while the model reads a
Python snippet) to the learner's function and to the model's router module, then compares which
experts each token gets and with what weight. The order of the k picks does not matter.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lazymoe.exercises.base import CheckResult, failed, not_started, passed
from lazymoe.exercises.solutions import tracked
from lazymoe.i18n import _

SNIPPET = "def read_config(path):\n    with open(path) as f:\n        return json.load(f)\n"


def route(hidden: torch.Tensor, gate_weight: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: probs = softmax(hidden @ gate_weight.T); keep the top_k; divide by their sum."""
    probs = torch.softmax(hidden.float() @ gate_weight.float().T, dim=-1)  # (T, E)
    weights, experts = probs.topk(top_k, dim=-1)  # (T, k)
    return weights / weights.sum(dim=-1, keepdim=True), experts


@torch.no_grad()
def router_inputs(model, tokenizer, layer: int, text: str = SNIPPET) -> torch.Tensor:
    """The hidden states (T, D) that `layer`'s router sees while the model reads `text`."""
    seen: list[torch.Tensor] = []
    gate = model.model.layers[layer].mlp.gate
    handle = gate.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        model(**tokenizer(text, return_tensors="pt"))
    finally:
        handle.remove()
    return seen[0].reshape(-1, model.config.hidden_size)


def _sorted_by_expert(weights: torch.Tensor, experts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = experts.argsort(dim=-1)
    return weights.gather(-1, order), experts.gather(-1, order)


@tracked("lab05.route")
def check_route(fn: Callable, model=None, tokenizer=None, layer: int = 1) -> CheckResult:
    """Compare fn with the model's router (default: the bundled tiny MoE) on real hidden states."""
    name = "route"
    if model is None:
        from lazymoe.models.bundled import load_model, load_tokenizer

        model, tokenizer = load_model(), load_tokenizer()
    gate = model.model.layers[layer].mlp.gate
    hidden = router_inputs(model, tokenizer, layer)
    top_k = model.config.num_experts_per_tok
    try:
        answer = fn(hidden.clone(), gate.weight.detach().clone(), top_k)
    except Exception as err:  # the learner's code: say what broke instead of raising
        return failed(name, _('your function raised {error_type}: {err}').format(error_type=type(err).__name__, err=err),
                      _('hidden is {value} (tokens, hidden), gate_weight is {value2} (experts, hidden): logits = hidden @ gate_weight.T').format(value=tuple(hidden.shape), value2=tuple(gate.weight.shape)))
    if answer is None:
        return not_started(name)
    if not isinstance(answer, tuple | list) or len(answer) != 2:
        return failed(name, _('return a pair (weights, experts), each of shape (tokens, top_k).'))
    weights, experts = (torch.as_tensor(a) for a in answer)
    want_shape = (hidden.shape[0], top_k)
    if tuple(weights.shape) != want_shape or tuple(experts.shape) != want_shape:
        return failed(name, _('weights and experts must both be (tokens, top_k) = {want_shape}; got {value} and {value2}.').format(want_shape=want_shape, value=tuple(weights.shape), value2=tuple(experts.shape)))
    _logits, ref_weights, ref_experts = gate(hidden)  # the model's own router, (T, k) each
    ref_w, ref_e = _sorted_by_expert(ref_weights.float(), ref_experts)
    got_w, got_e = _sorted_by_expert(weights.float(), experts.long())
    if not torch.equal(got_e, ref_e):
        bad = int((got_e != ref_e).any(dim=-1).sum())
        return failed(name, _("{bad} of {n_ref_e} tokens got different experts than the model's router: softmax over the EXPERTS (dim=-1), then take the top_k LARGEST.").format(bad=bad, n_ref_e=len(ref_e)),
                      _("first token: yours {value}, the model's {value2}").format(value=got_e[0].tolist(), value2=ref_e[0].tolist()))
    if torch.allclose(got_w, ref_w, atol=1e-5):
        return passed(name, _("your router picks the same experts with the same weights as the model's."))
    sums = weights.float().sum(dim=-1)
    if (weights < 0).any() or (weights > 1 + 1e-5).any():
        return failed(name, _('right experts, but some weights are negative or above 1: those look like raw logits; turn them into probabilities with a softmax first.'))
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        return failed(name, _("right experts, but each token's weights sum to {value:.3f} on average, not 1: renormalize the top-k (divide by their sum), as norm_topk_prob=True says.").format(value=float(sums.mean())))
    return failed(name, _("right experts and weights that sum to 1, but not the model's weights: take the softmax over ALL experts, then the top-k, then renormalize."),
                  _("first token: yours {value}, the model's {value2}").format(value=got_w[0].tolist(), value2=ref_w[0].tolist()))
