"""Read quiz banks from `data/quizzes/NN_name.yaml` and validate them.

A bank looks like this (every text is a plain string or `{en: ..., ko: ...}`):

    module: "01"
    title: {en: Hardware, ko: 하드웨어}
    questions:
      - id: q1
        kind: single                 # single | multiple | numeric
        prompt: Why does a GPU suit LLM inference?
        choices:                     # ids a, b, c ... by position unless given
          - text: ...
            explanation: ...         # why this choice is right or wrong
        answer: b                    # multiple: [a, c]
      - id: q2
        kind: numeric
        prompt: ...
        answer: 60.4
        unit: tok/s
        rel_tolerance: 0.05          # and/or tolerance: (absolute, in unit)
        explanation: the worked solution
        hint: shown on a wrong answer
        mistakes: [{value: 0.0604, explanation: "did you mix GB and MB?"}]

Anything malformed raises QuizBankError naming the file, the question id and the problem.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import yaml

from lazymoe import paths
from lazymoe.quiz.errors import QuizBankError, UnknownQuizError
from lazymoe.quiz.model import KINDS, LANGUAGES, Bank, Choice, Mistake, Question, Text

BANK_KEYS = {"module", "title", "intro", "questions"}
QUESTION_KEYS = {"id", "kind", "prompt", "explanation", "choices", "answer", "source"}
NUMERIC_KEYS = {"unit", "tolerance", "rel_tolerance", "hint", "mistakes"}
CHOICE_KEYS = {"id", "text", "explanation"}
MISTAKE_KEYS = {"value", "explanation", "rel_tolerance"}
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
MODULE_PATTERN = re.compile(r"^\d\d$")


def bank_dir() -> Path:
    """Where the shipped quiz banks live (`LAZYMOE_DATA`/quizzes)."""
    return paths.data_dir() / "quizzes"


def normalize_module(module: str | int) -> str:
    """"1", 1 and "01" all mean module "01"."""
    text = str(module).strip()
    if text.isdigit() and len(text) <= 2:
        return f"{int(text):02d}"
    raise UnknownQuizError(f"module id {module!r} is not a module number like '01'")


class _Reader:
    """Turns one parsed YAML document into a Bank, remembering where it is for messages."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.qid: str | None = None

    def fail(self, problem: str) -> QuizBankError:
        return QuizBankError(self.path, problem, self.qid)

    def check_keys(self, data: dict, allowed: set[str], what: str) -> None:
        unknown = sorted(set(map(str, data)) - allowed)
        if unknown:
            raise self.fail(
                f"{what} has unknown key(s) {', '.join(unknown)} "
                f"(allowed: {', '.join(sorted(allowed))}); is it a typo?"
            )

    def text(self, value: Any, what: str, required: bool = True) -> Text | None:
        if value is None:
            if required:
                raise self.fail(f"{what} is missing; give it as a string or {{en: ..., ko: ...}}")
            return None
        if isinstance(value, str):
            value = {"en": value}
        if not isinstance(value, dict):
            raise self.fail(f"{what} must be a string or {{en: ..., ko: ...}}, not {value!r}")
        self.check_keys(value, set(LANGUAGES), what)
        en, ko = value.get("en"), value.get("ko")
        if not isinstance(en, str) or not en.strip():
            raise self.fail(f"{what} needs a non-empty English text under 'en'")
        if ko is not None and (not isinstance(ko, str) or not ko.strip()):
            raise self.fail(f"{what}: 'ko' must be a non-empty string or left out")
        return Text(en.strip(), ko.strip() if ko else None)

    def number(self, value: Any, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"{what} must be a number, not {value!r}")
        return float(value)

    def bank(self, data: Any) -> Bank:
        if not isinstance(data, dict):
            raise self.fail("a bank must be a mapping with module, title and questions")
        self.check_keys(data, BANK_KEYS, "the bank")
        if "module" not in data:
            raise self.fail("the bank has no 'module' (a quoted two-digit id like \"01\")")
        module = str(data["module"])
        if isinstance(data["module"], int):  # `module: 1` in YAML
            module = f"{data['module']:02d}"
        if not MODULE_PATTERN.match(module):
            raise self.fail(f"module {module!r} must be two digits like \"01\"")
        if not Path(self.path).name.startswith(module):
            raise self.fail(f"module {module} is in a file not named {module}_*.yaml")
        questions = data.get("questions")
        if not isinstance(questions, list) or not questions:
            raise self.fail("'questions' must be a non-empty list")
        parsed = [self.question(q, i) for i, q in enumerate(questions, 1)]
        self.qid = None
        seen: set[str] = set()
        for q in parsed:
            if q.id in seen:
                raise QuizBankError(self.path, "this id is used twice; ids must be unique", q.id)
            seen.add(q.id)
        return Bank(
            module=module,
            title=self.text(data.get("title"), "the title"),
            intro=self.text(data.get("intro"), "the intro", required=False),
            questions=tuple(parsed),
            path=self.path,
        )

    def question(self, data: Any, position: int) -> Question:
        self.qid = f"#{position}"
        if not isinstance(data, dict):
            raise self.fail("a question must be a mapping with id, kind, prompt ...")
        qid = data.get("id")
        if not isinstance(qid, str) or not ID_PATTERN.match(qid):
            raise self.fail(f"id {qid!r} must be a short text of letters, digits, _ . - (like q1)")
        self.qid = qid
        kind = data.get("kind")
        if kind not in KINDS:
            raise self.fail(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        allowed = QUESTION_KEYS | (NUMERIC_KEYS if kind == "numeric" else set())
        self.check_keys(data, allowed, "the question")
        common = {
            "id": qid,
            "kind": kind,
            "prompt": self.text(data.get("prompt"), "the prompt"),
            "explanation": self.text(data.get("explanation"), "the explanation", required=False),
            "source": str(data.get("source") or ""),
        }
        if "answer" not in data:
            raise self.fail("there is no 'answer'")
        if kind == "numeric":
            return self.numeric(data, common)
        return self.choice_question(data, common)

    def choice_question(self, data: dict, common: dict) -> Question:
        raw_choices = data.get("choices")
        if not isinstance(raw_choices, list) or len(raw_choices) < 2:
            raise self.fail("a choice question needs a list of at least 2 'choices'")
        choices = []
        for i, raw in enumerate(raw_choices):
            default_id = string.ascii_lowercase[i]
            if not isinstance(raw, dict):
                raise self.fail(f"choice {default_id} must be a mapping with text and explanation")
            self.check_keys(raw, CHOICE_KEYS, f"choice {default_id}")
            cid = str(raw.get("id", default_id))
            choices.append(
                Choice(
                    id=cid,
                    text=self.text(raw.get("text"), f"choice {cid}'s text"),
                    explanation=self.text(
                        raw.get("explanation"), f"choice {cid}'s explanation (why right or wrong)"
                    ),
                )
            )
        ids = [c.id for c in choices]
        if len(set(ids)) != len(ids):
            raise self.fail(f"choice ids {ids} repeat")
        answer = data["answer"]
        if common["kind"] == "single":
            if not isinstance(answer, str):
                raise self.fail(f"a single-choice answer is one choice id like 'b', not {answer!r}")
            answers = [answer]
        else:
            if not isinstance(answer, list) or not answer:
                raise self.fail("a multiple-choice answer is a list of choice ids like [a, c]")
            answers = [str(a) for a in answer]
        for a in answers:
            if a not in ids:
                raise self.fail(f"answer {a!r} is not one of the choices {', '.join(ids)}")
        return Question(**common, choices=tuple(choices), answers=frozenset(answers))

    def numeric(self, data: dict, common: dict) -> Question:
        if data.get("choices"):
            raise self.fail("a numeric question has no 'choices' (did you mean kind: single?)")
        value = self.number(data["answer"], "the answer")
        tolerance = self.number(data.get("tolerance", 0.0), "'tolerance'")
        rel_tolerance = self.number(data.get("rel_tolerance", 0.0), "'rel_tolerance'")
        if tolerance < 0 or rel_tolerance < 0 or (tolerance == 0 and rel_tolerance == 0):
            raise self.fail("give a positive 'tolerance' (in the unit) or 'rel_tolerance' (a fraction)")
        if rel_tolerance >= 1:
            raise self.fail(f"rel_tolerance {rel_tolerance} is a fraction: 0.05 means 5%")
        unit = data.get("unit")
        if not isinstance(unit, str) or not unit.strip():
            raise self.fail("a numeric question needs a 'unit' (like GB, tok/s, bits)")
        question = Question(
            **common,
            value=value,
            tolerance=tolerance,
            rel_tolerance=rel_tolerance,
            unit=unit.strip(),
            hint=self.text(data.get("hint"), "the hint", required=False),
            mistakes=tuple(self.mistake(m) for m in data.get("mistakes") or []),
        )
        for m in question.mistakes:
            if abs(m.value - value) <= question.allowed_error:
                raise self.fail(f"mistake value {m.value} lies within the answer's tolerance")
        return question

    def mistake(self, raw: Any) -> Mistake:
        if not isinstance(raw, dict):
            raise self.fail("each entry of 'mistakes' is {value: ..., explanation: ...}")
        self.check_keys(raw, MISTAKE_KEYS, "a mistake")
        return Mistake(
            value=self.number(raw.get("value"), "a mistake's value"),
            explanation=self.text(raw.get("explanation"), "a mistake's explanation"),
            rel_tolerance=self.number(raw.get("rel_tolerance", 0.02), "a mistake's rel_tolerance"),
        )


def load_bank_file(path: str | Path) -> Bank:
    """Parse and validate one bank file; raise QuizBankError naming what is wrong."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise QuizBankError(str(path), f"cannot read it ({exc})") from exc
    except yaml.YAMLError as exc:
        raise QuizBankError(str(path), f"is not valid YAML: {exc}") from exc
    return _Reader(str(path)).bank(data)


_cache: dict[Path, tuple[float, Bank]] = {}


def bank_files(directory: str | Path | None = None) -> list[Path]:
    return sorted(Path(directory or bank_dir()).glob("[0-9][0-9]*.yaml"))


def load_bank(module: str | int, directory: str | Path | None = None) -> Bank:
    """The bank of one module, e.g. load_bank("01"); re-read when its file changes."""
    module = normalize_module(module)
    matches = [p for p in bank_files(directory) if p.name[:2] == module]
    if not matches:
        where = directory or bank_dir()
        raise UnknownQuizError(f"no quiz bank for module {module} in {where} (expected {module}_*.yaml)")
    if len(matches) > 1:
        raise QuizBankError(str(matches[1]), f"module {module} has more than one bank file")
    path = matches[0]
    mtime = path.stat().st_mtime
    cached = _cache.get(path)
    if cached is None or cached[0] != mtime:
        cached = (mtime, load_bank_file(path))
        _cache[path] = cached
    return cached[1]


def load_all_banks(directory: str | Path | None = None) -> dict[str, Bank]:
    """Every bank, keyed by module id, in module order."""
    banks: dict[str, Bank] = {}
    for path in bank_files(directory):
        bank = load_bank(path.name[:2], directory)
        banks[bank.module] = bank
    return banks
