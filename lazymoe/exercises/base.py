"""What every exercise check returns, and how it shows itself in a notebook or a terminal."""

from __future__ import annotations

import html
from dataclasses import dataclass, field


@dataclass
class CheckResult:
    """The outcome of checking one exercise: passed or not, and what to look at."""

    exercise: str
    passed: bool
    message: str
    details: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        mark = "PASS" if self.passed else "NOT YET"
        lines = [f"[{mark}] {self.exercise}: {self.message}", *(f"  - {d}" for d in self.details)]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        color, mark = ("#1a7f37", "&#10004;") if self.passed else ("#b35900", "&#10008;")
        items = "".join(f"<li>{html.escape(d)}</li>" for d in self.details)
        return (
            f'<div style="border-left:4px solid {color};padding:4px 10px">'
            f"<b style='color:{color}'>{mark} {html.escape(self.exercise)}</b>: "
            f"{html.escape(self.message)}{f'<ul>{items}</ul>' if items else ''}</div>"
        )


def passed(exercise: str, message: str = "correct.") -> CheckResult:
    return CheckResult(exercise, True, message)


def failed(exercise: str, message: str, *details: str) -> CheckResult:
    return CheckResult(exercise, False, message, list(details))


def not_started(exercise: str) -> CheckResult:
    return CheckResult(exercise, False, "your function returned None: fill in the body and run again.")
