"""Without Chromium or a Hangul font the browser tests skip, saying what to install; under CI they fail.

No browser needed: this runs with the unit tests.
"""

from __future__ import annotations

import pytest

from .jupyter_browser import missing


@pytest.mark.parametrize("ci", ["", "false"])
def test_a_missing_requirement_skips_outside_ci(monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        missing("there is no Chromium: apt-get install chromium")


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_missing_requirement_fails_under_ci(monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(
        pytest.fail.Exception, match="CI=true, so the browser tests must run, but there is no"
    ):
        missing("there is no Chromium: apt-get install chromium")
