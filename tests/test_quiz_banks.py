"""Quiz banks: every shipped bank loads and validates; a malformed bank names file, question, problem."""

from __future__ import annotations

import textwrap

import pytest

from lazymoe import quiz
from lazymoe.quiz import check
from lazymoe.quiz.model import Text

COURSE_MODULES = ["00", "01", "02", "03", "04", "05", "06", "07"]
AT_LEAST_SIX = {"01", "02", "03", "06"}


@pytest.fixture(scope="module")
def banks():
    return quiz.load_all_banks()


def test_every_course_module_has_a_bank(banks):
    assert list(banks) == COURSE_MODULES


@pytest.mark.parametrize("module", COURSE_MODULES)
def test_bank_has_enough_questions(banks, module):
    minimum = 6 if module in AT_LEAST_SIX else 4
    assert len(banks[module].questions) >= minimum


@pytest.mark.parametrize("module", COURSE_MODULES)
def test_every_question_is_answerable_and_explains_itself(banks, module):
    """The bank's own answer passes its own check; every other choice fails and says why."""
    for q in banks[module].questions:
        assert q.source, f"{module}/{q.id} names no source for its facts"
        if q.kind == "numeric":
            assert check(q, q.value).correct
            assert q.explanation is not None
            assert not check(q, q.value + 3 * q.allowed_error + 1e-9).correct
            for m in q.mistakes:
                verdict = check(q, m.value)
                assert not verdict.correct and m.explanation in verdict.messages
            continue
        right = sorted(q.answers)
        assert check(q, right if q.kind == "multiple" else right[0]).correct
        for choice in q.choices:
            assert choice.explanation.en.strip()
            if choice.id not in q.answers:
                verdict = check(q, [choice.id] if q.kind == "multiple" else choice.id)
                assert verdict.status == "wrong"
                assert choice.explanation in verdict.messages


def test_right_answers_are_spread_over_positions(banks):
    """Learners notice when the answer is always 'b': no position holds most right answers."""
    positions = [q.choice_ids.index(a) for b in banks.values() for q in b.questions
                 if q.kind == "single" for a in q.answers]
    assert max(positions.count(p) for p in set(positions)) <= len(positions) / 2


def test_the_validator_lists_banks_or_names_the_problem(tmp_path, capsys):
    from lazymoe.quiz.__main__ import main

    assert main([]) == 0
    assert capsys.readouterr().out.count("OK ") == len(COURSE_MODULES)
    write(tmp_path, GOOD.replace("answer: b", "answer: z"))
    assert main([str(tmp_path / "quizzes")]) == 1
    assert "answer 'z' is not one of the choices" in capsys.readouterr().out


def test_module_01_opens_with_the_source_modules_first_question(banks):
    q1 = banks["01"].questions[0]
    assert q1.kind == "single" and len(q1.choices) == 4
    assert "GPU" in q1.prompt.en and "CPU" in q1.prompt.en
    assert q1.prompt.ko and all(c.text.ko and c.explanation.ko for c in q1.choices)
    right = q1.choice(next(iter(q1.answers)))
    assert "parallel" in right.text.en


def test_a_korean_reader_sees_korean_where_translated(banks):
    q1 = banks["01"].questions[0]
    assert q1.prompt.get("ko") == q1.prompt.ko
    untranslated = Text("Only in English.")
    assert untranslated.get("ko") == untranslated.en  # falls back to English


GOOD = """\
module: "09"
title: {en: Test bank, ko: 시험}
questions:
  - id: q1
    kind: single
    source: test
    prompt: Pick b.
    choices:
      - {text: A, explanation: not a}
      - {text: B, explanation: yes b}
    answer: b
  - id: q2
    kind: numeric
    source: test
    prompt: Two?
    answer: 2
    unit: things
    tolerance: 0.1
"""


def write(tmp_path, text, name="09_test.yaml"):
    folder = tmp_path / "quizzes"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_wellformed_bank_loads(tmp_path):
    bank = quiz.load_bank_file(write(tmp_path, GOOD))
    assert bank.module == "09" and bank.question_ids == ["q1", "q2"]
    assert bank.question("q1").choice_ids == ["a", "b"]
    assert quiz.load_bank("9", tmp_path / "quizzes") == bank


MALFORMED = {
    "unknown kind": (GOOD.replace("kind: single", "kind: truefalse"), "q1", "kind 'truefalse'"),
    "answer not a choice": (GOOD.replace("answer: b", "answer: c"), "q1", "answer 'c' is not one"),
    "missing explanation": (
        GOOD.replace("{text: A, explanation: not a}", "{text: A}"), "q1", "choice a's explanation"),
    "typo in a key": (GOOD.replace("    source: test\n    prompt: Two?",
                                   "    source: test\n    promt: Two?"), "q2", "promt"),
    "numeric without tolerance": (GOOD.replace("    tolerance: 0.1\n", ""), "q2", "tolerance"),
    "numeric without unit": (GOOD.replace("    unit: things\n", ""), "q2", "'unit'"),
    "duplicate id": (GOOD.replace("id: q2", "id: q1"), "q1", "used twice"),
    "no english": (GOOD.replace("prompt: Pick b.", "prompt: {ko: 골라}"), "q1", "English"),
    "single with a list": (GOOD.replace("answer: b", "answer: [a, b]"), "q1", "one choice id"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_a_malformed_bank_names_file_question_and_problem(tmp_path, case):
    text, qid, problem = MALFORMED[case]
    path = write(tmp_path, text)
    with pytest.raises(quiz.QuizBankError) as info:
        quiz.load_bank_file(path)
    message = str(info.value)
    assert str(path) in message and f"question '{qid}'" in message and problem in message
    assert info.value.question_id == qid


def test_invalid_yaml_and_wrong_module_name_the_file(tmp_path):
    broken = write(tmp_path, "module: '09'\nquestions: [\n")
    with pytest.raises(quiz.QuizBankError, match="not valid YAML") as info:
        quiz.load_bank_file(broken)
    assert str(broken) in str(info.value)
    misnamed = write(tmp_path, GOOD, name="08_test.yaml")
    with pytest.raises(quiz.QuizBankError, match="not named 09_"):
        quiz.load_bank_file(misnamed)


def test_an_unknown_module_or_question_says_what_exists(tmp_path):
    write(tmp_path, GOOD)
    with pytest.raises(quiz.UnknownQuizError, match="no quiz bank for module 05"):
        quiz.load_bank("05", tmp_path / "quizzes")
    bank = quiz.load_bank("09", tmp_path / "quizzes")
    with pytest.raises(quiz.UnknownQuizError, match="its questions are: q1, q2"):
        bank.question("q7")
