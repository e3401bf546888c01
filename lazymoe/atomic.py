"""Write a JSON file so that a crash at any moment leaves the old file or the new one, never half.

The new content goes to a temporary file in the same folder (`.NAME.XXXX.tmp`), which then
replaces the old file in one `os.replace`. Used by everything lazymoe keeps on disk: quiz
progress, the server's keys, the client's config, benchmark results.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


def write_json(path: str | Path, data, *, mode: int | None = None, durable: bool = False, **dump) -> None:
    """Write `data` as JSON to `path` atomically (json.dump keyword arguments in `dump`).

    mode: the file's permission bits (e.g. 0o600 for secrets); None keeps an existing file's
        mode, or the umask's default for a new one.
    durable: fsync the file and its folder, so the new content survives a power cut too.
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    if mode is None:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")  # owner-only
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, **dump)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX; Windows cannot open a folder)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
