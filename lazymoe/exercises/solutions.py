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

SWITCH = "LAZYMOE_SOLUTIONS"  # "1": the notebook tests run every exercise with its solution


@dataclass(frozen=True)
class Exercise:
    """One "your turn": what it asks, how to climb to it, and the answer kept out of the way."""

    key: str  # "lab06.lru": the lab, a dot, the exercise
    title: str
    check: str  # the check call as the notebook writes it, e.g. "check_lru(MyLRU)"
    hints: tuple[str, ...]  # idea, method, shape of the code: shown one at a time
    solution: str  # Python source, shown as text, executed only under the switch
    blanks: str = ""  # an easier fill-in-the-blank version (the hardest exercises)
    wrong: str = ""  # a plausible wrong answer; under the switch its check must fail

    @property
    def lab(self) -> str:
        return self.key.split(".")[0]


class UnknownExercise(KeyError):
    pass


def exercises(lab: str) -> dict[str, Exercise]:
    """The exercises of one lab ("lab06"), in notebook order."""
    try:
        module = importlib.import_module(f"lazymoe.exercises.ladders.{lab}")
    except ModuleNotFoundError as err:
        raise UnknownExercise(f"no lab {lab!r}: labs are lab00 .. lab09 and lab05b") from err
    return {ex.key: ex for ex in module.EXERCISES}


def get(key: str) -> Exercise:
    lab = key.split(".")[0]
    found = exercises(lab)
    if key not in found:
        raise UnknownExercise(f"no exercise {key!r}: {lab} has {', '.join(found)}")
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
        f'Still stuck? hint("{key}") again shows the next one.'
        if n < len(ex.hints)
        else (f'That was the last hint. An easier version: blanks("{key}"). ' if ex.blanks else "")
        + f'The answer: show_solution("{key}").'
    )
    return Shown(f"Hint {n} of {len(ex.hints)} for {ex.title}", ex.hints[n - 1] + "\n" + more)


def blanks(key: str) -> Shown:
    """An easier version of the exercise with ___ to fill in, put in a new cell below this one
    (in Jupyter); it plugs into the same check."""
    ex = get(key)
    if not ex.blanks:
        return Shown(f"{ex.title} has no fill-in version", f'Try hint("{key}") instead.')
    _store().exercise_event(ex.lab, key, "blanks")
    code = f"{ex.blanks.rstrip()}\n\n\n{ex.check}\n"
    ip = _ipython()
    if ip is not None:
        ip.set_next_input(code, replace=False)
        return Shown(f"A fill-in version of {ex.title} is in the new cell below",
                     "Replace each ___ and run that cell.")
    return Shown(f"A fill-in version of {ex.title}: replace each ___", code=code)


def show_solution(key: str, now: bool = False) -> Shown:
    """The solution as text (it is not run, and it changes none of your definitions).

    Only after at least one try of the exercise's check, unless `now=True`."""
    ex = get(key)
    store = _store()
    rec = store.exercise_record(ex.lab, key)
    if not now and (rec is None or rec.attempts == 0) and not testing():
        return Shown(
            f"Try {ex.title} first",
            f'Write something and run its check at least once; hint("{key}") helps. To see the '
            f'answer anyway: show_solution("{key}", now=True).',
        )
    store.exercise_event(ex.lab, key, "solution")
    return Shown(
        f"One solution for {ex.title} (shown, not run: copy what you need into your own cell)",
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
                    result.details.append(f'stuck? hint("{key}")')
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
        lines.append(f"{ex.title}: {rec.status() if rec else 'not tried yet'}")
    return Shown(f"Your progress in {lab}", "\n".join(lines))


def mine_or_reference(key: str, name: str, namespace: dict):
    """Your `name` from `namespace` if it passes the exercise's check; otherwise the course's
    reference answer (run apart, so your definition stays as it is), with a note saying so.
    For the cells after an exercise that use its answer."""
    ex = get(key)
    with _not_recorded():
        try:
            result = eval(ex.check, dict(namespace))
        except Exception as err:  # a half-written cell: say so, go on with the reference
            result = CheckResult(ex.title, False, f"{type(err).__name__}: {err}")
    if isinstance(result, CheckResult) and result.passed:
        return namespace[name]
    scratch = dict(namespace)
    exec(compile(ex.solution, f"<reference {key}>", "exec"), scratch)
    why = "is not written yet" if not result.started else "does not pass its check yet"
    print(f"Note: your {name} {why}, so the cells below use the course's reference answer "
          f'(show_solution("{key}") shows it). Your own definition is unchanged.')
    return scratch[name]
