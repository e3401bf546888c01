"""Is a response right, and what should the learner read next?

`check(question, response)` never raises on a wrong or malformed response: it returns a Verdict
whose status is "correct", "wrong" or "invalid" (a response that is not an answer at all, such as
a letter that is no choice: it does not count as an attempt).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from lazymoe.quiz.model import Question, Text

CORRECT, WRONG, INVALID = "correct", "wrong", "invalid"
_NUMBER = re.compile(r"[-+]?(?:\d[\d,_]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
GIB_PER_GB = 2**30 / 1e9  # 1.0737: the ratio a GB/GiB mix-up leaves behind


@dataclass
class Verdict:
    """The outcome of one check: status, the normalized response, and texts to show."""

    status: str
    response: Any = None  # normalized: "b", ["a", "c"] or 60.4
    messages: list[Text] = field(default_factory=list)

    @property
    def correct(self) -> bool:
        return self.status == CORRECT


def _invalid(en: str, ko: str) -> Verdict:
    return Verdict(INVALID, None, [Text(en, ko)])


def parse_choices(question: Question, response: Any) -> list[str] | Verdict:
    """"b", "B", 2 (1-based), "a,c", "a c", "ac", ["a", "c"] -> sorted choice ids, or INVALID."""
    ids = question.choice_ids
    if isinstance(response, str):
        text = response.strip().lower()
        parts = re.split(r"[\s,;/+]+", text) if re.search(r"[\s,;/+]", text) else None
        if parts is None:
            parts = list(text) if all(ch in ids for ch in text) and text else [text]
    elif isinstance(response, int) and not isinstance(response, bool):
        parts = [str(response)]
    elif isinstance(response, list | tuple | set | frozenset):
        parts = [str(r).strip().lower() for r in response]
    else:
        parts = []
    picked: list[str] = []
    for part in filter(None, parts):
        if part.isdigit() and 1 <= int(part) <= len(ids):
            part = ids[int(part) - 1]
        if part not in ids:
            return _invalid(
                f"{part!r} is not a choice here: answer with one of {', '.join(ids)}.",
                f"{part!r}은(는) 선택지가 아닙니다: {', '.join(ids)} 중에서 고르세요.",
            )
        if part not in picked:
            picked.append(part)
    if not picked:
        return _invalid("Pick a choice first.", "먼저 선택지를 고르세요.")
    if question.kind == "single" and len(picked) > 1:
        return _invalid(
            "This question has exactly one right answer: pick one choice.",
            "이 문제는 정답이 하나입니다: 하나만 고르세요.",
        )
    return sorted(picked)


def parse_number(response: Any) -> float | None:
    """60.4, "60.4", "60.4 tok/s", "1,000" -> a float; None if there is no number."""
    if isinstance(response, bool):
        return None
    if isinstance(response, int | float):
        return float(response) if math.isfinite(response) else None
    if isinstance(response, str):
        match = _NUMBER.search(response.replace(" ", ""))
        if match:
            try:
                return float(match.group().replace(",", "").replace("_", ""))
            except ValueError:
                return None
    return None


def _scale_hint(value: float, expected: float) -> Text | None:
    """Say so when a wrong number is off by a power of ten or by GB/GiB: a unit slip."""
    if value == 0 or expected == 0 or (value > 0) != (expected > 0):
        return None
    ratio = value / expected
    if abs(ratio / GIB_PER_GB - 1) < 0.01 or abs(ratio * GIB_PER_GB - 1) < 0.01:
        return Text(
            "You are about 7% off: did you mix GB (10^9 bytes) and GiB (2^30 bytes)?",
            "약 7% 차이납니다: GB(10^9 바이트)와 GiB(2^30 바이트)를 섞지 않았나요?",
        )
    exponent = math.log10(abs(ratio))
    k = round(exponent)
    if k != 0 and abs(exponent - k) < 0.03:
        size = f"{10 ** abs(k):,}"
        way, way_ko = ("too large", "큽니다") if k > 0 else ("too small", "작습니다")
        return Text(
            f"Your answer is about {size}x {way}: check the units (bits vs bytes, MB vs GB, ms vs s).",
            f"답이 약 {size}배 {way_ko}: 단위를 확인하세요 (비트/바이트, MB/GB, ms/s).",
        )
    if abs(ratio - 8) < 0.05 or abs(ratio - 1 / 8) < 0.005:
        return Text(
            "You are off by a factor of 8: bits vs bytes?",
            "8배 차이납니다: 비트와 바이트를 섞지 않았나요?",
        )
    return None


def check_numeric(question: Question, response: Any) -> Verdict:
    value = parse_number(response)
    if value is None:
        return _invalid(
            f"Type a number (in {question.unit}).", f"숫자를 입력하세요 (단위: {question.unit})."
        )
    assert question.value is not None  # validated when the bank loads
    if abs(value - question.value) <= question.allowed_error:
        return Verdict(CORRECT, value, [question.explanation] if question.explanation else [])
    messages = [m.explanation for m in question.mistakes
                if abs(value - m.value) <= m.rel_tolerance * abs(m.value)]
    if not messages:
        scale = _scale_hint(value, question.value)
        messages = [scale] if scale else []
        if question.hint:
            messages.append(question.hint)
    direction = ("too high", "큽니다") if value > question.value else ("too low", "작습니다")
    messages.insert(
        0,
        Text(f"{value:g} {question.unit} is {direction[0]}.",
             f"{value:g} {question.unit}은(는) 정답보다 {direction[1]}."),
    )
    return Verdict(WRONG, value, messages)


def check_choices(question: Question, response: Any) -> Verdict:
    picked = parse_choices(question, response)
    if isinstance(picked, Verdict):
        return picked
    normalized: Any = picked[0] if question.kind == "single" else picked
    if set(picked) == question.answers:
        # Right: why it is right; for several true statements, why each is true.
        messages = [question.choice(c).explanation for c in picked]
        if question.explanation:
            messages.append(question.explanation)
        return Verdict(CORRECT, normalized, messages)
    wrong = [c for c in picked if c not in question.answers]
    messages = [question.choice(c).explanation for c in wrong]
    missing = len(question.answers - set(picked))
    if question.kind == "multiple" and missing:
        messages.append(Text(
            f"{missing} true statement(s) are still unchecked.",
            f"맞는 문장 {missing}개를 아직 고르지 않았습니다.",
        ))
    return Verdict(WRONG, normalized, messages)


def check(question: Question, response: Any) -> Verdict:
    """Check one response against one question (no progress is recorded here)."""
    if question.kind == "numeric":
        return check_numeric(question, response)
    return check_choices(question, response)
