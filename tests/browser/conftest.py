"""One JupyterLab and one Chromium for all the browser tests (starting them takes most of the time).

JupyterLab serves a scratch folder holding copies of module 01 in English (01_hardware.ipynb) and
in Korean (ko/01_hardware.ipynb), so autosave never writes outputs into the repository.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lazymoe.server.embedded import free_port

from .jupyter_browser import CHROMIUM, CHROMIUM_FLAGS, REPO, TOKEN, missing


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """JupyterLab serving scratch copies of module 01 (English and Korean); yields its base URL."""
    if not Path(CHROMIUM).exists():
        missing(f"there is no Chromium at {CHROMIUM}: `apt-get install chromium` (make test-browser "
                "does it as root), or point LAZYMOE_CHROMIUM at one")
    if importlib.util.find_spec("playwright") is None:
        missing("the playwright Python package is missing: pip install playwright (the test extra has it)")
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(REPO / "course" / "01_hardware.ipynb", root / "01_hardware.ipynb")
    (root / "ko").mkdir()
    shutil.copy(REPO / "course" / "ko" / "01_hardware.ipynb", root / "ko" / "01_hardware.ipynb")
    port = free_port()
    home = tmp_path_factory.mktemp("home")   # quiz progress and Jupyter state stay in scratch
    # English unless a notebook chooses (the Korean one sets LAZYMOE_LANG=ko in its first cell)
    env = {**os.environ, "LAZYMOE_QUICK": "1", "LAZYMOE_LANG": "en", "LAZYMOE_HOME": str(home / "lazymoe"),
           "JUPYTER_CONFIG_DIR": str(home / "jupyter-config"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime")}
    # every cell stays in the page (JupyterLab otherwise detaches cells scrolled out of view), no news
    settings = home / "jupyter-config" / "lab" / "user-settings" / "@jupyterlab"
    for file, value in (("notebook-extension/tracker", '{"windowingMode": "none"}'),
                        ("apputils-extension/notification", '{"fetchNews": "false"}')):
        path = settings / f"{file}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
    log_path = root / "jupyterlab.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
             f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={root}", "--allow-root",
             "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
             "--LabApp.collaborative=False"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def browser(lab):
    """Headless Chromium (the system's, not playwright's download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()
