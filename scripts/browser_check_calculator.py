"""Render course/01's calculator widget in a real browser and take screenshots.

Not a test (it needs Chromium and starts JupyterLab); run it by hand:

    .venv/bin/pip install playwright            # the Python package; its own browser is not needed
    apt-get install chromium                    # Debian's Chromium, at /usr/bin/chromium
    .venv/bin/python scripts/browser_check_calculator.py --out /tmp/calc-check

It copies the notebook to a scratch folder (so JupyterLab's autosave cannot write outputs into the
repository), starts JupyterLab on a loopback port, opens the copy in headless Chromium, runs all
cells, scrolls to the calculator, screenshots it, changes the GPU dropdown in the page and
screenshots again. It prints what it found (the verdict text before and after) and exits non-zero
if the widget did not render.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/calc-check", help="folder for the screenshots")
    parser.add_argument("--notebook", default="course/01_hardware.ipynb")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="lazymoe-lab-"))
    shutil.copy(REPO / args.notebook, root / "nb.ipynb")
    port, token = free_port(), "lazymoe-check"
    log = open(out / "jupyterlab.log", "w")  # noqa: SIM115 - open while JupyterLab runs
    lab = subprocess.Popen(
        [str(REPO / ".venv/bin/jupyter"), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
         "--LabApp.expose_app_in_browser=True"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            print(f"JupyterLab on port {port}; opening the notebook", flush=True)
            page.goto(f"http://127.0.0.1:{port}/lab/tree/nb.ipynb?token={token}", wait_until="domcontentloaded")
            page.wait_for_selector(".jp-Notebook", timeout=120_000)
            page.wait_for_function("window.jupyterapp !== undefined", timeout=60_000)
            # JupyterLab may ask which kernel to use for a notebook it has not seen
            with contextlib.suppress(Exception):
                page.click(".jp-Dialog button:has-text('Select')", timeout=20_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
            # fire and forget: the command's promise settles only when every cell has run
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            print("running all cells", flush=True)
            try:
                widget = page.wait_for_selector(".widget-hbox", timeout=180_000)
            except Exception:
                page.screenshot(path=str(out / "failed.png"), full_page=True)
                raise
            page.wait_for_timeout(4000)   # plots draw after the widget
            widget.scroll_into_view_if_needed()
            page.wait_for_timeout(1500)
            widget.screenshot(path=str(out / "calculator_widget.png"))
            before = widget.inner_text()
            # change the GPU in the page, as a learner would
            select = widget.query_selector("select")
            select.select_option(label="RTX 4090")
            page.wait_for_timeout(4000)
            widget.screenshot(path=str(out / "calculator_widget_4090.png"))
            after = widget.inner_text()
            plots = len(widget.query_selector_all(".js-plotly-plot"))
            page.screenshot(path=str(out / "page.png"))
            browser.close()
    finally:
        lab.terminate()
        try:
            lab.wait(timeout=30)
        except subprocess.TimeoutExpired:
            lab.kill()
        log.close()
        shutil.rmtree(root, ignore_errors=True)

    def verdict_line(text: str) -> str:
        return next((line for line in text.splitlines() if "tok/s" in line), "(no verdict found)")

    print(f"plotly charts inside the widget: {plots}")
    print(f"before: {verdict_line(before)}")
    print(f"after choosing RTX 4090: {verdict_line(after)}")
    print(f"screenshots in {out}")
    return 0 if plots >= 2 and before != after else 1


if __name__ == "__main__":
    sys.exit(main())
