"""Checks for lab05b (the expert store). They never raise on a wrong answer: they say what is wrong.

    check_expert_nbytes(fn)   fn(config: dict) -> bytes of one routed expert
    check_read_expert(fn)     fn(path, header, layer, expert) -> (gate, up, down) read by byte range

The first compares with the store's own `expert_nbytes` on the bundled model and on the configs
of two real Qwen3-MoE models (where the intermediate size differs from the hidden size, so every
usual mistake shows). The second compares, bit for bit, with `ExpertStore.read` on the bundled
checkpoint, and when the bytes differ it finds where in the file they came from.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lazymoe.engine.storage.store import ExpertStore
from lazymoe.exercises.base import CheckResult, explain_error, failed, not_started, passed
from lazymoe.exercises.solutions import tracked
from lazymoe.i18n import _
from lazymoe.models.archs import get_arch
from lazymoe.paths import bundled_model_dir

ROLES = ("gate", "up", "down")
# config.json fields of two real Qwen3-MoE models, as published at huggingface.co/Qwen/<name>.
REAL_CONFIGS = {
    "Qwen3-30B-A3B": {
        "model_type": "qwen3_moe", "hidden_size": 2048, "moe_intermediate_size": 768,
        "intermediate_size": 6144, "num_hidden_layers": 48, "num_experts": 128,
        "num_experts_per_tok": 8, "dtype": "bfloat16",
    },
    "Qwen3-235B-A22B": {
        "model_type": "qwen3_moe", "hidden_size": 4096, "moe_intermediate_size": 1536,
        "intermediate_size": 12288, "num_hidden_layers": 94, "num_experts": 128,
        "num_experts_per_tok": 8, "dtype": "bfloat16",
    },
}  # fmt: skip


def bundled_config() -> dict:
    return json.loads((bundled_model_dir() / "config.json").read_text())


def dtype_nbytes(config: dict) -> int:
    """Bytes per element of the config's dtype ("float32" -> 4, "bfloat16" -> 2)."""
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return getattr(torch, name).itemsize


def reference_expert_nbytes(config: dict) -> int:
    """3 x I x D x bytes per element, I the expert's own intermediate size (as ExpertStore does)."""
    intermediate = get_arch(config["model_type"]).expert_width(config)
    return 3 * intermediate * config["hidden_size"] * dtype_nbytes(config)


THREE = _("an expert has three: gate (I x D), up (I x D) and down (D x I)", lang="en")  # translated where used


def _mistakes(config: dict) -> list[tuple[int, str]]:
    """(what a usual wrong formula gives for `config`, the message that explains it)."""
    d, i, b = config["hidden_size"], config["moe_intermediate_size"], dtype_nbytes(config)
    dense = config["intermediate_size"]  # the width of a dense MLP, not of an expert
    return [
        (2 * i * d * b, _('you counted two matrices; {THREE}.').format(THREE=_(THREE))),
        (i * d * b, _('you counted one matrix; {THREE}.').format(THREE=_(THREE))),
        (3 * i * d * b * 8, _('8x too large: you multiplied by bits per element ({value}); a byte is 8 bits, so use {b}.').format(value=8 * b, b=b)),
        (3 * i * d, _('you counted elements, not bytes: multiply by the bytes per element of {value} ({b}).').format(value=config.get('dtype'), b=b)),
        (3 * d * d * b, _("you used hidden_size for both dimensions: one side of each matrix is the expert's intermediate size I.")),
        (3 * dense * d * b, _("you used intermediate_size, the width of a dense MLP layer; an expert's width is moe_intermediate_size.")),
        (3 * dense * d * b * 8, _("you used intermediate_size (a dense MLP's width, use moe_intermediate_size) and bits instead of bytes.")),
    ]  # fmt: skip


