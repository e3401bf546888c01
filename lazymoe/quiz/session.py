"""Answering a question: check it, record it, say what to read, keep the score.

    from lazymoe.quiz import answer
    answer("01", "q1", "b")        # -> Feedback: right or wrong, why, and the running score

The score counts first attempts: a question answered right the first time scores; retries are
allowed until right and are counted as attempts, but never raise the score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lazymoe.quiz import text
from lazymoe.quiz.checking import CORRECT, INVALID, check
from lazymoe.quiz.loading import load_all_banks, load_bank, normalize_module
from lazymoe.quiz.model import Bank, Text
from lazymoe.quiz.progress import ProgressStore, QuestionRecord


def default_lang() -> str:
    """The learner's language (`lazymoe.i18n.current_language`: LAZYMOE_LANG=ko|en, else the system
    locale); Korean shows where a translation exists, English otherwise."""
    from lazymoe.i18n import current_language

    return current_language()


@dataclass
class ModuleScore:
    """One module's standing.

    Running score (the widget, as the learner goes): first_try / answered.
    Module score (`lazymoe progress`): percent = 100 * first_try / total.
    """

    module: str
    title: Text
    total: int  # questions in the bank
    answered: int = 0  # questions with at least one valid answer
    solved: int = 0  # questions answered right, at any attempt
    first_try: int = 0  # questions answered right at the first attempt
    attempts: int = 0  # valid answers given in all

    @property
    def percent(self) -> float:
        return 100.0 * self.first_try / self.total if self.total else 0.0

    @property
    def complete(self) -> bool:
        return self.solved == self.total

    def summary(self, lang: str = "en") -> str:
        """"first-attempt score 3/4 (answered 4 of 6)"."""
        if self.answered == 0:
            return f"{self.total}문제, 아직 답하지 않음" if lang == "ko" else (
                f"{self.total} questions, none answered yet")
        if lang == "ko":
            done = " · 모두 해결" if self.complete else ""
            return (f"첫 시도 점수 {self.first_try}/{self.answered} "
                    f"({self.total}문제 중 {self.answered}문제 풀이){done}")
        done = " - all solved" if self.complete else ""
        return (f"first-attempt score {self.first_try}/{self.answered} "
                f"(answered {self.answered} of {self.total}){done}")

    def __str__(self) -> str:
        return self.summary()


@dataclass
class Feedback:
    """What the learner sees after answering: right or wrong, why, and the running score."""

    module: str
    question_id: str
    status: str  # "correct" | "wrong" | "invalid" (not counted)
    messages: list[Text]
    score: ModuleScore
    response: Any = None
    record: QuestionRecord | None = None
    lang: str = field(default_factory=default_lang)

    @property
    def correct(self) -> bool:
        return self.status == CORRECT

    @property
    def counted(self) -> bool:
        return self.status != INVALID

    @property
    def first_try(self) -> bool:
        return self.correct and self.record is not None and self.record.first_correct

    def __str__(self) -> str:
        return text.feedback_text(self, self.lang)

    __repr__ = __str__  # a learner typing answer(...) at a prompt reads the feedback

    def _repr_html_(self) -> str:
        return text.feedback_html(self, self.lang)


def score(bank: Bank | str, store: ProgressStore | None = None) -> ModuleScore:
    """A module's first-attempt score from the progress file (ids no longer in the bank ignored)."""
    bank = bank if isinstance(bank, Bank) else load_bank(bank)
    records = (store or ProgressStore()).records(bank.module)
    result = ModuleScore(bank.module, bank.title, total=len(bank.questions))
    for qid in bank.question_ids:
        rec = records.get(qid)
        if rec is None or rec.attempts == 0:
            continue
        result.answered += 1
        result.solved += rec.solved
        result.first_try += rec.first_correct
        result.attempts += rec.attempts
    return result


def all_scores(store: ProgressStore | None = None) -> list[ModuleScore]:
    store = store or ProgressStore()
    return [score(bank, store) for bank in load_all_banks().values()]


def answer(
    module: str | int,
    question_id: str,
    response: Any,
    *,
    store: ProgressStore | None = None,
    lang: str | None = None,
) -> Feedback:
    """Check `response` to one question, record it, and return the feedback.

    response: a choice id ("b"), several for a multiple-choice question ("a,c" or ["a", "c"]),
    or a number (60.4 or "60.4 tok/s") for a numeric one.
    """
    bank = load_bank(normalize_module(module))
    question = bank.question(str(question_id))
    store = store or ProgressStore()
    verdict = check(question, response)
    record = None
    if verdict.status != INVALID:
        record = store.record(bank.module, question.id, verdict.response, verdict.correct)
    else:
        record = store.record_of(bank.module, question.id)
    return Feedback(
        module=bank.module,
        question_id=question.id,
        status=verdict.status,
        messages=verdict.messages,
        score=score(bank, store),
        response=verdict.response,
        record=record,
        lang=lang or default_lang(),
    )
