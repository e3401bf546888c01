"""Translations kept by hand, outside the catalogs, and whether each was reviewed since its English changed.

    course/figures/x.svg          -> course/figures/ko/x.svg
    README.md                     -> README.ko.md
    docs/instructor.md            -> docs/instructor.ko.md
    data/quizzes/NN.yaml#q1       -> the question's `ko` texts (prompt, choices, explanations, hint)
    data/quizzes/NN.yaml#bank     -> the bank's title and intro
    data/glossary.yaml#bandwidth  -> the entry's ko_term and ko

data/i18n/<lang>/handkept.json records, for each, the SHA-256 of its English as it was when someone
last reviewed the translation (`python -m lazymoe.i18n reviewed PATH...`). An English text that
changed since then makes `check` (and `make test`) fail, naming it, until the translation is
updated and the review recorded again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from lazymoe.i18n.notebooks import CATALOG_DIR, ROOT

FIGURES = "course/figures"
DOCUMENTS = ("README.md", "docs/instructor.md")
QUIZZES = "data/quizzes"
GLOSSARY = "data/glossary.yaml"


@dataclass(frozen=True)
class HandKept:
    """One hand-kept translation: its English and its translation, as text to hash."""

    key: str  # "README.md", "data/quizzes/01_hardware.yaml#q1"
    english: str
    translated: str | None  # None: no translation yet


def manifest_path(lang: str, root: Path = ROOT) -> Path:
    return root / CATALOG_DIR.relative_to(ROOT) / lang / "handkept.json"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


def _texts(node: object, lang: str) -> tuple[list[str], list[str | None]]:
    """Every `{en: ..., <lang>: ...}` text under `node`, in order: (English, translations)."""
    english: list[str] = []
    translated: list[str | None] = []
    if isinstance(node, dict) and "en" in node:
        return [str(node["en"])], [node.get(lang)]
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        en, tr = _texts(child, lang)
        english += en
        translated += tr
    return english, translated


def _pair(key: str, english: list[str], translated: list[str | None]) -> HandKept:
    done = all(t is not None for t in translated)
    return HandKept(
        key,
        json.dumps(english, ensure_ascii=False),
        json.dumps(translated, ensure_ascii=False) if done else None,
    )


def items(lang: str, root: Path = ROOT) -> list[HandKept]:
    """Every hand-kept translation into `lang`, English source first."""
    found = []
    for svg in sorted((root / FIGURES).glob("*.svg")):
        found.append(
            HandKept(
                svg.relative_to(root).as_posix(),
                svg.read_text(encoding="utf-8"),
                _read(svg.parent / lang / svg.name),
            )
        )
    for doc in DOCUMENTS:
        source = root / doc
        if source.exists():
            found.append(
                HandKept(
                    doc,
                    source.read_text(encoding="utf-8"),
                    _read(source.with_suffix(f".{lang}.md")),
                )
            )
    for bank_path in sorted((root / QUIZZES).glob("*.yaml")):
        bank = yaml.safe_load(bank_path.read_text(encoding="utf-8")) or {}
        rel = bank_path.relative_to(root).as_posix()
        found.append(_pair(f"{rel}#bank", *_texts([bank.get("title"), bank.get("intro")], lang)))
        for question in bank.get("questions") or []:
            found.append(_pair(f"{rel}#{question['id']}", *_texts(question, lang)))
    glossary = root / GLOSSARY
    if glossary.exists():
        for entry in yaml.safe_load(glossary.read_text(encoding="utf-8")) or []:
            found.append(
                _pair(
                    f"{GLOSSARY}#{entry['term']}",
                    [entry["term"], entry["en"]],
                    [entry.get(f"{lang}_term"), entry.get(lang)],
                )
            )
    return found


def _load(lang: str, root: Path) -> dict[str, dict[str, str]]:
    path = manifest_path(lang, root)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def problems(lang: str, root: Path = ROOT) -> list[str]:
    """Each hand-kept translation that is missing, never reviewed, or older than its English."""
    recorded = _load(lang, root)
    found = []
    current = items(lang, root)
    for item in current:
        review = recorded.get(item.key)
        if item.translated is None:
            found.append(f"{item.key}: no {lang} translation")
        elif review is None:
            found.append(
                f"{item.key}: translation never reviewed: review it, then "
                f"`python -m lazymoe.i18n reviewed {item.key}`"
            )
        elif review["english_sha256"] != _digest(item.english):
            found.append(
                f"{item.key}: the English changed since its {lang} translation was "
                f"reviewed: update the translation, then `python -m lazymoe.i18n reviewed {item.key}`"
            )
    keys = {item.key for item in current}
    found += [
        f"{key}: recorded in {manifest_path(lang).name} but no longer exists: "
        "the next `python -m lazymoe.i18n reviewed ...` forgets it"
        for key in sorted(set(recorded) - keys)
    ]
    return found


class UnknownItem(ValueError):
    pass


def record(lang: str, paths: list[str] | None, root: Path = ROOT) -> list[str]:
    """Record the review of every item whose key is one of `paths`, or whose file is (None: every
    translated item); forget items that no longer exist. Returns the keys recorded."""
    wanted = None if paths is None else {p.rstrip("/") for p in paths}
    recorded = _load(lang, root)
    current = items(lang, root)
    if wanted is not None:
        known = {item.key for item in current} | {item.key.partition("#")[0] for item in current}
        if wanted - known:
            raise UnknownItem(
                f"not a hand-kept translation: {', '.join(sorted(wanted - known))} "
                f"(one of {', '.join(sorted({k.partition('#')[0] for k in known}))}, "
                "or FILE#id)"
            )
    done = []
    for item in current:
        file = item.key.partition("#")[0]
        if item.translated is not None and (wanted is None or item.key in wanted or file in wanted):
            recorded[item.key] = {
                "english_sha256": _digest(item.english),
                "translation_sha256": _digest(item.translated),
            }
            done.append(item.key)
    keys = {item.key for item in current}
    recorded = {k: v for k, v in sorted(recorded.items()) if k in keys}
    path = manifest_path(lang, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recorded, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return done
