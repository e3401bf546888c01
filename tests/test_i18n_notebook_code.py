"""The English notebooks' code cells print in the learner's language.

The Korean notebooks share their code cells with the English ones, so an English sentence printed by a
code cell reaches the Korean learner untranslated unless it goes through `_()`
(`_("{n} tokens in {s:.1f} s").format(n=..., s=...)`; the extractor cannot see an f-string).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from lazymoe.i18n.notebooks import sources

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sources(REPO)
IDS = [p.relative_to(REPO).as_posix() for p in NOTEBOOKS]
LETTERS = re.compile(r"[A-Za-z]{2,}")
# Units are not words: "12.3 MB/token  4.5 ms/token  222 tok/s" is a row of numbers, not a sentence.
UNITS = {
    "ms",
    "µs",
    "us",
    "s",
    "tok/s",
    "MB",
    "GB",
    "kB",
    "MiB",
    "GiB",
    "GB/s",
    "GFLOP/s",
    "MB/token",
    "ms/token",
}
MIN_WORDS = 3  # "bound 12.3 tok/s" is a label and a number; three words make a sentence

# Printed literals that are code, not prose: (notebook, the literal's text) -> why it stays as it is.
ALLOWED = {
    (
        "course/03_quantization.ipynb",
        'elif fmt.kind == "int4"',
    ): "Python source the cell cuts at, not text",
}


def _text(node: ast.AST) -> str | None:
    """The literal text of a string or an f-string (its {fields} left out), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return " ".join(part.value for part in node.values if isinstance(part, ast.Constant))
    return None


def _words(text: str) -> list[str]:
    """Words of prose: whitespace-separated, with letters, not a unit ("hidden_size" alone is one)."""
    return [w for w in text.split() if LETTERS.search(w) and w.strip(".,:;()[]") not in UNITS]


def _is_gettext(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("_", "ngettext")
    )


def printed_prose(source: str) -> list[str]:
    """Every string literal of three words or more passed to print() and not marked with _()."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a cell with IPython magics
        return []
    found = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "print"
        ):
            continue
        stack = list(node.args)
        while stack:
            arg = stack.pop()
            if _is_gettext(arg):
                continue
            text = _text(arg)
            if text is None:
                stack.extend(ast.iter_child_nodes(arg))
            elif len(_words(text)) >= MIN_WORDS:
                found.append(text)
    return found


def _code_cells(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_printed_sentences_go_through_gettext(path):
    where = path.relative_to(REPO).as_posix()
    unmarked = [
        text
        for source in _code_cells(path)
        for text in printed_prose(source)
        if (where, text) not in ALLOWED
    ]
    assert not unmarked, (
        f"{where}: {len(unmarked)} printed sentence(s) would stay English in the Korean notebook; write "
        f'_("...").format(...) with `from lazymoe.i18n import _` (or explain one in ALLOWED): {unmarked[:5]}'
    )


def test_every_allowed_literal_is_still_printed():
    printed = {
        (p.relative_to(REPO).as_posix(), text)
        for p in NOTEBOOKS
        for source in _code_cells(p)
        for text in printed_prose(source)
    }
    assert set(ALLOWED) <= printed, (
        f"no longer printed, remove from ALLOWED: {set(ALLOWED) - printed}"
    )


def _top_level_stores(tree: ast.Module) -> list[int]:
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            return
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return  # comprehension variables do not leak
        if isinstance(node, ast.Name) and node.id == "_" and isinstance(node.ctx, ast.Store):
            found.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_gettext_is_imported_before_use_and_never_overwritten(path):
    """`_` is imported once, early; a cell that writes `for x, _ in ...` would silence every later `_()`."""
    imported = False
    for index, source in enumerate(_code_cells(path)):
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        uses = any(_is_gettext(n) for n in ast.walk(tree))
        imports = any(
            isinstance(n, ast.ImportFrom)
            and n.module == "lazymoe.i18n"
            and any(a.name == "_" for a in n.names)
            for n in tree.body
        )
        assert not (uses and not imported and not imports), (
            f"{path.name}, code cell {index}: _() before its import"
        )
        imported = imported or imports
        stores = _top_level_stores(tree)
        assert not stores, (
            f"{path.name}, code cell {index}, line {stores[0]}: assigns `_`, hiding the translations"
        )
