"""scripts/device_bench.sh (the GPU machine's one recipe) parses, and its header documents every
knob the script reads: a broken recipe costs a whole device session before anyone notices."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "device_bench.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_recipe_parses_and_prints_its_usage():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    usage = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert usage.returncode == 2 and "Suites" in usage.stdout and "kernels" in usage.stdout


def test_every_knob_read_from_the_environment_is_in_the_header():
    text = SCRIPT.read_text()
    header = "\n".join(line for line in text.splitlines()[:60] if line.startswith("#"))
    knobs = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):[-+]", text))
    internal = {"OUT", "CARRY", "WORK", "RESULTS", "LLAMA_CPP_PYTHON_VERSION", "MODEL_DIR",
                "SERVE_WRITER", "LLAMA_PID", "WAIT_S"}  # fmt: skip
    missing = sorted(k for k in knobs - internal if k not in header)
    assert not missing, f"knobs read by device_bench.sh but not documented in its header: {missing}"
