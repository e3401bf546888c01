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


def test_the_last_level_cache_is_read_from_linux_every_instance_once(tmp_path):
    """Two chiplets of two cores, an L3 of 32 MiB each (64 MiB in all, as lscpu counts it); each
    core its own L2; an unreadable entry and one without a size are skipped."""
    entries = {"index0": (1, "{cpu}", "32K"), "index2": (2, "{cpu}", "1024K"), "index3": (3, "{pair}", "32M")}
    for cpu in range(4):
        pair = "0-1" if cpu < 2 else "2-3"
        for name, (level, shared, size) in entries.items():
            folder = tmp_path / f"cpu{cpu}" / "cache" / name
            folder.mkdir(parents=True)
            (folder / "level").write_text(f"{level}\n")
            (folder / "shared_cpu_list").write_text(shared.format(cpu=cpu, pair=pair) + "\n")
            (folder / "size").write_text(size + "\n")
    (tmp_path / "cpu0" / "cache" / "index4").mkdir()  # no files at all
    odd = tmp_path / "cpu1" / "cache" / "index5"
    odd.mkdir()
    for name, text in (("level", "3"), ("shared_cpu_list", "0-3"), ("size", "n/a")):
        (odd / name).write_text(text)
    assert measure.largest_cache_bytes(tmp_path) == 64 * MiB
    (tmp_path / "cpufreq").mkdir()  # not a CPU
    assert measure.largest_cache_bytes(tmp_path / "cpu2" / "..") == 64 * MiB


def test_a_ram_measurement_is_sized_past_the_cache_within_the_memory_free(monkeypatch):
    """An H200 host's 256 MiB read sat in its 300 MiB L3 and gave about twice RAM's speed: RAM
    sizes are raised to CACHE_MULTIPLE times the cache (split over the buffers), never lowered,
    and never past an eighth of the memory available."""
    from types import SimpleNamespace

    import psutil

    free = 64 * 2**30
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=free))
    monkeypatch.setattr(measure, "largest_cache_bytes", lambda: 300 * MiB)
    assert measure.past_cache(256 * MiB) == 4 * 300 * MiB
    assert measure.past_cache(256 * MiB, buffers=2) == 2 * 300 * MiB
    assert measure.past_cache(2048 * MiB) == 2048 * MiB  # already past it
    free = 4 * 2**30  # a small machine: an eighth of what is free, 512 MiB
    assert measure.past_cache(0) == 512 * MiB
    monkeypatch.setattr(measure, "largest_cache_bytes", lambda: free)  # a cache as large as RAM
    assert measure.past_cache(MiB) == free // 8 // MiB * MiB
    monkeypatch.setattr(measure, "largest_cache_bytes", lambda: None)  # unknown: as asked
    assert measure.past_cache(5 * MiB) == 5 * MiB


def test_a_result_from_buffers_that_fit_in_the_cache_says_so(monkeypatch):
    monkeypatch.setattr(measure, "largest_cache_bytes", lambda: 16 * MiB)
    assert "fits in this CPU's 16 MiB cache" in measure.ram_read(4 * MiB, 1, threads=1).note
    assert "fits in this CPU's 16 MiB cache" in measure.ram_copy(4 * MiB, 1, threads=1).note
    big = measure.ram_read(None, 1, threads=1)  # by default 256 MiB at least: no note
    assert big.size_bytes == 256 * MiB and big.note == ""
    monkeypatch.setattr(measure, "largest_cache_bytes", lambda: 96 * MiB)
    copy = measure.ram_copy(None, 1)  # two buffers of 192 MiB: 4 x the cache
    assert copy.size_bytes == 192 * MiB and copy.note == ""
    monkeypatch.setattr(measure, "largest_cache_bytes", lambda: None)
    assert measure.ram_read(4 * MiB, 1, threads=1).note == ""


def test_the_expert_benchmark_reads_more_experts_than_the_cache_holds(monkeypatch):
    """24 distinct q4_0 experts of Qwen3-30B-A3B's shape (64 MB) fit in a 300 MiB L3: by default
    the benchmark adds copies of them until its experts hold past_cache's bytes."""
    from lazymoe.quant import expert_bench

    small = dict(hidden=256, intermediate=512, repeats=1)
    one = expert_bench.measure_read_bandwidth("q8_0", n_experts=1, **small)["bytes"]
    monkeypatch.setattr(measure, "past_cache", lambda size, buffers=1: max(size, 40 * one + 1))
    assert expert_bench.measure_read_bandwidth("q8_0", **small)["bytes"] == 41 * one
    assert expert_bench.measure_read_bandwidth("q8_0", n_experts=3, **small)["bytes"] == 3 * one
    monkeypatch.setattr(measure, "past_cache", lambda size, buffers=1: max(size, 5 * one))
    assert expert_bench.measure_read_bandwidth("q8_0", **small)["bytes"] == 24 * one  # 24 at least
