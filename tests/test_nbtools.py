"""Notebook housekeeping: percent-format build, output detection and stripping."""

from __future__ import annotations

import nbformat

from lazymoe import nbtools

SOURCE = """# %% [markdown]
# # Title
# **Needs:** nothing
# %%
x = 1
print(x)
"""


def test_build_from_percent_format():
    nb = nbtools.from_percent(SOURCE)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code"]
    assert nb.cells[0].source.startswith("# Title")
    assert nb.cells[1].source == "x = 1\nprint(x)"
    assert not nbtools.has_outputs(nb)


def test_strip_removes_outputs_and_counts(tmp_path):
    nb = nbtools.from_percent(SOURCE)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    nb.cells[1].execution_count = 3
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    assert nbtools.main(["check", str(tmp_path)]) == 1
    assert nbtools.main(["strip", str(tmp_path)]) == 0
    assert nbtools.main(["check", str(tmp_path)]) == 0
    assert not nbtools.has_outputs(nbformat.read(path, as_version=4))
