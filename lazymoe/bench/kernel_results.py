"""The results file of a GPU kernel timing script (scripts/bench_*.py): what was timed, on which
machine and versions, by which command, the rows."""

from __future__ import annotations

import platform
import time

import torch

from lazymoe.atomic import write_json


def write_kernel_result(out_path: str, script: str, rows: list[dict], **fields) -> None:
    """`fields` (what, shapes, ...) first, then the machine, versions, command, date and rows."""
    import triton

    write_json(out_path, {
        **fields,
        "machine": torch.cuda.get_device_name(),
        "host": platform.node(),
        "versions": {"torch": torch.__version__, "triton": triton.__version__},
        "command": f"python {script} {out_path}",
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }, indent=1)  # fmt: skip
