"""`lazymoe progress`: your quiz scores per module and overall.

    lazymoe progress                  # the table
    lazymoe progress --module 01      # one module's questions, how each stands
    lazymoe progress --json           # machine-readable
    lazymoe progress --reset 01       # forget module 01's answers (or --reset all)
"""

from __future__ import annotations

import argparse
import json

from lazymoe import quiz
from lazymoe.i18n import _, set_language
from lazymoe.i18n.width import cells, pad
from lazymoe.quiz import text
from lazymoe.quiz.loading import normalize_module
from lazymoe.quiz.progress import ExerciseRecord


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--module", help=_("show one module's questions (e.g. 01)"))
    parser.add_argument("--json", action="store_true", help=_("print JSON instead of a table"))
    parser.add_argument("--reset", metavar="MODULE", help=_("forget a module's answers ('all': every module)"))
    parser.add_argument("--lang", choices=["en", "ko"], default=None,
                        help=_("language of the titles and words (default: LAZYMOE_LANG, else the system locale)"))


def table(scores: list[quiz.ModuleScore], lang: str = "en") -> str:
    """One row per module, then the overall first-attempt score (right first time / all questions)."""
    rows = [(_("module"), _("title"), _("answered"), _("solved"), _("first try"), _("score"))]
    for s in scores:
        rows.append((s.module, s.title.get(lang)[:42], f"{s.answered}/{s.total}",
                     f"{s.solved}/{s.total}", f"{s.first_try}/{s.total}", f"{s.percent:.0f}%"))
    total = sum(s.total for s in scores)
    first = sum(s.first_try for s in scores)
    rows.append((_("all"), "", f"{sum(s.answered for s in scores)}/{total}",
                 f"{sum(s.solved for s in scores)}/{total}", f"{first}/{total}",
                 f"{100 * first / total:.0f}%" if total else "-"))
    widths = [max(cells(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(pad(c, w, "<" if i < 2 else ">") for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))) for row in rows]
    lines.insert(1, "-" * cells(lines[0]))
    lines.insert(len(lines) - 1, "-" * cells(lines[0]))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.lang:  # every word of the output, not only the titles
        set_language(args.lang)
    lang = args.lang or quiz.default_lang()
    store = quiz.ProgressStore()
    if args.reset:
        module = None if args.reset == "all" else normalize_module(args.reset)
        store.reset(module)
        which = _("every module") if module is None else _("module {module}").format(module=module)
        print(_("Forgot the answers of {which} in {path}.").format(which=which, path=store.path))
        return 0
    try:
        if args.module:
            bank = quiz.load_bank(args.module)
            print(text.bank_text(bank, lang, store.records(bank.module),
                                 quiz.score(bank, store).summary(lang)))
            return 0
        scores = quiz.all_scores(store)
    except quiz.QuizError as exc:
        print(f"lazymoe progress: {exc}")
        return 1
    for notice in store.notices:
        print(_("note: {notice}").format(notice=notice))
    if args.json:
        print(json.dumps([{"module": s.module, "title": s.title.en, "total": s.total,
                           "answered": s.answered, "solved": s.solved, "first_try": s.first_try,
                           "attempts": s.attempts} for s in scores], indent=1))
        return 0
    print(_("Quiz progress ({path}); the score counts answers right at the first attempt.").format(
        path=store.path) + "\n")
    print(table(scores, lang))
    print("\n" + _("Lab exercises:"))
    print(exercise_table(store))
    return 0


def exercise_table(store: quiz.ProgressStore) -> str:
    """One line per lab exercise tried: solved on the first try, with hints, with the solution."""
    labs = store.load().get("exercises", {})
    lines = [f"  {key:<24} {ExerciseRecord.from_dict(rec).status()}"
             for lab in sorted(labs) for key, rec in sorted(labs[lab].items()) if isinstance(rec, dict)]
    return "\n".join(lines) or "  " + _("none tried yet (each lab's exercises are recorded when you run their checks)")
