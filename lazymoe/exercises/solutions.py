"""Hints before solutions, and solutions that never overwrite the learner's code.

Every lab exercise has a key ("lab06.lru") and an entry in `lazymoe/exercises/ladders/labNN.py`:
graded hints (the idea, then the method, then the shape of the code), for the hardest ones a
fill-in-the-blank version, the solution as text, and for at least one exercise per lab a
deliberately wrong answer that its check must catch.

    hint("lab06.lru")             the next hint, one at a time
    blanks("lab06.lru")           an easier version with blanks, put in a new cell below
    show_solution("lab06.lru")    the solution as highlighted text, after at least one try
    use_solution_if_testing("lab06.lru", globals())
                                  a no-op for a learner; under LAZYMOE_SOLUTIONS=1 (the notebook
                                  tests) it first checks that the wrong answer fails its check,
                                  then defines the solution in the notebook

A solution is never executed by "Run All": it is shown as text only, and defining it in the
notebook happens only under the switch. What the learner did (tries, hints seen, solution shown)
goes to the progress file (`lazymoe.quiz.progress`).
"""

from __future__ import annotations

import contextlib
import functools
import html
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from lazymoe.exercises.base import CheckResult
from lazymoe.i18n import _

SWITCH = "LAZYMOE_SOLUTIONS"  # "1": the notebook tests run every exercise with its solution


@dataclass(frozen=True)
class Exercise:
    """One "your turn": what it asks, how to climb to it, and the answer kept out of the way."""

    key: str  # "lab06.lru": the lab, a dot, the exercise
    title: str  # English (marked for the catalog in the ladders); `name` is what the learner reads
    check: str  # the check call as the notebook writes it, e.g. "check_lru(MyLRU)"
    hints: tuple[str, ...]  # idea, method, shape of the code: shown one at a time
    solution: str  # Python source, shown as text, executed only under the switch
    blanks: str = ""  # an easier fill-in-the-blank version (the hardest exercises)
    wrong: str = ""  # a plausible wrong answer; under the switch its check must fail

    @property
    def lab(self) -> str:
        return self.key.split(".")[0]

    @property
    def name(self) -> str:
        """The title in the learner's language (looked up now, so a language chosen later applies)."""
        return _(self.title)

    def hint_text(self, index: int) -> str:
        return _(self.hints[index])


class UnknownExercise(KeyError):
    pass


def exercises(lab: str) -> dict[str, Exercise]:
    """The exercises of one lab ("lab06"), in notebook order."""
    try:
        module = importlib.import_module(f"lazymoe.exercises.ladders.{lab}")
    except ModuleNotFoundError as err:
        raise UnknownExercise(_("no lab {lab!r}: labs are lab00 .. lab09 and lab05b").format(lab=lab)) from err
    return {ex.key: ex for ex in module.EXERCISES}


def get(key: str) -> Exercise:
    lab = key.split(".")[0]
    found = exercises(lab)
    if key not in found:
        raise UnknownExercise(_("no exercise {key!r}: {lab} has {keys}").format(key=key, lab=lab, keys=", ".join(found)))
    return found[key]


def testing() -> bool:
    """True when the notebooks run under the switch (CI): solutions are supplied."""
    return os.environ.get(SWITCH) == "1"


# -- what the learner sees ---------------------------------------------------------------------
@dataclass
class Shown:
    """Text for a notebook (HTML, code highlighted) and for a terminal (plain)."""

    title: str
    text: str = ""
    code: str = ""

    def __str__(self) -> str:
        return "\n".join(part for part in (self.title, self.text, self.code) if part)

    def _repr_html_(self) -> str:
        text = html.escape(self.text).replace("\n", "<br>")
        body = f"<p>{text}</p>" if self.text else ""
        return (
            '<div style="border-left:4px solid #0969da;padding:4px 10px">'
            f"<b>{html.escape(self.title)}</b>{body}{_highlight(self.code)}</div>"
        )


def _highlight(code: str) -> str:
    if not code:
        return ""
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
    except ImportError:  # pygments comes with Jupyter; plain text without it
        return f"<pre>{html.escape(code)}</pre>"
    return highlight(code, PythonLexer(), HtmlFormatter(noclasses=True, nobackground=True))


def _store():
    from lazymoe.quiz.progress import ProgressStore

    return ProgressStore()


def hint(key: str) -> Shown:
    """The next hint of the ladder (the first call: the idea; then the method; then the code's
    shape). After the last one: where to go next."""
    ex = get(key)
    rec = _store().exercise_event(ex.lab, key, "hint")
    n = min(rec.hints_seen, len(ex.hints))
    more = (
        _('Still stuck? hint("{key}") again shows the next one.').format(key=key)
        if n < len(ex.hints)
        else (_('That was the last hint. An easier version: blanks("{key}"). ').format(key=key) if ex.blanks else "")
        + _('The answer: show_solution("{key}").').format(key=key)
    )
    return Shown(_("Hint {n} of {total} for {title}").format(n=n, total=len(ex.hints), title=ex.name),
                 ex.hint_text(n - 1) + "\n" + more)


