"""The engine's command-line options, defined once from `EngineConfig`'s fields.

    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)                      # --model, --device, ..., --decode
    config = EngineConfig.from_args(parser.parse_args())

`lazymoe run`, `lazymoe serve` and `lazymoe bench` all call `add_engine_arguments`, so an option
added to `EngineConfig` (a field with `cli(...)` metadata) reaches every front end with the same
name, help, choices and default. The bench sweeps some options (`sweep=`: several values, one row
each) and changes some defaults (`defaults=`), in one visible place (`lazymoe.bench.cli`).

The model may also come first as a word (`lazymoe run model.gguf "def "`, `lazymoe bench DIR`):
`model_and_prompt` and `check_model_path` turn the words and --model into one checked path.

How a field is marked (`cli`, `CliOption`) and the option types (`size_arg`, `devices_arg`) live in
the leaf `lazymoe.engine.optionspec`, which config imports too: config never imports this module.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from lazymoe.engine.config import EngineConfig

# re-exported: code that imports them from here keeps working
from lazymoe.engine.optionspec import (  # noqa: F401
    CliOption,
    cli,
    devices_arg,
    option_fields,
    parse_devices,
    size_arg,
)
from lazymoe.i18n import _

# argparse's _ActionsContainer: an ArgumentParser or one of its argument groups
ArgumentContainer = argparse.ArgumentParser | argparse._ArgumentGroup


def cli_fields(config_cls: type = EngineConfig) -> list[dataclasses.Field]:
    """The fields of `config_cls` (default `EngineConfig`) that are command-line options."""
    return option_fields(config_cls)


def engine_flags() -> dict[str, str]:
    """Field name -> its flag ("model_path" -> "--model"), for every engine option."""
    return {f.name: f.metadata["cli"].flag_for(f.name) for f in cli_fields()}


class _Sweep(argparse.Action):
    """nargs="+" and repeatable (`--model A --model B` or `--model A B`): the values given
    replace the default."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        current = getattr(namespace, self.dest, None)
        kept = [] if current is self.default or current is None else list(current)
        setattr(namespace, self.dest, [*kept, *values])


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return None  # model_path: None on the command line means the bundled model


def add_engine_arguments(
    parser: ArgumentContainer,
    *,
    sweep: Collection[str] = (),
    defaults: Mapping[str, Any] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> None:
    """Add every engine option of `EngineConfig` to `parser` (dest: the field name).

    sweep: field names that take several values (`nargs="+"`, a list in the namespace; the bench
        runs one configuration per combination). A swept switch is not supported.
    defaults: field name -> a default other than the dataclass's (a list for a swept field).
    aliases: field name -> one more flag for it (old spellings that scripts still use).
    """
    defaults = dict(defaults or {})
    aliases = dict(aliases or {})
    fields = {f.name: f for f in cli_fields()}
    unknown = (set(sweep) | set(defaults) | set(aliases)) - set(fields)
    if unknown:
        raise ValueError(f"not engine options: {sorted(unknown)}; they are {sorted(fields)}")
    for name, f in fields.items():
        how: CliOption = f.metadata["cli"]
        flags = [how.flag_for(name)] + ([aliases[name]] if name in aliases else [])
        default = defaults.get(name, _field_default(f))
        if name in sweep and default is not None and not isinstance(default, list):
            default = [default]  # a swept option holds a list, defaults too
        if how.switch:
            if name in sweep:
                raise ValueError(f"{name} is a switch: it cannot be swept")
            # the flag says what it turns on or off; the field keeps its plain meaning
            action = "store_false" if default else "store_true"
            parser.add_argument(*flags, dest=name, action=action, default=default, help=_(how.help))
            continue
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
        shown = _(how.none_means) if shown is None and how.none_means else shown
        help_text = _(how.help)  # the learner's language (the catalog holds config.py's texts)
        if shown is not None:
            help_text = _("{help} (default: {default})").format(help=help_text, default=shown)
        if name in sweep:
            help_text += _("; several values: one run each")
        parser.add_argument(
            *flags,
            dest=name,
            default=default,
            type=how.type,
            choices=how.choices,
            metavar=how.metavar,
            **({"nargs": "+", "action": _Sweep} if name in sweep else {}),
            help=help_text.replace("%", "%%"),
        )


# -- the model as a positional argument (`lazymoe run model.gguf`), beside --model -------------
class ModelPathError(ValueError):
    """A model path that names no model: the message says which path and what to give."""


WHAT_TO_GIVE = "give a .gguf file, or a model folder (config.json, *.safetensors, tokenizer.json)"


def looks_like_model(word: str) -> bool:
    """Whether a lone positional word means a model rather than a prompt: a name ending in .gguf
    (existing or not, so a typo gets "does not exist", not a story about it) or an existing folder."""
    return word.lower().endswith(".gguf") or Path(word).is_dir()


def check_model_path(path: str | Path) -> Path:
    """`path` if it names a model: a GGUF file (it starts with the bytes 'GGUF') or a folder with
    config.json. Otherwise ModelPathError naming the path, what is there, and what to give."""
    path = Path(path)
    if not path.exists():
        near = sorted(path.parent.glob("*.gguf"))[:5] if path.parent.is_dir() else []
        hint = f" (.gguf files in {path.parent}: {', '.join(p.name for p in near)})" if near else ""
        raise ModelPathError(f"{path} does not exist{hint}: {WHAT_TO_GIVE}")
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            names = ", ".join(str(p) for p in ggufs[:5])
            raise ModelPathError(f"{path} is a folder without config.json that holds GGUF files: "
                                 f"give one of them ({names})")
        raise ModelPathError(f"{path} is a folder without config.json, so not a model folder: "
                             f"{WHAT_TO_GIVE}")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return path
    if path.suffix.lower() == ".gguf":
        raise ModelPathError(f"{path} does not start with the bytes 'GGUF', so it is not a GGUF "
                             "file (an unfinished download, or a web page saved under that name?): "
                             "download it again")
    raise ModelPathError(f"{path} is a file but not a model: {WHAT_TO_GIVE}")


def same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def model_and_prompt(words: list[str], model_flag: str | Path | None,
                     default_prompt: str) -> tuple[Path | None, str]:
    """(model path, prompt) from `lazymoe run`'s positional words and its --model.

        lazymoe run "def fib(n):"             the prompt; the model from --model, else the bundled one
        lazymoe run model.gguf                the model (a .gguf name or a folder); the default prompt
        lazymoe run model.gguf "def fib(n):"  both, model first
    The model is checked (`check_model_path`); given both ways and different, ModelPathError.
    None: no model given (the bundled model).
    """
    if len(words) > 2:
        raise ModelPathError(f"{len(words)} words before or after the options: give at most a "
                             "model and one prompt, and put quotes around a prompt with spaces "
                             "(lazymoe run model.gguf \"def fib(n):\")")
    model = None
    if len(words) == 2 or (len(words) == 1 and looks_like_model(words[0])):
        model, words = words[0], words[1:]
    prompt = words[0] if words else default_prompt
    if model is not None and model_flag is not None and not same_path(model, model_flag):
        raise ModelPathError(f"two models: {model} and --model {model_flag}: give one of them")
    if model is None:
        return (check_model_path(model_flag) if model_flag is not None else None), prompt
    try:
        return check_model_path(model), prompt
    except ModelPathError as exc:
        if looks_like_model(model):
            raise
        raise ModelPathError(f"{exc}. If {model!r} is the start of the prompt, put quotes around "
                             "the whole prompt") from None
