"""llama.cpp rows from the llama-bench binary: parsing its -o json, merging into a results file,
and the report reading the merged file."""

from __future__ import annotations

import json
import os
import statistics

import pytest

from lazymoe.bench import harness, llamabench, report
from lazymoe.bench.llamabench import merge_into, parse_llama_bench

CPU_MOE = r"\.ffn_(up|down|gate)_exps=CPU"
PP_NS = [301234567, 288765432, 295001234]  # three repetitions of pp32, ns each
TG_NS = [1712345678, 1650123456, 1688001234]  # three repetitions of tg16


def bench_test(
    n_prompt: int, n_gen: int, samples_ns: list[int], overrides: str = "none", n_cpu_moe: int = 0
) -> dict:
    """One test object as llama-bench's json_printer writes it (fields in its get_fields() order)."""
    ts = [1e9 * (n_prompt + n_gen) / ns for ns in samples_ns]
    return {
        "build_commit": "1d2f3a4",
        "build_number": 6789,
        "cpu_info": "Intel(R) Xeon(R) Processor",
        "gpu_info": "NVIDIA H100 80GB HBM3",
        "backends": "CUDA",
        "model_filename": "/dev/shm/h7model/model-bf16.gguf",
        "model_type": "qwen3moe 30B.A3B BF16",
        "model_size": 61064245248,
        "model_n_params": 30532122624,
        "n_batch": 2048,
        "n_ubatch": 512,
        "n_threads": 16,
        "cpu_mask": "0x0",
        "cpu_strict": False,
        "poll": 50,
        "type_k": "f16",
        "type_v": "f16",
        "n_gpu_layers": 99,
        "n_cpu_moe": n_cpu_moe,
        "split_mode": "layer",
        "main_gpu": 0,
        "no_kv_offload": False,
        "flash_attn": -1,
        "devices": "auto",
        "tensor_split": "0.00",
        "tensor_buft_overrides": overrides,
        "load_mode": "auto",
        "lazy_mode": "auto",
        "embeddings": False,
        "no_op_offload": 0,
        "no_host": False,
        "repack": True,
        "fit_target": 0,
        "fit_min_ctx": 0,
        "n_prompt": n_prompt,
        "n_gen": n_gen,
        "n_depth": 0,
        "test_time": "2026-11-22T05:10:00Z",
        "avg_ns": int(statistics.mean(samples_ns)),
        "stddev_ns": int(statistics.stdev(samples_ns)),
        "avg_ts": statistics.mean(ts),
        "stddev_ts": statistics.stdev(ts),
        "samples_ns": samples_ns,
        "samples_ts": ts,
    }


def bench_output(overrides: str = CPU_MOE, **kw) -> list[dict]:
    """`llama-bench -p 32 -n 16 -r 3 -o json`: a pp32 test and a tg16 test."""
    return [bench_test(32, 0, PP_NS, overrides, **kw), bench_test(0, 16, TG_NS, overrides, **kw)]


def write(path, tests) -> str:
    path.write_text(json.dumps(tests, indent=2))
    return str(path)


def parse(source, **kw) -> dict:
    rows = parse_llama_bench(source, model="qwen3-30b-a3b", routing="uniform", **kw)
    assert len(rows) == 1
    return rows[0]


# --- parsing -------------------------------------------------------------------------------------


def test_prefill_and_decode_are_the_medians_of_the_pp_and_tg_samples(tmp_path):
    row = parse(write(tmp_path / "lb.json", bench_output()))
    assert row["prefill_tok_s"] == pytest.approx(statistics.median(32e9 / ns for ns in PP_NS))
    assert row["decode_tok_s"] == pytest.approx(statistics.median(16e9 / ns for ns in TG_NS))
    assert row["prefill_tok_s"] == pytest.approx(32e9 / 295001234)  # the middle sample
    assert (row["prompt_tokens"], row["new_tokens"], row["repeats"]) == (32, 16, 3)


