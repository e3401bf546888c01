"""Checks for the labs' "your turn" exercises, one module per lab.

A check runs the learner's function against the package's own implementation and
returns a `CheckResult`: it never raises on a wrong answer, it says what is wrong.
"""

from lazymoe.exercises.base import CheckResult

__all__ = ["CheckResult"]
