"""What every exercise check returns, and how it shows itself in a notebook or a terminal."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from lazymoe.i18n import _


@dataclass
class CheckResult:
    """The outcome of checking one exercise: passed or not, and what to look at."""

    exercise: str  # its name; shown in the learner's language
    passed: bool
    message: str
    details: list[str] = field(default_factory=list)
    started: bool = True  # False: the learner's function is still empty (not counted as a try)

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        mark = _("PASS") if self.passed else _("NOT YET")
        lines = [f"[{mark}] {_(self.exercise)}: {self.message}", *(f"  - {d}" for d in self.details)]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        color, mark = ("#1a7f37", "&#10004;") if self.passed else ("#b35900", "&#10008;")
        items = "".join(f"<li>{html.escape(d)}</li>" for d in self.details)
        return (
            f'<div style="border-left:4px solid {color};padding:4px 10px">'
            f"<b style='color:{color}'>{mark} {html.escape(_(self.exercise))}</b>: "
            f"{html.escape(self.message)}{f'<ul>{items}</ul>' if items else ''}</div>"
        )


def passed(exercise: str, message: str | None = None) -> CheckResult:
    return CheckResult(exercise, True, _("correct.") if message is None else message)


def failed(exercise: str, message: str, *details: str) -> CheckResult:
    return CheckResult(exercise, False, message, list(details))


def not_started(exercise: str) -> CheckResult:
    return CheckResult(
        exercise, False, _("your function returned None: fill in the body and run again."), started=False
    )


def explain_error(err: Exception) -> str:
    """What a learner's exception usually means, in one sentence ('' when there is nothing to add).

    The dead ends seen when non-engineers tried the labs: a name used inside a class without
    `self.`, and a dtype written as the safetensors header spells it ("F32") instead of numpy's."""
    text = str(err)
    if isinstance(err, NameError) and _raised_in_a_method(err):
        name = getattr(err, "name", None) or "name"
        return " " + _("Inside a class, what one method stores is reached as self.{name}: create it in "
                       "__init__ (self.{name} = ...) and write self.{name} wherever you use it.").format(name=name)
    if isinstance(err, TypeError) and "data type" in text and "not understood" in text:
        return " " + _("numpy does not know the header's dtype names: give np.frombuffer dtype=np.float32 "
                       "for 'F32' (np.float16 for 'F16').")
    if isinstance(err, AttributeError) and "'NoneType'" in text:
        return " " + _("something you use was never set: does __init__ create it (self.x = ...)?")
    return ""


def _raised_in_a_method(err: Exception) -> bool:
    tb = err.__traceback__
    while tb is not None:
        if "self" in tb.tb_frame.f_code.co_varnames[: tb.tb_frame.f_code.co_argcount]:
            return True
        tb = tb.tb_next
    return False
