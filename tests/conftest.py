"""Shared fixtures, and the per-notebook timing table printed at the end of a run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """No test writes into the learner's real ~/.lazymoe."""
    monkeypatch.setenv("LAZYMOE_HOME", str(tmp_path_factory.mktemp("lazymoe-home")))


@pytest.fixture(autouse=True)
def _english(monkeypatch):
    """Tests assert the English source text, so a developer with a Korean locale gets English too;
    a test that wants Korean sets LAZYMOE_LANG=ko itself."""
    monkeypatch.setenv("LAZYMOE_LANG", "en")
    from lazymoe.i18n import set_language

    set_language(None)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = []
    for outcome in ("passed", "failed", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") == "call" and "test_notebook_runs[" in report.nodeid:
                name = report.nodeid.split("[", 1)[1].rstrip("]")
                rows.append((name, report.duration, outcome))
    if not rows:
        return
    terminalreporter.section("notebook timings (headless, CPU)")
    for name, seconds, outcome in sorted(rows):
        terminalreporter.write_line(f"{name:<45} {seconds:8.1f} s  {outcome}")
    terminalreporter.write_line(f"{'total':<45} {sum(r[1] for r in rows):8.1f} s")


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


# Without a GPU, Triton kernels (lazymoe.engine.compute.triton_kernels) run under Triton's interpreter.
# It must be chosen before Triton compiles anything, so here, before any test imports lazymoe.
if not cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


requires_gpu = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
QUICK = os.environ.get("LAZYMOE_QUICK") == "1"


def notebook_env(monkeypatch) -> None:
    """The environment every headless notebook run gets (tests/test_notebooks.py and the runs
    against other servers): quick sizes, one thread each (two notebooks share CI's two cores), and
    every exercise run with its solution after its deliberately wrong answer failed its check
    (lazymoe.exercises.solutions.use_solution_if_testing); a learner's "Run All" runs their code."""
    from lazymoe.exercises import solutions

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("LAZYMOE_QUICK", "1")
    monkeypatch.setenv(solutions.SWITCH, "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONHASHSEED", "0")
