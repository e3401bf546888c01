"""The quiz at the end of each module notebook.

    from lazymoe.widgets.quiz import show
    show("01")

In Jupyter (a kernel with ipywidgets) this shows one card per question: the choices, letter
buttons (one to pick, or several to toggle) or a number box, a Check button, the explanation of
each answer and a running first-attempt score. Keyboard: Tab moves between the buttons, Space or
Enter presses the focused one. Where no widget can be drawn (plain Python, a terminal, CI, a
viewer without the widget manager) the same quiz prints as text and `answer("01", "q1", "b")`
answers it.

Wiring only: checking, scoring, progress and text live in `lazymoe.quiz`.
"""

from __future__ import annotations

import html
import os
from typing import Any

from lazymoe import quiz
from lazymoe.quiz import text
from lazymoe.quiz.model import Bank, Question
from lazymoe.quiz.progress import ProgressStore

__all__ = ["QuizWidget", "answer", "frontend_available", "show"]

answer = quiz.answer  # the text-mode way to answer: answer("01", "q1", "b")

BUTTONS = {"en": ("Check", "Language"), "ko": ("확인", "언어")}
CHOICE_CLASS = "lazymoe-quiz-choice"
# The picked letter button filled blue, and its choice text tinted, so the pick is plain to see.
PICKED_CSS = (f"<style>.{CHOICE_CLASS} .mod-active{{background:#0969da !important;"
              "color:#fff !important;font-weight:bold}</style>")
PICKED_ROW = " style='background:#ddf4ff;border-radius:4px'"
KEYS_HELP = {
    "en": "Keyboard: Tab moves between the buttons, Space or Enter presses the focused one.",
    "ko": "키보드: Tab으로 버튼 사이를 이동하고, Space나 Enter로 누릅니다.",
}


def frontend_available() -> bool:
    """True inside a Jupyter kernel with ipywidgets installed (where a widget can be drawn).

    `LAZYMOE_QUIZ_MODE=text` or `=widget` overrides the guess. A terminal IPython or plain Python
    has no kernel, so it gets text. A headless notebook run (CI) is a kernel: the widget is built
    and displayed there too, which is what a learner's JupyterLab will do.
    """
    forced = os.environ.get("LAZYMOE_QUIZ_MODE", "").lower()
    if forced in ("text", "widget"):
        return forced == "widget"
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class QuestionView:
    """The controls of one question card."""

    def __init__(self, owner: QuizWidget, question: Question) -> None:
        import ipywidgets as w

        self.owner, self.question = owner, question
        self.prompt = w.HTML()
        self.choices = w.HTML()  # the choice texts: HTML wraps long lines, radio labels do not
        self.feedback = w.HTML()
        self.status = w.HTML()
        self.check_button = w.Button(button_style="primary", layout=w.Layout(width="auto"))
        self.check_button.on_click(lambda _button: self.submit())
        ids = question.choice_ids
        if question.kind == "single":  # one of a, b, c ...: Tab to focus, Space/Enter to pick
            self.input: Any = w.ToggleButtons(options=[(c, c) for c in ids], value=None,
                                              style={"button_width": "3em"})
        elif question.kind == "multiple":  # each letter toggles on and off
            self.input = w.HBox([w.ToggleButton(value=False, description=c,
                                                layout=w.Layout(width="3em")) for c in ids])
        else:
            self.input = w.Text(placeholder=question.unit, continuous_update=True,
                                layout=w.Layout(width="12em"))
        self.last_feedback: quiz.Feedback | None = None  # re-rendered when the language changes
        if question.kind == "single":
            self.input.add_class(CHOICE_CLASS)
            self.input.observe(lambda _change: self.relabel(self.owner.lang), names="value")
        elif question.kind == "multiple":
            for box in self.input.children:
                box.observe(lambda change: self._mark(change["owner"]), names="value")
        unit = w.Label(question.unit if question.kind == "numeric" else "")
        self.box = w.VBox(
            [self.prompt, self.choices, w.HBox([self.input, unit]),
             w.HBox([self.check_button, self.status]), self.feedback],
            layout=w.Layout(border="1px solid #d0d7de", padding="6px 10px", margin="4px 0"),
        )

    def relabel(self, lang: str) -> None:
        q = self.question
        self.prompt.value = f"<b>{q.id}.</b> {text.to_html(q.prompt, lang)}"
        self.check_button.description = BUTTONS[lang][0]
        if q.kind != "numeric":
            picked = self.picked()
            rows = "".join(
                f"<li{PICKED_ROW if c.id in picked else ''}><b>({c.id})</b> "
                f"{text.to_html(c.text, lang)}</li>" for c in q.choices)
            hint = text.label("multi_buttons", lang) if q.kind == "multiple" else ""
            self.choices.value = (f"<ul style='list-style:none;padding-left:0.5em;margin:2px 0'>"
                                  f"{rows}</ul><small>{hint}</small>")
        if self.last_feedback is not None:
            self.feedback.value = text.feedback_html(self.last_feedback, lang, with_score=False)

    def picked(self) -> list[str]:
        """The letters selected now (none for a number question)."""
        if self.question.kind == "single":
            return [self.input.value] if self.input.value else []
        if self.question.kind == "multiple":
            return [box.description for box in self.input.children if box.value]
        return []

    def _mark(self, box: Any) -> None:
        # A pressed letter turns solid blue: the default pressed look is barely darker.
        box.button_style = "info" if box.value else ""
        self.relabel(self.owner.lang)

    def response(self) -> Any:
        if self.question.kind == "single":
            return self.input.value
        if self.question.kind == "multiple":
            return self.picked()
        return self.input.value

    def show_record(self, lang: str) -> None:
        record = self.owner.store.record_of(self.owner.bank.module, self.question.id)
        self.status.value = f"<small>{text.record_line(record, lang)}</small>"

    def submit(self) -> quiz.Feedback:
        feedback = quiz.answer(self.owner.bank.module, self.question.id, self.response(),
                               store=self.owner.store, lang=self.owner.lang)
        self.last_feedback = feedback
        self.feedback.value = text.feedback_html(feedback, self.owner.lang, with_score=False)
        self.show_record(self.owner.lang)
        self.owner.show_score(feedback.score)
        return feedback


