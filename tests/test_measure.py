"""lazymoe.measure's two CPU ceilings: `ram_copy` (bytes moved both ways, tests/test_hardware.py)
and `ram_read` (bytes read once), the one the quantized expert kernels are compared with."""

from __future__ import annotations

import ast
from pathlib import Path

import numba
import pytest

import lazymoe
from lazymoe import measure

MiB = 2**20


def test_ram_read_counts_each_byte_once_and_gives_the_threads_back():
    before = numba.get_num_threads()
    r = measure.ram_read(4 * MiB, repeats=2, threads=1)
    assert r.name == "RAM read, 1 thread"
    assert r.size_bytes == 4 * MiB and r.repeats == 2 and len(r.seconds) == 2
    assert r.gbps == pytest.approx(4 * MiB / min(r.seconds) / 1e9)  # read once, not 2 x size
    assert numba.get_num_threads() == before


def test_ram_read_sums_every_word():
    import numpy as np

    words = np.arange(1, 1001, dtype=np.uint64)
    assert measure._sum_words()(words) == 1000 * 1001 // 2  # it reads all of them, none twice


def test_ram_read_uses_at_most_the_threads_numba_has():
    assert measure.ram_read(MiB, 1, threads=10_000).name.startswith(
        f"RAM read, {numba.config.NUMBA_NUM_THREADS} thread"
    )


def test_the_cpu_bandwidth_is_measured_in_lazymoe_measure_only():
    """One measurer: no other module times RAM itself (the quant package's old copy is gone)."""
    root = Path(lazymoe.__file__).parent
    assert not (root / "quant" / "bandwidth.py").exists()
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert not names & {"read_bandwidth_gbps", "_sum_words"} or path.name == "measure.py", path


def test_the_expert_benchmark_compares_its_kernels_with_ram_read(monkeypatch, tmp_path):
    import json

    from lazymoe.quant import expert_bench

    def fake(name, gbps):
        def measured(size_bytes, repeats, threads=None):
            return measure.Measurement(name, gbps, size_bytes, repeats, [1.0])

        return measured

    monkeypatch.setattr(measure, "ram_read", fake("RAM read", 20.0))
    monkeypatch.setattr(measure, "ram_copy", fake("RAM copy", 30.0))
    monkeypatch.setattr(
        expert_bench, "measure_read_bandwidth", lambda fmt, **how: {"read_gbps": 5.0}
    )
    out = tmp_path / "kernels.json"
    assert (
        expert_bench.main(
            ["--formats", "q8_0", "--threads", "1", "--activations", "float", "--json", str(out)]
        )
        == 0
    )
    (row,) = json.loads(out.read_text())["rows"]
    assert row["read_gbps"] == 20.0 and row["ram_copy_gbps"] == 30.0
    assert row["kernel_share_of_read"] == pytest.approx(5.0 / 20.0)
