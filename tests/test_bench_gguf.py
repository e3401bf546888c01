"""The benchmark on one quantized GGUF file: lazymoe and llama.cpp read the same bytes (issue 16 item 5).

A GGUF entry (`ModelEntry.from_gguf`) runs lazymoe with the file's experts kept quantized and
llama.cpp on that same file; the rows carry the file's formats and size; routing regimes replay
through the quantized path; transformers is skipped with a reason. The writer's --format makes
the quantized benchmark model. Results are schema lazymoe.bench/3; /1 and /2 files still render.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from lazymoe import paths
from lazymoe.bench import cli, harness, llamacpp_tune, report, routing
from lazymoe.bench.entry import ModelEntry, gguf_weights
from lazymoe.bench.shapes import TINY
from lazymoe.bench.writer import main as writer_main
from lazymoe.bench.writer import write_model

QUICK_BANDWIDTHS = {"cpu_read_gbps": 10.0, "h2d_pinned_gbps": None, "gpu_read_gbps": None}
RESULTS = Path(__file__).resolve().parents[1] / "data" / "results"
# K-quants need rows of 256 weights: TINY's 64-wide rows would all fall back to Q8_0
TINY_K = TINY.scaled(name="tiny-k", hidden_size=256, moe_intermediate_size=256, head_dim=64)
EXPERT_TYPES = {"q8_0": ["Q8_0"], "q4_0": ["Q4_0"], "q4_k_m": ["Q4_K", "Q6_K"]}


def expert_types(path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors if "_exps." in t.name}


@pytest.fixture(scope="module")
def q4_0_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-q4_0")
    return Path(write_model(TINY, out, formats=("gguf",), gguf_type="q4_0")["gguf"])


@pytest.mark.parametrize("fmt", sorted(EXPERT_TYPES))
def test_the_writer_makes_a_quantized_gguf_both_engines_open(fmt, tmp_path):
    shape = TINY_K if fmt == "q4_k_m" else TINY
    if shape is TINY:  # the command line the device script runs
        assert writer_main(["tiny-random", str(tmp_path), "--format", fmt, "--device", "cpu"]) == 0
    else:  # not a named shape
        write_model(shape, tmp_path, formats=("gguf",), gguf_type=fmt)
    path = tmp_path / f"model-{fmt}.gguf"
    assert not (tmp_path / "model.safetensors").exists()  # a quantized format: the GGUF alone
    types = expert_types(path)
    assert sorted(set(types.values())) == EXPERT_TYPES[fmt]
    if fmt == "q4_k_m":  # llama.cpp's rule: the last eighth of the layers keeps ffn_down in Q6_K
        assert types["blk.1.ffn_down_exps.weight"] == "Q6_K" and types["blk.0.ffn_down_exps.weight"] == "Q4_K"
    weights = gguf_weights(path)
    assert weights["format"] == "+".join(EXPERT_TYPES[fmt]) and weights["file_type"] == fmt
    assert weights["bytes"] == path.stat().st_size

    from lazymoe.engine import Engine, GenerationConfig

    prompt = list(b"def main():")
    gen = GenerationConfig(max_new_tokens=3, stop_token_ids=(), stop_strings=())
    engine = Engine.from_pretrained(path, device="cpu")
    tokens = engine.generate(prompt, gen)
    assert engine.quantized_experts and len(tokens) == 3 and all(0 <= t < shape.vocab_size for t in tokens)
    if harness.llama_cpp_available():
        from lazymoe.bench.llamacpp import LlamaCppConfig, LlamaCppRunner

        with LlamaCppRunner(LlamaCppConfig(str(path), cpu_moe=True, n_threads=1)) as runner:
            assert len(list(runner.stream(prompt, 3))) == 3


def test_a_quantized_gguf_is_the_same_draw_as_the_bf16_one_quantized(tmp_path):
    bf16 = write_model(TINY, tmp_path / "bf16", formats=("gguf",))["gguf"]
    q8 = write_model(TINY, tmp_path / "q8", formats=("gguf",), gguf_type="q8_0")["gguf"]
    name = "blk.1.ffn_up_exps.weight"
    raw = next(t for t in gguf.GGUFReader(bf16).tensors if t.name == name)
    values = gguf.quants.dequantize(np.asarray(raw.data), raw.tensor_type).reshape(TINY.num_experts, -1, TINY.hidden_size)
    quantized = next(t for t in gguf.GGUFReader(q8).tensors if t.name == name)
    assert np.array_equal(np.asarray(quantized.data).ravel(), gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0).ravel())
    with pytest.raises(ValueError, match="before quantization"):
        write_model(TINY, tmp_path / "both", gguf_type="q4_0")  # a safetensors beside it would lie


@pytest.mark.skipif(not (paths.bundled_model_dir() / "model.safetensors").is_file(),
                    reason="the bundled model is not built (python -m lazymoe.models.prepare)")
def test_a_gguf_entry_runs_both_engines_on_the_same_file_and_replays_regimes(tmp_path):
    from lazymoe.models.gguf_export import bundled_twin

    twin = bundled_twin("q8_0")
    entry = ModelEntry.from_gguf(twin)
    assert entry.gguf_only and entry.model_path == str(twin) and entry.dtype == "float32"
    shape = entry.shape()
    slot = entry.nbytes()["expert_bytes"]  # one expert as stored: Q8_0 is 34 bytes per 32 weights
    assert slot == 3 * shape.moe_intermediate_size * shape.hidden_size * 34 // 32
    total = shape.num_layers * shape.num_experts
    plan = harness.BenchPlan(models=[entry], engines=("lazymoe", "llamacpp-cpu-moe", "hf-full"),
                             prompt_tokens=12, new_tokens=4, repeats=1, warmup=1, n_threads=1,
                             gpu=False, timeout_s=300, routings=("real-text", "independent"),
                             cpu_cache_budgets_gb=((total // 4 + 0.5) * slot / harness.GB,))
    out = tmp_path / "gguf.json"
    doc = harness.run_plan(plan, out_path=out, command="pytest", bandwidths=QUICK_BANDWIDTHS, progress=False)
    assert json.loads(out.read_text())["schema"] == harness.SCHEMA == "lazymoe.bench/3"
    rows = doc["results"]
    assert all(r["ok"] for r in rows), [r.get("error") for r in rows]
    assert not any(r["engine"] == "hf" for r in rows)
    assert any("transformers baselines (hf-full) skipped" in n for n in doc["notes"])
    for row in rows:  # the same file under every row, its format and size beside it
        read = row["options"].get("model_path") or row["options"].get("gguf_path")
        assert read == str(twin)
        assert row["weights"]["format"] == "Q8_0" and row["weights"]["bytes"] == twin.stat().st_size
    model = doc["models"][entry.name]
    assert model["weights"]["file"] == twin.name
    assert model["bytes"]["experts_total_bytes"] == model["bytes_llamacpp"]["experts_total_bytes"]
    # lazymoe dequantizes the rest to float32: more bytes than the file's Q8_0 non-expert tensors
    assert model["bytes"]["dense_resident_bytes"] > model["bytes_llamacpp"]["dense_resident_bytes"]
    lazymoe = [r for r in rows if r["engine"] == "lazymoe"]
    assert all(r["experts_quantized"] and r["expert_slot_bytes"] == slot for r in lazymoe)
    cached = {r["routing"]: r for r in lazymoe if r["vram_budget_gb"]}
    assert set(cached) == {"real-text", "independent"}
    assert all(r["resident_fraction"] == (total // 4) / total for r in cached.values())
    assert cached["real-text"]["hit_rate"] > cached["independent"]["hit_rate"], cached
    assert "[Q8_0]" in report.table(doc)


def test_the_cli_benches_a_gguf_file_and_refuses_a_broken_one(q4_0_file, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "cli.json"
    args = parser.parse_args([str(q4_0_file), "--engines", "lazymoe", "--prompt-tokens", "8",
                              "--new-tokens", "3", "--repeats", "1", "--routing", "model-own",
                              "--out", str(out)])
    assert cli.run(args) == 0
    doc = json.loads(out.read_text())
    [row] = doc["results"]
    assert row["ok"] and row["options"]["model_path"] == str(q4_0_file)
    assert row["model"] == "tiny-random-q4_0" and row["model_routers"] == "random"  # from config.json
    assert row["weights"]["format"] == "Q4_0"
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(20))
    assert cli.run(parser.parse_args([str(broken), "--engines", "lazymoe"])) == 2
    assert f"{broken} is not a readable GGUF file" in capsys.readouterr().err


def test_llama_cpp_tuning_reads_the_file_the_lazymoe_rows_read(q4_0_file, tmp_path):
    doc = {"results": [{"engine": "lazymoe", "ok": True, "model": "m", "prompt_tokens": 8,
                        "new_tokens": 4, "options": {"model_path": str(q4_0_file)},
                        "weights": gguf_weights(q4_0_file)}]}
    template, n_layers = llamacpp_tune._template(doc, None)
    assert template["options"]["gguf_path"] == str(q4_0_file) and n_layers == TINY.num_layers
    assert template["weights"]["format"] == "Q4_0" and len(template["prompt_ids"]) == 8
    with pytest.raises(ValueError, match="that same file"):
        llamacpp_tune._template(doc, str(tmp_path / "other.gguf"))


def test_llama_cpp_rows_of_a_gguf_model_are_bounded_by_the_files_own_bytes():
    model = {"bytes": {"dense_per_token_bytes": 4e9, "active_expert_bytes_per_token": 1e9},
             "bytes_llamacpp": {"dense_per_token_bytes": 1e9, "active_expert_bytes_per_token": 1e9}}
    llama = {"engine": "llamacpp", "options": {"cpu_moe": True}}
    assert report.model_bytes(model, llama) == model["bytes_llamacpp"]
    assert report.model_bytes(model, {"engine": "lazymoe"}) == model["bytes"]
    assert report.model_bytes({"bytes": model["bytes"]}, llama) == model["bytes"]  # a folder entry


@pytest.mark.parametrize("name", ["bench-h200-qwen3-30b-a3b-regimes.json", "bench-h200-qwen3-30b-a3b.json"])
def test_saved_results_of_schema_1_and_2_still_render(name, capsys):
    path = RESULTS / name
    document = report.load(path)
    assert document["schema"] in ("lazymoe.bench/1", "lazymoe.bench/2")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["--report", str(path)])) == 0
    table = capsys.readouterr().out
    ok = [r for r in document["results"] if r.get("ok")]
    assert len([line for line in table.splitlines() if line.startswith("| ") and "FAILED" not in line]) \
        == len(ok) + 1  # + the header
    first = report.rows(document)[0]
    assert first["weights_format"] is None and (first["bound_tok_s"] or 0) > 0


def test_trace_replay_computes_exactly_the_traces_experts_from_quantized_slots(q4_0_file):
    """The replayed regimes' premise on the quantized path: the experts computed are the trace's."""
    from collections import Counter

    from lazymoe.engine import Engine, GenerationConfig
    from lazymoe.engine.parts.trace import RoutingTrace

    trace_tokens, layers = 64, TINY.num_layers
    trace = RoutingTrace.load(routing.make_trace("real-text", trace_tokens, layers, TINY.num_experts,
                                                 TINY.top_k, 3).save(Path(q4_0_file).parent / "t.npz"))
    slot = ModelEntry.from_gguf(q4_0_file).nbytes()["expert_bytes"]
    engine = Engine.from_pretrained(q4_0_file, device="cpu", vram_budget=6 * slot, prefetch=False,
                                    routing_trace=trace)
    assert engine.quantized_experts and engine.expert_nbytes == slot
    engine.runtime.computed_experts = Counter()
    prompt, gen = list(range(40, 52)), GenerationConfig(max_new_tokens=6, stop_token_ids=(), stop_strings=())
    engine.generate(prompt, gen)
    expected: Counter = Counter()
    for t in range(len(prompt) + gen.max_new_tokens - 1):  # the last token is sampled, not fed
        for j, layer in enumerate(engine.moe_layers):
            expected.update({(layer, int(e)): 1 for e in trace.experts[t, j]})
    assert engine.runtime.computed_experts == expected  # (layer, expert) -> tokens computed
    assert 0 < engine.stats().hit_rate < 1  # 6 of the 16 experts fit


def test_gpu_plans_of_a_gguf_entry_read_the_one_file_everywhere(q4_0_file):
    entry = ModelEntry.from_gguf(q4_0_file)
    plan = harness.BenchPlan(models=[entry], gpu=True, vram_budgets_gb=(0.00002,), placements=("fetch", "cpu"),
                             routings=("real-text",))
    specs = harness.build_specs(plan, llama_ok=True)
    assert {s["engine"] for s in specs} == {"lazymoe", "llamacpp"}  # transformers: skipped
    assert [s["label"] for s in specs] == ["llama.cpp --cpu-moe", "lazymoe fetch", "lazymoe cpu",
                                           "lazymoe all resident", "llama.cpp all on GPU"]
    for spec in specs:
        assert (spec["options"].get("model_path") or spec["options"]["gguf_path"]) == str(q4_0_file)
        assert spec["weights"]["format"] == "Q4_0" and spec["dtype"] == "bfloat16"
    slots = int(0.00002 * harness.GB // entry.nbytes()["expert_bytes"])
    assert specs[1]["resident_fraction"] == slots / (TINY.num_layers * TINY.num_experts)
    assert any("transformers baselines" in line for line in harness.skipped_baselines(plan))
    # with a page-locked file, the resident row pins it too (decode="device-cache" on a GPU)
    pinned = harness.build_specs(dataclasses.replace(plan, pin_checkpoint=True), llama_ok=True)
    resident = [s for s in pinned if s["label"].startswith("lazymoe all resident")]
    assert [s["label"] for s in resident] == ["lazymoe all resident, pinned file"]
    assert resident[0]["options"]["pin_checkpoint"] is True
