"""Reading results: the roofline bound of each row, the table, the chart; and the timing protocol."""

from __future__ import annotations

import time

import pytest

from lazymoe.bench import cli, report
from lazymoe.bench.measure import TimedRun, cold_summary, run_protocol, time_stream

GB = 1e9
BYTES = {"dense_per_token_bytes": 2 * GB, "active_expert_bytes_per_token": 4 * GB}
BW = {"gpu_read_gbps": 2000.0, "cpu_read_gbps": 100.0, "h2d_pinned_gbps": 50.0}


def row(**fields) -> dict:
    base = {"ok": True, "model": "m", "routing": "uniform", "decode_tok_s": 10.0, "prefill_tok_s": 100.0,
            "peak_vram_bytes": 3 * GB, "peak_rss_bytes": GB, "options": {}}
    return {**base, **fields}


def test_cpu_moe_bound_is_the_slower_of_cpu_memory_for_experts_and_gpu_memory_for_the_rest():
    r = row(engine="llamacpp", label="llama.cpp --cpu-moe", placement="cpu", options={"cpu_moe": True})
    assert report.roofline_tok_s(r, BYTES, BW) == pytest.approx(1 / (4 / 100))  # overlapped: RAM's time
    serial = report.roofline_tok_s(r, BYTES, BW, overlap=False)
    assert serial == pytest.approx(1 / (2 / 2000 + 4 / 100))  # the calculator's: the parts added up


def test_gpu_fetch_bound_moves_misses_over_pcie_then_reads_every_expert_from_vram():
    r = row(engine="lazymoe", placement="fetch", vram_budget_gb=8, hit_rate=0.25)
    assert report.roofline_tok_s(r, BYTES, BW) == pytest.approx(1 / (0.75 * 4 / 50))  # PCIe is slowest
    expected_serial = 1 / ((2 + 4) / 2000 + 0.75 * 4 / 50)  # calculator.expert_cache_bound
    assert report.roofline_tok_s(r, BYTES, BW, overlap=False) == pytest.approx(expected_serial)
    old_name = {**r, "placement": "gpu"}  # results files written before the rename
    assert report.roofline_tok_s(old_name, BYTES, BW) == pytest.approx(1 / (0.75 * 4 / 50))
    better = report.roofline_tok_s({**r, "hit_rate": 0.75}, BYTES, BW)
    assert better > report.roofline_tok_s(r, BYTES, BW)  # a higher hit rate raises the bound
    resident = report.roofline_tok_s({**r, "hit_rate": 1.0}, BYTES, BW)
    assert resident == pytest.approx(2000 / 6)  # nothing crosses PCIe: GPU memory sets the pace


def test_auto_uses_its_measured_split_else_the_faster_path_and_no_gpu_means_cpu_speed():
    r = row(engine="lazymoe", placement="auto", vram_budget_gb=8, hit_rate=0.0)
    assert report.roofline_tok_s(r, BYTES, BW) == pytest.approx(100 / 4)  # RAM 100 > PCIe 50
    measured = {**r, "hit_rate": 0.5, "experts_on_cpu": 1, "experts_on_device": 3}  # c = 0.25
    # VRAM (2 + 3) / 2000, PCIe 0.25 * 4 / 50, RAM 0.25 * 4 / 100: PCIe is slowest
    assert report.roofline_tok_s(measured, BYTES, BW) == pytest.approx(1 / (0.25 * 4 / 50))
    cpu_side = row(engine="lazymoe", placement="cpu", vram_budget_gb=8, hit_rate=0.5)
    assert report.roofline_tok_s(cpu_side, BYTES, BW) == pytest.approx(1 / (2 / 100))
    cpu_only = {"cpu_read_gbps": 20.0}
    assert report.roofline_tok_s(r, BYTES, cpu_only) == pytest.approx(20 / 6)


def test_llama_cpp_with_some_layers_experts_on_the_cpu():
    r = row(engine="llamacpp", label="llama.cpp --n-cpu-moe 12", placement="cpu",
            options={"cpu_moe": False, "n_cpu_moe": 12})
    # 12 of 48 layers: a quarter of the experts read from CPU memory, the rest from VRAM
    assert report.roofline_tok_s(r, BYTES, BW, num_layers=48) == pytest.approx(1 / (0.25 * 4 / 100))


def document() -> dict:
    return {"command": "lazymoe bench", "machine": {"cpu_model": "cpu", "gpus": [{"name": "H100"}]},
            "bandwidths": BW, "models": {"m": {"bytes": BYTES}}, "results": [
                row(engine="llamacpp", label="llama.cpp --cpu-moe", placement="cpu", options={"cpu_moe": True},
                    decode_tok_s=20.0, vram_budget_gb=None),
                row(engine="lazymoe", label="lazymoe gpu", placement="gpu", vram_budget_gb=5, hit_rate=0.1,
                    decode_tok_s=10.0),
                row(engine="lazymoe", label="lazymoe gpu", placement="gpu", vram_budget_gb=8, hit_rate=0.2,
                    decode_tok_s=30.0),
                {"ok": False, "label": "lazymoe cpu", "engine": "lazymoe", "model": "m", "routing": "uniform",
                 "vram_budget_gb": 8, "error": "OutOfMemoryError: CUDA out of memory"}]}


