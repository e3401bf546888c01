"""`lazymoe` on the command line.

Each subcommand lives in the module that owns it and exposes two functions:
`add_arguments(parser)` and `run(args) -> int`. This file only dispatches, so that
`lazymoe doctor` works even when the engine's heavier imports would fail.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lazymoe.i18n import _

# name -> (module, one-line help); the help is marked for the catalog, kept in English here
# (lang="en") and translated when the parser is built
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("lazymoe.doctor", _("check this machine and the install; say what to fix", lang="en")),
    "calc": ("lazymoe.calculator.cli", _("bandwidth-bound speed calculator (memory, tok/s, bottleneck)", lang="en")),
    "run": ("lazymoe.engine.cli", _("generate text with the expert-caching engine", lang="en")),
    "bench": ("lazymoe.bench.cli", _("benchmark lazymoe against llama.cpp CPU-MoE and baselines", lang="en")),
    "serve": ("lazymoe.server.cli", _("OpenAI-compatible HTTP server over the engine", lang="en")),
    "progress": ("lazymoe.quiz.cli", _("your quiz scores per module", lang="en")),
    "lab": ("lazymoe.lab", _("check the model, run the doctor, start JupyterLab on the course (no make needed)", lang="en")),
    "hub": ("lazymoe.hub.cli", _("the course in a browser for the group (JupyterHub) and members' passwords", lang="en")),
}
PASS_THROUGH = {"lab"}  # commands that hand arguments they do not know to another program


def _localize(parser: argparse.ArgumentParser) -> None:
    """argparse's own words (usage, the section titles, -h's help) in the learner's language."""
    parser._positionals.title = _("positional arguments")
    parser._optionals.title = _("options")
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            action.help = _("show this help message and exit")
    base = parser.formatter_class
    usage = _("usage: ")

    class Formatter(base):  # type: ignore[misc, valid-type]
        def add_usage(self, text, actions, groups, prefix=None):
            super().add_usage(text, actions, groups, usage if prefix is None else prefix)

    parser.formatter_class = Formatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lazymoe",
        description=_("lazymoe on the command line: `lazymoe COMMAND --help` shows one command's options"))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title=_("commands"))
    _localize(parser)
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=_(help_text), description=_(help_text))
        sub_parser.set_defaults(_module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # a part not installed or not built yet
            sub_parser.set_defaults(_import_error=exc)
            continue
        module.add_arguments(sub_parser)
        _localize(sub_parser)  # after: a module may set its own formatter
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if args.command not in PASS_THROUGH:
            parser.error(_("unrecognized arguments: {arguments}").format(arguments=" ".join(unknown)))
        args.lab_args = [*getattr(args, "lab_args", []), *unknown]
    if args.command is None:
        parser.print_help()
        return 2
    error = getattr(args, "_import_error", None)
    if error is not None:
        print(
            _("lazymoe {command}: cannot load {module} ({error}).\n"
              "Run `lazymoe doctor` to see which dependency is missing.").format(
                command=args.command, module=args._module, error=error),
            file=sys.stderr,
        )
        return 1
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
