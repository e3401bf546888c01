"""Which lazymoe module imports which, read from the source (for the import-loop tests).

An import counts wherever it runs: at the top of a file, inside a function or a class. One under
`if TYPE_CHECKING:` does not (it never runs), nor one under `if __name__ == "__main__":` (it runs
only when the file is the program, and then the file is `__main__`, not the module). `from package import Name` counts as importing the
module that defines Name, also when the package hands it out lazily (`lazymoe.engine.Engine`).
A module's parent packages, which Python runs first, are not counted.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import lazymoe

ROOT = Path(lazymoe.__file__).parent


def module_paths() -> dict[str, Path]:
    """'lazymoe.engine.config' -> its file, for every module of the package ('lazymoe.engine' ->
    its __init__.py)."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _never_runs_on_import(test: ast.expr) -> bool:
    """`TYPE_CHECKING`, `typing.TYPE_CHECKING` or `__name__ == "__main__"`."""
    if (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
    ):
        return any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements under `node` that run when its module is imported."""
    for child in ast.iter_child_nodes(node):
        kept = (
            child.orelse
            if isinstance(child, ast.If) and _never_runs_on_import(child.test)
            else [child]
        )
        for statement in kept:
            if isinstance(statement, ast.Import | ast.ImportFrom):
                yield statement
            else:
                yield from runtime_imports(statement)


def import_graph() -> dict[str, set[str]]:
    """Module -> the lazymoe modules it imports at run time."""
    modules = module_paths()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name in modules}
                continue
            base = node.module or ""
            if node.level:  # from .x import y / from .. import y
                kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*kept, base] if base else kept)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:  # a submodule
                    found.add(f"{base}.{alias.name}")
                elif base in modules:
                    target = base
                    if modules[base].name == "__init__.py":  # a name a package hands out
                        value = getattr(importlib.import_module(base), alias.name, None)
                        target = getattr(value, "__module__", None) or base
                    if target in modules:
                        found.add(target)
        found.discard(name)
        graph[name] = found
    return graph


def import_loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other in a circle (Tarjan's strongly connected
    components of more than one module), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                loops.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(loops)
