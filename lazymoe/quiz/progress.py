"""The learner's progress file: `$LAZYMOE_HOME/progress.json` (default `~/.lazymoe/`).

    {"version": 1,
     "modules": {"01": {"q1": {"attempts": 2, "first_correct": false, "solved": true, ...}}},
     "exercises": {"lab06": {"lab06.lru": {"attempts": 3, "solved": true, "hints_seen": 1, ...}}}}

Writes are atomic: the new state goes to a temporary file in the same folder, is flushed and
fsync'ed, then `os.replace`d over the old one, so a crash at any moment leaves either the old or
the new file, never half of one. A file that cannot be read (hand-edited, truncated by a tool that
is not this one) is moved aside to `progress.json.corrupt-<time>` and reported, and a fresh one
is started: a quiz never crashes on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from lazymoe import atomic, paths
from lazymoe.i18n import _, ngettext

PROGRESS_VERSION = 1
FILE_NAME = "progress.json"
STALE_TEMP_S = 600  # temp files older than this are leftovers of a killed writer

try:  # POSIX: serialize read-modify-write between two notebooks of the same learner
    import fcntl
except ImportError:  # Windows: last writer wins, the file still never corrupts
    fcntl = None  # type: ignore[assignment]


class ProgressFileWarning(UserWarning):
    """The progress file could not be read (it was moved aside) or could not be written."""


@dataclass
class QuestionRecord:
    """What happened on one question. The score counts `first_correct`."""

    attempts: int = 0  # valid answers given, right or wrong
    first_correct: bool = False
    solved: bool = False
    first_response: Any = None
    last_response: Any = None
    first_at: float = 0.0  # unix seconds
    solved_at: float | None = None

    @classmethod
    def from_dict(cls, data: dict) -> QuestionRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class ExerciseRecord:
    """What happened on one lab exercise (lazymoe.exercises.solutions records it)."""

    attempts: int = 0  # check runs with something written, until solved
    solved: bool = False
    hints_seen: int = 0
    used_blanks: bool = False  # asked for the fill-in-the-blank version
    solution_shown: bool = False  # before it was solved
    solved_at: float | None = None

    @classmethod
    def from_dict(cls, data: dict) -> ExerciseRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def apply(self, event: str) -> None:
        """event: "pass", "fail" (a check run), "hint", "blanks" or "solution" (asked for)."""
        if event in ("pass", "fail") and not self.solved:
            self.attempts += 1
            if event == "pass":
                self.solved, self.solved_at = True, _now()
        elif event == "hint":
            self.hints_seen += 1
        elif event == "blanks":
            self.used_blanks = True
        elif event == "solution" and not self.solved:
            self.solution_shown = True

    def status(self) -> str:
        """In the learner's language: "solved on the first try", "solved with hints", ..."""
        if not self.solved:
            if not self.attempts:
                return _("not tried yet")
            return ngettext("not solved yet ({n} try)", "not solved yet ({n} tries)",
                            self.attempts).format(n=self.attempts)
        if self.solution_shown:
            return _("solved with the solution shown")
        if self.hints_seen or self.used_blanks:
            return _("solved with hints")
        if self.attempts == 1:
            return _("solved on the first try")
        return ngettext("solved in {n} try", "solved in {n} tries", self.attempts).format(n=self.attempts)


def _now() -> float:
    return round(time.time(), 3)


def default_path() -> Path:
    return paths.home_dir() / FILE_NAME