def test_a_row_looks_like_a_harness_llama_cpp_row_and_says_where_it_came_from(tmp_path):
    row = parse(write(tmp_path / "lb.json", bench_output()))
    assert row["engine"] == "llamacpp" and row["source"] == "llama-bench" and row["ok"] is True
    assert (row["model"], row["routing"], row["dtype"]) == ("qwen3-30b-a3b", "uniform", "bfloat16")
    assert row["label"] == "llama.cpp --cpu-moe (llama-bench cross-check)" and row["vram_budget_gb"] is None
    assert row["options"]["cpu_moe"] is True
    assert row["peak_vram_bytes"] is None and row["peak_rss_bytes"] is None
    assert "no peak VRAM or RSS" in row["note"]
    lb = row["llama_bench"]
    assert lb["build_commit"] == "1d2f3a4" and lb["n_threads"] == 16 and lb["n_gpu_layers"] == 99
    assert lb["tensor_buft_overrides"] == CPU_MOE and lb["gpu_info"] == "NVIDIA H100 80GB HBM3"
    assert lb["model_size"] == 61064245248 and lb["model_type"] == "qwen3moe 30B.A3B BF16"
    assert (
        lb["samples"]["pp32"]["samples_ns"] == PP_NS
        and len(lb["samples"]["tg16"]["samples_ts"]) == 3
    )


def test_placement_is_cpu_with_the_expert_override_and_gpu_without(tmp_path):
    assert parse(write(tmp_path / "a.json", bench_output()))["placement"] == "cpu"
    gpu = parse(write(tmp_path / "b.json", bench_output(overrides="none")))
    assert gpu["placement"] == "gpu" and gpu["label"] == "llama.cpp all on GPU (llama-bench cross-check)"
    assert gpu["options"]["cpu_moe"] is False
    ncmoe = parse(write(tmp_path / "c.json", bench_output(overrides="none", n_cpu_moe=48)))
    assert (
        ncmoe["placement"] == "cpu" and ncmoe["label"] == "llama.cpp --n-cpu-moe 48 (llama-bench cross-check)"
    )
    cpu_build = [{**t, "backends": "CPU"} for t in bench_output(overrides="none")]
    assert parse(json.dumps(cpu_build))["label"] == "llama.cpp on CPU (llama-bench cross-check)"


def test_a_placement_that_disagrees_with_the_file_is_refused(tmp_path):
    path = write(tmp_path / "lb.json", bench_output(overrides="none"))
    assert parse(path, placement="gpu")["placement"] == "gpu"
    with pytest.raises(ValueError, match=r"ran placement 'gpu'.*not 'cpu'"):
        parse(path, placement="cpu")


def test_the_text_itself_and_jsonl_output_parse_too():
    tests = bench_output()
    assert parse(json.dumps(tests))["decode_tok_s"] == pytest.approx(16e9 / 1688001234)
    jsonl = "\n".join(json.dumps(t) for t in tests)
    assert parse(jsonl)["prefill_tok_s"] == pytest.approx(32e9 / 295001234)


def test_an_empty_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("")
    with pytest.raises(ValueError, match=r"empty\.json is empty"):
        parse(str(path))


def test_invalid_json_is_an_error_saying_how_to_write_it(tmp_path):
    cut_short = json.dumps(bench_output(), indent=2)[:-2]  # llama-bench died before the ']'
    path = tmp_path / "cut.json"
    path.write_text(cut_short)
    with pytest.raises(ValueError, match=r"cut\.json is not valid JSON.*-o json > FILE"):
        parse(str(path))


def test_a_file_without_a_decode_or_prefill_test_says_which_flag_is_missing(tmp_path):
    only_pp = write(tmp_path / "pp.json", bench_output()[:1])
    with pytest.raises(
        ValueError, match=r"pp\.json has no decode test \(n_gen > 0.*run llama-bench with -n N"
    ):
        parse(only_pp)
    only_tg = write(tmp_path / "tg.json", bench_output()[1:])
    with pytest.raises(ValueError, match=r"tg\.json has no prefill test .*with -p N"):
        parse(only_tg)


def test_two_configurations_in_one_file_are_refused(tmp_path):
    two_pp = [*bench_output(), bench_test(64, 0, PP_NS, CPU_MOE)]
    with pytest.raises(ValueError, match=r"2 prefill tests \(pp32, pp64\)"):
        parse(write(tmp_path / "a.json", two_pp))
    mixed = [bench_test(32, 0, PP_NS, CPU_MOE), bench_test(0, 16, TG_NS, "none")]
    with pytest.raises(ValueError, match="tensor_buft_overrides differ"):
        parse(write(tmp_path / "b.json", mixed))


# --- merging -------------------------------------------------------------------------------------

GB = 1e9
MODEL_BYTES = {
    "expert_bytes": 9437184,
    "experts_total_bytes": 57982058496,
    "dense_resident_bytes": 3082186752,
    "dense_per_token_bytes": 2459860992,
    "active_expert_bytes_per_token": 3623878656,
    "total_bytes": 61064245248,
}
BANDWIDTHS = {
    "cpu_read_gbps": 101.77093909779147,
    "h2d_pinned_gbps": 54.84394749077427,
    "gpu_read_gbps": 2977.1167815110657,
    "bytes_per_test": 1073741824,
    "torch_threads": 16,
}


