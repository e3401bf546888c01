"""The README's first command: `make lab` brings up JupyterLab serving the first notebook."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_make_lab_serves_the_start_notebook():
    port, token = _free_port(), secrets.token_hex(16)
    lab_args = f"--no-browser --ip=127.0.0.1 --port={port} --IdentityProvider.token={token} --ServerApp.open_browser=False"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    process = subprocess.Popen(["make", "lab", f"LAB_ARGS={lab_args}"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 540  # the install step may run first
        while True:
            assert process.poll() is None, process.stdout.read().decode(errors="replace")[-3000:]
            try:
                status, body = _get(f"{base}/api/contents/course/00_start_here.ipynb?token={token}")
                break
            except OSError:
                assert time.monotonic() < deadline, "JupyterLab did not answer in time"
                time.sleep(1)
        assert status == 200
        model = json.loads(body)
        assert model["type"] == "notebook"
        assert model["content"]["cells"][0]["source"].startswith("# 00 · Start here")
        status, page = _get(f"{base}/lab/tree/course/00_start_here.ipynb?token={token}")
        assert status == 200 and b"JupyterLab" in page
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """Stop make and the JupyterLab it started (its own process group), if still running."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
