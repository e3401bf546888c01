"""The course's glossary: every technical word in one plain line, in English and Korean.

    from lazymoe import glossary
    glossary.lookup("KV cache").en     # "The model's notes on the tokens it has already read, ..."
    glossary.search("memory")          # entries whose term or meaning mentions "memory"
    glossary.show()                    # in Jupyter: a search box over the table; elsewhere: text

The words live in `data/glossary.yaml`; `load()` checks every entry and names the problem (and the
entry) when one is malformed. `course/glossary.ipynb` shows the table.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from lazymoe import paths

__all__ = ["Entry", "GlossaryError", "glossary_path", "load", "lookup", "search", "show", "table_html"]

REQUIRED = ("term", "en", "ko_term", "ko", "taught")
OPTIONAL = ("aka",)
TAUGHT = re.compile(r"^(0[0-9]|lab0[0-9]b?)$")  # a module "01".."08" or a lab "lab00".."lab09", "lab05b"
MAX_LINE_CHARS = 200  # "one plain line": longer means it wants splitting into two entries


class GlossaryError(ValueError):
    """The glossary file is malformed; the message names the entry and what to change."""


@dataclass(frozen=True)
class Entry:
    term: str
    en: str  # one plain sentence
    ko_term: str
    ko: str  # one plain sentence
    taught: str  # where it is first explained: "02" (module 02) or "lab06"
    aka: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        """"module 02" or "lab 06", as a learner would say it."""
        return f"lab {self.taught[3:]}" if self.taught.startswith("lab") else f"module {self.taught}"

    def matches(self, text: str) -> bool:
        needle = text.strip().lower()
        haystack = [self.term, self.en, self.ko_term, self.ko, *self.aka]
        return not needle or any(needle in h.lower() for h in haystack)


def glossary_path() -> Path:
    return paths.data_dir() / "glossary.yaml"


def _entry(raw: object, position: int, path: Path) -> Entry:
    where = f"{path}: entry {position}"
    if not isinstance(raw, dict):
        raise GlossaryError(f"{where} is not a mapping: write it as `- term: ...` with en, ko_term, ko, taught")
    where = f"{where} ({raw.get('term', '?')!r})"
    unknown = set(raw) - set(REQUIRED) - set(OPTIONAL)
    if unknown:
        raise GlossaryError(f"{where} has unknown keys {sorted(unknown)}: allowed are "
                            f"{', '.join(REQUIRED + OPTIONAL)}")
    for key in REQUIRED:
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise GlossaryError(f"{where} needs a non-empty text for {key!r}"
                                + (' (quote module numbers: taught: "02")' if key == "taught" else ""))
        if "\n" in value.strip() or len(value) > MAX_LINE_CHARS:
            raise GlossaryError(f"{where}: {key!r} must be one plain line of at most {MAX_LINE_CHARS} "
                                "characters")
    if not TAUGHT.match(raw["taught"]):
        raise GlossaryError(f"{where}: taught={raw['taught']!r} is neither a module (\"01\") nor a lab "
                            "(\"lab06\")")
    aka = raw.get("aka", [])
    if not isinstance(aka, list) or not all(isinstance(a, str) and a for a in aka):
        raise GlossaryError(f"{where}: aka must be a list of other spellings, e.g. [page-locked memory]")
    return Entry(raw["term"].strip(), raw["en"].strip(), raw["ko_term"].strip(), raw["ko"].strip(),
                 raw["taught"], tuple(aka))


def load(path: str | Path | None = None) -> list[Entry]:
    """Every entry, sorted by term (case-insensitive); GlossaryError if the file is malformed."""
    path = Path(path) if path else glossary_path()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GlossaryError(f"cannot read the glossary {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise GlossaryError(f"{path} is not valid YAML (quote a line that holds ': '): {exc}") from exc
    if not isinstance(data, list) or not data:
        raise GlossaryError(f"{path} must be a list of entries (- term: ...)")
    entries = [_entry(raw, i + 1, path) for i, raw in enumerate(data)]
    seen: dict[str, str] = {}
    for e in entries:
        for name in (e.term, *e.aka):
            key = name.lower()
            if key in seen:
                raise GlossaryError(f"{path}: {name!r} appears twice (in {seen[key]!r} and {e.term!r}): "
                                    "keep one entry")
            seen[key] = e.term
    return sorted(entries, key=lambda e: e.term.lower())


def lookup(term: str, entries: list[Entry] | None = None) -> Entry:
    """The entry for a term or one of its other spellings (case-insensitive)."""
    entries = entries if entries is not None else load()
    key = term.strip().lower()
    for e in entries:
        if key == e.term.lower() or key in (a.lower() for a in e.aka):
            return e
    close = [e.term for e in entries if key and (key in e.term.lower() or e.term.lower() in key)]
    hint = f"; did you mean {', '.join(close)}?" if close else "; glossary.search(text) finds close words"
    raise KeyError(f"{term!r} is not in the glossary{hint}")


def search(text: str, entries: list[Entry] | None = None) -> list[Entry]:
    """Entries whose term, other spellings or meaning (either language) contain text; all for ""."""
    entries = entries if entries is not None else load()
    return [e for e in entries if e.matches(text)]


def table_html(entries: list[Entry]) -> str:
    """The entries as one HTML table: term, plain meaning, Korean, where it is taught."""
    esc = html.escape
    rows = "".join(
        f"<tr><td><b>{esc(e.term)}</b></td><td>{esc(e.en)}</td>"
        f"<td><b>{esc(e.ko_term)}</b><br>{esc(e.ko)}</td><td>{esc(e.where)}</td></tr>"
        for e in entries
    )
    head = "<tr><th>term</th><th>in plain words</th><th>한국어</th><th>taught in</th></tr>"
    return (f"<table style='text-align:left'><thead>{head}</thead><tbody>{rows}</tbody></table>"
            if entries else "<i>No word matches; try a shorter search.</i>")


def table_text(entries: list[Entry]) -> str:
    return "\n".join(f"{e.term} ({e.ko_term}) [{e.where}]\n    {e.en}\n    {e.ko}" for e in entries)


def show(query: str = "") -> None:
    """In Jupyter: a search box above the table (it filters as you type). Elsewhere: printed text."""
    entries = load()
    try:
        import ipywidgets as w
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        print(table_text(search(query, entries)))
        return
    if getattr(get_ipython(), "kernel", None) is None:
        print(table_text(search(query, entries)))
        return
    box = w.Text(value=query, placeholder="type to search, e.g. memory / 메모리", continuous_update=True,
                 description="Search:")
    table = w.HTML(table_html(search(query, entries)))
    box.observe(lambda change: setattr(table, "value", table_html(search(change["new"], entries))),
                names="value")
    display(w.VBox([box, table]))
