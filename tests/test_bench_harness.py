"""The harness end to end on the CPU: every engine in its own process, results JSON with every field."""

from __future__ import annotations

import json

import pytest

from lazymoe import paths
from lazymoe.bench import harness, report, routing
from lazymoe.bench.shapes import TINY
from lazymoe.bench.writer import write_model

ROW_FIELDS = {"label", "engine", "model", "routing", "routing_params", "model_routers", "placement",
              "prompt_tokens", "new_tokens", "load_s", "prefill_tok_s", "decode_tok_s", "runs", "cold",
              "peak_rss_bytes", "peak_vram_bytes", "ok"}
DOC_FIELDS = {"schema", "created_utc", "command", "machine", "libraries", "bandwidths", "models",
              "protocol", "notes", "results"}
QUICK_BANDWIDTHS = {"cpu_read_gbps": 10.0, "h2d_pinned_gbps": None, "gpu_read_gbps": None}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-bench")
    write_model(TINY, out)
    return out


def small_plan(entry, engines=harness.ENGINE_CHOICES) -> harness.BenchPlan:
    return harness.BenchPlan(models=[entry], engines=tuple(engines), prompt_tokens=12, new_tokens=4,
                             repeats=2, warmup=1, n_threads=1, gpu=False, timeout_s=300,
                             routings=(routing.MODEL_OWN,))


def check_document(doc: dict, expected_labels: set[str]) -> None:
    assert set(doc) >= DOC_FIELDS
    assert doc["schema"] == harness.SCHEMA and doc["machine"]["cpu_model"] and doc["libraries"]["torch"]
    labels = {r["label"] for r in doc["results"]}
    assert expected_labels <= labels, [r.get("error") for r in doc["results"]]
    for row in doc["results"]:
        assert row["ok"], row.get("error")
        assert set(row) >= ROW_FIELDS
        assert row["decode_tok_s"] > 0 and row["prefill_tok_s"] > 0
        assert len(row["runs"]) == 2 and all(run["new_tokens"] == 4 for run in row["runs"])
        assert row["peak_rss_bytes"] > 10 * 2**20  # a Python process with torch or llama.cpp loaded
        assert row["cold"]["first_token_s"] > 0 and row["cold"]["tokens"] == 4
        if row["engine"] == "lazymoe":  # every lazymoe row: its regime, parameters, hit rate
            assert row["routing"] in (*routing.REGIMES, routing.MODEL_OWN)
            assert row["routing"] == routing.MODEL_OWN or row["routing_params"]["trace_tokens"] > 0
            assert 0 <= row["hit_rate"] <= 1 and 0 < row["resident_fraction"] <= 1
        else:  # llama.cpp and transformers cannot replay a trace
            assert row["routing"] == routing.MODEL_OWN and row["routing_params"] == {}
    # greedy decoding of the same bits from the same prompt ids: every engine says the same thing
    # (where the model's own routers decide: a replayed trace computes other experts)
    firsts = {r["label"]: r["first_tokens"][:2] for r in doc["results"] if r["routing"] == routing.MODEL_OWN}
    assert len({tuple(v) for v in firsts.values()}) == 1, firsts


def test_every_engine_runs_on_the_same_model_and_prompt(tiny_dir, tmp_path):
    out = tmp_path / "results.json"
    entry = harness.ModelEntry.from_dir(tiny_dir, dtype="float32")
    doc = harness.run_plan(small_plan(entry), out_path=out, command="pytest", bandwidths=QUICK_BANDWIDTHS,
                           progress=False)
    expected = {"lazymoe (CPU)", "transformers full model", "accelerate offload"}
    if harness.llama_cpp_available():
        expected.add("llama.cpp --cpu-moe")
    check_document(doc, expected)
    assert json.loads(out.read_text())["results"] == doc["results"]  # saved as returned
    assert "| lazymoe (CPU) |" in report.table(doc)


