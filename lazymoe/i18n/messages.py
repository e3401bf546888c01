"""The package's own messages in the learner's language.

    from lazymoe.i18n import _
    print(_("Your machine has {ram_gb:.0f} GB of RAM").format(ram_gb=ram_gb))

Mark the English text with `_()` and format AFTER the lookup, so the catalog holds the template.
Catalogs: lazymoe/locale/<lang>/LC_MESSAGES/lazymoe.po (gettext PO, edited with any PO editor).
An entry that is missing, empty or fuzzy falls back to English here, and fails `make test`.
"""

from __future__ import annotations

import functools
from pathlib import Path

from lazymoe.i18n.language import current_language

LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"
DOMAIN = "lazymoe"


def catalog_path(lang: str) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


@functools.cache
def _table(lang: str) -> dict[tuple[str | None, str], list[str]]:
    path = catalog_path(lang)
    if lang == "en" or not path.exists():
        return {}
    import polib

    table: dict[tuple[str | None, str], list[str]] = {}
    for entry in polib.pofile(str(path)):
        if entry.obsolete or entry.fuzzy:
            continue
        if entry.msgid_plural:
            forms = [entry.msgstr_plural[k] for k in sorted(entry.msgstr_plural)]
            if all(forms):
                table[entry.msgctxt, entry.msgid] = forms
        elif entry.msgstr:
            table[entry.msgctxt, entry.msgid] = [entry.msgstr]
    return table


def gettext(message: str, context: str | None = None, lang: str | None = None) -> str:
    forms = _table(lang or current_language()).get((context, message))
    return forms[0] if forms else message


def ngettext(singular: str, plural: str, n: int, lang: str | None = None) -> str:
    forms = _table(lang or current_language()).get((None, singular))
    if forms:  # Korean has one plural form
        return forms[min(len(forms) - 1, 0 if n == 1 else 1)]
    return singular if n == 1 else plural


_ = gettext


def reload() -> None:
    """Forget loaded catalogs (after editing a PO file in a running kernel)."""
    _table.cache_clear()
