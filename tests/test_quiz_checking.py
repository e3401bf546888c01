"""Checking a response: the forms a learner may type, tolerances, and what a wrong answer says."""

from __future__ import annotations

import pytest

from lazymoe.quiz import Choice, Mistake, Question, Text, check, parse_number


def choice(cid: str, explanation: str) -> Choice:
    return Choice(cid, Text(f"choice {cid}"), Text(explanation))


SINGLE = Question(
    id="s", kind="single", prompt=Text("?"), explanation=Text("general why"),
    choices=tuple(choice(c, f"why {c}") for c in "abcd"), answers=frozenset({"b"}),
)
MULTIPLE = Question(
    id="m", kind="multiple", prompt=Text("?"),
    choices=tuple(choice(c, f"why {c}") for c in "abcd"), answers=frozenset({"a", "c"}),
)
NUMERIC = Question(
    id="n", kind="numeric", prompt=Text("?"), explanation=Text("worked solution"),
    value=60.4, rel_tolerance=0.05, unit="tok/s", hint=Text("bandwidth / size"),
    mistakes=(Mistake(16.54, Text("that is ms per token")),),
)


@pytest.mark.parametrize("response", ["b", "B", " b ", 2, "2"])
def test_single_choice_accepts_a_letter_or_its_position(response):
    verdict = check(SINGLE, response)
    assert verdict.correct and verdict.response == "b"
    assert Text("why b") in verdict.messages and Text("general why") in verdict.messages


def test_a_wrong_choice_explains_itself_and_only_itself():
    verdict = check(SINGLE, "c")
    assert verdict.status == "wrong" and verdict.messages == [Text("why c")]


@pytest.mark.parametrize("response", ["e", 5, "", None, "ab"])
def test_a_response_that_is_no_answer_is_invalid_not_wrong(response):
    verdict = check(SINGLE, response)
    assert verdict.status == "invalid" and verdict.messages


@pytest.mark.parametrize("response", ["a,c", "c a", "ac", ["c", "a"], ("a", "c"), [1, 3]])
def test_multiple_choice_accepts_lists_in_any_form(response):
    verdict = check(MULTIPLE, response)
    assert verdict.correct and verdict.response == ["a", "c"]


def test_multiple_choice_explains_wrong_picks_and_counts_missing_ones():
    verdict = check(MULTIPLE, "a,b")
    assert verdict.status == "wrong"
    assert Text("why b") in verdict.messages
    assert any("1 true statement" in m.en for m in verdict.messages)
    assert Text("why a") not in verdict.messages  # a right pick is not called wrong


@pytest.mark.parametrize("response", [60.4, "60", "63.4 tok/s", 57.5])
def test_numeric_accepts_within_tolerance(response):
    assert check(NUMERIC, response).correct


@pytest.mark.parametrize("response", [56.0, 64.0, "70"])
def test_numeric_rejects_outside_tolerance_and_says_which_way(response):
    verdict = check(NUMERIC, response)
    assert verdict.status == "wrong"
    side = "too high" if float(response) > 60.4 else "too low"
    assert side in verdict.messages[0].en
    assert Text("bandwidth / size") in verdict.messages


def test_a_known_mistake_gets_its_own_explanation():
    verdict = check(NUMERIC, 16.5)
    assert Text("that is ms per token") in verdict.messages
    assert Text("bandwidth / size") not in verdict.messages  # the specific beats the generic


@pytest.mark.parametrize(
    ("response", "phrase"),
    [(0.0604, "1,000x too small"), (60400, "1,000x too large"), (60.4 / 1.0737, "GiB"),
     (60.4 * 8, "factor of 8")],
)
def test_unit_slips_are_named(response, phrase):
    verdict = check(NUMERIC, response)
    assert verdict.status == "wrong"
    assert any(phrase in m.en for m in verdict.messages)


@pytest.mark.parametrize(
    ("text", "value"),
    [("1,000", 1000.0), ("3.5e2 GB", 350.0), (".5", 0.5), ("-2", -2.0), ("about 7 GB/s", 7.0)],
)
def test_parse_number_reads_what_people_type(text, value):
    assert parse_number(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "many", None, True, float("nan")])
def test_parse_number_gives_none_when_there_is_no_number(text):
    assert parse_number(text) is None
