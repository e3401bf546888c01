"""The instructor's class dashboard: reading everyone's progress files together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazymoe.exercises.solutions import exercises
from lazymoe.hub import classroom
from lazymoe.quiz import ProgressStore, load_bank

REPO = Path(__file__).resolve().parents[1]


def _solve_module(store: ProgressStore, module: str, wrong_first: set[str] = frozenset()) -> None:
    for qid in load_bank(module).question_ids:
        if qid in wrong_first:
            store.record(module, qid, "x", correct=False)
        store.record(module, qid, "y", correct=True)


def test_finished_modules_labs_and_hardest_questions(tmp_path):
    """Progress written by the real ProgressStore, in the hub's layout, read back as a class."""
    q00 = load_bank("00").question_ids
    homes = tmp_path / "homes"
    ana = ProgressStore(homes / "ana" / ".lazymoe" / "progress.json")
    _solve_module(ana, "00", wrong_first={q00[0], q00[1]})
    for key in exercises("lab04"):
        ana.exercise_event("lab04", key, "fail")
        ana.exercise_event("lab04", key, "pass")
    ben = ProgressStore(homes / "ben" / ".lazymoe" / "progress.json")
    ben.record("00", q00[0], "x", correct=False)  # wrong first, never solved: module not done
    first_lab04 = next(iter(exercises("lab04")))
    ben.exercise_event("lab04", first_lab04, "pass")  # one of two exercises: lab not done

    members = classroom.load_class(homes)
    assert list(members) == ["ana", "ben"]
    modules, labs = classroom.modules_done(members), classroom.labs_done(members)
    assert modules["ana"]["00"] and not modules["ana"]["01"]
    assert not modules["ben"]["00"]
    assert labs["ana"]["lab04"] and not labs["ben"]["lab04"]
    assert set(labs["ana"]) == set(classroom.lab_names()) and "lab05b" in labs["ana"]

    hardest = classroom.hardest_questions(members, top=5)
    assert (hardest[0].module, hardest[0].question_id) == ("00", q00[0])
    assert (hardest[0].answered, hardest[0].wrong_first) == (2, 2)
    assert (hardest[1].question_id, hardest[1].wrong_first) == (q00[1], 1)
    assert len(hardest) == 2  # questions nobody missed are not listed


def test_flat_files_and_a_broken_one(tmp_path, capsys):
    (tmp_path / "chloe.json").write_text(json.dumps({"version": 1, "modules": {}}))
    (tmp_path / "notes.json").write_text("{not json")
    members = classroom.load_class(tmp_path)
    assert list(members) == ["chloe"]
    assert "skipped" in capsys.readouterr().out


def test_missing_or_empty_folder_says_what_to_give(tmp_path):
    with pytest.raises(classroom.ClassFolderError, match="is not a folder"):
        classroom.load_class(tmp_path / "nope")
    with pytest.raises(classroom.ClassFolderError, match="no progress files"):
        classroom.load_class(tmp_path)


def test_sample_progress_is_five_members_at_different_stages():
    members = classroom.load_class(REPO / "instructor" / "sample_progress")
    assert len(members) == 5
    finished = {m: sum(done.values()) for m, done in classroom.modules_done(members).items()}
    assert len(set(finished.values())) == 5  # the plots have something to show
    assert classroom.hardest_questions(members, top=3)
