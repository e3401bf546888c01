"""Find the package's translatable messages: string literals passed to `_`, `gettext`, `ngettext`.

    _("Your machine has {ram_gb:.0f} GB of RAM")            -> msgid
    _("Hit rate", context="calculator chart")               -> msgid with msgctxt
    ngettext("{n} attempt", "{n} attempts", n)              -> msgid + msgid_plural
    cli("VRAM for cached experts", none_means="all free")   -> both texts (an engine option's help,
                                                               lazymoe.engine.optionspec; translated
                                                               where argparse receives it)

Notebooks' code cells are shared by every language, so a chart title or an axis label in a code cell
is written `_("Decode speed")` there too (with `from lazymoe.i18n import _`), and found the same way.
"""

from __future__ import annotations

import ast
from pathlib import Path

from lazymoe.i18n.catalog import Source

PACKAGE = Path(__file__).resolve().parents[1]
_NAMES = {"_", "gettext"}


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def messages_in(path: Path, package: Path = PACKAGE) -> list[Source]:
    return messages_in_source(path.read_text(encoding="utf-8"), path.relative_to(package.parent).as_posix())


def messages_in_source(source: str, where: str) -> list[Source]:
    try:
        tree = ast.parse(source, filename=where)
    except SyntaxError:  # a notebook cell with IPython magics: no messages there
        return []
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        if name in _NAMES and node.args and (msgid := _literal(node.args[0])) is not None:
            context = next((_literal(k.value) for k in node.keywords if k.arg == "context"), None)
            found.append(Source(msgid=msgid, msgctxt=context, comment=f"{where}:{node.lineno}"))
        elif name == "cli" and isinstance(node.func, ast.Name):
            texts = [node.args[0] if node.args else None]
            texts += [k.value for k in node.keywords if k.arg in ("help", "none_means")]
            for text in filter(None, map(_literal, filter(None, texts))):
                found.append(Source(msgid=text, comment=f"{where}:{node.lineno} (command-line help)"))
        elif name == "ngettext" and len(node.args) >= 2:
            singular, plural = _literal(node.args[0]), _literal(node.args[1])
            if singular is not None and plural is not None:
                found.append(Source(msgid=singular, msgid_plural=plural, comment=f"{where}:{node.lineno}"))
    return found


def notebook_messages(notebook: Path, root: Path) -> list[Source]:
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    where = notebook.relative_to(root).as_posix()
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            found.extend(messages_in_source(cell.source, f"{where}, cell {index}"))
    return found


def package_messages(package: Path = PACKAGE) -> list[Source]:
    """Every message of the package and of the English notebooks' code cells, in file order."""
    found: list[Source] = []
    for path in sorted(package.rglob("*.py")):
        if "i18n" in path.relative_to(package).parts:
            continue
        found.extend(messages_in(path, package))
    from lazymoe.i18n.notebooks import sources

    for notebook in sources(package.parent):
        found.extend(notebook_messages(notebook, package.parent))
    return found
