"""PO catalogs: merge the English source's current texts into a translation catalog, and audit it.

`merge` works as gettext's msgmerge does: an unchanged text keeps its translation; a changed text
takes the translation of the closest old text, marked fuzzy (a reviewer must look at it) with the
old English kept as `#| msgid`; a new text gets an empty translation; a text that is gone becomes
obsolete (kept at the end of the file, so a translation is never lost).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import polib

FUZZY_CUTOFF = 0.6  # difflib ratio above which an old translation is offered for a changed text


@dataclass(frozen=True)
class Source:
    """One English text to translate: its context (where it is) and the text itself."""

    msgid: str
    msgctxt: str | None = None
    comment: str = ""  # shown to translators ("#." lines): where the text is used
    msgid_plural: str = ""


@dataclass
class Audit:
    total: int = 0
    missing: list[str] = field(default_factory=list)  # no translation yet
    fuzzy: list[str] = field(default_factory=list)  # the English changed: review needed

    @property
    def ok(self) -> bool:
        return not self.missing and not self.fuzzy


def _key(entry: polib.POEntry) -> tuple[str | None, str]:
    return entry.msgctxt, entry.msgid


def new_catalog(lang: str, project: str) -> polib.POFile:
    po = polib.POFile(wrapwidth=100)
    po.metadata = {
        "Project-Id-Version": project,
        "Language": lang,
        "MIME-Version": "1.0",
        "Content-Type": "text/plain; charset=UTF-8",
        "Content-Transfer-Encoding": "8bit",
        "Plural-Forms": "nplurals=1; plural=0;" if lang == "ko" else "nplurals=2; plural=(n != 1);",
    }
    return po


def load(path: Path, lang: str, project: str) -> polib.POFile:
    if path.exists():
        po = polib.pofile(str(path), wrapwidth=100)
        po.wrapwidth = 100
        return po
    return new_catalog(lang, project)


def merge(po: polib.POFile, sources: list[Source]) -> polib.POFile:
    """The catalog for `sources`, keeping every translation `po` already has (see module doc)."""
    old = {_key(e): e for e in po}
    merged = polib.POFile(wrapwidth=po.wrapwidth)
    merged.metadata = dict(po.metadata)
    merged.header = po.header
    seen: set[tuple[str | None, str]] = set()
    for src in sources:
        key = (src.msgctxt, src.msgid)
        if key in seen:
            continue
        seen.add(key)
        entry = polib.POEntry(msgid=src.msgid, msgctxt=src.msgctxt, msgstr="", comment=src.comment)
        if src.msgid_plural:
            entry.msgid_plural = src.msgid_plural
            entry.msgstr_plural = {0: ""}
        before = old.get(key)
        if before is not None and not before.obsolete:
            entry.msgstr, entry.flags = before.msgstr, list(before.flags)
            entry.previous_msgid = before.previous_msgid
            if src.msgid_plural:
                entry.msgstr_plural = dict(before.msgstr_plural) or {0: ""}
        else:
            near = _closest(src, [e for k, e in old.items() if k not in seen and k[0] == src.msgctxt])
            if near is not None and (near.msgstr or any(near.msgstr_plural.values())):
                entry.msgstr = near.msgstr
                if src.msgid_plural:
                    entry.msgstr_plural = dict(near.msgstr_plural) or {0: ""}
                entry.flags = ["fuzzy"]
                entry.previous_msgid = near.previous_msgid or near.msgid
        merged.append(entry)
    current = {(s.msgctxt, s.msgid) for s in sources}
    for key, entry in old.items():
        if key not in current and (entry.msgstr or any(entry.msgstr_plural.values())):
            entry.obsolete = True
            merged.append(entry)
    return merged


def _closest(src: Source, candidates: list[polib.POEntry]) -> polib.POEntry | None:
    best, best_ratio = None, FUZZY_CUTOFF
    for entry in candidates:
        ratio = difflib.SequenceMatcher(None, src.msgid, entry.msgid, autojunk=False).ratio()
        if ratio > best_ratio:
            best, best_ratio = entry, ratio
    return best


def same_texts(a: polib.POFile, b: polib.POFile) -> bool:
    """Whether two catalogs hold the same texts and translations (comments such as `#. file:line`,
    which move when code moves, do not count)."""

    def texts(po: polib.POFile) -> set[tuple]:
        return {
            (e.msgctxt, e.msgid, e.msgid_plural, e.msgstr, tuple(sorted(e.msgstr_plural.items())),
             e.fuzzy, e.obsolete)
            for e in po
        }

    return texts(a) == texts(b)


def audit(po: polib.POFile) -> Audit:
    result = Audit()
    for entry in po:
        if entry.obsolete:
            continue
        result.total += 1
        label = (entry.msgctxt + ": " if entry.msgctxt else "") + entry.msgid[:70].replace("\n", " ")
        translated = entry.msgstr or (entry.msgid_plural and all(entry.msgstr_plural.values()))
        if entry.fuzzy:
            result.fuzzy.append(label)
        elif not translated:
            result.missing.append(label)
    return result


def save(po: polib.POFile, path: Path) -> bool:
    """Write `po` to `path` if its text changed; True when written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = str(po).rstrip("\n") + "\n"  # one final newline (polib ends obsolete entries with one)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return True
