"""How a config field becomes a command-line option, and the types those options parse.

A leaf: it imports nothing from lazymoe. `lazymoe.engine.config` marks `EngineConfig`'s fields
with `cli(...)`; `lazymoe.engine.options` turns the marked fields into argparse arguments. Both
import from here, so neither has to import the other to exist.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


@dataclass(frozen=True)
class CliOption:
    """How an `EngineConfig` field appears on the command line.

    Only fields that carry one (`metadata=cli(...)`) are command-line options: the others
    (objects such as an `EvictionPolicy` instance or a learner's router) are set from Python.
    """

    help: str
    flag: str | None = None  # default: "--" + the field name with dashes
    choices: tuple[str, ...] | None = None
    type: Callable[[str], Any] | None = None  # argparse's type= (str when None)
    switch: bool = (
        False  # a bool field whose flag flips its default (--no-prefetch, --pin-checkpoint)
    )
    metavar: str | None = None
    none_means: str | None = None  # what the field's None default does, for the help

    def flag_for(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")


def cli(help: str, **how: Any) -> dict[str, CliOption]:
    """Field metadata marking a dataclass field as a command-line option."""
    return {"cli": CliOption(help, **how)}


def option_fields(config_cls: type) -> list[dataclasses.Field]:
    """The fields of the dataclass `config_cls` that are command-line options."""
    return [f for f in dataclasses.fields(config_cls) if "cli" in f.metadata]


def parse_bytes(value: str | int | float | None, what: str = "budget") -> int | None:
    """'6GiB' -> 6 * 2**30, '500MB' -> 500 * 10**6, 1024 -> 1024, None -> None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{what}={value!r}: give a size such as '6GiB', '512MiB' or a byte count")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{what}={value!r} is negative: give a size such as '6GiB'")
        return int(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(
            f"{what}={value!r} is not a size: write e.g. '6GiB', '512MiB', '2GB' or a byte count"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def size_arg(text: str) -> str:
    """argparse type for a size: checked with `parse_bytes`, kept as written ('6GiB')."""
    try:
        parse_bytes(text, "size")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def parse_devices(value: str | list | tuple | None) -> tuple[str, ...] | None:
    """'0,1' or (0, 1) -> ('cuda:0', 'cuda:1'); 'cuda' -> 'cuda:0'; 'cpu', 'cuda:1' as they are."""
    if value is None:
        return None
    names = []
    for item in value.split(",") if isinstance(value, str) else value:
        name = str(item).strip().lower()
        name = f"cuda:{name}" if name.isdigit() else "cuda:0" if name == "cuda" else name
        if not re.fullmatch(r"cpu|cuda:[0-9]+", name):
            raise ValueError(
                f"devices: {item!r} is not a device: give GPU indices such as 0,1 or "
                "device names such as cuda:1 or cpu"
            )
        names.append(name)
    return tuple(names)


def devices_arg(text: str) -> tuple[str, ...]:
    """argparse type for --gpus: '0,1' -> ('cuda:0', 'cuda:1'), checked with `parse_devices`."""
    try:
        return parse_devices(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
