"""Lab 05b (the expert store): bytes per expert, and reading one expert by byte range."""

from lazymoe.exercises.solutions import Exercise
from lazymoe.i18n import _

READ_SOLUTION = """\
NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16}  # numpy has no bfloat16: read BF16 as uint16


def read_expert(path, header, layer, expert):
    \"\"\"(gate (I, D), up (I, D), down (D, I)) of one expert, read by byte range with seek + read.\"\"\"
    with open(path, "rb") as f:
        data_start = 8 + struct.unpack("<Q", f.read(8))[0]  # offsets count from the header's end
        out = []
        for role in ("gate", "up", "down"):
            info = header[f"model.layers.{layer}.mlp.experts.{expert}.{role}_proj.weight"]
            start, end = info["data_offsets"]
            f.seek(data_start + start)
            raw = f.read(end - start)  # exactly this matrix's bytes
            out.append(np.frombuffer(raw, dtype=NUMPY_DTYPES[info["dtype"]]).reshape(info["shape"]))
    return tuple(out)
"""

EXERCISES = [
    Exercise(
        key="lab05b.expert_nbytes",
        title=_("bytes per expert", lang="en"),
        check="check_expert_nbytes(expert_nbytes)",
        hints=(
            _("An expert is three matrices: gate and up are I x D, down is D x I (D = hidden_size, "
              "I = moe_intermediate_size). Count their numbers, then their bytes.", lang="en"),
            _("Numbers: 3 x I x D. Bytes per number from the dtype: getattr(torch, "
              "config['dtype']).itemsize (float32 -> 4, bfloat16 -> 2).", lang="en"),
            "d, i = config['hidden_size'], config['moe_intermediate_size']\n"
            "return 3 * i * d * getattr(torch, config['dtype']).itemsize",
        ),
        solution="""\
def expert_nbytes(config: dict) -> int:
    \"\"\"Bytes of one routed expert: (I x D + I x D + D x I) elements x bytes per element.\"\"\"
    d, i = config["hidden_size"], config["moe_intermediate_size"]
    bytes_per_element = getattr(torch, config["dtype"]).itemsize  # float32 -> 4, bfloat16 -> 2
    return 3 * i * d * bytes_per_element
""",
        wrong="""\
def expert_nbytes(config: dict) -> int:
    d, i = config["hidden_size"], config["intermediate_size"]  # a dense MLP's width
    return 3 * i * d * getattr(torch, config["dtype"]).itemsize
""",
    ),
    Exercise(
        key="lab05b.read_expert",
        title=_("reading one expert", lang="en"),
        check="check_read_expert(read_expert)",
        hints=(
            _("The header tells you, for each matrix, where its bytes sit (data_offsets), its dtype and "
              "its shape. Offsets count from the end of the header, which is 8 + header length bytes "
              "into the file.", lang="en"),
            _("Open the file in binary mode ('rb'). The first 8 bytes are the header length: "
              "struct.unpack('<Q', f.read(8))[0]. For each of gate, up, down: look up "
              "header[f'model.layers.{layer}.mlp.experts.{expert}.{role}_proj.weight'], f.seek(data_start "
              "+ start), f.read(end - start), then np.frombuffer(raw, dtype=np.float32).reshape(shape). "
              "The dtype is numpy's np.float32, not the header's text 'F32'.", lang="en"),
            "with open(path, 'rb') as f:\n    data_start = 8 + struct.unpack('<Q', f.read(8))[0]\n"
            "    for role in ('gate', 'up', 'down'):\n        info = header[...]\n        start, end = "
            "info['data_offsets']\n        f.seek(...); raw = f.read(...)\n        "
            "out.append(np.frombuffer(raw, dtype=np.float32).reshape(info['shape']))\nreturn tuple(out)",
        ),
        blanks="""\
def read_expert(path, header, layer, expert):
    \"\"\"(gate (I, D), up (I, D), down (D, I)) of one expert, read by byte range with seek + read.\"\"\"
    with open(path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(___))[0]  # the first 8 bytes: the header's length
        data_start = ___ + header_len  # data_offsets count from here
        out = []
        for role in ("gate", "up", "down"):
            info = header[f"model.layers.{layer}.mlp.experts.{expert}.{role}_proj.weight"]
            start, end = info["data_offsets"]
            f.seek(data_start + ___)
            raw = f.read(end - ___)  # exactly this matrix's bytes
            out.append(np.frombuffer(raw, dtype=np.___).reshape(info["shape"]))  # header says F32
    return tuple(out)
""",
        solution=READ_SOLUTION,
        wrong="""\
def read_expert(path, header, layer, expert):
    with open(path, "rb") as f:
        out = []
        for role in ("gate", "up", "down"):
            info = header[f"model.layers.{layer}.mlp.experts.{expert}.{role}_proj.weight"]
            start, end = info["data_offsets"]
            f.seek(start)  # forgot that offsets count from the end of the header
            out.append(np.frombuffer(f.read(end - start), dtype=np.float32).reshape(info["shape"]))
    return tuple(out)
""",
    ),
]