@tracked("lab05b.expert_nbytes")
def check_expert_nbytes(fn: Callable[[dict], int]) -> CheckResult:
    """Your fn(config) against the store's expert_nbytes: the bundled model and two real configs."""
    name = _('lab05b: bytes per expert')
    cases = {"the bundled tiny model": bundled_config(), **REAL_CONFIGS}
    store_nbytes = ExpertStore.open(bundled_model_dir()).expert_nbytes
    for model, config in cases.items():
        want = store_nbytes if model.startswith("the bundled") else reference_expert_nbytes(config)
        try:
            got = fn(dict(config))  # a copy: a function that edits it cannot spoil the next case
        except Exception as err:  # a learner's bug: show it, do not crash the notebook
            return failed(
                name, _("your function raised {error_type}: {err} (on {model}'s config)").format(error_type=type(err).__name__, err=err, model=model)
            )
        if got is None:
            return not_started(name)
        try:
            got_value = float(got)
        except (TypeError, ValueError):
            return failed(name, _('your function returned {got!r}: return a number of bytes.').format(got=got))
        if got_value == want:
            continue
        said = f"{model}: you said {got_value:,.0f} bytes, the store says {want:,}"
        shape = (
            f"{model}: D={config['hidden_size']}, I={config['moe_intermediate_size']}, "
            f"{config.get('dtype')}"
        )
        for value, message in _mistakes(config):
            if got_value == value:
                return failed(name, f"{said}: {message}", shape)
        return failed(
            name,
            f"{said} ({got_value / want:.3g}x).",
            shape,
            _('one expert = gate (I x D) + up (I x D) + down (D x I) elements x bytes per element.'),
        )
    return passed(
        name,
        _("right on all {n_cases} configs: the bundled model's expert is {store_nbytes:,} B.").format(n_cases=len(cases), store_nbytes=store_nbytes),
    )


# -- exercise 2: read one expert by its byte ranges ------------------------------------------------
def read_header(path: str | Path) -> tuple[dict, int]:
    """(the header's JSON as a dict, data_start = 8 + header length): what the notebook shows."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))  # bytes, little-endian u64
        return json.loads(f.read(header_len)), 8 + header_len


CASES = [(0, 0), (1, 5), (2, 10), (3, 15)]  # (layer, expert): first and last, and a two-digit id


def _as_three(out) -> list | None:
    if isinstance(out, dict):
        out = [out.get(r) for r in ROLES]
    elif hasattr(out, "gate") and hasattr(out, "down"):
        out = [out.gate, out.up, out.down]
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        return None
    return list(out)


def _to_tensor(x) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().contiguous()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.array(x, order="C"))  # a C-ordered copy (frombuffer: read-only)
    return None


def _where_from(
    mine: torch.Tensor, want_start: int, data_start: int, header: dict, blob: bytes
) -> str:
    """Find where in the file the learner's bytes sit, and say what that means."""
    pos = blob.find(mine.contiguous().view(torch.uint8).numpy().tobytes())
    if pos < 0:
        return (
            "these bytes appear nowhere in the file: read exactly data_offsets[1] - "
            "data_offsets[0] bytes and pass them to np.frombuffer with the header's dtype."
        )
    shift = want_start - pos
    header_len = data_start - 8
    if shift == data_start:
        return (
            f"you read {data_start:,} bytes too early: data_offsets count from the end of the "
            f"header, so add 8 + header length = {data_start:,} to both offsets."
        )
    if shift == 8:
        return (
            "you read 8 bytes too early: add the 8-byte length field as well as the header length."
        )
    if shift == header_len:
        return (
            f"you read {header_len:,} bytes too early: the offsets count from byte 8 + header "
            "length; you forgot the header."
        )
    for tname, info in header.items():
        if tname != "__metadata__" and data_start + info["data_offsets"][0] == pos:
            return f"those are the bytes of {tname}: look up the right layer, expert and matrix."
    return (
        f"your bytes start {shift:+,} bytes from the right place in the file; the right start is "
        "8 + header length + data_offsets[0]."
    )


