"""Module 01 in a real browser: JupyterLab in headless Chromium at 1366x768 (a common laptop).

It copies course/01_hardware.ipynb to a scratch folder (so autosave never writes outputs into the
repository), starts JupyterLab on a loopback port, runs every cell, and checks that:
- the calculator renders as a widget, with both charts, controls in a fixed column beside the
  results, and every slider's value visible;
- changing an input (the GPU) recomputes the verdict in the page;
- a quiz question answers a click.

Needs Debian's Chromium (/usr/bin/chromium, or $LAZYMOE_CHROMIUM) and the `playwright` Python
package (its own browser download is not used). Screenshots go to $LAZYMOE_BROWSER_OUT if set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("LAZYMOE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1366, "height": 768}
TOKEN = "lazymoe-browser-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a scratch copy of module 01; yields its base URL."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (make test-browser does it as root)")
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra has it)")
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(REPO / "course" / "01_hardware.ipynb", root / "01_hardware.ipynb")
    port = _free_port()
    home = tmp_path_factory.mktemp("home")   # quiz progress and Jupyter state stay in scratch
    env = {**os.environ, "LAZYMOE_QUICK": "1", "LAZYMOE_HOME": str(home / "lazymoe"),
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


@pytest.fixture(scope="module")
def page(lab):
    """Module 01 opened and run to the end in Chromium at 1366x768."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{lab}/lab/tree/01_hardware.ipynb?token={TOKEN}", wait_until="domcontentloaded")
        page.wait_for_selector(".jp-Notebook", timeout=120_000)
        page.wait_for_function("window.jupyterapp !== undefined", timeout=60_000)
        with contextlib.suppress(Exception):   # JupyterLab may ask which kernel to use
            page.click(".jp-Dialog button:has-text('Select')", timeout=10_000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
        # fire and forget: the command's promise settles only when every cell has run
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        try:
            page.wait_for_selector(".lazymoe-calculator .js-plotly-plot", timeout=180_000)
            page.wait_for_selector(f".{'lazymoe-quiz-choice'} button", timeout=120_000)
        except Exception:
            _screenshot(page, "failed")
            raise
        yield page
        browser.close()


def _screenshot(page, name: str, element=None) -> None:
    out = os.environ.get("LAZYMOE_BROWSER_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (element or page).screenshot(path=str(Path(out) / f"{name}.png"))


def _box(handle) -> dict:
    box = handle.bounding_box()
    assert box is not None, "element is not displayed"
    return box


def test_calculator_renders_as_a_widget_that_fits_the_screen(page):
    calc = page.query_selector(".lazymoe-calculator")
    calc.scroll_into_view_if_needed()
    page.wait_for_timeout(1500)   # plotly draws after the widget
    _screenshot(page, "calculator_1366", calc)
    _check_layout(calc)
    try:   # and at the ends of the laptop-to-desktop range
        for width in (1280, 1920):
            page.set_viewport_size({"width": width, "height": 768})
            page.wait_for_timeout(800)
            calc.scroll_into_view_if_needed()
            _check_layout(calc)
    finally:
        page.set_viewport_size(VIEWPORT)


def _check_layout(calc) -> None:
    controls, results = calc.query_selector_all(":scope > .widget-vbox")
    c, r = _box(controls), _box(results)
    assert c["width"] == pytest.approx(400, abs=2), "the control column keeps its fixed width"
    assert r["x"] >= c["x"] + c["width"] - 1 and r["width"] > 300, "results sit beside the controls"
    assert len(results.query_selector_all(".js-plotly-plot")) == 2, "both charts are drawn"
    # every slider shows its value inside the control column
    readouts = controls.query_selector_all(".widget-readout")
    assert len(readouts) >= 4
    for readout in readouts:
        b = _box(readout)
        assert b["width"] > 10 and b["x"] + b["width"] <= c["x"] + c["width"] + 4, readout.inner_text()
        assert readout.evaluate("el => el.scrollWidth <= el.clientWidth + 1"), "value cut off"
    assert "tok/s" in results.inner_text()


def test_calculator_updates_when_an_input_changes(page):
    calc = page.query_selector(".lazymoe-calculator")
    calc.scroll_into_view_if_needed()
    summary = calc.query_selector(":scope > .widget-vbox:nth-child(2) .widget-html")
    before = summary.inner_text()
    gpu = calc.query_selector("select")   # the first control: the GPU
    gpu.select_option(label="RTX 4090")
    page.wait_for_function("([el, old]) => el.innerText !== old && el.innerText.includes('tok/s')",
                           arg=[summary, before], timeout=30_000)
    after = summary.inner_text()
    assert after != before and "tok/s" in after
    # the host link field follows the new GPU's datasheet (PCIe 4.0 x16: 31.5 GB/s)
    link = calc.query_selector(".widget-text:has(label:text('host link GB/s')) input")
    assert float(link.input_value()) == pytest.approx(31.5, abs=0.01)
    _screenshot(page, "calculator_4090", calc)


def test_a_quiz_question_answers_a_click(page):
    choice = page.query_selector(".lazymoe-quiz-choice button")
    card = choice.evaluate_handle("el => el.closest('.widget-vbox')").as_element()
    card.scroll_into_view_if_needed()
    before = card.inner_text()
    choice.click()
    card.query_selector("button.mod-primary").click()
    page.wait_for_function("([el, old]) => el.innerText.length > old.length + 10",
                           arg=[card, before], timeout=30_000)
    assert card.inner_text() != before
    _screenshot(page, "quiz_answered", card)