class QuizWidget:
    """All question cards of one module, a language switch and the running score."""

    def __init__(self, bank: Bank, store: ProgressStore | None = None, lang: str | None = None) -> None:
        import ipywidgets as w

        lang = lang or quiz.default_lang()  # the learner's language (LAZYMOE_LANG or the locale)
        self.bank, self.store, self.lang = bank, store or ProgressStore(), lang
        self.title = w.HTML()
        self.help = w.HTML()
        self.score_label = w.HTML()
        self.notice = w.HTML()
        self.language = w.ToggleButtons(options=[("English", "en"), ("한국어", "ko")], value=lang,
                                        style={"button_width": "6em"})
        self.language.observe(lambda change: self.set_language(change["new"]), names="value")
        self.views = [QuestionView(self, q) for q in bank.questions]
        header = [self.title]
        if bank.has_korean():
            header.append(self.language)
        self.box = w.VBox([w.HBox(header), self.help, self.notice,
                           *(v.box for v in self.views), self.score_label])
        self.set_language(lang)

    def view(self, question_id: str) -> QuestionView:
        return self.views[self.bank.question_ids.index(question_id)]

    def set_language(self, lang: str) -> None:
        self.lang = lang
        self.title.value = (f"<h3>{text.label('quiz', lang)} {self.bank.module}: "
                            f"{text.to_html(self.bank.title, lang)}</h3>")
        self.help.value = f"{PICKED_CSS}<small>{KEYS_HELP[lang]}</small>"
        for view in self.views:
            view.relabel(lang)
            view.show_record(lang)
        self.show_score(quiz.score(self.bank, self.store))

    def show_score(self, score: quiz.ModuleScore) -> None:
        self.score_label.value = f"<b>{score.summary(self.lang)}</b>"
        if self.store.notices:
            notice = html.escape(self.store.notices[-1])
            self.notice.value = f"<small style='color:#b35900'>{notice}</small>"

    def as_text(self) -> str:
        return text.bank_text(self.bank, self.lang, self.store.records(self.bank.module),
                              quiz.score(self.bank, self.store).summary(self.lang))

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        # A frontend without the widget manager falls back to text/plain: give it the text quiz.
        bundle = self.box._repr_mimebundle_(**kwargs) or {}
        bundle = bundle[0] if isinstance(bundle, tuple) else bundle
        return {**bundle, "text/plain": self.as_text()}


def build(module: str | int, *, lang: str | None = None,
          store: ProgressStore | None = None) -> QuizWidget:
    """The widget for one module without displaying it (tests drive it with button.click())."""
    lang = lang or quiz.default_lang()
    if lang not in BUTTONS:
        raise ValueError(f"lang={lang!r}: the quiz speaks 'en' or 'ko'")
    return QuizWidget(quiz.load_bank(module), store=store, lang=lang)


def show(module: str | int, *, lang: str | None = None, mode: str | None = None,
         store: ProgressStore | None = None) -> None:
    """Show module's quiz: a widget in Jupyter, printed text elsewhere (answer with `answer`)."""
    lang = lang or quiz.default_lang()
    use_widget = frontend_available() if mode is None else mode == "widget"
    if use_widget:
        from IPython.display import display

        display(build(module, lang=lang, store=store))
        return
    bank = quiz.load_bank(module)
    store = store or ProgressStore()
    print(text.bank_text(bank, lang, store.records(bank.module),
                         quiz.score(bank, store).summary(lang)))
