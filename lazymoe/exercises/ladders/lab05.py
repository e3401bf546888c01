"""Lab 05 (the router)."""

from lazymoe.exercises.solutions import Exercise
from lazymoe.i18n import _

ROUTE_HINTS = (
    _("Every expert gets a score for each token; the scores become probabilities; each token keeps "
      "its top_k experts, and their weights are scaled to add up to 1.", lang="en"),
    _("hidden @ gate_weight.T gives (T, E) scores. torch.softmax(..., dim=-1) works along the experts. "
      "probs.topk(top_k, dim=-1) returns (values, indices). Divide the values by their sum over "
      "dim=-1 (keepdim=True keeps the shape for the division).", lang="en"),
    "probs = torch.softmax(hidden @ gate_weight.T, dim=-1)\n"
    "weights, experts = probs.topk(top_k, dim=-1)\n"
    "return weights / weights.sum(dim=-1, keepdim=True), experts",
)
ROUTE_SOLUTION = """\
def route(hidden: torch.Tensor, gate_weight: torch.Tensor, top_k: int):
    \"\"\"hidden (T, D), gate_weight (E, D) -> (weights (T, top_k), experts (T, top_k)).\"\"\"
    probs = torch.softmax(hidden @ gate_weight.T, dim=-1)  # (T, E)
    weights, experts = probs.topk(top_k, dim=-1)  # (T, k), largest first
    return weights / weights.sum(dim=-1, keepdim=True), experts
"""

EXERCISES = [
    Exercise(
        key="lab05.route",
        title=_("the router", lang="en"),
        check="check_route(route)",
        hints=ROUTE_HINTS,
        solution=ROUTE_SOLUTION,
        wrong="""\
def route(hidden, gate_weight, top_k):
    probs = torch.softmax(hidden @ gate_weight.T, dim=0)  # over tokens, not experts
    weights, experts = probs.topk(top_k, dim=-1)
    return weights / weights.sum(dim=-1, keepdim=True), experts
""",
    ),
]
