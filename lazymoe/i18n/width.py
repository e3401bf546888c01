"""Text columns that line up in a terminal whatever the language: a Hangul syllable takes two cells.

pad("측정", 10)            -> "측정      "   (4 cells of text + 6 spaces)
pad("GB/s", 9, ">")        -> "     GB/s"
"""

from __future__ import annotations

import unicodedata


def cells(text: str) -> int:
    """Terminal cells `text` takes: 2 for wide (East Asian) characters, 1 for the rest."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def pad(text: str, width: int, align: str = "<") -> str:
    """`text` padded with spaces to `width` cells, on the right ("<") or on the left (">")."""
    fill = " " * max(0, width - cells(text))
    return fill + text if align == ">" else text + fill