def lazymoe_results() -> dict:
    """The structure of data/results/bench-h100-qwen3-30b-a3b-batched-uniform-8gb.json, one row."""
    run = {
        "prefill_tok_s": 95.30107137732115,
        "decode_tok_s": 11.855229167195228,
        "prefill_s": 0.3357779670000127,
        "decode_s": 1.265264449,
        "new_tokens": 16,
    }
    return {
        "schema": "lazymoe.bench/1",
        "created_utc": "2026-11-22T04:34:53+00:00",
        "command": "lazymoe bench --model /dev/shm/m --engines lazymoe --budgets 8 --placements gpu",
        "machine": {
            "cpu_model": "Intel(R) Xeon(R) Processor",
            "cpu_cores_physical": 16,
            "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3"}],
        },
        "libraries": {"torch": "2.11.0", "llama-cpp-python": None},
        "bandwidths": BANDWIDTHS,
        "models": {
            "qwen3-30b-a3b": {
                "name": "qwen3-30b-a3b",
                "model_dir": "/dev/shm/m",
                "gguf_path": None,
                "routing": "uniform",
                "dtype": "bfloat16",
                "bytes": MODEL_BYTES,
            }
        },
        "protocol": {
            "prompt_tokens": 32,
            "new_tokens": 16,
            "repeats": 3,
            "warmup": 1,
            "statistic": "median of the timed runs",
            "gpu": True,
        },
        "notes": ["random weights, shapes of qwen3-30b-a3b, routing uniform"],
        "results": [
            {
                "model": "qwen3-30b-a3b",
                "routing": "uniform",
                "dtype": "bfloat16",
                "new_tokens": 16,
                "repeats": 3,
                "warmup": 1,
                "temperature": 1.0,
                "seed": 0,
                "label": "lazymoe gpu",
                "engine": "lazymoe",
                "placement": "gpu",
                "vram_budget_gb": 8.0,
                "options": {
                    "model_path": "/dev/shm/m",
                    "dtype": "bfloat16",
                    "placement": "gpu",
                    "vram_budget": 8000000000,
                    "device": "cuda",
                },
                "prompt_tokens": 32,
                "load_s": 13.2,
                "prefill_tok_s": 95.30107137732115,
                "decode_tok_s": 11.855229167195228,
                "runs": [run, run, run],
                "first_tokens": [135843],
                "hit_rate": 0.9113911440952334,
                "hits": 18298,
                "misses": 1779,
                "peak_rss_bytes": 12628189184,
                "peak_vram_bytes": 11991515136,
                "vram_source": "nvml-process",
                "ok": True,
            }
        ],
    }


@pytest.fixture
def results_path(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(lazymoe_results(), indent=1))
    return path


def test_merge_appends_the_rows_the_command_and_the_note(results_path, tmp_path):
    rows = [parse(write(tmp_path / "lb.json", bench_output()))]
    document = merge_into(
        results_path, rows, command="llama-bench -m x.gguf -o json", note="from llama-bench"
    )
    on_disk = json.loads(results_path.read_text())
    assert on_disk == json.loads(json.dumps(document))
    assert [r["engine"] for r in on_disk["results"]] == ["lazymoe", "llamacpp"]
    assert on_disk["commands"] == [lazymoe_results()["command"], "llama-bench -m x.gguf -o json"]
    assert on_disk["notes"][-1] == "from llama-bench"
    assert sorted(os.listdir(results_path.parent)) == ["bench.json", "lb.json"]  # no temp file left


def test_merging_the_same_llama_bench_row_twice_is_refused(results_path, tmp_path):
    rows = parse_llama_bench(
        write(tmp_path / "lb.json", bench_output()), model="qwen3-30b-a3b", routing="uniform"
    )
    merge_into(results_path, rows, command="c", note="n")
    with pytest.raises(ValueError, match="already has this llama-bench row"):
        merge_into(results_path, rows, command="c", note="n")
    assert len(json.loads(results_path.read_text())["results"]) == 2


def test_a_write_that_fails_leaves_the_old_file_and_no_temp_file(
    results_path, tmp_path, monkeypatch
):
    before = results_path.read_text()
    rows = parse_llama_bench(json.dumps(bench_output()), model="qwen3-30b-a3b", routing="uniform")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(harness.os, "replace", crash)  # merge_into writes through harness.save
    with pytest.raises(OSError, match="disk full"):
        merge_into(results_path, rows, command="c", note="n")
    assert results_path.read_text() == before
    assert sorted(os.listdir(results_path.parent)) == ["bench.json"]


