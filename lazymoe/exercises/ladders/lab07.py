"""Lab 07 (prefetch): guess the next layer's experts."""

from lazymoe.exercises.solutions import Exercise
from lazymoe.i18n import _

PREDICT_HINTS = (
    _("Ask the next layer's router now, with the hidden state you already have: the experts it would "
      "score highest are your guess.", lang="en"),
    _("The router's scores are router_weight @ hidden: one number per expert, shape (E,). "
      "torch.topk(scores, top_k).indices are the ids of the largest ones.", lang="en"),
    "logits = router_weight @ hidden\nreturn torch.topk(logits, top_k).indices",
)
PREDICT_SOLUTION = """\
def my_predict(hidden, router_weight, top_k):
    logits = router_weight @ hidden  # (E,): one score per expert
    return torch.topk(logits, top_k).indices
"""

EXERCISES = [
    Exercise(
        key="lab07.predict",
        title=_("guessing the next layer's experts", lang="en"),
        check="check_predict(my_predict)",
        hints=PREDICT_HINTS,
        solution=PREDICT_SOLUTION,
        wrong="""\
def my_predict(hidden, router_weight, top_k):
    return torch.topk(router_weight @ hidden, top_k).values  # scores, not expert ids
""",
    ),
]
