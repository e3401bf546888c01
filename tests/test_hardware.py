"""probe() and measure(): safe without a GPU, sized and explained, with a table, a chart and a CLI."""

from __future__ import annotations

import json

import pytest
from conftest import requires_gpu

from lazymoe import hardware, measure

MiB = 2**20


def test_probe_reads_cpu_and_ram_and_says_why_there_is_no_gpu():
    info = hardware.probe()
    assert info.ram_total_bytes > info.ram_available_bytes > 0
    assert info.cpu_threads and info.cpu_threads >= 1
    if not info.gpus:
        assert info.gpu_note
    text = info.table()
    assert "ram" in text and "GiB" in text
    assert json.loads(json.dumps(info.as_dict()))["cpu_model"] == info.cpu_model


def test_gpu_info_turns_bus_width_and_clock_into_bandwidth():
    gpu = hardware.GpuInfo(0, "test", 24 * 2**30, 0, memory_bus_width_bits=384,
                           memory_clock_mhz=10501, pcie_gen=4, pcie_width=16)
    assert gpu.memory_bandwidth_gbps == pytest.approx(384 / 8 * 10501e6 * 2 / 1e9)   # ~1008 (RTX 4090)
    assert gpu.pcie_bandwidth_gbps == pytest.approx(1.969 * 16)


def test_ram_copies_count_read_and_write():
    for fn in (measure.ram_copy, measure.ram_copy_numpy, measure.ram_copy_torch):
        r = fn(4 * MiB, repeats=2)
        assert r.gbps == pytest.approx(2 * 4 * MiB / min(r.seconds) / 1e9)
        assert r.repeats == 2 and len(r.seconds) == 2 and r.size_bytes == 4 * MiB


def test_one_ram_copy_serves_lab01_the_benchmark_and_the_engine(monkeypatch):
    import torch

    from lazymoe.bench import bandwidth
    from lazymoe.engine.compute import placement

    before = torch.get_num_threads()
    assert measure.ram_copy(MiB, 1, threads=1).name == "RAM copy, 1 thread"
    assert torch.get_num_threads() == before  # the thread count is given back
    calls = []

    def fake(size_bytes, repeats, threads=None):
        calls.append(size_bytes)
        return measure.Measurement("RAM copy", 42.0, size_bytes, repeats, [1.0])

    monkeypatch.setattr(measure, "ram_copy", fake)
    monkeypatch.setattr(bandwidth, "ram_copy", fake)
    assert bandwidth.measure_bandwidths(nbytes=MiB, repeats=1)["cpu_read_gbps"] == 42.0
    assert placement.measure_cost_model(64, 32, torch.float32, "cpu", nbytes=MiB).cpu_bandwidth_gbps == 42.0
    assert calls == [measure.past_cache(MiB, 2)] * 2  # sized past the CPU's cache, both


def test_measure_does_not_import_hardware():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(measure.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "lazymoe.hardware" not in imported  # hardware -> measure only: no import loop


def test_disk_read_uses_a_fresh_file_and_says_whether_the_cache_was_bypassed(tmp_path):
    r = measure.disk_read(16 * MiB, repeats=2, folder=tmp_path)
    assert r.gbps > 0 and r.size_bytes == 16 * MiB
    assert "O_DIRECT" in r.note
    assert list(tmp_path.iterdir()) == []   # the test file is removed


def test_measure_reports_sizes_datasheet_and_skips_what_it_cannot_do(tmp_path):
    report = measure.measure(quick=True, host="Desktop, DDR5-5600 dual", disk_folder=tmp_path,
                             gpu=False)
    names = [r.name for r in report.results]
    assert any(n.startswith("RAM copy") for n in names) and any(n.startswith("disk") for n in names)
    ram = next(r for r in report.results if r.name.startswith("RAM"))
    assert ram.datasheet_gbps == 89.6 and ram.share_of_datasheet == pytest.approx(ram.gbps / 89.6)
    table = report.table()
    assert "MiB x 3" in table and "89.6" in table
    fig = report.figure()
    assert [t.name for t in fig.data] == ["measured", "datasheet"]


def test_measure_without_cuda_says_the_gpu_was_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "_cuda_available", lambda: False)
    report = measure.measure(quick=True, disk_folder=tmp_path)
    assert any("GPU" in s for s in report.skipped)


def test_module_cli_prints_json(capsys):
    assert hardware.main(["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["probe"]["ram_total_bytes"] > 0 and out["measure"] is None


@pytest.mark.gpu
@requires_gpu
def test_gpu_copies_are_measured_against_nvml_figures():
    results = measure.gpu_measurements(64 * MiB, repeats=3, datasheet=hardware.probe().gpus[0].datasheet())
    by_name = {r.name: r for r in results}
    assert by_name["host->GPU, pinned"].gbps > 0
    assert by_name["GPU device copy"].datasheet_gbps