class ProgressStore:
    """Reads and writes one learner's progress file. Every call re-reads it, so two notebooks open
    at once both see (and keep) each other's answers."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.notices: list[str] = []  # what went wrong reading the file, for the learner

    # --- reading -------------------------------------------------------------------------
    def load(self) -> dict:
        """The whole state; an unreadable file is moved aside and an empty state returned."""
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return self._empty()
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or not isinstance(data.get("modules"), dict):
                raise ValueError("it has no 'modules' mapping")
            for module, records in data["modules"].items():
                if not isinstance(records, dict):
                    raise ValueError(f"module {module} is not a mapping")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            self._set_aside(exc)
            return self._empty()
        return data

    def records(self, module: str) -> dict[str, QuestionRecord]:
        raw = self.load()["modules"].get(module, {})
        return {qid: QuestionRecord.from_dict(r) for qid, r in raw.items() if isinstance(r, dict)}

    def record_of(self, module: str, question_id: str) -> QuestionRecord | None:
        return self.records(module).get(question_id)

    def exercise_records(self, lab: str) -> dict[str, ExerciseRecord]:
        raw = self.load().get("exercises", {}).get(lab, {})
        return {key: ExerciseRecord.from_dict(r) for key, r in raw.items() if isinstance(r, dict)}

    def exercise_record(self, lab: str, key: str) -> ExerciseRecord | None:
        return self.exercise_records(lab).get(key)

    def exercise_event(self, lab: str, key: str, event: str) -> ExerciseRecord:
        """Record one event of a lab exercise (see ExerciseRecord.apply); returns the record."""
        with self._locked():
            data = self.load()
            labs = data.setdefault("exercises", {})
            if not isinstance(labs, dict):
                labs = data["exercises"] = {}
            raw = labs.setdefault(lab, {}).get(key)
            rec = ExerciseRecord.from_dict(raw) if isinstance(raw, dict) else ExerciseRecord()
            rec.apply(event)
            labs[lab][key] = asdict(rec)
            try:
                self.save(data)
            except OSError as exc:  # the check still answers on screen, unsaved
                warnings.warn(_("Could not save your progress to {path} ({error}); set "
                                "LAZYMOE_HOME to a folder you can write to.").format(path=self.path, error=exc),
                              ProgressFileWarning, stacklevel=2)
        return rec

    # --- writing -------------------------------------------------------------------------
    def record(self, module: str, question_id: str, response: Any, correct: bool) -> QuestionRecord:
        """Count one valid answer. Only the first attempt decides the score; answers after the
        question is solved are kept as `last_response` but change nothing else."""
        with self._locked():
            data = self.load()
            raw = data["modules"].setdefault(module, {}).get(question_id)
            rec = QuestionRecord.from_dict(raw) if isinstance(raw, dict) else QuestionRecord()
            if rec.attempts == 0:
                rec.first_correct, rec.first_response, rec.first_at = correct, response, _now()
            if not rec.solved:
                rec.attempts += 1
                if correct:
                    rec.solved, rec.solved_at = True, _now()
            rec.last_response = response
            data["modules"][module][question_id] = asdict(rec)
            try:
                self.save(data)
            except OSError as exc:  # a read-only or full disk: the quiz goes on, unsaved
                message = _("Could not save your quiz progress to {path} ({error}); set "
                            "LAZYMOE_HOME to a folder you can write to.").format(path=self.path, error=exc)
                self.notices.append(message)
                warnings.warn(message, ProgressFileWarning, stacklevel=2)
        return rec

    def reset(self, module: str | None = None) -> None:
        """Forget one module's answers (or all of them) so the quiz can be taken afresh."""
        with self._locked():
            data = self.load()
            if module is None:
                data["modules"] = {}
                data["exercises"] = {}
            else:
                data["modules"].pop(module, None)
                data.get("exercises", {}).pop(module, None)
            self.save(data)

    def save(self, data: dict) -> None:
        """Write `data` atomically: temp file in the same folder, fsync, os.replace."""
        data = {**data, "version": PROGRESS_VERSION}
        atomic.write_json(self.path, data, durable=True, indent=1, ensure_ascii=False, sort_keys=True)
        self._remove_stale_temps(self.path.parent)

    # --- helpers -------------------------------------------------------------------------
    @staticmethod
    def _empty() -> dict:
        return {"version": PROGRESS_VERSION, "modules": {}}

    def _set_aside(self, problem: Exception) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        with contextlib.suppress(OSError):
            os.replace(self.path, aside)
        message = _(
            "Could not read your quiz progress file {path} ({problem}). It was kept as "
            "{aside} and a new one was started; your earlier answers are in that copy."
        ).format(path=self.path, problem=problem, aside=aside.name)
        self.notices.append(message)
        warnings.warn(message, ProgressFileWarning, stacklevel=3)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if fcntl is None:
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _remove_stale_temps(self, folder: Path) -> None:
        cutoff = time.time() - STALE_TEMP_S
        for tmp in folder.glob(f".{self.path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
