"""What a quiz bank is made of: texts in two languages, choices, questions, banks.

Plain frozen dataclasses with no I/O. `loading.py` builds them from YAML and says what is wrong
with a malformed file; `checking.py` decides whether a response is right.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lazymoe.quiz.errors import UnknownQuizError

LANGUAGES = ("en", "ko")  # `en` is required everywhere, `ko` optional
KINDS = ("single", "multiple", "numeric")


@dataclass(frozen=True)
class Text:
    """One piece of text with an English original and an optional Korean translation."""

    en: str
    ko: str | None = None

    def get(self, lang: str = "en") -> str:
        """The text in `lang`, falling back to English where no translation exists."""
        if lang == "ko" and self.ko:
            return self.ko
        return self.en

    def __str__(self) -> str:
        return self.en


@dataclass(frozen=True)
class Choice:
    """One option of a choice question, with why it is right or wrong."""

    id: str  # "a", "b", ...: what the learner types
    text: Text
    explanation: Text


@dataclass(frozen=True)
class Mistake:
    """A typical wrong numeric answer and what it reveals (e.g. a GB/MB mix-up)."""

    value: float
    explanation: Text
    rel_tolerance: float = 0.02  # fraction of `value`


@dataclass(frozen=True)
class Question:
    """One question. Choice kinds use `choices` + `answers`; numeric uses `value` + tolerances.

    A numeric response r is right when |r - value| <= max(tolerance, rel_tolerance * |value|).
    """

    id: str
    kind: str  # one of KINDS
    prompt: Text
    explanation: Text | None = None  # shown when right (numeric: the worked solution)
    choices: tuple[Choice, ...] = ()
    answers: frozenset[str] = frozenset()  # ids of the correct choices
    value: float | None = None  # numeric: the correct answer, in `unit`
    tolerance: float = 0.0  # numeric: absolute, in `unit`
    rel_tolerance: float = 0.0  # numeric: fraction of `value`
    unit: str = ""
    hint: Text | None = None  # numeric: shown on a wrong answer no `mistakes` entry explains
    mistakes: tuple[Mistake, ...] = ()
    source: str = ""  # where the facts and figures come from

    def choice(self, choice_id: str) -> Choice:
        for choice in self.choices:
            if choice.id == choice_id:
                return choice
        raise KeyError(choice_id)

    @property
    def choice_ids(self) -> list[str]:
        return [c.id for c in self.choices]

    @property
    def allowed_error(self) -> float:
        """Numeric questions: the largest accepted |response - value|, in `unit`."""
        return max(self.tolerance, self.rel_tolerance * abs(self.value or 0.0))

    def has_korean(self) -> bool:
        texts = [self.prompt, self.explanation, self.hint]
        texts += [t for c in self.choices for t in (c.text, c.explanation)]
        return any(t is not None and t.ko for t in texts)


@dataclass(frozen=True)
class Bank:
    """The quiz of one course module ("00".."07")."""

    module: str
    title: Text
    questions: tuple[Question, ...]
    path: str = ""  # the YAML file it came from, for messages
    intro: Text | None = None
    _by_id: dict[str, Question] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_id.update({q.id: q for q in self.questions})

    def question(self, question_id: str) -> Question:
        try:
            return self._by_id[question_id]
        except KeyError:
            known = ", ".join(self._by_id)
            raise UnknownQuizError(
                f"module {self.module} has no question {question_id!r}; its questions are: {known}"
            ) from None

    @property
    def question_ids(self) -> list[str]:
        return [q.id for q in self.questions]

    def has_korean(self) -> bool:
        """Whether a language switch is worth showing: some question is translated."""
        return any(q.has_korean() for q in self.questions)
