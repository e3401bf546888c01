"""Compile the quantized decode kernels (triton_quant) for an H100/H200 (sm_90) without a GPU, and
print each one's registers, spills and global loads per thread (ld.global.b16 = 2-byte vectors,
v4.b32 = 16 bytes). A check that the kernels compile and fit before a device run; no timing.

    python scripts/compile_triton_quant.py [q4_0 q8_0 ...]
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections import Counter

os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lazymoe.engine.compute import triton_quant as tq

TARGET = GPUTarget("cuda", 90, 32)
GATE_UP = {"x_ptr": "*bf16", "pool_ptr": "*u8", "slot_ptr": "*i64", "tok_ptr": "*i32",
           "h_ptr": "*fp32", "HIDDEN": "i32", "INTER": "i32", "SLOT_BYTES": "i32",
           "GATE_OFFSET": "i32", "UP_OFFSET": "i32", "GATE_ROW_BYTES": "i32",
           "UP_ROW_BYTES": "i32", "GATE_GROUPS": "i32", "UP_GROUPS": "i32"}  # fmt: skip
DOWN = {"h_ptr": "*fp32", "pool_ptr": "*u8", "slot_ptr": "*i64", "pos_ptr": "*i64",
        "start_ptr": "*i32", "w_ptr": "*bf16", "out_ptr": "*bf16", "HIDDEN": "i32",
        "INTER": "i32", "TOP_K": "i32", "SLOT_BYTES": "i32", "DOWN_OFFSET": "i32",
        "DOWN_ROW_BYTES": "i32", "DOWN_GROUPS": "i32"}  # fmt: skip


def _compile(fn, sig: dict, constants: dict, warps: int):
    # every argument 16-aligned/divisible, as Triton specializes them at Qwen3-30B-A3B's shapes
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(len(sig)) if list(sig)[i] != "TOP_K"}
    full = sig | dict.fromkeys(constants, "constexpr")
    return triton.compile(ASTSource(fn, full, constants, attrs), target=TARGET,
                          options={"num_warps": warps})  # fmt: skip


def _report(name: str, kernel) -> None:
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([f"{bin_dir}/cuobjdump", "--dump-resource-usage", f.name],
                               capture_output=True, text=True).stdout  # fmt: skip
    usage = " ".join(re.findall(r"(?:REG|STACK|SHARED|LOCAL):\d+", usage))
    loads = Counter(re.findall(r"ld\.global[\w.]*", kernel.asm["ptx"]))
    print(f"{name:16s} {usage}  loads in the code: {dict(loads)}", flush=True)


def main(formats: list[str]) -> None:
    for f in formats:
        gate_up, down = tq.TILES[f]
        code = tq.FORMATS[f]
        const = {"GATE_FMT": code, "UP_FMT": code, "ROWS": gate_up.rows, "GROUPS": gate_up.groups}
        _report(f"gate_up {f}", _compile(tq._gate_up_kernel, GATE_UP, const, gate_up.warps))
        const = {"DOWN_FMT": code, "PAIRS": tq.MAX_PAIRS, "ROWS": down.rows, "GROUPS": down.groups}
        _report(f"down {f}", _compile(tq._down_sum_kernel, DOWN, const, down.warps))


if __name__ == "__main__":
    main(sys.argv[1:] or list(tq.TILES))
