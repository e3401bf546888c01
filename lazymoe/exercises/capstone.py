"""The capstone's checked summary: "your machine, your model" (course/08_capstone.ipynb).

The learner fills one dict:

    summary = {
        "model": "tiny-moe", "machine": "my office PC (DDR4-3200 dual channel)",
        "predicted_tok_s": 410.0,   # the bound: bandwidth / bytes read per token
        "measured_tok_s": 150.0,    # what the engine did
        "ratio": 0.37,              # measured / predicted
        "explanation": "...",       # where the rest of the time went, in your words
    }
    check_summary(summary)

The check verifies that each part is there and that the ratio agrees with the two speeds. It does
not grade the explanation beyond asking for a few sentences: that part is for the study group.
"""

from __future__ import annotations

import math
from typing import Any

from lazymoe.exercises.base import CheckResult, failed, passed
from lazymoe.i18n import _, ngettext

EXERCISE = _("capstone summary", lang="en")  # translated where shown (CheckResult)
FIELDS = ("model", "machine", "predicted_tok_s", "measured_tok_s", "ratio", "explanation")
PLACEHOLDER = "Write here"  # the template's explanation starts with this
RATIO_REL_TOLERANCE = 0.05  # a ratio rounded to two digits still passes
MIN_EXPLANATION_WORDS = 20  # two or three sentences
ABOVE_BOUND = 1.2  # measured more than 20% above the bound: an assumption of the bound is off


def _speed(summary: dict, key: str) -> float | str:
    value = summary.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{key} must be a number in tokens per second, got {value!r}"
    if not math.isfinite(value) or value <= 0:
        return f"{key} must be more than 0 tokens per second, got {value!r}"
    return float(value)


def check_summary(summary: Any) -> CheckResult:
    """Is every part of the summary there, and is ratio = measured_tok_s / predicted_tok_s?"""
    if not isinstance(summary, dict):
        return failed(EXERCISE, _('summary must be a dict with the keys {value}; got {type_name}').format(value=', '.join(FIELDS), type_name=type(summary).__name__))
    missing = [k for k in FIELDS if k not in summary]
    if missing:
        return failed(EXERCISE, _('the summary lacks {value}: add {value2} to the dict').format(value=', '.join(missing), value2='it' if len(missing) == 1 else 'them'))
    problems = [f"{k} is empty: say which {k} you used" for k in ("model", "machine")
                if not str(summary[k] or "").strip()]
    predicted, measured = _speed(summary, "predicted_tok_s"), _speed(summary, "measured_tok_s")
    problems += [p for p in (predicted, measured) if isinstance(p, str)]
    ratio = summary["ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio):
        problems.append(_('ratio must be a number (measured_tok_s / predicted_tok_s), got {ratio!r}').format(ratio=ratio))
    elif isinstance(predicted, float) and isinstance(measured, float):
        expected = measured / predicted
        if abs(ratio - expected) > RATIO_REL_TOLERANCE * expected:
            if abs(ratio - 1 / expected) <= RATIO_REL_TOLERANCE / expected:
                problems.append(_('ratio {ratio:.3g} is predicted / measured: turn it around, measured / predicted = {expected:.3g}').format(ratio=ratio, expected=expected))
            else:
                problems.append(_('ratio {ratio:.3g} does not match your speeds: measured / predicted = {measured:.4g} / {predicted:.4g} = {expected:.3g}').format(ratio=ratio, measured=measured, predicted=predicted, expected=expected))
    explanation = str(summary["explanation"] or "").strip()
    if explanation.startswith(PLACEHOLDER) or len(explanation.split()) < MIN_EXPLANATION_WORDS:
        problems.append(_('explanation: write two or three sentences (at least {MIN_EXPLANATION_WORDS} words) on where the time between the bound and your measurement went').format(MIN_EXPLANATION_WORDS=MIN_EXPLANATION_WORDS))
    if problems:
        return failed(EXERCISE, ngettext('{n} thing to fix', '{n} things to fix', len(problems)).format(n=len(problems)),
                      *problems)
    result = passed(EXERCISE, _('{value} on {value2}: measured {measured:.3g} tok/s, {ratio:.0%} of the predicted {predicted:.3g}.').format(value=summary['model'], value2=summary['machine'], measured=measured, ratio=ratio, predicted=predicted))
    if ratio > ABOVE_BOUND:
        result.details.append(_('you measured well above the bound: one of its assumptions is off (the bandwidth, or the bytes read per token). Say which in your explanation.'))
    return result
