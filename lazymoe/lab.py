"""`lazymoe lab`: what `make lab` does, without make (for Windows PCs without make or WSL2).

    lazymoe lab                      # check the bundled model, run the doctor, start JupyterLab
    lazymoe lab --port=8890          # anything lazymoe lab does not know goes to JupyterLab
    lazymoe lab --dry-run            # print the commands, start nothing

Three steps, in this order: make sure the bundled tiny model is there (`lazymoe.models.prepare`,
which trains it by its recipe only if it is missing), run `lazymoe doctor` (its advice is printed,
its verdict does not stop the lab), then start JupyterLab on the start notebook with the repository
as its root: course/00_start_here.ipynb, or course/ko/00_start_here.ipynb when the learner's language
is Korean (LAZYMOE_LANG=ko, or a Korean system locale) and the Korean edition is built. As root (containers, WSL set up as root) JupyterLab needs --allow-root,
which is added. Every step runs with this same Python, so it works from any virtual environment.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from lazymoe import paths
from lazymoe.i18n import _, current_language

START_NOTEBOOK = Path("course") / "00_start_here.ipynb"


def start_notebook(root: Path | None = None, lang: str | None = None) -> Path:
    """The start notebook in the learner's language (relative to `root`); English when the Korean
    edition is not there."""
    root = root or course_root()
    lang = lang or current_language()
    translated = START_NOTEBOOK.parent / lang / START_NOTEBOOK.name
    if lang != "en" and (root / translated).exists():
        return translated
    return START_NOTEBOOK


def is_root() -> bool:
    """True for the root user on Linux/macOS (Windows has no euid: never root there)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def course_root() -> Path:
    """The folder holding course/ and labs/: the repository the package was installed from."""
    return paths.REPO_ROOT


def commands(lab_args: list[str], root: Path | None = None, as_root: bool | None = None,
             skip_model: bool = False, skip_doctor: bool = False) -> list[list[str]]:
    """The commands `lazymoe lab` runs, in order (each a list of arguments, first the program)."""
    root = root or course_root()
    as_root = is_root() if as_root is None else as_root
    steps = []
    if not skip_model:
        steps.append([sys.executable, "-m", "lazymoe.models.prepare"])
    if not skip_doctor:
        steps.append([sys.executable, "-m", "lazymoe", "doctor"])
    jupyter = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root}"]
    if as_root and "--allow-root" not in lab_args:
        jupyter.append("--allow-root")
    steps.append([*jupyter, *lab_args, str(start_notebook(root))])
    return steps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help=_("print the commands it would run, start nothing"))
    parser.add_argument("--skip-model", action="store_true",
                        help=_("do not check the bundled model first"))
    parser.add_argument("--skip-doctor", action="store_true", help=_("do not run lazymoe doctor first"))
    parser.epilog = _("Any other argument (e.g. --port=8890 --no-browser) is passed on to JupyterLab.")
    parser.set_defaults(lab_args=[])


def _show(command: list[str]) -> str:
    return subprocess.list2cmdline(command) if os.name == "nt" else shlex.join(command)


def run(args: argparse.Namespace) -> int:
    root = course_root()
    lab_args = [a for a in args.lab_args if a != "--"]
    steps = commands(lab_args, root, skip_model=args.skip_model, skip_doctor=args.skip_doctor)
    if args.dry_run:
        print(_("lazymoe lab would run, in {root}:").format(root=root))
        for step in steps:
            print("  " + _show(step))
        return 0
    if not (root / START_NOTEBOOK).exists():
        print(_("lazymoe lab: no {notebook} under {root}. The course notebooks come with the "
                "repository: clone it, then install it from there with `pip install -e .[course]` "
                "and run `lazymoe lab` again.").format(notebook=START_NOTEBOOK, root=root), file=sys.stderr)
        return 1
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        print(_("lazymoe lab: JupyterLab is not installed in this Python. Install the course extras: "
                "pip install -e \".[course,serve,bench]\" (on Windows: "
                ".venv\\Scripts\\pip install -e .[course,serve,bench])."), file=sys.stderr)
        return 1
    *setup, lab = steps
    for step in setup:
        print(f">> {_show(step)}", flush=True)
        code = subprocess.call(step, cwd=root)
        if code != 0 and "prepare" in step[-1]:
            print(_("lazymoe lab: preparing the bundled model failed (exit {code}); the notebooks need "
                    "it. Run `python -m lazymoe.models.prepare` to see why.").format(code=code),
                  file=sys.stderr)
            return code
        # the doctor's verdict is advice: its messages are printed, the lab starts anyway
    print(f">> {_show(lab)}", flush=True)
    try:
        return subprocess.call(lab, cwd=root)
    except KeyboardInterrupt:  # Ctrl+C stops JupyterLab: a normal way to end the lab
        return 0
