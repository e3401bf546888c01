"""`python -m lazymoe.i18n update | build | check | reviewed [--lang ko]`

    update   merge the current English (notebooks and the package's messages) into the catalogs
    build    write the translated notebooks (course/ko, labs/ko); a learner's edited copy is skipped
    check    exit 1, naming each problem, if any translation is missing, needs review, or is not built
    reviewed PATH...   record that the hand-kept translations of PATH (README.md, docs/instructor.md,
             course/figures/x.svg, data/quizzes/x.yaml[#q1], data/glossary.yaml[#term]) were reviewed
             against their current English (`--all`: every one); see lazymoe/i18n/handkept.py
"""

from __future__ import annotations

import argparse

from lazymoe.i18n import catalog, handkept, messages, notebooks
from lazymoe.i18n.extract import package_messages


def update_messages(lang: str) -> tuple[catalog.Audit, bool]:
    path = messages.catalog_path(lang)
    po = catalog.merge(catalog.load(path, lang, "lazymoe"), package_messages())
    return catalog.audit(po), catalog.save(po, path)


def check_messages(lang: str) -> list[str]:
    path = messages.catalog_path(lang)
    if not path.exists():
        return [f"no catalog {path}: run `python -m lazymoe.i18n update`"]
    po = catalog.load(path, lang, "lazymoe")
    merged = catalog.merge(po, package_messages())
    problems = []
    if not catalog.same_texts(merged, po):
        problems.append("the package's messages changed since the catalog was updated: "
                        "run `python -m lazymoe.i18n update`, then translate")
    result = catalog.audit(merged)
    problems += [f"needs review (English changed): {m}" for m in result.fuzzy]
    problems += [f"not translated: {m}" for m in result.missing]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lazymoe.i18n", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["update", "build", "check", "reviewed"])
    parser.add_argument("paths", nargs="*", help="reviewed: the hand-kept translations reviewed")
    parser.add_argument("--all", action="store_true", help="reviewed: every hand-kept translation")
    parser.add_argument("--lang", default="ko")
    args = parser.parse_args(argv)
    if args.command == "reviewed":
        if not args.paths and not args.all:
            parser.error("reviewed: name what you reviewed (README.md, data/glossary.yaml#VRAM, ...) or --all")
        try:
            keys = handkept.record(args.lang, None if args.all else args.paths)
        except handkept.UnknownItem as exc:
            parser.error(str(exc))
        print(f"recorded the review of {len(keys)} hand-kept translation(s) in "
              f"{handkept.manifest_path(args.lang).relative_to(notebooks.ROOT)}")
        return 0
    if args.paths:
        parser.error(f"{args.command} takes no paths")
    if args.command == "update":
        audit, written = update_messages(args.lang)
        print(f"package messages: {audit.total} entries, {len(audit.missing)} to translate, "
              f"{len(audit.fuzzy)} to review{' (catalog updated)' if written else ''}")
        for notebook in notebooks.sources():
            path, audit, written = notebooks.update(notebook, args.lang)
            print(f"{notebook.relative_to(notebooks.ROOT)}: {audit.total} paragraphs, "
                  f"{len(audit.missing)} to translate, {len(audit.fuzzy)} to review"
                  f"{' (catalog updated)' if written else ''}")
        return 0
    if args.command == "build":
        report = notebooks.build(args.lang)
        for path in report.written:
            print(f"built   {path.relative_to(notebooks.ROOT)}")
        for path in report.skipped:
            print(f"skipped {path.relative_to(notebooks.ROOT)}: edited since it was built "
                  "(your changes are kept; delete or rename the file to get the new version)")
        print(f"{len(report.written)} built, {len(report.unchanged)} unchanged, {len(report.skipped)} skipped")
        return 0
    problems = [f"package messages: {p}" for p in check_messages(args.lang)]
    problems += [f"{p.notebook}: {p.what}" for p in notebooks.check(args.lang)]
    problems += [f"hand-kept: {p}" for p in handkept.problems(args.lang)]
    for line in problems[:200]:
        print(line)
    if len(problems) > 200:
        print(f"... and {len(problems) - 200} more")
    print(f"{args.lang}: {'OK' if not problems else f'{len(problems)} problems'}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
