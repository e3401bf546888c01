"""Notebook housekeeping: strip outputs, find notebooks with outputs, build from percent format.

    python -m lazymoe.nbtools strip course labs        # remove outputs in place
    python -m lazymoe.nbtools check course labs        # exit 1 if any notebook has outputs
    python -m lazymoe.nbtools build src.py out.ipynb   # `# %%` / `# %% [markdown]` cells -> .ipynb
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def notebooks(*folders: str | Path) -> list[Path]:
    return sorted(p for folder in folders for p in Path(folder).glob("*.ipynb"))


def has_outputs(nb: nbformat.NotebookNode) -> bool:
    return any(
        cell.get("outputs") or cell.get("execution_count") is not None
        for cell in nb.cells
        if cell.cell_type == "code"
    )


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    return nb


def from_percent(text: str) -> nbformat.NotebookNode:
    """Cells start at lines `# %%` (code) or `# %% [markdown]` (markdown, lines prefixed `# `)."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            cells[-1][1].append(line)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, lines in cells:
        while lines and not lines[-1].strip():
            lines.pop()
        if kind == "markdown":
            body = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines)
            nb.cells.append(nbformat.v4.new_markdown_cell(body))
        else:
            nb.cells.append(nbformat.v4.new_code_cell("\n".join(lines)))
    for cell in nb.cells:  # stable ids keep diffs small
        cell.pop("id", None)
    nb.nbformat, nb.nbformat_minor = 4, 4
    return nb


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    command, *rest = argv
    if command == "build":
        src, dst = rest
        nbformat.write(from_percent(Path(src).read_text()), dst)
        return 0
    dirty = []
    for path in notebooks(*rest):
        nb = nbformat.read(path, as_version=4)
        if has_outputs(nb):
            dirty.append(path)
            if command == "strip":
                nbformat.write(strip(nb), path)
    verb = "stripped" if command == "strip" else "have outputs"
    for path in dirty:
        print(f"{verb}: {path}")
    return 1 if (dirty and command == "check") else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
