"""Every reviewed Korean paragraph of the notebooks keeps what must not change in translation.

For each translated entry of data/i18n/ko/**/*.po, the Korean has
    - the same inline code spans (`...`) and the same link targets (](...) and src="...")
    - the same markdown structure: heading levels, number of list items, fenced code blocks identical
    - every number of the English (4.7, 2048, 10**9), unless NUMBER_EXCEPTIONS below says why not

When this fails: fix the Korean in the .po file it names (or, for a number written another way in
Korean, add the entry to NUMBER_EXCEPTIONS with the reason), then `python -m lazymoe.i18n build`.
"""

from __future__ import annotations

import re
from pathlib import Path

import polib
import pytest

from lazymoe.i18n.notebooks import CATALOG_DIR

CATALOGS = sorted((CATALOG_DIR / "ko").rglob("*.po"))
CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"\]\(([^)\s]+)|src=\"([^\"]+)\"")
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
HEADING = re.compile(r"^(#{1,6})\s", re.M)
LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+", re.M)
NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*")

# (catalog, the English's first words) -> {number the Korean writes differently: why}
NUMBER_EXCEPTIONS: dict[tuple[str, str], dict[str, str]] = {
    ("course/03_quantization.po", "The bound says an expert stored at 4.5 bits"): {
        "4.7": "4.7 million weights -> 가중치 470만 개 (Korean counts in units of 10,000)"
    },
    ("labs/lab03_quantize.po", "The next cell builds one expert of Qwen3-30B-A3B's shape"): {
        "4.7": "4.7 million weights -> 가중치 470만 개 (Korean counts in units of 10,000)"
    },
}


def _split(text: str) -> tuple[list[str], str]:
    """The fenced code blocks, and the text around them."""
    return [m.group(0) for m in FENCE.finditer(text)], FENCE.sub("", text)


def differences(
    english: str, korean: str, allowed_numbers: frozenset[str] = frozenset()
) -> list[str]:
    """What the Korean lost or changed of the English's code, links, structure and numbers."""
    fences_en, en = _split(english)
    fences_ko, ko = _split(korean)
    found = []
    if fences_en != fences_ko:
        found.append("a fenced code block differs (copy it unchanged)")
    code_en = sorted(m.group(2) for m in CODE.finditer(en))
    code_ko = sorted(m.group(2) for m in CODE.finditer(ko))
    if code_en != code_ko:
        lost, added = sorted(set(code_en) - set(code_ko)), sorted(set(code_ko) - set(code_en))
        found.append(
            f"inline code differs: missing {lost}, not in the English {added}, "
            f"{len(code_en)} spans vs {len(code_ko)}"
        )
    links_en = sorted(a or b for a, b in LINK.findall(en))
    links_ko = sorted(a or b for a, b in LINK.findall(ko))
    if links_en != links_ko:
        found.append(f"link targets differ: {links_en} vs {links_ko}")
    if HEADING.findall(en) != HEADING.findall(ko):
        found.append(f"heading levels differ: {HEADING.findall(en)} vs {HEADING.findall(ko)}")
    if len(LIST_ITEM.findall(en)) != len(LIST_ITEM.findall(ko)):
        found.append(
            f"list items differ: {len(LIST_ITEM.findall(en))} vs {len(LIST_ITEM.findall(ko))}"
        )
    missing = set(NUMBER.findall(english)) - set(NUMBER.findall(korean)) - allowed_numbers
    if missing:
        found.append(f"numbers missing in the Korean: {sorted(missing)}")
    return found


def _allowed(catalog: str, msgid: str) -> frozenset[str]:
    return frozenset(
        n
        for (where, start), numbers in NUMBER_EXCEPTIONS.items()
        if where == catalog and msgid.startswith(start)
        for n in numbers
    )


@pytest.mark.parametrize("path", CATALOGS, ids=[p.stem for p in CATALOGS])
def test_korean_keeps_code_links_structure_and_numbers(path: Path):
    catalog = path.relative_to(CATALOG_DIR / "ko").as_posix()
    problems = []
    for entry in polib.pofile(str(path)):
        if entry.obsolete or entry.fuzzy or not entry.msgstr:
            continue  # missing and fuzzy entries fail test_i18n_catalogs.py instead
        for what in differences(entry.msgid, entry.msgstr, _allowed(catalog, entry.msgid)):
            problems.append(f"{catalog}, {entry.comment}: {entry.msgid[:60]!r}...: {what}")
    assert not problems, "\n".join(problems)


def test_every_number_exception_is_still_needed():
    for (catalog, start), numbers in NUMBER_EXCEPTIONS.items():
        entries = [
            e
            for e in polib.pofile(str(CATALOG_DIR / "ko" / catalog))
            if not e.obsolete and e.msgid.startswith(start)
        ]
        assert len(entries) == 1, (
            f"{catalog}: no single entry starts {start!r}: update NUMBER_EXCEPTIONS"
        )
        missing = differences(entries[0].msgid, entries[0].msgstr)
        for number in numbers:
            assert any(number in m for m in missing if m.startswith("numbers")), (
                f"{catalog}: {number} now appears in the Korean: remove its exception"
            )


@pytest.mark.parametrize(
    ("korean", "what"),
    [
        ("## 제목: `lazymoe calc` 실행\n\n- 4.7 [그림](figures/b.svg)\n- 둘째", "link targets"),
        ("## 제목: lazymoe calc 실행\n\n- 4.7 [그림](figures/a.svg)\n- 둘째", "inline code"),
        ("### 제목: `lazymoe calc` 실행\n\n- 4.7 [그림](figures/a.svg)\n- 둘째", "heading levels"),
        ("## 제목: `lazymoe calc` 실행\n\n- 4.7 [그림](figures/a.svg) 둘째", "list items"),
        (
            "## 제목: `lazymoe calc` 실행\n\n- 470만 [그림](figures/a.svg)\n- 둘째",
            "numbers missing",
        ),
        (
            "## 제목: `lazymoe calc` 실행\n\n- 4.7 [그림](figures/a.svg)\n- 둘째\n\n```\nprint(y)\n```",
            "fenced",
        ),
    ],
    ids=["link", "code", "heading", "list", "number", "fence"],
)
def test_the_checker_catches_each_kind_of_slip(korean, what):
    english = "## Title: run `lazymoe calc`\n\n- 4.7 [figure](figures/a.svg)\n- second\n\n```\nprint(x)\n```"
    good = (
        "## 제목: `lazymoe calc` 실행\n\n- 4.7 [그림](figures/a.svg)\n- 둘째\n\n```\nprint(x)\n```"
    )
    assert differences(english, good) == []
    if "```" not in korean:
        korean += "\n\n```\nprint(x)\n```"
    found = differences(english, korean)
    assert len(found) == 1 and what in found[0], found