def _reshape_hint(error: str) -> str:
    """numpy's 'cannot reshape array of size N into shape (a, b)': too few bytes, or a dtype."""
    m = re.search(r"array of size (\d+) into shape \(([\d, ]+)\)", error)
    if m is None:
        return " Read exactly data_offsets[1] - data_offsets[0] bytes for each matrix." * (
            "buffer size" in error
        )
    size, want = int(m.group(1)), int(np.prod([int(n) for n in m.group(2).split(",") if n.strip()]))
    if size * 2 == want or size == want * 2:
        return (
            " np.frombuffer read the bytes as the wrong element size: pass the header's dtype "
            "(F32 -> dtype=np.float32; its default is float64)."
        )
    return " Read exactly data_offsets[1] - data_offsets[0] bytes for each matrix."


def _compare(
    role: str, x, want, key: tuple[int, int], header: dict, data_start: int, path: Path
) -> str:
    """'' if the learner's matrix `x` equals want's `role` bit for bit, else what is wrong."""
    layer, expert = key
    mine, ref = _to_tensor(x), getattr(want, role)
    tname = f"model.layers.{layer}.mlp.experts.{expert}.{role}_proj.weight"
    at = f"{role} of expert {expert} in layer {layer}"
    if mine is None:
        return f"{at} is a {type(x).__name__}: return a numpy array (or a torch tensor)."
    if mine.dtype != ref.dtype:
        return (
            f"{at} has dtype {mine.dtype}, the header says {header[tname]['dtype']}: give "
            "np.frombuffer the header's dtype (F32 -> np.float32)."
        )
    if tuple(mine.shape) != tuple(ref.shape):
        swapped = tuple(mine.shape) == tuple(ref.shape)[::-1]
        hint = _('you swapped rows and columns.') if swapped else _("reshape to the header's shape.")
        return f"{at} has shape {tuple(mine.shape)}, the header says {tuple(ref.shape)}: {hint}"
    if torch.equal(mine.view(torch.uint8), ref.contiguous().view(torch.uint8)):
        return ""
    for other in ROLES:
        if other != role and torch.equal(mine, getattr(want, other)):
            return f"{at} holds the {other} matrix: look up '{role}_proj' for {role}."
    want_start = data_start + header[tname]["data_offsets"][0]
    why = _where_from(mine, want_start, data_start, header, path.read_bytes())
    return f"{at} differs from ExpertStore.read: {why}"


@tracked("lab05b.read_expert")
def check_read_expert(
    fn: Callable[[str, dict, int, int], object], model_dir: str | Path | None = None
) -> CheckResult:
    """Your fn(path, header, layer, expert) against ExpertStore.read, bit for bit, on 4 experts."""
    name = _('lab05b: read one expert')
    model_dir = Path(model_dir or bundled_model_dir())
    path = model_dir / "model.safetensors"
    header, data_start = read_header(path)
    store = ExpertStore.open(model_dir)
    for layer, expert in CASES:
        try:
            out = fn(str(path), header, layer, expert)
        except Exception as err:  # a learner's bug: show it, do not crash the notebook
            return failed(
                name,
                _('your function raised {error_type}: {err} (expert {expert}, layer {layer}).{value}{value2}').format(error_type=type(err).__name__, err=err, expert=expert, layer=layer, value=_reshape_hint(str(err)), value2=explain_error(err)),
            )
        three = None if out is None else _as_three(out)
        if out is None or (three is not None and all(x is None for x in three)):
            return not_started(name)
        if three is None:
            return failed(
                name, _('return three arrays (gate, up, down); you returned {type_name}.').format(type_name=type(out).__name__)
            )
        want = store.read(layer, expert)
        for role, x in zip(ROLES, three, strict=True):
            problem = _compare(role, x, want, (layer, expert), header, data_start, path)
            if problem:
                tname = f"model.layers.{layer}.mlp.experts.{expert}.{role}_proj.weight"
                offsets = header.get(tname, {}).get("data_offsets")
                return failed(
                    name,
                    problem,
                    _('{tname}: data_offsets {offsets}, header ends at byte {data_start:,}').format(tname=tname, offsets=offsets, data_start=data_start),
                )
    return passed(name, _('bit-identical to ExpertStore.read on {n_CASES} experts.').format(n_CASES=len(CASES)))
