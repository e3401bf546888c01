"""Lab 03's timing of one expert per format: a row for every format, the bytes each format
really stores, the computation it times is the expert's (its output is close to float32's),
positive times. No timing asserts: the speed itself goes into data/results
(python -m lazymoe.quant.expert)."""

from __future__ import annotations

import pytest
import torch

from lazymoe import quant
from lazymoe.quant.expert_bench import (
    LAB03_FORMATS,
    time_expert,
    time_expert_formats,
    timing_table,
)

# a small expert: rows of 256 split into Q4_K's super-blocks; 1 MiB of copies keeps the test quick
SMALL = dict(hidden=256, intermediate=512, repeats=1, min_bytes=1 << 20)


@pytest.fixture(scope="module")
def rows():
    return time_expert_formats(**SMALL)


def test_a_row_for_every_format_in_order(rows):
    assert [r.format for r in rows] == list(LAB03_FORMATS)
    assert list(LAB03_FORMATS) == ["f32", "bf16", "q8_0", "q4_0", "q4_k"]


@pytest.mark.parametrize("fmt", LAB03_FORMATS)
def test_bytes_are_the_formats_own(rows, fmt):
    row = next(r for r in rows if r.format == fmt)
    spec = quant.get_format(fmt)
    want = 2 * spec.nbytes((512, 256)) + spec.nbytes((256, 512))  # gate + up (I, D), down (D, I)
    assert row.expert_bytes == want
    assert row.bits_per_weight == pytest.approx(quant.bits_per_weight(fmt))
    want_bits = {"f32": 32, "bf16": 16, "q8_0": 8.5, "q4_0": 4.5, "q4_k": 4.5}[fmt]
    assert row.bits_per_weight == want_bits


def test_bound_is_the_bytes_ratio(rows):
    by = {r.format: r for r in rows}
    assert by["q8_0"].bytes_ratio_over(by["bf16"]) == pytest.approx(16 / 8.5)
    assert by["q4_0"].bytes_ratio_over(by["bf16"]) == pytest.approx(16 / 4.5)
    assert by["f32"].bytes_ratio_over(by["bf16"]) == pytest.approx(0.5)


def test_times_are_positive_and_the_fastest_way_is_kept(rows):
    for r in rows:
        assert r.seconds_per_token > 0 and r.read_gbps > 0
        assert r.seconds_per_token == min(r.seconds_by_activations.values())
        assert r.seconds_by_activations[r.activations] == r.seconds_per_token
        assert r.speedup_over(r) == 1.0
    by = {r.format: r for r in rows}
    assert set(by["f32"].seconds_by_activations) == {"torch"}
    # q8_0, q4_0 and q4_k have int8-activation kernels: both ways are timed
    for fmt in ("q8_0", "q4_0", "q4_k"):
        assert set(by[fmt].seconds_by_activations) == {"float", "int8"}


def test_the_timed_expert_computes_the_expert(rows):
    """Each format's output is float32's up to its own rounding: fewer bits, larger error."""
    by = {r.format: r.output_rel_error for r in rows}
    assert by["f32"] < 1e-6
    assert by["bf16"] < 0.02
    assert by["q8_0"] < 0.05
    assert by["q8_0"] < by["q4_0"] < 0.3 and by["q4_k"] < 0.3


def test_a_format_without_int8_kernel_times_float_only():
    row = time_expert("q4_1", **SMALL)
    assert row.activations == "float" and set(row.seconds_by_activations) == {"float"}
    assert row.bits_per_weight == 5.0


def test_copies_do_not_change_the_result_per_token():
    """min_bytes only adds copies: the row's bytes are still one expert's."""
    one = time_expert("q8_0", hidden=256, intermediate=512, repeats=1, min_bytes=0)
    many = time_expert("q8_0", hidden=256, intermediate=512, repeats=1, min_bytes=4 << 20)
    assert one.expert_bytes == many.expert_bytes
    # the error belongs to the activation path that timed fastest (float or int8), which timing
    # noise may choose differently in the two runs: compare like with like
    if one.activations == many.activations:
        assert one.output_rel_error == many.output_rel_error
    else:
        assert {one.activations, many.activations} == {"float", "int8"}
        assert 0 < one.output_rel_error < 0.05 and 0 < many.output_rel_error < 0.05


def test_bad_input_says_what_to_change():
    with pytest.raises(quant.QuantError, match="unknown quantization format 'q3_x'"):
        time_expert("q3_x", **SMALL)
    with pytest.raises(quant.QuantError, match="multiple of the group size 256"):
        time_expert("q4_k", hidden=96, intermediate=512, repeats=1)
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        time_expert("q8_0", hidden=256, intermediate=512, repeats=0)
    with pytest.raises(quant.QuantError, match="at least one format"):
        time_expert_formats(())


def test_threads_are_restored():
    before = torch.get_num_threads()
    time_expert("q4_0", threads=1, **SMALL)
    assert torch.get_num_threads() == before


def test_table_shows_every_row_against_the_reference(rows):
    text = timing_table(rows, reference="bf16", bandwidth_gbps=20.0)
    lines = text.splitlines()
    assert "speedup" in lines[0] and "predicted" in lines[0] and "bound ms" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == list(LAB03_FORMATS)
    q4_0 = next(line for line in lines if line.startswith("q4_0")).split()
    assert q4_0[-2] == f"{16 / 4.5:.2f}"  # predicted speedup over bf16: the bytes ratio
    bound_ms = next(r for r in rows if r.format == "q4_0").expert_bytes / 20e9 * 1e3
    assert float(q4_0[6]) == pytest.approx(bound_ms, abs=1e-3)  # bytes / bandwidth
    assert "bound ms" not in timing_table(rows)  # no bandwidth given: no bound columns
    with pytest.raises(quant.QuantError, match="no 'f16' row"):
        timing_table(rows, reference="f16")


@pytest.mark.parametrize("activations", ["float", "int8"])
def test_the_cli_times_experts_one_a_call_and_together(tmp_path, activations):
    """`python -m lazymoe.quant.expert --together 4`: a row per (activations, experts a call),
    each with the machine's read bandwidth beside it (small experts: no figure is asserted)."""
    import json

    from lazymoe.quant import expert_bench

    out = tmp_path / "kernels.json"
    small = dict(hidden=256, intermediate=512, n_experts=8)
    real = expert_bench.measure_read_bandwidth
    with pytest.MonkeyPatch.context() as mp:  # Qwen3-30B-A3B's experts would take minutes here
        mp.setattr(expert_bench, "measure_read_bandwidth", lambda fmt, **k: real(fmt, **{**k, **small}))
        assert expert_bench.main(["--formats", "q8_0", "--threads", "1", "--repeats", "1",
                                  "--activations", activations, "--together", "4",
                                  "--json", str(out)]) == 0  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [(r["activations"], r["experts_per_call"]) for r in rows] == [(activations, 1), (activations, 4)]
    assert all(r["kernel_gbps"] > 0 and r["read_gbps"] > 0 for r in rows)
    with pytest.raises(quant.QuantError, match="no CPU kernel computes these experts together"):
        expert_bench.measure_read_bandwidth("q5_k", repeats=1, together=2, activations="int8", **small)
