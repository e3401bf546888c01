"""The class at a glance, for the instructor: everyone's progress files, read together.

    members = load_class("/srv/lazymoe-hub/homes")     # {member: progress state}
    modules_done(members), labs_done(members)          # who finished what (True/False tables)
    hardest_questions(members, top=10)                 # most answered wrong at the first try

A member's progress file is the one the quizzes and labs write (`lazymoe.quiz.progress`). In a
folder, each member's file is found as any of:
    <folder>/<member>/.lazymoe/progress.json   (the hub's home folders)
    <folder>/<member>/progress.json
    <folder>/<member>.json
Members agree to the instructor reading it (docs/instructor.md, "Consent"); nothing is sent anywhere.
"""

from __future__ import annotations

import json
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazymoe.quiz import load_all_banks
from lazymoe.quiz.progress import ExerciseRecord, QuestionRecord

PATTERNS = ("*/.lazymoe/progress.json", "*/progress.json", "*.json")


class ClassFolderError(ValueError):
    """The progress folder is missing or holds no progress file."""


def _member_of(folder: Path, path: Path) -> str:
    parts = path.relative_to(folder).parts
    return parts[0] if len(parts) > 1 else path.stem


def load_class(folder: str | Path) -> dict[str, dict[str, Any]]:
    """{member: progress state} for every progress file in `folder` (see the module doc).

    A file that is not a progress file (unreadable JSON, no "modules") is skipped with a warning
    printed, so one broken file does not hide the class.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ClassFolderError(
            f"{folder} is not a folder: give the folder that holds the members' progress files "
            "(on the hub: its homes folder)"
        )
    members: dict[str, dict[str, Any]] = {}
    for pattern in PATTERNS:
        for path in sorted(folder.glob(pattern)):
            member = _member_of(folder, path)
            if member in members:
                continue
            try:
                state = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(state, dict) or not isinstance(state.get("modules"), dict):
                    raise ValueError("it has no 'modules' mapping")
            except ValueError as exc:
                print(f"skipped {path}: not a progress file ({exc})")
                continue
            members[member] = state
    if not members:
        raise ClassFolderError(
            f"no progress files in {folder}: members' files are <member>/.lazymoe/progress.json, "
            "<member>/progress.json or <member>.json"
        )
    return dict(sorted(members.items()))


def lab_names() -> list[str]:
    """Every lab with exercises, in course order ("lab00", ..., "lab05", "lab05b", ...)."""
    from lazymoe.exercises import ladders

    return sorted(m.name for m in pkgutil.iter_modules(ladders.__path__) if m.name.startswith("lab"))


def _questions(state: dict[str, Any], module: str) -> dict[str, QuestionRecord]:
    raw = state.get("modules", {}).get(module, {})
    return {q: QuestionRecord.from_dict(r) for q, r in raw.items() if isinstance(r, dict)}


def _exercises(state: dict[str, Any], lab: str) -> dict[str, ExerciseRecord]:
    raw = state.get("exercises", {}).get(lab, {})
    return {k: ExerciseRecord.from_dict(r) for k, r in raw.items() if isinstance(r, dict)}


def modules_done(members: dict[str, dict[str, Any]]) -> dict[str, dict[str, bool]]:
    """{member: {module: every question of its quiz solved}}."""
    banks = load_all_banks()
    return {
        member: {
            module: all(
                (r := _questions(state, module).get(q)) is not None and r.solved
                for q in bank.question_ids
            )
            for module, bank in banks.items()
        }
        for member, state in members.items()
    }


def labs_done(members: dict[str, dict[str, Any]]) -> dict[str, dict[str, bool]]:
    """{member: {lab: every exercise of the lab solved}}."""
    from lazymoe.exercises.solutions import exercises

    keys = {lab: list(exercises(lab)) for lab in lab_names()}
    return {
        member: {
            lab: bool(wanted)
            and all((r := _exercises(state, lab).get(k)) is not None and r.solved for k in wanted)
            for lab, wanted in keys.items()
        }
        for member, state in members.items()
    }


@dataclass(frozen=True)
class QuestionStanding:
    module: str
    question_id: str
    prompt: str  # the question's text, English
    answered: int  # members who gave at least one answer
    wrong_first: int  # of those, members whose first answer was wrong

    @property
    def wrong_first_share(self) -> float:
        return self.wrong_first / self.answered if self.answered else 0.0


def hardest_questions(members: dict[str, dict[str, Any]], top: int = 10) -> list[QuestionStanding]:
    """The quiz questions most members answered wrong at the first try, worst first.

    Ordered by how many got it wrong first, then by the share of those who answered; questions
    nobody got wrong are left out (nothing to re-explain).
    """
    standings = []
    for module, bank in load_all_banks().items():
        for question in bank.questions:
            records = [_questions(s, module).get(question.id) for s in members.values()]
            answered = [r for r in records if r is not None and r.attempts > 0]
            wrong = sum(1 for r in answered if not r.first_correct)
            if wrong:
                standings.append(QuestionStanding(module, question.id, question.prompt.en,
                                                  len(answered), wrong))
    standings.sort(key=lambda s: (-s.wrong_first, -s.wrong_first_share, s.module, s.question_id))
    return standings[:top]
