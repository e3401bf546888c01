"""What the browser tests share: JupyterLab's address and token, Chromium's flags, and opening a
notebook in a page and running all its cells.

Needs Debian's Chromium (/usr/bin/chromium, or $LAZYMOE_CHROMIUM) and the `playwright` Python
package (its own browser download is not used). Screenshots go to $LAZYMOE_BROWSER_OUT if set.
Without them the tests skip, saying what to install; under CI (CI=true) they fail instead, since
CI installs them (`make test-browser` as root).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("LAZYMOE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1366, "height": 768}   # a common laptop screen, in CSS pixels
TOKEN = "lazymoe-browser-test"
HANGUL = re.compile("[\uac00-\ud7a3]")   # the precomposed Hangul syllables block

# Each select whose shown text is wider than its box (less its padding, where the arrow is drawn):
# the text measured on a canvas in the select's own font; and each label cut short (ellipsis).
CLIPPED = """root => [...root.querySelectorAll('.widget-label')].flatMap(label =>
    label.scrollWidth > label.clientWidth + 1 ? [`label ${label.innerText}`] : []
).concat([...root.querySelectorAll('select')].flatMap(select => {
    const style = getComputedStyle(select);
    const ctx = document.createElement('canvas').getContext('2d');
    ctx.font = style.font;
    const text = select.options[select.selectedIndex].text;
    const width = ctx.measureText(text).width;
    const room = select.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    return width > room ? [`${text}: ${width.toFixed(0)} px of text in ${room.toFixed(0)} px`] : [];
}))"""


def missing(what: str) -> NoReturn:
    """Skip for want of `what` (a sentence saying what to install); fail if this is CI."""
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"CI=true, so the browser tests must run, but {what}", pytrace=False)
    pytest.skip(what)


def open_and_run(browser, lab_url: str, notebook: str, ready: list[str]):
    """A new page with `notebook` (a path under the lab's root) open and all its cells run;
    returns once every CSS selector in `ready` is in the page."""
    page = browser.new_page(viewport=VIEWPORT)
    # a workspace of its own, so JupyterLab does not reopen the notebooks an earlier page had open
    workspace = re.sub(r"\W", "-", notebook)
    page.goto(f"{lab_url}/lab/workspaces/{workspace}/tree/{notebook}?token={TOKEN}",
              wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook", timeout=120_000)
    page.wait_for_function("window.jupyterapp !== undefined", timeout=60_000)
    with contextlib.suppress(Exception):   # JupyterLab may ask which kernel to use
        page.click(".jp-Dialog button:has-text('Select')", timeout=10_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    # fire and forget: the command's promise settles only when every cell has run
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    try:
        for selector in ready:
            page.wait_for_selector(selector, timeout=180_000)
    except Exception as exc:
        screenshot(page, f"failed_{workspace}")
        raise AssertionError(f"{notebook} did not finish in the browser: {_run_state(page)}") from exc
    return page


def _run_state(page) -> str:
    """How far a run got: cells run, and the first error output, for the failure message."""
    return page.evaluate("""() => {
        const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
        const done = prompts.filter(el => /\\[\\d+\\]/.test(el.innerText)).length;
        const error = document.querySelector('[data-mime-type="application/vnd.jupyter.stderr"]');
        return `${done} of ${prompts.length} code cells run` +
               (error ? `; first error output: ${error.innerText.slice(0, 800)}` : '; no error output');
    }""")


def screenshot(page, name: str, element=None) -> None:
    out = os.environ.get("LAZYMOE_BROWSER_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (element or page).screenshot(path=str(Path(out) / f"{name}.png"))


def box(handle) -> dict:
    found = handle.bounding_box()
    assert found is not None, "element is not displayed"
    return found
