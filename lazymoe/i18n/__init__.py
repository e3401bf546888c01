"""Languages: English is the source, Korean is built from gettext catalogs.

    language.py   which language a learner gets: LAZYMOE_LANG, else the system locale, else English
    messages.py   `_("...")` for the package's own messages, from lazymoe/locale/<lang>/LC_MESSAGES
    catalog.py    reading and merging PO catalogs (new entries empty, changed ones fuzzy)
    notebooks.py  notebooks' text as catalogs, and the Korean notebooks built from them
    handkept.py   translations kept by hand (figures, README, quizzes, glossary) and their reviews
    width.py      text columns that line up with Hangul (two terminal cells per syllable)
    cli.py        `python -m lazymoe.i18n update | build | check | reviewed`
"""

from lazymoe.i18n.language import LANGUAGES, current_language, set_language
from lazymoe.i18n.messages import _, ngettext

__all__ = ["LANGUAGES", "_", "current_language", "ngettext", "set_language"]
