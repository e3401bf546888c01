"""The instructor's guide (docs/instructor*.md): its lazymoe commands parse, its figures are real."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from lazymoe import cli

REPO = Path(__file__).resolve().parents[1]
GUIDES = [REPO / "docs" / "instructor.md", REPO / "docs" / "instructor.ko.md"]


def _shell_lines(text: str) -> list[str]:
    """Lines of the ```bash blocks, continuations joined, comments dropped, $K / $H expanded."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines += [ln for ln in block.replace("\\\n", " ").splitlines() if ln.strip()]
    variables = {}
    for line in lines:
        if m := re.match(r'^(\w+)="(.*)"$', line.strip()):
            variables[m.group(1)] = m.group(2)
    out = []
    for line in lines:
        for name, value in variables.items():
            line = line.replace(f"${name} ", value + " ")
        out.append(shlex.split(line, comments=True))
    return out


def _lazymoe_commands(path: Path) -> list[list[str]]:
    commands = []
    for words in _shell_lines(path.read_text()):
        for i, word in enumerate(words):
            if word.endswith("lazymoe") and i + 1 < len(words) and words[i + 1] in cli.COMMANDS:
                commands.append(words[i + 1:])
                break
    return commands


@pytest.mark.parametrize("path", GUIDES, ids=lambda p: p.name)
def test_every_lazymoe_command_parses(path):
    commands = _lazymoe_commands(path)
    assert {c[0] for c in commands} >= {"calc", "serve", "hub", "doctor"}
    parser = cli.build_parser()
    for words in commands:
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"{path.name}: `lazymoe {' '.join(words)}` does not parse")


@pytest.mark.parametrize("path", GUIDES, ids=lambda p: p.name)
def test_quoted_calculator_figures_are_what_it_prints(path):
    text = path.read_text()
    calc = next(c for c in _lazymoe_commands(path) if c[0] == "calc" and "Q4_K_M" in c)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(calc) == 0
    quoted = re.search(r"```\nmodel: .*?```", text, flags=re.S).group(0).strip("`\n").splitlines()
    for line in quoted:
        assert line.strip() in printed.getvalue(), f"{path.name} quotes a line calc does not print: {line}"


def test_the_service_units_command_parses():
    unit = (REPO / "docs" / "lazymoe-serve.service").read_text().replace("\\\n", " ")
    exec_start = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    words = shlex.split(exec_start.removeprefix("ExecStart="))
    assert words[0].endswith("/lazymoe") and words[1] == "serve"
    args = cli.build_parser().parse_args(words[1:])
    assert args.dtype == "float16"  # the group's P100s (compute capability 6.0) have no bfloat16
    assert args.keys is not None and args.host == "0.0.0.0"
