"""Checks for lab09 (benchmarking). They never raise on a wrong answer: they say what is wrong.

check_bound(my_bound_tok_s)   your roofline bound of an expert-caching engine matches the one the
                              benchmark report draws (lazymoe.calculator.expert_cache_bound_tok_s)
"""

from __future__ import annotations

import math
from collections.abc import Callable

from lazymoe.calculator import expert_cache_bound_tok_s
from lazymoe.exercises.base import CheckResult, failed, not_started, passed
from lazymoe.exercises.solutions import tracked
from lazymoe.i18n import _

EXERCISE = _("lab09: roofline bound with a hit rate", lang="en")  # translated where shown (CheckResult)
GB = 1e9

# (dense bytes, expert bytes per token, hit rate, VRAM GB/s, PCIe GB/s): a laptop, a server, a cold cache
CASES = [
    (2.46e9, 3.62e9, 0.5, 256.0, 15.8),  # Qwen3-30B-A3B BF16, a 256 GB/s laptop GPU on PCIe 4.0 x8
    (2.46e9, 3.62e9, 0.9, 3350.0, 54.0),  # the same model on an H100 with PCIe 5.0
    (0.75e9, 1.61e9, 0.0, 448.0, 12.0),  # OLMoE-1B-7B shapes, cold cache, PCIe 3.0 x16
]


def _wrong_formulas(dense: float, experts: float, h: float, vram: float, link: float) -> dict[str, float]:
    """tok/s that typical slips give, with the message to show for each."""
    t_right = (dense + experts) / (vram * GB) + (1 - h) * experts / (link * GB)
    return {
        "you returned seconds per token: tok/s is 1 / (seconds per token)": t_right,
        "the hit rate is backwards: the misses, (1 - h) of the expert bytes, cross the link": 1 / (
            (dense + experts) / (vram * GB) + h * experts / (link * GB)),
        "the VRAM term is missing: every byte a token uses, dense and experts, is read from VRAM": 1 / (
            (1 - h) * experts / (link * GB)),
        "a missed expert is copied in and then read from VRAM too: count all expert bytes at VRAM "
        "speed, not only the hits": 1 / ((dense + h * experts) / (vram * GB) + (1 - h) * experts / (link * GB)),
    }


@tracked("lab09.bound")
def check_bound(fn: Callable[[float, float, float, float, float], float | None]) -> CheckResult:
    """fn(dense_bytes, expert_bytes, hit_rate, vram_gbps, link_gbps) -> tok/s upper bound."""
    for case in CASES:
        try:
            got = fn(*case)
        except Exception as exc:  # the learner's code raised: say so, do not crash the notebook
            return failed(EXERCISE, _('your function raised {error_type}: {exc}').format(error_type=type(exc).__name__, exc=exc))
        if got is None:
            return not_started(EXERCISE)
        want = expert_cache_bound_tok_s(*case)
        try:
            got = float(got)
        except (TypeError, ValueError):
            return failed(EXERCISE, _('return a number of tokens per second, not {type_name}').format(type_name=type(got).__name__))
        if math.isclose(got, want, rel_tol=1e-3):
            continue
        detail = _('case dense={value:.2f} GB, experts={value2:.2f} GB, h={value3}, VRAM {value4} GB/s, link {value5} GB/s: expected {want:.2f} tok/s, got {got:.4g}').format(value=case[0] / GB, value2=case[1] / GB, value3=case[2], value4=case[3], value5=case[4], want=want, got=got)
        ratio = got / want if want else float("inf")
        if ratio > 1e8 or 0 < ratio < 1e-8:
            return failed(EXERCISE, _('your bound is off by a factor of about {ratio:.0e}: did you mix GB and bytes? Bandwidths are GB/s (1e9 bytes/s), sizes are bytes.').format(ratio=ratio), detail)
        for message, value in _wrong_formulas(*case).items():
            if value and math.isclose(got, value, rel_tol=1e-3):
                return failed(EXERCISE, message, detail)
        return failed(EXERCISE, _('not yet: add the seconds of each part, then invert.'), detail)
    return passed(EXERCISE, _('your bound matches the one the benchmark draws on its chart.'))
