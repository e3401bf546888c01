"""The README's first command: `make lab` (or `lazymoe lab`, without make) brings up JupyterLab
serving the first notebook."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from lazymoe import cli
from lazymoe import lab as lab_command
from lazymoe.server.embedded import free_port

REPO = Path(__file__).resolve().parents[1]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_make_lab_serves_the_start_notebook():
    port, token = free_port(), secrets.token_hex(16)
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


def _no_process(*args, **kwargs):
    raise AssertionError(f"a dry run started a process: {args}")


def test_lazymoe_lab_dry_run_prints_the_commands_and_starts_nothing(capsys, monkeypatch):
    for name in ("call", "run", "Popen", "check_call"):
        monkeypatch.setattr(subprocess, name, _no_process)
    assert cli.main(["lab", "--dry-run", "--no-browser", "--port=8899"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert str(REPO) in lines[0]
    prepare, doctor, jupyter = (line.strip() for line in lines[1:4])
    assert prepare.endswith("-m lazymoe.models.prepare") and doctor.endswith("-m lazymoe doctor")
    assert "-m jupyterlab" in jupyter and f"--ServerApp.root_dir={REPO}" in jupyter
    assert jupyter.endswith("--no-browser --port=8899 course/00_start_here.ipynb")  # passed on, in order
    assert ("--allow-root" in jupyter) == (os.geteuid() == 0)


@pytest.mark.parametrize(("lang", "notebook"), [("ko", "course/ko/00_start_here.ipynb"),
                                                ("en", "course/00_start_here.ipynb")])
def test_lazymoe_lab_opens_the_start_notebook_in_the_learners_language(lang, notebook, capsys, monkeypatch):
    for name in ("call", "run", "Popen", "check_call"):
        monkeypatch.setattr(subprocess, name, _no_process)
    monkeypatch.setenv("LAZYMOE_LANG", lang)
    assert (REPO / notebook).exists()
    assert cli.main(["lab", "--dry-run", "--skip-model", "--skip-doctor"]) == 0
    jupyter = capsys.readouterr().out.splitlines()[-1].strip()
    assert jupyter.endswith(" " + notebook)


def test_lazymoe_lab_falls_back_to_english_without_the_korean_edition(tmp_path):
    assert lab_command.start_notebook(tmp_path, "ko") == lab_command.START_NOTEBOOK


def test_allow_root_is_added_only_for_root_and_only_once():
    as_root = lab_command.commands([], REPO, as_root=True)[-1]
    assert as_root.count("--allow-root") == 1
    assert "--allow-root" not in lab_command.commands([], REPO, as_root=False)[-1]
    given = lab_command.commands(["--allow-root"], REPO, as_root=True)[-1]
    assert given.count("--allow-root") == 1


def test_steps_can_be_skipped_and_the_notebook_exists():
    steps = lab_command.commands([], REPO, as_root=False, skip_model=True, skip_doctor=True)
    assert len(steps) == 1 and steps[0][-1] == str(lab_command.START_NOTEBOOK)
    assert (REPO / lab_command.START_NOTEBOOK).exists()


def test_other_commands_still_refuse_unknown_arguments(capsys):
    with pytest.raises(SystemExit):
        cli.main(["progress", "--port=1"])
    assert "unrecognized arguments: --port=1" in capsys.readouterr().err


def test_make_lab_calls_lazymoe_lab():
    if shutil.which("make") is None:
        pytest.skip("no make here")
    dry = subprocess.run(["make", "--no-print-directory", "-n", "-W", "pyproject.toml", "lab", "LAB_ARGS=--port=1"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert dry.strip().splitlines()[-1].endswith("-m lazymoe lab --port=1")
