"""Browser tests: JupyterLab in headless Chromium. `make test-browser` runs them; `make test`'s
unit run leaves them out (-m "not browser")."""

from __future__ import annotations


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "browser: drives JupyterLab in headless Chromium (run with `make test-browser`)")
