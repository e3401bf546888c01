"""`lazymoe` on the command line.

Each subcommand lives in the module that owns it and exposes two functions:
`add_arguments(parser)` and `run(args) -> int`. This file only dispatches, so that
`lazymoe doctor` works even when the engine's heavier imports would fail.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("lazymoe.doctor", "check this machine and the install; say what to fix"),
    "calc": ("lazymoe.calculator.cli", "bandwidth-bound speed calculator (memory, tok/s, bottleneck)"),
    "run": ("lazymoe.engine.cli", "generate text with the expert-caching engine"),
    "bench": ("lazymoe.bench.cli", "benchmark lazymoe against llama.cpp CPU-MoE and baselines"),
    "serve": ("lazymoe.server.cli", "OpenAI-compatible HTTP server over the engine"),
    "progress": ("lazymoe.quiz.cli", "your quiz scores per module"),
    "lab": ("lazymoe.lab", "check the model, run the doctor, start JupyterLab on the course (no make needed)"),
    "hub": ("lazymoe.hub.cli", "the course in a browser for the group (JupyterHub) and members' passwords"),
}
PASS_THROUGH = {"lab"}  # commands that hand arguments they do not know to another program


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lazymoe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # a part not installed or not built yet
            sub_parser.set_defaults(_import_error=exc)
            continue
        module.add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if args.command not in PASS_THROUGH:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.lab_args = [*getattr(args, "lab_args", []), *unknown]
    if args.command is None:
        parser.print_help()
        return 2
    error = getattr(args, "_import_error", None)
    if error is not None:
        print(
            f"lazymoe {args.command}: cannot load {args._module} ({error}).\n"
            "Run `lazymoe doctor` to see which dependency is missing.",
            file=sys.stderr,
        )
        return 1
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
