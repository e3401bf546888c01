"""Module 01 in Korean (course/ko/01_hardware.ipynb) in a real browser, at 1366x768.

The Korean notebook is built from the English one and the catalogs in data/i18n; its first code
cell sets LAZYMOE_LANG=ko (JupyterLab here starts kernels with LAZYMOE_LANG=en, so the notebook
must choose Korean itself). After running every cell it checks that:
- the text (every markdown cell) is Korean, and the calculator renders as a widget with its charts;
- the calculator's labels are the Korean catalog's (lazymoe/locale/ko), in Hangul once translated,
  none cut short, and its charts' legends are Korean;
- the quiz is in Korean and answers a click in Korean;
- Hangul is drawn with a real font, not empty boxes ("tofu"): two different syllables drawn on a
  canvas in each font the page uses for Korean text must give different pixels.
Without a Hangul font on a Linux system (`fc-list :lang=ko` is empty) it skips, saying what to install
(under CI, CI=true, it fails instead).
"""

from __future__ import annotations

import shutil
import subprocess

import polib
import pytest

from lazymoe.i18n.messages import catalog_path, gettext

from .jupyter_browser import CLIPPED, HANGUL, missing, open_and_run, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

NOTEBOOK = "ko/01_hardware.ipynb"
# Labels of the calculator widget (English msgids in lazymoe/widgets/calculator.py) whose Korean
# has Hangul ("RAM (GiB)" rightly stays as it is).
CALCULATOR_LABELS = ["Machine", "Workload", "Strategy", "GPUs", "host link GB/s", "context", "batch",
                     "hit rate"]
NAMES = {"GPU"}   # labels that are names, the same in both languages (not in the catalog)
# Where the page shows Korean text; each one's font must draw Hangul.
KOREAN_TEXT = {"markdown": ".jp-RenderedMarkdown",
               "calculator label": ".lazymoe-calculator .widget-label",
               "quiz": ".lazymoe-quiz-choice",
               "chart": ".lazymoe-calculator .js-plotly-plot text",
               "printed output": ".jp-OutputArea-output pre"}
# Draws `text` in 48px of each font-family on a white 64x64 canvas; returns the RGBA bytes as a
# string (equal strings = equal pictures) and how many pixels got ink.
DRAW = """([families, text]) => families.map(family => {
    const canvas = document.createElement('canvas');
    canvas.width = 64; canvas.height = 64;
    const ctx = canvas.getContext('2d');
    ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, 64, 64);
    ctx.fillStyle = '#000'; ctx.font = `48px ${family}`; ctx.textBaseline = 'top';
    ctx.fillText(text, 4, 4);
    const data = ctx.getImageData(0, 0, 64, 64).data;
    let ink = 0;
    for (let i = 0; i < data.length; i += 4) if (data[i] < 128) ink++;
    return {pixels: Array.from(data).join(','), ink};
})"""


def _hangul_font_missing() -> bool:
    """True on a system with fontconfig (Linux) that lists no font covering Korean."""
    if shutil.which("fc-list") is None:
        return False
    listed = subprocess.run(["fc-list", ":lang=ko", "family"], capture_output=True, text=True, check=False)
    return listed.returncode == 0 and not listed.stdout.strip()


@pytest.fixture(scope="module")
def page(lab, browser):
    """The Korean module 01 opened and run to the end in Chromium at 1366x768."""
    if _hangul_font_missing():
        missing("there is no font with Hangul on this system (`fc-list :lang=ko` is empty): install "
                "one, `sudo apt-get install fonts-noto-cjk` (make test-browser does it as root)")
    page = open_and_run(browser, lab, NOTEBOOK,
                        [".lazymoe-calculator .js-plotly-plot", ".lazymoe-quiz-choice button"])
    yield page
    page.close()


