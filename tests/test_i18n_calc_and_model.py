"""`lazymoe calc --help` examples and the bundled model's problems in the learner's language."""

from __future__ import annotations

import re

import pytest

from lazymoe.calculator import cli as calc_cli
from lazymoe.models import bundled

HANGUL = re.compile(r"[\uac00-\ud7a3]")
COMMANDS = [
    line.split("#")[0].rstrip()
    for line in calc_cli.__doc__.split("\n\n", 1)[1].splitlines()
    if line.strip()
]


@pytest.fixture
def korean(monkeypatch):
    monkeypatch.setenv("LAZYMOE_LANG", "ko")


def test_calc_examples_keep_their_commands_and_translate_every_comment(korean):
    lines = [line for line in calc_cli.examples().splitlines() if line.strip()]
    assert [line.split("#")[0].rstrip() for line in lines] == COMMANDS  # the commands as they are
    comments = [line.split("#", 1)[1] for line in lines if "#" in line]
    assert len(comments) == 3 and all(HANGUL.search(c) for c in comments), comments


def test_calc_examples_in_english_are_the_docstring():
    assert calc_cli.examples() == calc_cli.__doc__.split("\n\n", 1)[1]


def test_a_missing_model_folder_is_explained_in_korean(korean, tmp_path):
    assert bundled.problems(tmp_path / "nowhere") == [f"{tmp_path / 'nowhere'}이(가) 없습니다"]
    (tmp_path / "config.json").write_text("{}")
    found = bundled.problems(tmp_path)
    assert "model.safetensors 없음" in found and "config.json 없음" not in found


def test_a_wrong_model_folder_is_explained_in_english(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert "missing model.safetensors" in bundled.problems(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"lacks model\.safetensors: run `make data`"):
        bundled.load_model(tmp_path)
