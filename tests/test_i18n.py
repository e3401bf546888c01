"""The Korean edition's machinery: language choice, catalog merging, building notebooks from catalogs."""

from __future__ import annotations

import json

import nbformat
import polib
import pytest

from lazymoe.i18n import catalog, language, messages, notebooks
from lazymoe.i18n.catalog import Source
from lazymoe.i18n.extract import messages_in


@pytest.fixture(autouse=True)
def _no_process_language():
    language.set_language(None)
    yield
    language.set_language(None)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LAZYMOE_LANG": "ko"}, "ko"),
        ({"LAZYMOE_LANG": "en", "LANG": "ko_KR.UTF-8"}, "en"),
        ({"LANG": "ko_KR.UTF-8"}, "ko"),
        ({"LC_ALL": "Korean_Korea.949"}, "ko"),
        ({"LANG": "en_US.UTF-8"}, "en"),
    ],
)
def test_language_comes_from_override_then_locale(monkeypatch, env, expected):
    for var in ("LAZYMOE_LANG", "LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert language.current_language() == expected


def test_an_unknown_language_is_refused_with_the_choices(monkeypatch):
    monkeypatch.setenv("LAZYMOE_LANG", "fr")
    with pytest.raises(language.LanguageError, match="en, ko"):
        language.current_language()


def _po(entries: list[tuple[str, str, list[str]]]) -> polib.POFile:
    po = catalog.new_catalog("ko", "test")
    for msgid, msgstr, flags in entries:
        po.append(polib.POEntry(msgid=msgid, msgstr=msgstr, msgctxt="nb", flags=flags))
    return po


def test_merge_keeps_unchanged_marks_changed_fuzzy_adds_new_and_keeps_removed_as_obsolete():
    old = _po([
        ("Memory bandwidth sets decode speed.", "메모리 대역폭이 디코드 속도를 정합니다.", []),
        ("The GPU reads 1 TB/s.", "GPU는 초당 1 TB를 읽습니다.", []),
        ("A paragraph that was deleted.", "삭제된 문단.", []),
    ])
    merged = catalog.merge(old, [
        Source("Memory bandwidth sets decode speed.", "nb"),
        Source("The GPU reads 1.5 TB/s.", "nb"),
        Source("A brand new paragraph about quantization.", "nb"),
    ])
    by_id = {e.msgid: e for e in merged}
    assert by_id["Memory bandwidth sets decode speed."].msgstr.startswith("메모리")
    assert not by_id["Memory bandwidth sets decode speed."].fuzzy
    changed = by_id["The GPU reads 1.5 TB/s."]
    assert changed.fuzzy and changed.msgstr == "GPU는 초당 1 TB를 읽습니다."
    assert changed.previous_msgid == "The GPU reads 1 TB/s."
    assert by_id["A brand new paragraph about quantization."].msgstr == ""
    assert by_id["A paragraph that was deleted."].obsolete
    audit = catalog.audit(merged)
    assert audit.total == 3 and len(audit.fuzzy) == 1 and len(audit.missing) == 1 and not audit.ok


def test_blocks_keep_fenced_code_whole_and_leave_it_untranslated():
    text = "# Title\n\nSome text\nmore text\n\n```python\nx = 1\n\ny = 2\n```\n\n| a | b |\n|---|---|"
    parts = notebooks.blocks(text)
    assert parts == ["# Title", "Some text\nmore text", "```python\nx = 1\n\ny = 2\n```", "| a | b |\n|---|---|"]
    assert [notebooks.translatable(p) for p in parts] == [True, True, False, True]


def _course(tmp_path):
    (tmp_path / "course").mkdir()
    (tmp_path / "labs").mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Module 01\n\n**Needs:** a CPU. See [lab 01](../labs/lab01.ipynb) "
                                      "and ![tiers](figures/tiers.svg)."),
        nbformat.v4.new_code_cell("print(1 + 1)"),
        nbformat.v4.new_markdown_cell("Bandwidth is bytes per second."),
    ]
    path = tmp_path / "course" / "01.ipynb"
    nbformat.write(nb, path)
    return path


def _translate_all(tmp_path, path, prefix="KO "):
    cat = notebooks.catalog_path(path, "ko", tmp_path)
    po = polib.pofile(str(cat))
    for entry in po:
        entry.msgstr = prefix + entry.msgid
        entry.flags = []
    po.save(str(cat))


def test_build_translates_text_keeps_code_and_fixes_links(tmp_path):
    path = _course(tmp_path)
    notebooks.update(path, "ko", tmp_path)
    _translate_all(tmp_path, path)
    report = notebooks.build("ko", tmp_path)
    built = nbformat.read(tmp_path / "course" / "ko" / "01.ipynb", as_version=4)
    assert report.written == [tmp_path / "course" / "ko" / "01.ipynb"]
    assert built.cells[0].source.startswith("KO # Module 01")
    assert "(../../labs/ko/lab01.ipynb)" in built.cells[0].source
    assert "(../figures/tiers.svg)" in built.cells[0].source
    assert 'LAZYMOE_LANG"] = "ko"' in built.cells[1].source
    assert built.cells[2].source == "print(1 + 1)"
    assert built.cells[3].source == "KO Bandwidth is bytes per second."
    assert notebooks.check("ko", tmp_path) == []