def test_every_lazymoe_row_replays_its_regime_and_records_the_hit_rate(tiny_dir, tmp_path):
    """A RAM cache of 4 of the 16 experts on the CPU: each regime's trace gives its own hit rate."""
    entry = harness.ModelEntry.from_dir(tiny_dir, dtype="float32")
    assert entry.routers == "random"  # the writer's random routers: never called uniform
    expert_gb = entry.shape().nbytes("float32")["expert_bytes"] / harness.GB
    plan = small_plan(entry, ("lazymoe",))
    plan.routings = (*routing.REGIMES, routing.MODEL_OWN)
    plan.cpu_cache_budgets_gb = (4.5 * expert_gb,)
    doc = harness.run_plan(plan, command="pytest", bandwidths=QUICK_BANDWIDTHS, progress=False)
    check_document(doc, {"lazymoe (CPU)"} | {f"lazymoe (CPU), {4.5 * expert_gb:g} GB cache"})
    cached = {r["routing"]: r for r in doc["results"] if r["vram_budget_gb"]}
    assert set(cached) == {*routing.REGIMES, routing.MODEL_OWN}
    assert all(r["resident_fraction"] == 4 / 16 for r in cached.values())
    hit = {regime: r["hit_rate"] for regime, r in cached.items()}
    assert hit["real-text"] > hit["independent"] and hit["zipf"] > hit["independent"], hit
    assert cached["real-text"]["routing_params"]["calibrated_to"] == routing.SOURCE
    assert cached["zipf"]["routing_params"]["skew"] == routing.ZIPF_SKEW
    assert doc["protocol"]["routing"]["regimes"] == list(plan.routings)
    table = report.table(doc)
    for regime, rate in hit.items():
        assert f"| {regime} | lazymoe (CPU), {4.5 * expert_gb:g} GB cache |" in table
        assert f"| {rate:.2f} |" in table


def test_a_failing_configuration_becomes_a_row_that_says_why(tiny_dir):
    spec = {"label": "broken", "engine": "lazymoe", "options": {"model_path": str(tiny_dir / "missing")},
            "prompt_ids": [1, 2, 3], "new_tokens": 2}
    row = harness.run_spec_in_process(spec, timeout_s=120)
    assert row["ok"] is False and "missing" in row["error"] and "prompt_ids" not in row


def test_the_plan_refuses_unknown_engines_and_useless_sizes(tiny_dir):
    entry = harness.ModelEntry.from_dir(tiny_dir)
    with pytest.raises(ValueError, match="unknown engines"):
        harness.BenchPlan(models=[entry], engines=("vllm",))
    with pytest.raises(ValueError, match="new_tokens"):
        harness.BenchPlan(models=[entry], new_tokens=1)


def test_gpu_plans_cover_each_placement_at_each_budget(tiny_dir):
    entry = harness.ModelEntry.from_dir(tiny_dir)
    entry.gguf_path = str(tiny_dir / "model-bf16.gguf")
    plan = harness.BenchPlan(models=[entry], engines=("lazymoe", "llamacpp-cpu-moe"), gpu=True,
                             vram_budgets_gb=(8.0, 5.0))
    specs = harness.build_specs(plan, llama_ok=True)
    lazymoe = [(s["placement"], s["vram_budget_gb"]) for s in specs if s["engine"] == "lazymoe"]
    assert lazymoe[:9:3] == [("fetch", 8.0), ("cpu", 8.0), ("auto", 8.0)]  # the first budget first
    assert len(lazymoe) == 3 * 2 * 3 + 1  # x 3 routing regimes, + every expert resident (one row)
    regimes = [s["routing"] for s in specs if s["engine"] == "lazymoe"]
    assert regimes[:3] == list(routing.REGIMES) and regimes[-1] == routing.REGIMES[0]
    replayed = [s for s in specs if s["engine"] == "lazymoe" and s["vram_budget_gb"]]
    assert all(s["options"]["routing_trace"].endswith(".npz") and s["options"]["prefetch"] is False
               for s in replayed)
    assert specs[0]["label"] == "llama.cpp --cpu-moe"
    assert len({tuple(s["prompt_ids"]) for s in specs}) == 1  # the same prompt for everyone


def test_each_decode_path_gets_its_own_labelled_row(tiny_dir):
    entry = harness.ModelEntry.from_dir(tiny_dir)
    plan = harness.BenchPlan(models=[entry], engines=("lazymoe",), gpu=True, placements=("fetch",),
                             decodes=("auto", "model"), vram_budgets_gb=(8.0,), include_resident=False,
                             routings=("real-text",))
    specs = harness.build_specs(plan, llama_ok=False)
    assert [(s["label"], s["options"]["decode"]) for s in specs] == [
        ("lazymoe fetch", "auto"), ("lazymoe fetch (model)", "model")]


