"""The Korean edition is complete and current: every English text has a reviewed Korean entry, and the
Korean notebooks are exactly what the English notebooks and the catalogs build.

When this fails after you changed English text: `python -m lazymoe.i18n update`, translate (or review the
entries marked fuzzy) in data/i18n/ko/ and lazymoe/locale/ko/, then `python -m lazymoe.i18n build`.
"""

from __future__ import annotations

from lazymoe.i18n import notebooks
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
