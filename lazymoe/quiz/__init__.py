"""Quiz banks, answer checking, first-attempt scoring and the learner's progress file.

    from lazymoe import quiz
    bank = quiz.load_bank("01")             # data/quizzes/01_*.yaml, validated
    quiz.answer("01", "q1", "b")            # check, record, explain; retry until right
    quiz.score("01")                        # first-attempt score from the progress file

The notebook front end is `lazymoe.widgets.quiz.show("01")`; `lazymoe progress` prints the table.
This package never imports the engine or the widgets.
"""

from __future__ import annotations

from lazymoe.quiz.checking import Verdict, check, parse_number
from lazymoe.quiz.errors import QuizBankError, QuizError, UnknownQuizError
from lazymoe.quiz.loading import bank_dir, load_all_banks, load_bank, load_bank_file
from lazymoe.quiz.model import Bank, Choice, Mistake, Question, Text
from lazymoe.quiz.progress import ProgressFileWarning, ProgressStore, QuestionRecord
from lazymoe.quiz.session import Feedback, ModuleScore, all_scores, answer, default_lang, score
from lazymoe.quiz.text import bank_text

__all__ = [
    "Bank",
    "Choice",
    "Feedback",
    "Mistake",
    "ModuleScore",
    "ProgressFileWarning",
    "ProgressStore",
    "Question",
    "QuestionRecord",
    "QuizBankError",
    "QuizError",
    "Text",
    "UnknownQuizError",
    "Verdict",
    "all_scores",
    "answer",
    "bank_dir",
    "bank_text",
    "check",
    "default_lang",
    "load_all_banks",
    "load_bank",
    "load_bank_file",
    "parse_number",
    "score",
]