def test_each_kernel_gets_its_own_labelled_row(tiny_dir):
    entry = harness.ModelEntry.from_dir(tiny_dir)
    plan = harness.BenchPlan(models=[entry], engines=("lazymoe",), gpu=True, placements=("fetch",),
                             kernels=("auto", "batched"), vram_budgets_gb=(8.0,), include_resident=False,
                             routings=("real-text",))
    specs = harness.build_specs(plan, llama_ok=False)
    assert [(s["label"], s["options"]["kernel"]) for s in specs] == [
        ("lazymoe fetch", None), ("lazymoe fetch [batched]", "batched")]


def test_a_pinned_checkpoint_is_labelled(tiny_dir):
    entry = harness.ModelEntry.from_dir(tiny_dir)
    plan = harness.BenchPlan(models=[entry], engines=("lazymoe",), gpu=True, placements=("fetch",),
                             pin_checkpoint=True, vram_budgets_gb=(8.0,), include_resident=False,
                             routings=("real-text",))
    [spec] = harness.build_specs(plan, llama_ok=False)
    assert spec["label"] == "lazymoe fetch, pinned file" and spec["options"]["pin_checkpoint"] is True
    plan.cpu_activations = ("float", "int8")  # `lazymoe bench --cpu-activations float int8`
    specs = harness.build_specs(plan, llama_ok=False)
    assert [(s["label"], s["options"]["cpu_activations"]) for s in specs] == [
        ("lazymoe fetch, pinned file", "float"), ("lazymoe fetch, pinned file, int8 activations", "int8")]
    plan.gpu = False
    assert [s["label"] for s in harness.build_specs(plan, llama_ok=False)] == [
        "lazymoe (CPU)", "lazymoe (CPU), int8 activations"]


@pytest.mark.skipif(not (paths.bundled_model_dir() / "config.json").is_file(),
                    reason="the bundled model is not built (python -m lazymoe.models.prepare)")
def test_the_bundled_model_runs_through_lazymoe_and_llama_cpp(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("lazymoe.models.gguf_export")
    entry = harness.ModelEntry.from_dir(paths.bundled_model_dir())
    doc = harness.run_plan(small_plan(entry, ("lazymoe", "llamacpp-cpu-moe")), command="pytest",
                           bandwidths=QUICK_BANDWIDTHS, progress=False)
    check_document(doc, {"lazymoe (CPU)", "llama.cpp --cpu-moe"})


def test_sampled_decoding_runs_through_every_engine(tiny_dir):
    entry = harness.ModelEntry.from_dir(tiny_dir, dtype="float32")
    plan = small_plan(entry, ("lazymoe", "llamacpp-cpu-moe"))
    plan.temperature, plan.repeats = 1.0, 1
    doc = harness.run_plan(plan, command="pytest", bandwidths=QUICK_BANDWIDTHS, progress=False)
    assert doc["protocol"]["decoding"].startswith("sampled at temperature 1.0")
    assert all(r["ok"] and r["decode_tok_s"] > 0 for r in doc["results"]), [r.get("error") for r in doc["results"]]


def test_the_cli_runs_a_plan_and_saves_the_results(tiny_dir, tmp_path, capsys):
    import argparse

    from lazymoe.bench import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "cli.json"
    args = parser.parse_args(["--model", str(tiny_dir), "--engines", "lazymoe", "--prompt-tokens", "8",
                              "--new-tokens", "3", "--repeats", "1", "--out", str(out), "--note", "from a test"])
    assert cli.run(args) == 0
    doc = json.loads(out.read_text())
    assert doc["notes"] == ["from a test"] and doc["results"][0]["ok"]
    assert "| lazymoe" in capsys.readouterr().out


def test_saving_results_is_atomic_and_keeps_the_files_mode(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    harness.save({"schema": harness.SCHEMA, "results": [1]}, path)
    path.chmod(0o640)
    harness.save({"schema": harness.SCHEMA, "results": [1, 2]}, path)
    assert json.loads(path.read_text())["results"] == [1, 2] and path.stat().st_mode & 0o777 == 0o640

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(harness.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        harness.save({"schema": harness.SCHEMA, "results": []}, path)
    assert json.loads(path.read_text())["results"] == [1, 2]  # the previous file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left