def blanks(key: str) -> Shown:
    """An easier version of the exercise with ___ to fill in, put in a new cell below this one
    (in Jupyter); it plugs into the same check."""
    ex = get(key)
    if not ex.blanks:
        return Shown(_("{title} has no fill-in version").format(title=ex.name),
                     _('Try hint("{key}") instead.').format(key=key))
    _store().exercise_event(ex.lab, key, "blanks")
    code = f"{ex.blanks.rstrip()}\n\n\n{ex.check}\n"
    ip = _ipython()
    if ip is not None:
        ip.set_next_input(code, replace=False)
        return Shown(_("A fill-in version of {title} is in the new cell below").format(title=ex.name),
                     _("Replace each ___ and run that cell."))
    return Shown(_("A fill-in version of {title}: replace each ___").format(title=ex.name), code=code)


def show_solution(key: str, now: bool = False) -> Shown:
    """The solution as text (it is not run, and it changes none of your definitions).

    Only after at least one try of the exercise's check, unless `now=True`."""
    ex = get(key)
    store = _store()
    rec = store.exercise_record(ex.lab, key)
    if not now and (rec is None or rec.attempts == 0) and not testing():
        return Shown(
            _("Try {title} first").format(title=ex.name),
            _('Write something and run its check at least once; hint("{key}") helps. To see the '
              'answer anyway: show_solution("{key}", now=True).').format(key=key),
        )
    store.exercise_event(ex.lab, key, "solution")
    return Shown(
        _("One solution for {title} (shown, not run: copy what you need into your own cell)").format(title=ex.name),
        code=ex.solution.strip(),
    )


def _ipython():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


# -- the switch the notebook tests use ---------------------------------------------------------
class WrongAnswerPassed(AssertionError):
    """A deliberately wrong answer passed its check: the check cannot tell right from wrong."""


def use_solution_if_testing(key: str, namespace: dict) -> bool:
    """Under LAZYMOE_SOLUTIONS=1: check the exercise's wrong answer fails, then define the
    solution in `namespace` (the notebook's globals()). Otherwise do nothing: your code runs."""
    if not testing():
        return False
    ex = get(key)
    if ex.wrong:
        scratch = dict(namespace)  # the wrong answer never reaches the notebook
        exec(compile(ex.wrong, f"<wrong answer {key}>", "exec"), scratch)
        with _not_recorded():
            result = eval(ex.check, scratch)
        if not isinstance(result, CheckResult) or result.passed:
            raise WrongAnswerPassed(f"{key}: the wrong answer passed `{ex.check}`: {result}")
    exec(compile(ex.solution, f"<solution {key}>", "exec"), namespace)
    return True


_recording = [True]


class _not_recorded:
    def __enter__(self) -> None:
        _recording.append(False)

    def __exit__(self, *exc) -> None:
        _recording.pop()


def tracked(key: str) -> Callable[[Callable[..., CheckResult]], Callable[..., CheckResult]]:
    """Decorate a check: each run that tried something is recorded in the progress file."""

    def wrap(check: Callable[..., CheckResult]) -> Callable[..., CheckResult]:
        @functools.wraps(check)
        def run(*args, **kwargs) -> CheckResult:
            result = check(*args, **kwargs)
            if _recording[-1] and isinstance(result, CheckResult) and result.started:
                lab = key.split(".")[0]
                with contextlib.suppress(OSError):  # a read-only home: the answer still shows
                    _store().exercise_event(lab, key, "pass" if result.passed else "fail")
                if not result.passed:
                    result.details.append(_('stuck? hint("{key}")').format(key=key))
            return result

        run.exercise_key = key  # type: ignore[attr-defined]
        return run

    return wrap


def lab_progress(lab: str) -> Shown:
    """Where you stand on one lab's exercises: solved on the first try, with hints, with the
    solution shown, or not yet."""
    store = _store()
    lines = []
    for key, ex in exercises(lab).items():
        rec = store.exercise_record(lab, key)
        lines.append(f"{ex.name}: {rec.status() if rec else _('not tried yet')}")
    return Shown(_("Your progress in {lab}").format(lab=lab), "\n".join(lines))


def mine_or_reference(key: str, name: str, namespace: dict):
    """Your `name` from `namespace` if it passes the exercise's check; otherwise the course's
    reference answer (run apart, so your definition stays as it is), with a note saying so.
    For the cells after an exercise that use its answer."""
    ex = get(key)
    with _not_recorded():
        try:
            result = eval(ex.check, dict(namespace))
        except Exception as err:  # a half-written cell: say so, go on with the reference
            result = CheckResult(ex.name, False, f"{type(err).__name__}: {err}")
    if isinstance(result, CheckResult) and result.passed:
        return namespace[name]
    scratch = dict(namespace)
    exec(compile(ex.solution, f"<reference {key}>", "exec"), scratch)
    note = (_('Note: your {name} is not written yet, so the cells below use the course\'s reference answer '
              '(show_solution("{key}") shows it). Your own definition is unchanged.') if not result.started else
            _('Note: your {name} does not pass its check yet, so the cells below use the course\'s reference '
              'answer (show_solution("{key}") shows it). Your own definition is unchanged.'))
    print(note.format(name=name, key=key))
    return scratch[name]
