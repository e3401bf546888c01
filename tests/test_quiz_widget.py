"""The quiz widget, driven headlessly: set values, click Check, read what the learner would see.
Also the text fallback and the jupyterquiz export."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ipywidgets")

from lazymoe import quiz
from lazymoe.quiz.export import bank_to_jupyterquiz
from lazymoe.widgets import quiz as quiz_widget


@pytest.fixture
def widget():
    return quiz_widget.build("01", lang="en")


def first_of(bank, kind):
    return next(q for q in bank.questions if q.kind == kind)


def test_a_wrong_choice_shows_its_explanation_and_allows_another_try(widget):
    q = first_of(widget.bank, "single")
    wrong = next(c for c in q.choices if c.id not in q.answers)
    right = q.choice(next(iter(q.answers)))
    view = widget.view(q.id)

    view.input.value = wrong.id
    view.check_button.click()
    assert "try again" in view.feedback.value
    assert wrong.explanation.en[:40] in view.feedback.value
    assert "first-attempt score 0/1" in widget.score_label.value

    view.input.value = right.id
    view.check_button.click()
    assert "Correct" in view.feedback.value and right.explanation.en[:40] in view.feedback.value
    assert "first-attempt score 0/1" in widget.score_label.value  # the retry does not score
    assert "solved: 2 attempts" in view.status.value


def test_running_score_counts_first_attempts_across_kinds(widget):
    bank = widget.bank
    single, multiple, numeric = (first_of(bank, k) for k in ("single", "multiple", "numeric"))
    widget.view(single.id).input.value = next(iter(single.answers))
    widget.view(single.id).check_button.click()
    mview = widget.view(multiple.id)
    for box in mview.input.children:
        box.value = box.description in multiple.answers
    mview.check_button.click()
    nview = widget.view(numeric.id)
    nview.input.value = f"{numeric.value * 10:g}"  # a unit slip
    nview.check_button.click()
    assert "too high" in nview.feedback.value
    nview.input.value = f"{numeric.value} {numeric.unit}"
    nview.check_button.click()
    assert f"first-attempt score 2/3 (answered 3 of {len(bank.questions)})" in widget.score_label.value


def test_answers_persist_and_a_new_widget_shows_them(widget):
    q = first_of(widget.bank, "single")
    widget.view(q.id).input.value = next(iter(q.answers))
    widget.view(q.id).check_button.click()
    fresh = quiz_widget.build("01", lang="en")  # e.g. after a kernel restart
    assert "solved: first try" in fresh.view(q.id).status.value
    assert "first-attempt score 1/1" in fresh.score_label.value
    assert quiz.score("01").first_try == 1


def test_an_empty_check_is_not_counted(widget):
    q = first_of(widget.bank, "single")
    widget.view(q.id).check_button.click()  # nothing picked
    assert "Pick a choice" in widget.view(q.id).feedback.value
    assert quiz.score("01").answered == 0


def test_language_switch_relabels_and_keeps_the_selection(widget):
    q = widget.bank.questions[0]
    assert q.prompt.ko, "module 01 q1 carries the source module's Korean wording"
    view = widget.view(q.id)
    view.input.value = "a"
    widget.language.value = "ko"
    assert q.prompt.ko in view.prompt.value
    assert all(c.text.ko in view.choices.value for c in q.choices)
    assert view.input.value == "a"
    assert view.check_button.description == "확인"
    assert "아직" in widget.score_label.value  # Korean, and nothing answered yet
    view.check_button.click()
    assert "첫 시도 점수 0/1" in widget.score_label.value


def test_without_a_widget_frontend_the_quiz_prints_as_text(capsys, monkeypatch):
    monkeypatch.delenv("LAZYMOE_QUIZ_MODE", raising=False)
    assert not quiz_widget.frontend_available()  # pytest is no Jupyter kernel
    quiz_widget.show("02")
    out = capsys.readouterr().out
    bank = quiz.load_bank("02")
    assert bank.title.en in out and 'answer("02", "' in out
    assert all(f"{q.id}. " in out for q in bank.questions)
    feedback = quiz_widget.answer("02", bank.questions[0].id, sorted(bank.questions[0].answers)[0])
    assert feedback.correct and "Correct" in str(feedback)


def test_a_frontend_without_widget_manager_gets_the_text_quiz(widget):
    bundle = widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert widget.bank.questions[0].prompt.en[:30] in bundle["text/plain"]


def test_mode_can_be_forced(monkeypatch):
    monkeypatch.setenv("LAZYMOE_QUIZ_MODE", "widget")
    assert quiz_widget.frontend_available()
    monkeypatch.setenv("LAZYMOE_QUIZ_MODE", "text")
    assert not quiz_widget.frontend_available()


def test_jupyterquiz_export_keeps_answers_and_feedback():
    bank = quiz.load_bank("01")
    exported = bank_to_jupyterquiz(bank)
    json.dumps(exported)  # serializable
    assert len(exported) == len(bank.questions)
    for q, item in zip(bank.questions, exported, strict=True):
        if q.kind == "numeric":
            low, high = item["answers"][0]["range"]
            assert item["type"] == "numeric" and low <= q.value <= high
        else:
            assert item["type"] == ("multiple_choice" if q.kind == "single" else "many_choice")
            flags = [a["correct"] for a in item["answers"]]
            assert flags == [c.id in q.answers for c in q.choices]
            assert all(a["feedback"] for a in item["answers"])


def test_a_corrupt_progress_file_is_reported_in_the_widget():
    store = quiz.ProgressStore()
    store.path.write_text("{broken")
    with pytest.warns(quiz.ProgressFileWarning):
        widget = quiz_widget.build("01", lang="en", store=store)
    assert "kept as progress.json.corrupt-" in widget.notice.value
    assert "none answered yet" in widget.score_label.value


def test_an_unknown_language_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="'en' or 'ko'"):
        quiz_widget.build("01", lang="de")


def test_language_switch_rerenders_feedback_and_title_already_shown(widget):
    q = first_of(widget.bank, "single")
    wrong = next(c for c in q.choices if c.id not in q.answers)
    view = widget.view(q.id)
    view.input.value = wrong.id
    view.check_button.click()
    assert "try again" in view.feedback.value and widget.title.value.startswith("<h3>Quiz 01:")
    widget.language.value = "ko"
    assert "try again" not in view.feedback.value
    assert "다시 해 보세요" in view.feedback.value
    if wrong.explanation.ko:
        assert wrong.explanation.ko[:20] in view.feedback.value
    assert "Quiz" not in widget.title.value and "퀴즈 01:" in widget.title.value
    assert "[1 시도]" in view.status.value


def test_the_score_line_appears_once_in_either_language(widget):
    q = first_of(widget.bank, "single")
    view = widget.view(q.id)
    view.input.value = next(iter(q.answers))
    view.check_button.click()
    shown = [widget.score_label.value, *(v.feedback.value for v in widget.views)]
    assert sum("first-attempt score" in s for s in shown) == 1
    widget.language.value = "ko"
    shown = [widget.score_label.value, *(v.feedback.value for v in widget.views)]
    assert sum("첫 시도 점수" in s for s in shown) == 1
    assert not any("first-attempt score" in s for s in shown)


def test_one_attempt_is_singular(widget):
    q = first_of(widget.bank, "single")
    view = widget.view(q.id)
    view.input.value = next(c.id for c in q.choices if c.id not in q.answers)
    view.check_button.click()
    assert "[1 attempt]" in view.status.value


def test_the_picked_letter_is_highlighted(widget):
    q = first_of(widget.bank, "single")
    view = widget.view(q.id)
    assert "background" not in view.choices.value
    view.input.value = q.choice_ids[1]
    row = next(r for r in view.choices.value.split("<li") if f"({q.choice_ids[1]})" in r)
    assert "background" in row
    m = first_of(widget.bank, "multiple")
    mview = widget.view(m.id)
    mview.input.children[0].value = True
    assert mview.input.children[0].button_style == "info"
    assert mview.input.children[1].button_style == ""


def test_multi_answer_cards_say_to_press_letters_not_type_a_list(widget):
    m = first_of(widget.bank, "multiple")
    card = widget.view(m.id).choices.value
    assert "a,c" not in card and "press every letter" in card
