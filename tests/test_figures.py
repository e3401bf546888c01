"""The course's concept diagrams: every SVG parses, has a title and a readable size, and every
module shows at least one that exists."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIGURES = sorted((REPO / "course" / "figures").glob("*.svg"))
KO_FIGURES = sorted((REPO / "course" / "figures" / "ko").glob("*.svg"))  # the same diagrams in Korean
MODULES = sorted((REPO / "course").glob("0[1-8]_*.ipynb"))
SVG = "{http://www.w3.org/2000/svg}"
IMAGE = re.compile(r"!\[[^\]]*\]\((figures/[^)\s]+\.svg)\)")


def test_there_is_a_figure_per_module():
    assert len(FIGURES) >= len(MODULES) >= 8


def test_every_korean_figure_has_its_english_original():
    assert {p.name for p in KO_FIGURES} <= {p.name for p in FIGURES}


@pytest.mark.parametrize("path", FIGURES + KO_FIGURES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_each_svg_parses_with_a_title_and_a_readable_width(path):
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    title = root.find(f"{SVG}title")
    assert title is not None and title.text, f"{path.name}: add a <title> (screen readers read it)"
    width = float(root.get("viewBox").split()[2])
    assert 600 <= width <= 1000, f"{path.name}: draw it about 800 px wide, readable without zoom"
    texts = [t for t in root.iter(f"{SVG}text")]
    assert texts and all(float(t.get("font-size", 16)) >= 13 for t in texts), "labels of 13 px or more"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_each_module_shows_an_existing_figure(path):
    cells = json.loads(path.read_text())["cells"]
    shown = [m for c in cells if c["cell_type"] == "markdown" for m in IMAGE.findall("".join(c["source"]))]
    assert shown, f"{path.name} shows no diagram from course/figures"
    for rel in shown:
        assert (path.parent / rel).exists(), f"{path.name} shows {rel}, which does not exist"
