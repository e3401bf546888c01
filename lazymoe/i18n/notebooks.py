"""The notebooks' text as gettext catalogs, and the translated notebooks built from them.

    course/01_hardware.ipynb  (English, the source)
      -> data/i18n/ko/course/01_hardware.po   one entry per paragraph of each markdown cell
      -> course/ko/01_hardware.ipynb          the same notebook: code cells as they are, text translated

A paragraph is a block of a markdown cell between blank lines; a fenced code block is kept whole and
never translated. The msgctxt is the notebook's name, so an English paragraph that changes becomes a
fuzzy entry (its old translation kept for the reviewer) and the check fails until someone reviews it.

Building never overwrites a learner's work: `course/ko/.built.json` records what each built
notebook looked like; a notebook that differs from that record was edited, and is left alone.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from lazymoe.i18n import catalog
from lazymoe.i18n.catalog import Source

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("course", "labs")
CATALOG_DIR = ROOT / "data" / "i18n"
MANIFEST = ".built.json"
_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"(\]\(|src=\")([^)\"\s]+)")
LANGUAGE_CELL = 'import os\n\nos.environ["LAZYMOE_LANG"] = "{lang}"  # this notebook\'s language'


def sources(root: Path = ROOT) -> list[Path]:
    """The English notebooks: course/*.ipynb and labs/*.ipynb."""
    return sorted(p for folder in FOLDERS for p in (root / folder).glob("*.ipynb"))


def catalog_path(notebook: Path, lang: str, root: Path = ROOT) -> Path:
    rel = notebook.relative_to(root)
    return root / "data" / "i18n" / lang / rel.parent / (rel.stem + ".po")


def target_path(notebook: Path, lang: str) -> Path:
    return notebook.parent / lang / notebook.name


def blocks(markdown: str) -> list[str]:
    """Split a markdown cell into paragraphs at blank lines, keeping fenced code blocks whole."""
    out: list[str] = []
    current: list[str] = []
    fenced = False
    for line in markdown.split("\n"):
        if _FENCE.match(line.strip()):
            fenced = not fenced
        if not fenced and not line.strip() and not _FENCE.match(line.strip()):
            if current:
                out.append("\n".join(current))
                current = []
            continue
        current.append(line)
    if current:
        out.append("\n".join(current))
    return out


def translatable(block: str) -> bool:
    """Text worth translating: has letters, and is not one fenced code block."""
    return bool(re.search(r"[A-Za-z]", block)) and not _FENCE.match(block.strip())


def extract(notebook: Path, root: Path = ROOT) -> list[Source]:
    nb = nbformat.read(notebook, as_version=4)
    name = notebook.relative_to(root).as_posix()
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        for block in blocks(cell.source):
            if translatable(block):
                found.append(Source(msgid=block, msgctxt=name, comment=f"cell {index}"))
    return found


def update(notebook: Path, lang: str, root: Path = ROOT) -> tuple[Path, catalog.Audit, bool]:
    """Merge the notebook's current English into its catalog; (path, audit, written)."""
    path = catalog_path(notebook, lang, root)
    po = catalog.merge(catalog.load(path, lang, "lazymoe notebooks"), extract(notebook, root))
    written = catalog.save(po, path)
    return path, catalog.audit(po), written


def _translations(notebook: Path, lang: str, root: Path) -> dict[str, str]:
    path = catalog_path(notebook, lang, root)
    if not path.exists():
        return {}
    po = catalog.load(path, lang, "lazymoe notebooks")
    return {e.msgid: e.msgstr for e in po if e.msgstr and not e.fuzzy and not e.obsolete}


def _relink(text: str, source_dir: Path, target_dir: Path, lang: str, root: Path) -> str:
    """Rewrite relative links so they still point at the right file from the translated copy: a
    notebook's translated twin, a figure's translated copy (figures/ko/x.svg) where there is one."""

    def fix(match: re.Match) -> str:
        link = match.group(2)
        if re.match(r"^[a-z]+:|^#|^/", link):
            return match.group(0)
        path, _, anchor = link.partition("#")
        target = (source_dir / path).resolve()
        if target.suffix == ".ipynb" and target.parent.name in FOLDERS:
            target = target_path(target, lang)  # a notebook links to its translated twin
        elif (target.parent / lang / target.name).exists():
            target = target.parent / lang / target.name  # a figure drawn in this language
        new = posixpath.relpath(target.as_posix(), target_dir.resolve().as_posix())
        return match.group(1) + new + ("#" + anchor if anchor else "")

    return _LINK.sub(fix, text)


def build_notebook(notebook: Path, lang: str, root: Path = ROOT) -> nbformat.NotebookNode:
    """The translated notebook, in memory: text from the catalog (English where none yet)."""
    nb = nbformat.read(notebook, as_version=4)
    out = copy.deepcopy(nb)
    table = _translations(notebook, lang, root)
    target_dir = target_path(notebook, lang).parent
    for cell in out.cells:
        if cell.cell_type != "markdown":
            continue
        parts = [table.get(b, b) if translatable(b) else b for b in blocks(cell.source)]
        cell.source = _relink("\n\n".join(parts), notebook.parent, target_dir, lang, root)
    first_code = next((i for i, c in enumerate(out.cells) if c.cell_type == "code"), len(out.cells))
    out.cells.insert(first_code, nbformat.v4.new_code_cell(LANGUAGE_CELL.format(lang=lang)))
    for cell in out.cells:
        cell.pop("id", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    out.metadata["lazymoe"] = {"language": lang, "source": notebook.name}
    out.nbformat, out.nbformat_minor = 4, 4
    return out


def _text(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class BuildReport:
    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # edited by a learner: left alone


def build(lang: str, root: Path = ROOT, notebooks: list[Path] | None = None) -> BuildReport:
    """Write the translated notebooks that are missing or untouched since the last build."""
    report = BuildReport()
    manifests: dict[Path, dict[str, str]] = {}
    for notebook in notebooks or sources(root):
        target = target_path(notebook, lang)
        manifest_path = target.parent / MANIFEST
        manifest = manifests.setdefault(manifest_path, _read_manifest(manifest_path))
        text = _text(build_notebook(notebook, lang, root))
        if target.exists():
            current = target.read_text(encoding="utf-8")
            if current == text:
                manifest[target.name] = _digest(text)
                report.unchanged.append(target)
                continue
            if manifest.get(target.name) != _digest(current):
                report.skipped.append(target)
                continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".ipynb.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
        manifest[target.name] = _digest(text)
        report.written.append(target)
    for path, manifest in manifests.items():
        text = json.dumps(dict(sorted(manifest.items())), indent=1) + "\n"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return report


def _read_manifest(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@dataclass
class Problem:
    notebook: Path
    what: str


def check(lang: str, root: Path = ROOT) -> list[Problem]:
    """Everything that would make the translated edition stale (an empty list: all good)."""
    problems = []
    for notebook in sources(root):
        path = catalog_path(notebook, lang, root)
        rel = notebook.relative_to(root)
        if not path.exists():
            problems.append(Problem(rel, f"no catalog {path.relative_to(root)}: run `python -m lazymoe.i18n update`"))
            continue
        po = catalog.load(path, lang, "lazymoe notebooks")
        merged = catalog.merge(po, extract(notebook, root))
        if not catalog.same_texts(merged, po):
            problems.append(Problem(rel, "its English changed since the catalog was updated: run "
                                         "`python -m lazymoe.i18n update`, then translate or review"))
        result = catalog.audit(merged)
        for label in result.fuzzy:
            problems.append(Problem(rel, f"needs review (English changed): {label}"))
        for label in result.missing:
            problems.append(Problem(rel, f"not translated: {label}"))
        target = target_path(notebook, lang)
        if not target.exists() or target.read_text(encoding="utf-8") != _text(build_notebook(notebook, lang, root)):
            problems.append(Problem(rel, f"{target.relative_to(root)} is not what its sources build: "
                                         "run `python -m lazymoe.i18n build`"))
    return problems
