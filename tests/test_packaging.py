"""The install story: pyproject and environment.yml agree, the CLI dispatches, CI calls `make test`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
# conda-forge names that differ from PyPI's
CONDA_NAMES = {"torch": "pytorch"}


def _split(requirement: str) -> tuple[str, str]:
    match = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", requirement.strip())
    assert match, requirement
    return match.group(1).lower(), match.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = dict(_split(dep) for dep in env["dependencies"] if isinstance(dep, str))
    wanted = project["dependencies"] + project["optional-dependencies"]["course"]
    for requirement in wanted:
        name, spec = _split(requirement)
        conda_name = CONDA_NAMES.get(name, name)
        assert conda_name in conda, f"environment.yml lacks {conda_name} (pyproject: {requirement})"
        assert conda[conda_name] == spec, f"{conda_name}: environment.yml says {conda[conda_name]!r}, pyproject {spec!r}"
    pip_lines = next(dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict))
    extras = re.search(r"\[(.*)\]", pip_lines[0]).group(1).split(",")
    assert set(extras) <= set(project["optional-dependencies"]), extras


def test_torch_range_admits_2_13():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    from packaging.specifiers import SpecifierSet

    torch_req = next(r for r in project["dependencies"] if r.startswith("torch"))
    assert "2.13.0" in SpecifierSet(_split(torch_req)[1])


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert "make test" in (REPO / "README.md").read_text()
    assert "make lab" in (REPO / "README.md").read_text()


def test_cli_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "lazymoe", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("doctor", "calc", "run", "bench", "serve", "progress"):
        assert command in out.stdout


def test_cli_without_command_prints_help_and_fails():
    out = subprocess.run([sys.executable, "-m", "lazymoe"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "COMMAND" in out.stdout