def test_a_file_of_another_schema_is_refused(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"schema": "something/2", "results": []}))
    rows = parse_llama_bench(json.dumps(bench_output()), model="m", routing="uniform")
    with pytest.raises(ValueError, match=r"schema 'something/2', not lazymoe.bench/N"):
        merge_into(path, rows, command="c", note="n")
    assert json.loads(path.read_text()) == {"schema": "something/2", "results": []}


# --- the report and the command line -------------------------------------------------------------


def test_the_report_shows_the_llama_bench_row_beside_lazymoe_with_its_bound(results_path, tmp_path):
    rows = parse_llama_bench(
        write(tmp_path / "lb.json", bench_output()), model="qwen3-30b-a3b", routing="uniform"
    )
    document = merge_into(results_path, rows, command="c", note="n")
    flat = {r["label"]: r for r in report.rows(document)}
    lb = flat["llama.cpp --cpu-moe (llama-bench cross-check)"]
    dense, experts = (
        MODEL_BYTES["dense_per_token_bytes"],
        MODEL_BYTES["active_expert_bytes_per_token"],
    )
    # the GPU reads the dense part while the CPU reads the experts: the slower of the two sets the pace
    cpu_moe_bound = GB / max(
        dense / BANDWIDTHS["gpu_read_gbps"], experts / BANDWIDTHS["cpu_read_gbps"]
    )
    assert lb["bound_tok_s"] == pytest.approx(cpu_moe_bound) and lb["hit_rate"] == 0.0
    assert lb["peak_vram_gb"] is None and lb["peak_rss_gb"] is None  # not measured, not zero
    assert flat["lazymoe gpu"]["peak_vram_gb"] == pytest.approx(11.991515136)
    text = report.table(document)
    line = next(x for x in text.splitlines() if "(llama-bench cross-check)" in x)
    assert "| 108.5 | 9.48 | 0.00 |" in line and line.endswith("| - | - |")
    assert "| lazymoe gpu | 8 | 95.3 | 11.86 | 0.91 |" in text


def test_the_figure_draws_the_llama_bench_row_as_a_level_line(results_path, tmp_path):
    rows = parse_llama_bench(json.dumps(bench_output()), model="qwen3-30b-a3b", routing="uniform")
    fig = report.figure(merge_into(results_path, rows, command="c", note="n"))
    assert [s.y0 for s in fig.layout.shapes] == [pytest.approx(16e9 / 1688001234)]
    # a schema-1 file's "uniform" was the random model's own routing: shown as model-own
    assert next(t.name for t in fig.data).endswith("lazymoe gpu (model-own)")


def test_the_cli_merges_and_prints_the_added_row(results_path, tmp_path, capsys):
    source = write(tmp_path / "lb.json", bench_output())
    code = llamabench.main(
        [
            source,
            "--model",
            "qwen3-30b-a3b",
            "--routing",
            "uniform",
            "--into",
            str(results_path),
            "--note",
            "H100, CMake build",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "llama.cpp --cpu-moe (llama-bench cross-check)" in out and "lazymoe gpu" not in out
    document = json.loads(results_path.read_text())
    assert document["commands"][-1].startswith(
        "llama-bench -m /dev/shm/h7model/model-bf16.gguf -p 32 -n 16"
    )
    assert document["commands"][-1].endswith(
        "-ngl 99 -fa auto -ot '\\.ffn_(up|down|gate)_exps=CPU' -o json  # reconstructed from its output"
    )
    assert document["notes"][-1].endswith("H100, CMake build")
    assert main_report(results_path, capsys).count("(llama-bench cross-check)") == 1


def main_report(path, capsys) -> str:
    """`lazymoe bench --report FILE`'s output."""
    import argparse

    from lazymoe.bench import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["--report", str(path)])) == 0
    return capsys.readouterr().out


def test_the_cli_explains_a_bad_file_and_leaves_the_results_alone(results_path, tmp_path, capsys):
    before = results_path.read_text()
    source = write(tmp_path / "lb.json", bench_output()[:1])
    code = llamabench.main(
        [source, "--model", "qwen3-30b-a3b", "--routing", "zipf", "--into", str(results_path)]
    )
    assert code == 2 and "no decode test" in capsys.readouterr().err
    assert results_path.read_text() == before
