"""The capstone's summary check: it passes a filled, consistent summary and names what is missing
or inconsistent otherwise."""

from __future__ import annotations

import pytest

from lazymoe.exercises.capstone import PLACEHOLDER, check_summary

EXPLANATION = ("The bound assumes every byte streams at the copy speed I measured, but the engine reads "
               "many small matrices and spends most of each step in Python and in starting small "
               "computations, so the bytes are a small part of the time.")


def filled(**changes):
    summary = {"model": "tiny-moe", "machine": "office PC", "predicted_tok_s": 1800.0,
               "measured_tok_s": 90.0, "ratio": 0.05, "explanation": EXPLANATION}
    return {**summary, **changes}


def test_a_filled_consistent_summary_passes():
    result = check_summary(filled())
    assert result.passed and "5% of the predicted" in result.message


def test_a_rounded_ratio_still_passes():
    assert check_summary(filled(measured_tok_s=91.0, ratio=0.05)).passed


def test_an_inverted_ratio_is_named():
    result = check_summary(filled(ratio=20.0))
    assert not result.passed and any("turn it around" in d for d in result.details)


def test_a_ratio_that_matches_nothing_shows_the_arithmetic():
    result = check_summary(filled(ratio=0.5))
    assert not result.passed and any("90 / 1800 = 0.05" in d for d in result.details)


def test_the_template_explanation_does_not_pass():
    result = check_summary(filled(explanation=PLACEHOLDER + ", in two or three sentences."))
    assert not result.passed and any("explanation" in d for d in result.details)


@pytest.mark.parametrize(("key", "value", "says"), [
    ("predicted_tok_s", None, "predicted_tok_s must be a number"),
    ("measured_tok_s", 0, "more than 0"),
    ("measured_tok_s", "fast", "measured_tok_s must be a number"),
    ("model", " ", "model is empty"),
    ("ratio", "0.05", "ratio must be a number"),
])
def test_each_missing_or_wrong_part_is_named(key, value, says):
    result = check_summary(filled(**{key: value}))
    assert not result.passed and any(says in d for d in result.details), result.details


def test_missing_keys_and_a_non_dict_are_refused():
    summary = filled()
    del summary["ratio"]
    assert "lacks ratio" in check_summary(summary).message
    assert "must be a dict" in check_summary([1, 2]).message


def test_a_measurement_above_the_bound_passes_with_a_note():
    result = check_summary(filled(measured_tok_s=3600.0, ratio=2.0))
    assert result.passed and any("above the bound" in d for d in result.details)
