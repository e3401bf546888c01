"""Lab 08 (assemble the engine): the four parts the learner wrote in labs 05 to 07."""

from lazymoe.exercises.ladders import lab05, lab05b, lab06, lab07
from lazymoe.exercises.solutions import Exercise
from lazymoe.i18n import _

EXERCISES = [
    Exercise(
        key="lab08.route",
        title=_("your router (from lab 05)", lang="en"),
        check="check_route(route)",
        hints=lab05.ROUTE_HINTS,
        solution=lab05.ROUTE_SOLUTION,
        wrong="""\
def route(hidden, gate_weight, top_k):
    probs = torch.softmax(hidden @ gate_weight.T, dim=-1)
    weights, experts = probs.topk(top_k, dim=-1)
    return weights, experts  # forgot to renormalize: the tiny model's config says norm_topk_prob
""",
    ),
    Exercise(
        key="lab08.read_expert",
        title=_("your expert reader (from lab 05b)", lang="en"),
        check="check_read_expert(read_expert)",
        hints=lab05b.EXERCISES[1].hints,
        blanks=lab05b.EXERCISES[1].blanks,
        solution=lab05b.READ_SOLUTION,
    ),
    Exercise(
        key="lab08.policy",
        title=_("your eviction policy (from lab 06)", lang="en"),
        check="check_lru(MyLRU)",
        hints=lab06.LRU_HINTS,
        blanks=lab06.LRU_BLANKS,
        solution=lab06.LRU_SOLUTION,
    ),
    Exercise(
        key="lab08.predict",
        title=_("your prefetch guess (from lab 07)", lang="en"),
        check="check_predict(my_predict)",
        hints=lab07.PREDICT_HINTS,
        solution=lab07.PREDICT_SOLUTION,
    ),
]
