"""The quiz's exceptions: each message names the file or question and what to do."""

from __future__ import annotations


class QuizError(Exception):
    """Base of every quiz error."""


class QuizBankError(QuizError, ValueError):
    """A quiz bank file is malformed. The message names the file, the question id and the problem."""

    def __init__(self, path: str, problem: str, question_id: str | None = None) -> None:
        self.path = path
        self.question_id = question_id
        self.problem = problem
        where = f"{path}: question {question_id!r}" if question_id else str(path)
        super().__init__(f"{where}: {problem}")


class UnknownQuizError(QuizError, LookupError):
    """A module or question id that no bank has."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else ""
