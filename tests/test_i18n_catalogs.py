"""The Korean edition is complete and current: every English text has a reviewed Korean entry, and the
Korean notebooks are exactly what the English notebooks and the catalogs build.

When this fails after you changed English text: `python -m lazymoe.i18n update`, translate (or review the
entries marked fuzzy) in data/i18n/ko/ and lazymoe/locale/ko/, then `python -m lazymoe.i18n build`.
For a hand-kept translation (a figure, README, the instructor guide, a quiz question, a glossary entry):
update the Korean, then `python -m lazymoe.i18n reviewed PATH` (lazymoe/i18n/handkept.py).
"""

from __future__ import annotations

import pytest

from lazymoe.i18n import handkept, notebooks
from lazymoe.i18n.cli import check_messages


def test_every_notebook_text_is_translated_reviewed_and_built():
    problems = [f"{p.notebook}: {p.what}" for p in notebooks.check("ko")]
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])


def test_every_package_message_is_translated_and_reviewed():
    problems = check_messages("ko")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])


def test_every_english_notebook_has_a_korean_twin():
    for notebook in notebooks.sources():
        assert notebooks.target_path(notebook, "ko").exists(), f"{notebook.name} has no Korean edition"


def test_every_hand_kept_translation_was_reviewed_since_its_english_changed():
    problems = handkept.problems("ko")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])


def test_hand_kept_translations_cover_figures_documents_quizzes_and_glossary():
    keys = {item.key.partition("#")[0] for item in handkept.items("ko")}
    assert {"README.md", "docs/instructor.md", "data/glossary.yaml"} <= keys
    assert any(k.startswith("course/figures/") for k in keys)
    assert any(k.startswith("data/quizzes/") for k in keys)


@pytest.fixture
def tiny_course(tmp_path):
    (tmp_path / "course" / "figures" / "ko").mkdir(parents=True)
    (tmp_path / "course" / "figures" / "a.svg").write_text("<svg>tiers</svg>")
    (tmp_path / "course" / "figures" / "ko" / "a.svg").write_text("<svg>계층</svg>")
    (tmp_path / "README.md").write_text("# lazymoe\n")
    (tmp_path / "README.ko.md").write_text("# lazymoe (한국어)\n")
    (tmp_path / "data" / "quizzes").mkdir(parents=True)
    (tmp_path / "data" / "quizzes" / "01.yaml").write_text(
        "title: {en: Hardware, ko: 하드웨어}\nquestions:\n"
        "  - id: q1\n    prompt: {en: 'Why?', ko: '왜?'}\n    choices:\n"
        "      - text: {en: Bandwidth, ko: 대역폭}\n        correct: true\n")
    (tmp_path / "data" / "glossary.yaml").write_text(
        "- term: VRAM\n  en: The GPU's memory.\n  ko_term: VRAM\n  ko: GPU의 메모리.\n  taught: '01'\n")
    return tmp_path


def test_a_changed_english_source_fails_by_name_until_its_review_is_recorded(tiny_course):
    root = tiny_course
    assert len(handkept.problems("ko", root)) == 5  # nothing reviewed yet
    assert len(handkept.record("ko", None, root)) == 5
    assert handkept.problems("ko", root) == []
    quiz = root / "data" / "quizzes" / "01.yaml"
    quiz.write_text(quiz.read_text().replace("Why?", "Why is a GPU faster?"))
    (root / "course" / "figures" / "a.svg").write_text("<svg>memory tiers</svg>")
    (root / "course" / "figures" / "ko" / "a.svg").write_text("<svg>계층</svg>")  # Korean untouched
    problems = handkept.problems("ko", root)
    assert [p.split(":")[0] for p in problems] == ["course/figures/a.svg", "data/quizzes/01.yaml#q1"]
    assert all("the English changed" in p for p in problems)
    assert handkept.record("ko", ["data/quizzes/01.yaml"], root) == ["data/quizzes/01.yaml#bank",
                                                                     "data/quizzes/01.yaml#q1"]
    assert [p.split(":")[0] for p in handkept.problems("ko", root)] == ["course/figures/a.svg"]
    with pytest.raises(handkept.UnknownItem):
        handkept.record("ko", ["course/figures/b.svg"], root)


def test_a_missing_translation_is_named(tiny_course):
    (tiny_course / "README.ko.md").unlink()
    assert "README.md: no ko translation" in handkept.problems("ko", tiny_course)
