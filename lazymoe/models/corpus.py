"""The training text of the bundled model: the Python standard library's own source code.

Every learner who has Python has this text, so the recipe needs no download. Files are taken in
sorted order of their path relative to the stdlib folder, and a file is held out (never trained on)
when the SHA-1 of that relative path falls in a fixed bucket: the split does not depend on the
order in which the file system lists files, nor on which other files exist.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# Folders that are not "ordinary Python code": tests (huge and repetitive), codec tables,
# generated docs, and third-party packages installed next to the stdlib.
EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "encodings",
     "pydoc_data", "__pycache__", "ensurepip", "turtledemo"}
)
MAX_FILE_BYTES = 300_000  # a few generated files are huge tables; skip them
HELDOUT_BUCKETS = 20  # 1 in 20 files is held out (~5 % of the text)


@dataclass(frozen=True)
class SourceFile:
    """One .py file of the corpus: its path relative to the stdlib folder, and its text."""

    relpath: str
    text: str

    @property
    def heldout(self) -> bool:
        digest = hashlib.sha1(self.relpath.encode()).digest()
        return digest[0] % HELDOUT_BUCKETS == 0


def stdlib_dir() -> Path:
    """The folder of the running Python's standard library (e.g. .../lib/python3.11)."""
    return Path(sysconfig.get_paths()["stdlib"])


def _wanted(rel: Path) -> bool:
    parts = rel.parts
    if any(p in EXCLUDED_DIRS or p.startswith("config-") for p in parts[:-1]):
        return False
    return not rel.name.startswith("_sysconfigdata")


def source_files(root: Path | None = None) -> list[SourceFile]:
    """All corpus files under `root` (default: the stdlib), sorted by relative path."""
    root = Path(root) if root is not None else stdlib_dir()
    if not root.is_dir():
        raise FileNotFoundError(
            f"no standard library source at {root}: the recipe trains on it; "
            "install a Python that ships its .py files (most do), or pass root="
        )
    files = []
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root)
        if not _wanted(rel) or not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            files.append(SourceFile(rel.as_posix(), text))
    if not files:
        raise FileNotFoundError(f"no .py files found under {root}")
    return files


def split(files: list[SourceFile]) -> tuple[list[SourceFile], list[SourceFile]]:
    """(train, heldout), each in the corpus' sorted order."""
    train = [f for f in files if not f.heldout]
    heldout = [f for f in files if f.heldout]
    return train, heldout


def fingerprint(files: list[SourceFile]) -> str:
    """A short hash of the corpus (paths and text): two runs trained on the same text agree."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.relpath.encode() + b"\0" + f.text.encode() + b"\0")
    return h.hexdigest()[:16]
