"""Module 01 in a real browser: JupyterLab in headless Chromium at 1366x768 (a common laptop).

It opens the scratch copy of course/01_hardware.ipynb that conftest.py serves, runs every cell,
and checks that:
- the calculator renders as a widget, with both charts, controls in a fixed column beside the
  results, and every slider's value visible;
- changing an input (the GPU) recomputes the verdict in the page;
- with the longest host name chosen, no dropdown's text and no label is cut off;
- a quiz question answers a click.

The Korean edition has its own checks: test_module01_ko_in_browser.py.
"""

from __future__ import annotations

import pytest

from lazymoe.widgets.calculator import CONTROL_WIDTH

from .jupyter_browser import CLIPPED, VIEWPORT, open_and_run
from .jupyter_browser import box as _box
from .jupyter_browser import screenshot as _screenshot

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def page(lab, browser):
    """Module 01 opened and run to the end in Chromium at 1366x768."""
    page = open_and_run(browser, lab, "01_hardware.ipynb",
                        [".lazymoe-calculator .js-plotly-plot", ".lazymoe-quiz-choice button"])
    yield page
    page.close()


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
    width = float(CONTROL_WIDTH.removesuffix("px"))
    assert c["width"] == pytest.approx(width, abs=2), "the control column keeps its fixed width"
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


LONGEST_HOST = "AMD EPYC 9654 (12-channel DDR5-4800)"


def test_no_dropdown_is_clipped_with_the_longest_host(page):
    calc = page.query_selector(".lazymoe-calculator")
    calc.scroll_into_view_if_needed()
    host = calc.query_selector(".widget-dropdown:has(label:text('CPU / memory')) select")
    # ipywidgets shows option spaces as no-break spaces
    longest = max(host.evaluate("el => [...el.options].map(o => o.text.replace(/\\u00a0/g, ' '))"), key=len)
    assert longest == LONGEST_HOST, "the catalog's longest host name changed: test that one"
    ram_gbps = calc.query_selector(".widget-text:has(label:text-is('RAM GB/s')) input")
    before = ram_gbps.input_value()
    host.select_option(label=LONGEST_HOST)   # the kernel answers with the host's RAM bandwidth
    page.wait_for_function("([el, old]) => el.value !== old", arg=[ram_gbps, before], timeout=30_000)
    _screenshot(page, "calculator_epyc", calc)
    assert len(calc.query_selector_all("select")) >= 5
    clipped = calc.evaluate(CLIPPED)
    assert not clipped, f"text cut off in the controls: {clipped}"


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
