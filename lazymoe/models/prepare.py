"""Make sure the bundled tiny model is in place (what `make data` runs).

    python -m lazymoe.models.prepare            # present and valid: say so; missing: build it
    python -m lazymoe.models.prepare --force    # rebuild by the recipe (about 10 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from lazymoe.i18n import _
from lazymoe.models import bundled
from lazymoe.paths import bundled_model_dir


def rebuild(out_dir: Path) -> None:
    """Train by the recipe into a temporary folder, write the card, then move it into place."""
    from lazymoe.models import card, recipe

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".building-") as tmp:
        recipe.build(tmp)
        card.write_card(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.move(tmp, out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=_("Ensure the bundled tiny MoE model exists."))
    parser.add_argument("--force", action="store_true", help=_("rebuild even if present"))
    parser.add_argument("--out", type=Path, default=None,
                        help=_("model folder (default: {path})").format(path=bundled_model_dir()))
    args = parser.parse_args(argv)
    out_dir = args.out or bundled_model_dir()
    found = bundled.problems(out_dir)
    if not found and not args.force:
        print(_("tiny-moe model present and valid: {path}").format(path=out_dir))
        return 0
    if found:
        print(_("tiny-moe model needs building ({problems})").format(problems="; ".join(found)))
    print(_("training it by the recipe (lazymoe.models.recipe): ~10 minutes on 2 CPU cores"))
    rebuild(out_dir)
    problems = bundled.problems(out_dir)
    if problems:
        print(_("built, but still wrong: {problems}").format(problems="; ".join(problems)), file=sys.stderr)
        return 1
    print(_("built {path}").format(path=out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
