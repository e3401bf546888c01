"""Scoring, retries and the progress file: first attempts count, saves are atomic, corruption is
set aside, and `lazymoe progress` prints the table."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lazymoe import quiz
from lazymoe.cli import main as cli_main
from lazymoe.quiz import ProgressFileWarning, ProgressStore

REPO = Path(__file__).resolve().parents[1]


def right_and_wrong(question):
    """A right response and a wrong one, read from the bank (not hard-coded here)."""
    if question.kind == "numeric":
        return question.value, question.value * 3 + 1
    right = sorted(question.answers)
    wrong = next(c for c in question.choice_ids if c not in question.answers)
    if question.kind == "multiple":
        return right, [wrong]
    return right[0], wrong


@pytest.fixture
def bank():
    return quiz.load_bank("01")


def test_progress_lives_in_lazymoe_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LAZYMOE_HOME", str(tmp_path / "learner"))
    assert ProgressStore().path == tmp_path / "learner" / "progress.json"


def test_first_attempt_scores_and_retries_do_not(bank):
    q1, q2 = bank.questions[:2]
    right1, wrong1 = right_and_wrong(q1)
    right2, _ = right_and_wrong(q2)

    first = quiz.answer("01", q1.id, wrong1)
    assert first.status == "wrong" and first.messages
    retry = quiz.answer("01", q1.id, right1)
    assert retry.correct and not retry.first_try
    assert retry.record.attempts == 2 and retry.record.solved
    clean = quiz.answer("01", q2.id, right2)
    assert clean.first_try

    score = quiz.score("01")
    assert (score.answered, score.solved, score.first_try) == (2, 2, 1)
    assert score.summary() == f"first-attempt score 1/2 (answered 2 of {len(bank.questions)})"
    assert "1/2" in str(clean)  # the feedback carries the running score


def test_a_module_answered_right_throughout_scores_100_percent():
    bank = quiz.load_bank("00")
    for q in bank.questions:
        quiz.answer("00", q.id, right_and_wrong(q)[0])
    score = quiz.score("00")
    assert score.complete and score.percent == 100.0
    assert score.summary().endswith("all solved")


def test_answers_after_solving_change_nothing(bank):
    q = bank.questions[0]
    right, wrong = right_and_wrong(q)
    quiz.answer("01", q.id, right)
    again = quiz.answer("01", q.id, wrong)
    assert again.status == "wrong"  # still explained
    assert again.record.first_correct and again.record.attempts == 1
    assert quiz.score("01").first_try == 1


def test_an_invalid_response_is_not_an_attempt(bank):
    q = next(q for q in bank.questions if q.kind == "single")
    feedback = quiz.answer("01", q.id, "z")
    assert feedback.status == "invalid" and feedback.record is None
    right, _ = right_and_wrong(q)
    assert quiz.answer("01", q.id, right).first_try


def test_progress_persists_across_sessions_and_reset_forgets(bank):
    q = bank.questions[0]
    right, _ = right_and_wrong(q)
    quiz.answer("01", q.id, right)
    later = ProgressStore()  # a new session, same learner
    assert later.record_of("01", q.id).first_correct
    data = json.loads(later.path.read_text())
    assert data["version"] == 1 and q.id in data["modules"]["01"]
    later.reset("01")
    assert quiz.score("01").answered == 0


def test_a_corrupt_progress_file_is_kept_aside_and_reported(bank):
    store = ProgressStore()
    store.path.write_text('{"modules": {"01": {"q1": {"attempts": 1,')  # cut off mid-write
    with pytest.warns(ProgressFileWarning, match="kept as progress.json.corrupt-"):
        assert quiz.score("01", store).answered == 0
    aside = list(store.path.parent.glob("progress.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text().startswith('{"modules"')
    assert store.notices
    right, _ = right_and_wrong(bank.questions[0])
    assert quiz.answer("01", bank.questions[0].id, right, store=store).first_try


def test_a_wrongly_shaped_progress_file_is_also_set_aside():
    store = ProgressStore()
    store.path.write_text('{"modules": []}')
    with pytest.warns(ProgressFileWarning):
        assert store.load()["modules"] == {}


def test_a_failing_save_warns_and_the_quiz_goes_on(bank, monkeypatch):
    """A full disk or a read-only home must not stop the quiz; the old file stays as it was."""
    store = ProgressStore()
    first, second = bank.questions[:2]
    quiz.answer("01", first.id, right_and_wrong(first)[0], store=store)
    before = store.path.read_text()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.warns(ProgressFileWarning, match="Could not save"):
        feedback = quiz.answer("01", second.id, right_and_wrong(second)[0], store=store)
    assert feedback.correct and "LAZYMOE_HOME" in store.notices[-1]
    assert store.path.read_text() == before
    assert not list(store.path.parent.glob(".progress.json.*.tmp"))  # no temp file left behind


WRITER = """
import sys
from lazymoe.quiz.progress import ProgressStore
store = ProgressStore(sys.argv[1])
n = int(sys.argv[2])
pad = "x" * 200_000  # a larger file widens the window a kill can land in
while True:
    n += 1
    store.save({"modules": {"99": {"q": {"attempts": n}}}, "counter": n, "pad": pad})
    print(n, flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_killing_a_writer_mid_save_never_corrupts_the_file(tmp_path):
    """SIGKILL a process that saves in a loop, many times: the file always parses, and holds
    either the last state the writer finished or the one it was writing."""
    path = tmp_path / "progress.json"
    ProgressStore(path).save({"modules": {}, "counter": 0})
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    last, mid_save_kills = 0, 0
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(last)],
                                stdout=subprocess.PIPE, text=True, env=env)
        first_line = proc.stdout.readline()  # it has finished at least one save
        assert first_line, "the writer died before saving"
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        done = [int(x) for x in (first_line + out).split()]
        state = json.loads(path.read_text())  # must parse
        assert state["counter"] in (done[-1], done[-1] + 1)
        assert state["modules"]["99"]["q"]["attempts"] == state["counter"]
        assert state["counter"] >= last
        last = state["counter"]
        leftovers = list(tmp_path.glob(".progress.json.*.tmp"))  # killed inside a save
        mid_save_kills += bool(leftovers)
        for leftover in leftovers:
            leftover.unlink()
    assert last > 12
    assert mid_save_kills > 0, "no kill landed inside a save: the test proved nothing"


