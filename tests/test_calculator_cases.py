"""The source documents' case studies: each bound is at or above what was reported."""

from __future__ import annotations

import pytest

from lazymoe import calculator as calc

CASES = calc.case_studies()


def test_every_seed_with_a_case_study_is_covered():
    seeds = {c.source.split(":")[0] for c in CASES}
    assert seeds == {"seed 000", "seed 001", "seed 003", "seed 004"}


@pytest.mark.parametrize("case", CASES, ids=[c.key for c in CASES])
def test_bound_is_at_or_above_the_reported_speed(case):
    p = case.bound()
    assert p.fits, f"{case.key}: the plan does not fit: {p.memory.overflow()}"
    assert p.tok_s >= case.reported_tok_s, f"{case.key}: {calc.describe(p)}"
    assert case.gap and case.assumptions, "every case explains its gap and states its assumptions"


def test_ntransformer_is_limited_by_pcie_and_cpu_moe_by_ram():
    by_key = {c.key: c.bound() for c in CASES}
    assert by_key["seed001-ntransformer"].bottleneck.startswith("PCIe")
    assert by_key["seed003-cpu-moe-8gb"].bottleneck == "RAM"
    assert by_key["seed000-accelerate-disk"].bottleneck == "disk"


def test_cpu_moe_case_says_ddr4_3200_would_be_too_slow_for_the_report():
    case = next(c for c in CASES if c.key == "seed003-cpu-moe-8gb")
    ddr4 = calc.Machine.from_names("Desktop, DDR4-3200 dual", 64, gpu="RTX 3090")
    assert calc.plan(ddr4, case.workload, "cpu_moe", n_cpu_moe=36).tok_s < case.reported_tok_s


def test_moving_expert_layers_to_the_gpu_raises_the_bound_as_it_raised_the_measurement():
    b = {c.key: c for c in CASES}
    low, high = b["seed003-cpu-moe-8gb"], b["seed003-cpu-moe-22gb"]
    assert high.bound().tok_s / low.bound().tok_s == pytest.approx(1.2, abs=0.1)
    assert high.reported_tok_s / low.reported_tok_s == pytest.approx(1.2, abs=0.1)


def test_module01_example_machines_match_the_source_table():
    machines = dict(calc.module01_example_machines())
    q4 = "Q4_K_M"
    office = machines["office PC, no GPU, 16 GB RAM"]
    assert calc.plan(office, calc.Workload.from_names("Llama-3.2-3B", q4)).fits
    laptop = machines["gaming laptop, RTX 3070 (8 GB)"]
    assert calc.plan(laptop, calc.Workload.from_names("Qwen3-4B", q4)).strategy == "full_gpu"
    server = machines["shared server, 2 x 12 GB GPUs on PCIe 3.0"]
    p = calc.plan(server, calc.Workload.from_names("Qwen3-32B", q4))
    assert p.strategy == "multi_gpu_layer" and p.fits
