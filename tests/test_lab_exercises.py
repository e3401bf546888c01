"""The labs' exercises: hint ladders, solutions kept as text, wrong answers caught, progress kept."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from lazymoe.exercises import solutions
from lazymoe.exercises.lab06 import check_lru
from lazymoe.quiz.progress import ProgressStore

REPO = Path(__file__).resolve().parents[1]
LABS = sorted((REPO / "labs").glob("lab*.ipynb"))
LAB_IDS = [p.name.split("_")[0] for p in LABS]
HARDEST = ("lab02.fit", "lab03.pack", "lab05b.read_expert", "lab06.lru")


@pytest.mark.parametrize("path", LABS, ids=LAB_IDS)
def test_no_lab_runs_a_solution_cell_and_every_exercise_has_its_ladder(path):
    lab = path.name.split("_")[0]
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    assert "Solution (try first)" not in text
    used = re.findall(r'use_solution_if_testing\("([\w.]+)"', text)
    assert used == list(solutions.exercises(lab)), "each exercise cell names its exercise, in order"
    ladder = solutions.exercises(lab).values()
    assert any(ex.wrong for ex in ladder), f"{lab}: at least one wrong answer its check must catch"
    for ex in ladder:
        assert 2 <= len(ex.hints) <= 3 and ex.solution.strip()
        assert f'hint("{ex.key}")' in text
    assert f'lab_progress("{lab}")' in nb.cells[-1].source


def test_the_hardest_exercises_have_a_fill_in_version():
    for key in HARDEST:
        assert "___" in solutions.get(key).blanks


def test_hints_come_one_at_a_time_and_are_recorded():
    first, second = solutions.hint("lab06.lru"), solutions.hint("lab06.lru")
    assert first.title.startswith("Hint 1 of 3") and second.title.startswith("Hint 2 of 3")
    assert first.text.split("\n")[0] != second.text.split("\n")[0]
    assert ProgressStore().exercise_record("lab06", "lab06.lru").hints_seen == 2


def test_the_solution_waits_for_a_try_and_is_never_run(monkeypatch):
    monkeypatch.delenv(solutions.SWITCH, raising=False)
    namespace: dict = {}
    shown = solutions.show_solution("lab01.decode_bound")
    assert "Try" in shown.title and not shown.code
    assert solutions.use_solution_if_testing("lab01.decode_bound", namespace) is False
    assert namespace == {}  # without the switch nothing is defined
    shown = solutions.show_solution("lab01.decode_bound", now=True)
    assert "def decode_bound" in shown.code and "<span" in shown._repr_html_()  # highlighted


def test_under_the_switch_the_solution_is_defined_after_the_wrong_answer_fails(monkeypatch):
    monkeypatch.setenv(solutions.SWITCH, "1")
    from lazymoe.exercises import lab01

    namespace = {"lab01": lab01}
    assert solutions.use_solution_if_testing("lab01.decode_bound", namespace)
    assert namespace["decode_bound"](100.0, 1e9) == pytest.approx(100.0)


def test_a_wrong_answer_that_passes_stops_the_tests(monkeypatch):
    monkeypatch.setenv(solutions.SWITCH, "1")
    from lazymoe.exercises import lab01

    right = solutions.get("lab01.decode_bound")
    monkeypatch.setattr(solutions, "get", lambda key: solutions.Exercise(
        key, right.title, right.check, right.hints, right.solution, wrong=right.solution))
    with pytest.raises(solutions.WrongAnswerPassed):
        solutions.use_solution_if_testing("lab01.decode_bound", {"lab01": lab01})


def test_progress_tells_first_try_from_hints_from_solution():
    store = ProgressStore()
    solutions.show_solution("lab01.moe_bytes", now=True)
    store.exercise_event("lab01", "lab01.moe_bytes", "pass")
    store.exercise_event("lab01", "lab01.decode_bound", "pass")
    store.exercise_event("lab02", "lab02.fit", "fail")
    solutions.hint("lab02.fit")
    store.exercise_event("lab02", "lab02.fit", "pass")
    assert store.exercise_record("lab01", "lab01.decode_bound").status() == "solved on the first try"
    assert store.exercise_record("lab01", "lab01.moe_bytes").status() == "solved with the solution shown"
    assert store.exercise_record("lab02", "lab02.fit").status() == "solved with hints"
    assert "not tried yet" in str(solutions.lab_progress("lab03"))


def test_a_check_records_a_try_but_not_an_empty_starter():
    from lazymoe.engine.parts.policies import EvictionPolicy

    class Empty(EvictionPolicy):
        def victim(self, resident, protected):
            return None

    result = check_lru(Empty)
    assert not result.passed and not result.started
    assert ProgressStore().exercise_record("lab06", "lab06.lru") is None


# -- the dead ends non-engineers hit: the check names the fix ----------------------------------
def test_a_name_without_self_inside_a_class_is_explained():
    from lazymoe.engine.parts.policies import EvictionPolicy

    class Forgot(EvictionPolicy):
        def __init__(self):
            self.order = []

        def on_insert(self, key):
            order.append(key)  # noqa: F821  (the mistake under test)

        def victim(self, resident, protected):
            return self.order[0]

    result = check_lru(Forgot)
    assert not result.passed and "self.order" in result.message


def test_a_dtype_written_as_the_header_spells_it_is_explained():
    import numpy as np

    from lazymoe.exercises.lab05b import check_read_expert

    def read_expert(path, header, layer, expert):
        return np.frombuffer(b"\0" * 16, dtype="F32"), None, None

    result = check_read_expert(read_expert)
    assert not result.passed and "np.float32" in result.message


def test_a_policy_that_forgets_too_slowly_is_told_which_way_to_turn():
    import numpy as np

    from lazymoe.engine.parts.policies import EvictionPolicy
    from lazymoe.engine.parts.trace import RoutingTrace, synthetic_trace
    from lazymoe.exercises.lab06 import check_policy

    class FadesSlowly(EvictionPolicy):  # counts that (almost) never fade: LFU
        def __init__(self, half_life=100_000):
            self.count, self.clock, self.half_life = {}, 0, half_life

        def on_hit(self, key):
            self.clock += 1
            self.count[key] = self.count.get(key, 0) + 1
            if self.clock % self.half_life == 0:
                self.count = {k: c / 2 for k, c in self.count.items()}

        on_insert = on_hit

        def victim(self, resident, protected):
            return min((k for k in resident if k not in protected), key=lambda k: self.count[k])

    # the popular experts change halfway through: old favourites must be allowed to leave
    halves = [synthetic_trace(300, 4, 16, 2, skew=1.5, seed=s).experts for s in (0, 1)]
    trace = RoutingTrace(np.concatenate(halves), 16)
    result = check_policy(FadesSlowly, trace, 16)
    assert not result.passed, result
    assert any("smaller half_life" in d and "too slowly" in d for d in result.details), result


def test_lazymoe_progress_lists_the_lab_exercises(capsys):
    from lazymoe.cli import main

    ProgressStore().exercise_event("lab06", "lab06.lru", "pass")
    main(["progress"])
    out = capsys.readouterr().out
    assert "Lab exercises:" in out and "lab06.lru" in out and "solved on the first try" in out
