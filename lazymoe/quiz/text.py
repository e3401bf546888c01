"""The quiz as plain text (terminal, CI, a notebook without widgets) and as small HTML pieces.

Rendering only: what is right or wrong is decided in `checking.py`.
"""

from __future__ import annotations

import html
import re
import textwrap
from typing import TYPE_CHECKING

from lazymoe.quiz.model import Bank, Question, Text
from lazymoe.quiz.progress import QuestionRecord

if TYPE_CHECKING:
    from lazymoe.quiz.session import Feedback

WIDTH = 88
_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")

LABELS = {
    "en": {
        "correct": "Correct", "wrong": "Not quite, try again", "invalid": "Not counted",
        "first": "first try", "attempt": "attempt", "attempts": "attempts", "solved": "solved",
        "quiz": "Quiz", "picked": "your pick",
        "how": 'Answer with answer("{module}", "<question id>", <your answer>), e.g. '
               'answer("{module}", "{qid}", {example}).',
        "multi": "(more than one may be true: answer with a list like \"a,c\")",
        "multi_buttons": "(more than one may be true: press every letter that fits, then Check)",
        "numeric": "(answer with a number in {unit})",
    },
    "ko": {
        "correct": "정답", "wrong": "아쉽네요, 다시 해 보세요", "invalid": "집계하지 않음",
        "first": "첫 시도", "attempt": "시도", "attempts": "시도", "solved": "해결",
        "quiz": "퀴즈", "picked": "고른 답",
        "how": '답은 answer("{module}", "<문제 id>", <답>) 으로 입력하세요. 예: '
               'answer("{module}", "{qid}", {example}).',
        "multi": "(정답이 여러 개일 수 있습니다: \"a,c\"처럼 답하세요)",
        "multi_buttons": "(정답이 여러 개일 수 있습니다: 맞는 글자를 모두 누른 뒤 확인을 누르세요)",
        "numeric": "(단위 {unit}의 숫자로 답하세요)",
    },
}


def label(key: str, lang: str) -> str:
    return LABELS.get(lang, LABELS["en"])[key]


def to_html(text: Text | str, lang: str = "en") -> str:
    """Escape, then the two bits of markdown banks use: `code` and **bold**; newlines kept."""
    raw = text.get(lang) if isinstance(text, Text) else text
    out = html.escape(raw)
    out = _CODE.sub(r"<code>\1</code>", out)
    out = _BOLD.sub(r"<b>\1</b>", out)
    return out.replace("\n", "<br>")


def _wrap(text: str, indent: str = "", hanging: str | None = None) -> str:
    paragraphs = text.split("\n")
    rest = indent if hanging is None else hanging
    return "\n".join(
        textwrap.fill(p, WIDTH, initial_indent=indent, subsequent_indent=rest) or indent
        for p in paragraphs
    )


def example_answer(question: Question) -> str:
    if question.kind == "numeric":
        return "42.0"
    if question.kind == "multiple":
        return '"a,c"'
    return '"b"'


def attempts_text(count: int, lang: str) -> str:
    """"1 attempt", "2 attempts" (Korean has no plural: "1 시도")."""
    return f"{count} {label('attempt' if count == 1 else 'attempts', lang)}"


def record_line(record: QuestionRecord | None, lang: str) -> str:
    if record is None or record.attempts == 0:
        return ""
    if record.solved:
        how = label("first", lang) if record.first_correct else attempts_text(record.attempts, lang)
        return f"[{label('solved', lang)}: {how}]"
    return f"[{attempts_text(record.attempts, lang)}]"


def question_text(question: Question, lang: str = "en", record: QuestionRecord | None = None) -> str:
    """One question as text: id, prompt, lettered choices (or the unit), how it stands."""
    head = f"{question.id}. {question.prompt.get(lang)}"
    lines = [_wrap(head), ""]
    if question.kind == "numeric":
        lines.append("   " + label("numeric", lang).format(unit=question.unit))
    else:
        for choice in question.choices:
            lines.append(_wrap(f"({choice.id}) {choice.text.get(lang)}", "  ", "      "))
        if question.kind == "multiple":
            lines.append("   " + label("multi", lang))
    status = record_line(record, lang)
    if status:
        lines.append("   " + status)
    return "\n".join(lines)


def bank_text(bank: Bank, lang: str = "en", records: dict[str, QuestionRecord] | None = None,
              summary: str = "") -> str:
    """The whole quiz of one module as text, with how to answer."""
    records = records or {}
    title = f"{label('quiz', lang)} {bank.module}: {bank.title.get(lang)}"
    parts = [title + "\n" + "=" * min(len(title), WIDTH)]
    if bank.intro:
        parts.append(_wrap(bank.intro.get(lang)))
    first = bank.questions[0]
    parts.append(_wrap(label("how", lang).format(
        module=bank.module, qid=first.id, example=example_answer(first))))
    if summary:
        parts.append(summary)
    parts += [question_text(q, lang, records.get(q.id)) for q in bank.questions]
    return "\n\n".join(parts) + "\n"


def feedback_text(feedback: Feedback, lang: str = "en") -> str:
    head = label(feedback.status, lang)
    if feedback.first_try:
        head += f" ({label('first', lang)})"
    lines = [f"{feedback.module}/{feedback.question_id}: {head}."]
    lines += [_wrap(m.get(lang), "  ") for m in feedback.messages]
    lines.append(f"  -> {feedback.score.summary(lang)}")
    return "\n".join(lines)


def feedback_html(feedback: Feedback, lang: str = "en", *, with_score: bool = True) -> str:
    """The feedback box; the widget passes with_score=False (it shows the score once, below)."""
    color = {"correct": "#1a7f37", "wrong": "#b35900"}.get(feedback.status, "#57606a")
    mark = {"correct": "&#10004;", "wrong": "&#10008;"}.get(feedback.status, "&#8226;")
    head = label(feedback.status, lang)
    if feedback.first_try:
        head += f" ({label('first', lang)})"
    items = "".join(f"<li>{to_html(m, lang)}</li>" for m in feedback.messages)
    return (
        f'<div style="border-left:4px solid {color};padding:4px 10px">'
        f"<b style='color:{color}'>{mark} {html.escape(head)}</b>"
        f"{f'<ul>{items}</ul>' if items else ''}"
        f"{f'<small>{html.escape(feedback.score.summary(lang))}</small>' if with_score else ''}"
        "</div>"
    )
