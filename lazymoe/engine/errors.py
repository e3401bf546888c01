"""The engine's errors: each names the problem and what to do about it."""

from __future__ import annotations


class EngineError(RuntimeError):
    """Base class of the engine runtime's errors."""


class UnsupportedArchitectureError(EngineError, ValueError):
    """The checkpoint's `model_type` is not one the engine knows how to split into experts."""


class CheckpointError(EngineError):
    """A checkpoint file is missing, truncated, corrupt or does not match its config."""


class BudgetTooSmallError(EngineError, ValueError):
    """A memory budget cannot hold the experts one layer needs at once."""
