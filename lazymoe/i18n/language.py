"""Which language a learner gets.

    LAZYMOE_LANG=ko|en        an explicit choice always wins
    LC_ALL / LC_MESSAGES / LANG, then the system locale: Korean if it starts with "ko" ("ko_KR.UTF-8",
                              Windows' "Korean_Korea")
    otherwise English
"""

from __future__ import annotations

import contextlib
import locale
import os

LANGUAGES = ("en", "ko")
_chosen: str | None = None  # set_language() in this process overrides the environment


class LanguageError(ValueError):
    pass


def _check(lang: str) -> str:
    lang = lang.strip().lower()
    if lang not in LANGUAGES:
        raise LanguageError(f"language {lang!r} is not available: choose one of {', '.join(LANGUAGES)}")
    return lang


def _from_locale() -> str:
    names = [os.environ.get(var, "") for var in ("LC_ALL", "LC_MESSAGES", "LANG")]
    with contextlib.suppress(ValueError):  # an unparsable locale string
        names.append(locale.getlocale()[0] or "")
    for name in names:
        if name and name not in ("C", "POSIX"):
            return "ko" if name.lower().startswith("ko") else "en"
    return "en"


def current_language() -> str:
    """'ko' or 'en': set_language(), else LAZYMOE_LANG, else the locale."""
    if _chosen is not None:
        return _chosen
    explicit = os.environ.get("LAZYMOE_LANG", "").strip()
    if explicit:
        return _check(explicit)
    return _from_locale()


def set_language(lang: str | None) -> None:
    """Choose the language for this process (None: back to LAZYMOE_LANG / the locale)."""
    global _chosen
    _chosen = None if lang is None else _check(lang)
