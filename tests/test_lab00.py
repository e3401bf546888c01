"""Lab 00's checks: right readings pass, typical misreadings are named."""

from __future__ import annotations

from lazymoe import hardware
from lazymoe.exercises import lab00


def test_correct_reading_passes():
    machine = hardware.probe()
    result = lab00.check_reading(round(machine.ram_total_bytes / 2**30, 1), machine.cpu_threads, len(machine.gpus))
    assert result.passed, str(result)


def test_untouched_cell_says_not_started():
    result = lab00.check_reading(None, None, None)
    assert not result.passed and "returned None" in result.message


def test_gb_instead_of_gib_is_explained():
    machine = hardware.probe()
    ram_gb = machine.ram_total_bytes / 1e9  # the shop's figure, 7% larger than GiB
    result = lab00.check_reading(round(ram_gb, 1), machine.cpu_threads, len(machine.gpus))
    if abs(ram_gb - machine.ram_total_bytes / 2**30) > 0.6:  # only distinguishable above ~8 GiB
        assert not result.passed
        assert any("GiB = 2^30" in d for d in result.details)


def test_wrong_gpu_count_names_the_line_to_read():
    machine = hardware.probe()
    result = lab00.check_reading(round(machine.ram_total_bytes / 2**30, 1), machine.cpu_threads, len(machine.gpus) + 1)
    assert not result.passed
    assert any("NVIDIA GPUs" in d for d in result.details)


def test_repair_check_reports_the_doctors_failures(tmp_path, monkeypatch):
    monkeypatch.setenv("LAZYMOE_DATA", str(tmp_path))  # no model there
    result = lab00.check_repaired()
    assert not result.passed
    assert any("bundled model" in d and "make data" in d for d in result.details)