def test_text_is_korean_and_the_calculator_renders(page):
    cells = page.query_selector_all(".jp-MarkdownCell .jp-RenderedMarkdown")
    assert len(cells) >= 5, "the markdown cells are rendered"
    english = [cell.inner_text()[:80] for cell in cells if not HANGUL.search(cell.inner_text())]
    assert not english, f"markdown cells without Hangul (not translated?): {english}"
    assert HANGUL.search(page.inner_text(".jp-MarkdownCell h1")), "the title is Korean"
    calc = page.query_selector(".lazymoe-calculator")
    calc.scroll_into_view_if_needed()
    page.wait_for_timeout(1500)   # plotly draws after the widget
    screenshot(page, "ko_calculator_1366", calc)
    assert len(calc.query_selector_all(".js-plotly-plot")) == 2, "both charts are drawn"
    assert len(calc.query_selector_all(".widget-readout")) >= 4, "the sliders are widgets"
    assert "tok/s" in calc.inner_text()


def test_calculator_labels_are_the_korean_catalogs(page):
    """The labels shown are lazymoe/locale/ko's translations, in Hangul."""
    shown = page.inner_text(".lazymoe-calculator")
    korean = {label: gettext(label, lang="ko") for label in CALCULATOR_LABELS}
    missing = [text for text in korean.values() if text not in shown]
    assert not missing, f"the calculator does not show these catalog texts: {missing}"
    untranslated = [label for label, text in korean.items() if not HANGUL.search(text)]
    assert not untranslated, f"no Korean for these labels in lazymoe/locale/ko (missing or fuzzy): {untranslated}"
    # and every other label: Hangul, a Korean entry that keeps the English ("RAM (GiB)"), or a name
    entries = polib.pofile(str(catalog_path("ko")))
    kept = {entry.msgstr for entry in entries if entry.msgstr and not entry.fuzzy and not entry.obsolete}
    kept |= NAMES
    labels = [el.inner_text().replace("\u200b", "").strip()
              for el in page.query_selector_all(".lazymoe-calculator .widget-label")]
    english = [text for text in labels if text and not HANGUL.search(text) and text not in kept]
    assert not english, f"calculator labels still in English: {english}"


def test_calculator_legends_are_korean_and_no_control_text_is_cut_off(page):
    calc = page.query_selector(".lazymoe-calculator")
    legends = [el.text_content() for el in calc.query_selector_all(".legendtext")]
    assert len(legends) >= 5, f"both charts have a legend: {legends}"
    english = [text for text in legends if not HANGUL.search(text)]
    assert not english, f"chart legend entries without Hangul (not in lazymoe/locale/ko?): {english}"
    clipped = calc.evaluate(CLIPPED)
    assert not clipped, f"text cut off in the controls: {clipped}"


def test_the_quiz_is_korean_and_answers_a_click(page):
    choice = page.query_selector(".lazymoe-quiz-choice button")
    card = choice.evaluate_handle("el => el.closest('.widget-vbox')").as_element()
    card.scroll_into_view_if_needed()
    before = card.inner_text()
    assert HANGUL.search(before), f"the quiz question is not Korean: {before[:200]}"
    check = card.query_selector("button.mod-primary")
    assert check.inner_text().strip() == "확인", "the Check button is Korean"
    choice.click()
    check.click()
    page.wait_for_function("([el, old]) => el.innerText.length > old.length + 10",
                           arg=[card, before], timeout=30_000)
    after = card.inner_text()
    added = after.replace(before, "") if before in after else after
    assert HANGUL.search(added), f"the answer's explanation is not Korean: {after[:300]}"
    screenshot(page, "ko_quiz_answered", card)


def test_hangul_is_drawn_with_a_real_font(page):
    families = {}
    for name, selector in KOREAN_TEXT.items():
        element = page.query_selector(selector)
        assert element is not None, f"no {name} in the page ({selector})"
        families[name] = element.evaluate("el => getComputedStyle(el).fontFamily")
    ga, na = (page.evaluate(DRAW, [list(families.values()), text]) for text in ("가", "나"))
    for (name, family), first, second in zip(families.items(), ga, na, strict=True):
        assert first["ink"] > 50 and second["ink"] > 50, f"{name}: Hangul draws nothing in {family}"
        assert first["pixels"] != second["pixels"], (
            f"{name}: '가' and '나' draw the same picture in {family}: empty boxes, no Hangul font "
            "(install one: sudo apt-get install fonts-noto-cjk)")