def test_a_figure_drawn_in_the_language_is_preferred(tmp_path):
    path = _course(tmp_path)
    (tmp_path / "course" / "figures" / "ko").mkdir(parents=True)
    (tmp_path / "course" / "figures" / "tiers.svg").write_text("<svg/>")
    (tmp_path / "course" / "figures" / "ko" / "tiers.svg").write_text("<svg/>")
    built = notebooks.build_notebook(path, "ko", tmp_path)
    assert "(../figures/ko/tiers.svg)" in built.cells[0].source


def test_a_learners_edited_notebook_is_never_overwritten(tmp_path):
    path = _course(tmp_path)
    notebooks.update(path, "ko", tmp_path)
    _translate_all(tmp_path, path)
    notebooks.build("ko", tmp_path)
    target = tmp_path / "course" / "ko" / "01.ipynb"
    edited = nbformat.read(target, as_version=4)
    edited.cells[2].source = "print('my own experiment')"
    nbformat.write(edited, target)
    _translate_all(tmp_path, path, prefix="KO2 ")  # a new catalog arrives
    report = notebooks.build("ko", tmp_path)
    assert report.skipped == [target] and not report.written
    assert "my own experiment" in target.read_text()
    target.unlink()  # deleting the copy brings the new version
    assert notebooks.build("ko", tmp_path).written == [target]
    assert "KO2 Bandwidth" in target.read_text()


def test_check_names_changed_missing_and_unbuilt_translations(tmp_path):
    path = _course(tmp_path)
    notebooks.update(path, "ko", tmp_path)
    _translate_all(tmp_path, path)
    notebooks.build("ko", tmp_path)
    nb = nbformat.read(path, as_version=4)
    nb.cells[2].source = "Bandwidth is bytes per second, read or written."
    nbformat.write(nb, path)
    problems = [p.what for p in notebooks.check("ko", tmp_path)]
    assert any("English changed since the catalog" in p for p in problems)
    assert any("needs review" in p and "Bandwidth is bytes" in p for p in problems)
    assert any("is not what its sources build" in p for p in problems)
    notebooks.update(path, "ko", tmp_path)  # the fuzzy entry stays until a reviewer clears it
    assert any("needs review" in p.what for p in notebooks.check("ko", tmp_path))


def test_package_messages_are_found_and_fall_back_to_english(tmp_path, monkeypatch):
    src = tmp_path / "pkg" / "mod.py"
    src.parent.mkdir()
    src.write_text('from lazymoe.i18n import _, ngettext\n'
                   'a = _("Hello {name}")\n'
                   'b = _("Hit rate", context="chart")\n'
                   'c = ngettext("{n} attempt", "{n} attempts", 2)\n'
                   'd = _(variable)\n')
    found = messages_in(src, tmp_path / "pkg")
    assert [(s.msgid, s.msgctxt, s.msgid_plural) for s in found] == [
        ("Hello {name}", None, ""), ("Hit rate", "chart", ""), ("{n} attempt", None, "{n} attempts")]
    po = catalog.merge(catalog.new_catalog("ko", "t"), found)
    po[0].msgstr = "안녕하세요 {name}"
    po[2].msgstr_plural = {0: "{n}회 시도"}
    path = tmp_path / "locale" / "ko" / "LC_MESSAGES" / "lazymoe.po"
    catalog.save(po, path)
    monkeypatch.setattr(messages, "LOCALE_DIR", tmp_path / "locale")
    messages.reload()
    try:
        assert messages.gettext("Hello {name}", lang="ko").format(name="A") == "안녕하세요 A"
        assert messages.gettext("Hit rate", context="chart", lang="ko") == "Hit rate"  # untranslated
        assert messages.ngettext("{n} attempt", "{n} attempts", 3, lang="ko") == "{n}회 시도"
        assert messages.gettext("Hello {name}", lang="en") == "Hello {name}"
    finally:
        messages.reload()


def test_the_manifest_records_what_was_built(tmp_path):
    path = _course(tmp_path)
    notebooks.update(path, "ko", tmp_path)
    notebooks.build("ko", tmp_path)
    manifest = json.loads((tmp_path / "course" / "ko" / ".built.json").read_text())
    assert set(manifest) == {"01.ipynb"} and len(manifest["01.ipynb"]) == 64


def test_moved_code_does_not_make_a_catalog_stale_but_changed_text_does():
    po = catalog.merge(catalog.new_catalog("ko", "t"), [Source("Hello", comment="a.py:1")])
    po[0].msgstr = "안녕하세요"
    moved = catalog.merge(po, [Source("Hello", comment="a.py:9")])
    assert catalog.same_texts(moved, po)
    changed = catalog.merge(po, [Source("Hello there", comment="a.py:9")])
    assert not catalog.same_texts(changed, po)


def test_saving_a_catalog_twice_changes_nothing_even_with_obsolete_entries_last(tmp_path):
    """`python -m lazymoe.i18n update` is idempotent: polib ends obsolete entries with a newline,
    and a second save of what was read back must not add a blank line (a diff on every run)."""
    po = polib.POFile(wrapwidth=100)
    po.append(polib.POEntry(msgid="Hello", msgstr="안녕하세요"))
    po.append(polib.POEntry(msgid="Gone", msgstr="사라짐", obsolete=True))
    path = tmp_path / "x.po"
    assert catalog.save(po, path)
    first = path.read_text(encoding="utf-8")
    assert first.endswith("\n") and not first.endswith("\n\n")
    assert not catalog.save(polib.pofile(str(path), wrapwidth=100), path)  # nothing to write
    assert path.read_text(encoding="utf-8") == first