RECORDER = """
import sys
from lazymoe.quiz.progress import ProgressStore
store = ProgressStore(sys.argv[1])
for i in range(15):
    store.record("99", f"{sys.argv[2]}{i}", "a", True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="the lock is POSIX-only")
def test_two_notebooks_saving_at_once_keep_each_others_answers(tmp_path):
    path = tmp_path / "progress.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", RECORDER, str(path), tag], env=env)
             for tag in ("x", "y")]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    assert len(ProgressStore(path).records("99")) == 30


def test_lazymoe_progress_prints_a_table_per_module_and_overall(bank, capsys):
    right, _ = right_and_wrong(bank.questions[0])
    quiz.answer("01", bank.questions[0].id, right)
    assert cli_main(["progress"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert all(m in rows for m in quiz.load_all_banks())
    assert f"1/{len(bank.questions)}" in rows["01"] and rows["all"].split()[-1] != "0%"


def test_lazymoe_progress_json_module_and_reset(bank, capsys):
    right, _ = right_and_wrong(bank.questions[0])
    quiz.answer("01", bank.questions[0].id, right)
    assert cli_main(["progress", "--json"]) == 0
    rows = {r["module"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["01"]["first_try"] == 1 and rows["02"]["answered"] == 0
    assert cli_main(["progress", "--module", "01"]) == 0
    assert "[solved: first try]" in capsys.readouterr().out
    assert cli_main(["progress", "--reset", "01"]) == 0
    assert quiz.score("01").answered == 0