def test_table_lists_every_row_and_says_why_a_row_failed():
    text = report.table(document())
    assert text.count("\n") == 2 + 4 - 1
    assert "FAILED: OutOfMemoryError" in text and "| 30.00 |" in text


def test_table_says_what_share_of_a_lazymoe_rows_experts_its_cpu_computed():
    doc = document()
    doc["results"][2].update(experts_on_cpu=25, experts_on_device=75)  # the 8 GB row: counted
    lines = report.table(doc).splitlines()
    column = lines[0].split(" | ").index("on CPU")
    cells = [line.split(" | ")[column] for line in lines[2:5]]
    assert cells == ["-", "-", "25%"]  # llama.cpp: none counted; the 5 GB row: no counts
    # a device-cache row counts its decode steps apart: the column and the bound use those (the
    # prompt's experts, split by the cost model on the host, are in the generation's counts)
    doc["results"][2].update(decode_experts_on_cpu=0, decode_experts_on_device=90)
    lines = report.table(doc).splitlines()
    assert lines[4].split(" | ")[column] == "0%"
    fetching = {**doc["results"][2], "placement": "fetch"}
    assert report._cpu_share(doc["results"][2], 0.5) == report._cpu_share(fetching, 0.5) == 0.0


def test_speedups_divide_by_llama_cpp_on_the_same_model_and_routing():
    ratios = {r["vram_budget_gb"]: r["speedup"] for r in report.speedups(document())}
    assert ratios == {5: pytest.approx(0.5), 8: pytest.approx(1.5)}


def test_regimes_compare_with_llama_cpps_own_routing_row_and_old_uniform_is_model_own():
    doc = document()
    doc["results"][0]["routing"] = "model-own"
    doc["results"][1]["routing"] = "real-text"
    ratios = {(r["routing"], r["vram_budget_gb"]): r["speedup"] for r in report.speedups(doc)}
    assert ratios == {("real-text", 5): pytest.approx(0.5), ("model-own", 8): pytest.approx(1.5)}
    assert "| m | model-own | lazymoe gpu | 8 |" in report.table(doc)  # "uniform" never shown
    assert "uniform" not in report.table(doc)


def test_figure_draws_each_series_and_the_lazymoe_bound():
    fig = report.figure(document())
    names = [trace.name for trace in fig.data]
    assert any(n.startswith("bound:") for n in names) and len(names) == 3
    lazymoe = next(t for t in fig.data if t.name.endswith("lazymoe gpu (model-own)"))
    assert list(lazymoe.x) == [5, 8] and list(lazymoe.y) == [10.0, 30.0]


def test_timed_stream_splits_prefill_from_decode():
    def stream():
        time.sleep(0.05)
        for token in range(5):
            yield token
            time.sleep(0.01)

    run, tokens = time_stream(10, stream())
    assert tokens == [0, 1, 2, 3, 4]
    assert run.prefill_s >= 0.05 and run.decode_s >= 0.04
    assert run.decode_tok_s == pytest.approx(4 / run.decode_s)
    assert TimedRun(10, 1, 0.1, 0.0).decode_tok_s != TimedRun(10, 1, 0.1, 0.0).decode_tok_s  # nan


def test_protocol_warms_up_then_reports_the_median():
    calls = []

    def generate(ids, n):
        calls.append(n)
        yield from range(n)

    result = run_protocol(generate, [1, 2], new_tokens=3, repeats=3, warmup=2).as_dict()
    assert calls == [3] * 5 and len(result["runs"]) == 3 and result["first_tokens"] == [0, 1, 2]
    assert result["cold"]["tokens"] == 3 and result["cold"]["first_token_s"] >= 0
    assert run_protocol(generate, [1], new_tokens=2, repeats=1, warmup=0).as_dict()["cold"] is None
    with pytest.raises(ValueError, match="new_tokens >= 2"):
        run_protocol(generate, [1], new_tokens=1)


def test_cli_prints_the_table_of_a_saved_result(tmp_path, capsys):
    import argparse
    import json

    path = tmp_path / "r.json"
    path.write_text(json.dumps(document()))
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["--report", str(path)])) == 0
    assert "llama.cpp --cpu-moe" in capsys.readouterr().out


def test_bar_figure_has_a_bar_per_successful_row_and_the_bounds():
    fig = report.bar_figure(document())
    assert len(fig.data[0].x) == 3 and fig.data[1].name == "roofline bound"


def test_cold_summary_times_the_first_tokens_of_the_first_run():
    run = TimedRun(8, 40, 0.5, 3.9, token_times_s=[0.5 + 0.1 * i for i in range(40)])
    cold = cold_summary(run, n_tokens=16)
    assert cold["first_token_s"] == 0.5 and cold["tokens"] == 16
    assert cold["decode_tok_s"] == pytest.approx(15 / 1.5)
    assert cold["whole_run_decode_tok_s"] == pytest.approx(39 / 3.9)
