"""The llama.cpp runner's --n-cpu-moe patterns, and the search for N and -t (fake measurements)."""

from __future__ import annotations

import re

import pytest

from lazymoe.bench.llamacpp import CPU_MOE_PATTERN, LlamaCppConfig, n_cpu_moe_patterns
from lazymoe.bench.llamacpp_tune import (
    best_threads,
    smallest_n_cpu_moe,
    thread_candidates,
    tune_document,
)

GB = 10**9
TENSORS = [f"blk.{i}.ffn_{p}_exps.weight" for i in range(24) for p in ("gate", "up", "down")]


def on_cpu(patterns: list[str]) -> set[str]:
    """The tensors llama.cpp would keep on the CPU (it uses std::regex_search, like re.search)."""
    return {t for t in [*TENSORS, "blk.1.attn_q.weight", "blk.1.ffn_gate_inp.weight"]
            if any(re.search(p, t) for p in patterns)}


def test_n_cpu_moe_patterns_take_exactly_the_first_n_layers_experts():
    assert n_cpu_moe_patterns(3)[0] == r"blk\.0\.ffn_(up|down|gate|gate_up)_(ch|)exps"
    assert on_cpu(n_cpu_moe_patterns(2)) == {t for t in TENSORS if t.startswith(("blk.0.", "blk.1."))}
    assert on_cpu(n_cpu_moe_patterns(0)) == set()
    assert not any(re.search(p, "blk.11.ffn_up_exps.weight") for p in n_cpu_moe_patterns(2))  # not layer 11
    assert on_cpu([CPU_MOE_PATTERN]) == set(TENSORS)  # --cpu-moe: every expert, nothing else
    with pytest.raises(ValueError, match="n_cpu_moe"):
        n_cpu_moe_patterns(-1)


def test_config_chooses_overrides_from_n_cpu_moe_else_cpu_moe(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    assert LlamaCppConfig(str(gguf), n_cpu_moe=2).override_patterns() == n_cpu_moe_patterns(2)
    assert LlamaCppConfig(str(gguf), cpu_moe=True).override_patterns() == [CPU_MOE_PATTERN]
    assert LlamaCppConfig(str(gguf), cpu_moe=False).override_patterns() == []
    with pytest.raises(ValueError, match="n_cpu_moe"):
        LlamaCppConfig(str(gguf), n_cpu_moe=-3)
    with pytest.raises(ValueError, match="n_threads"):
        LlamaCppConfig(str(gguf), n_threads=0)


def fake_measure(n_layers=48, dense_gb=3.0, layer_gb=1.0, fail_over_gb=None, calls=None):
    """Peak VRAM = the dense part + the experts of the layers left on the GPU; tok/s grows with them."""
    def measure(n: int, threads: int) -> dict:
        if calls is not None:
            calls.append((n, threads))
        vram = round((dense_gb + (n_layers - n) * layer_gb) * GB)
        if fail_over_gb is not None and vram > fail_over_gb * GB:
            return {"ok": False, "error": "CUDA out of memory"}
        return {"ok": True, "peak_vram_bytes": vram, "decode_tok_s": 20.0 + (n_layers - n) - abs(threads - 8)}
    return measure


@pytest.mark.parametrize("limit_gb, expected", [(3.0, 48), (10.0, 41), (10.5, 41), (51.0, 0), (200.0, 0)])
def test_the_search_finds_the_smallest_n_whose_peak_vram_fits(limit_gb, expected):
    calls = []
    search = smallest_n_cpu_moe(fake_measure(calls=calls), 48, round(limit_gb * GB), n_threads=8)
    assert search.n_cpu_moe == expected
    assert search.result["peak_vram_bytes"] <= limit_gb * GB
    assert len(calls) <= 7  # a binary search: about log2(49) loads, not 49
    assert [(p.n_cpu_moe, p.n_threads) for p in search.probes] == calls


def test_the_search_says_none_when_not_even_every_layer_on_the_cpu_fits():
    search = smallest_n_cpu_moe(fake_measure(), 48, 2 * GB, n_threads=8)
    assert search.n_cpu_moe is None and search.result is None and search.probes[-1].n_cpu_moe == 48


def test_a_failed_run_counts_as_not_fitting_and_a_guess_starts_the_search():
    calls = []
    measure = fake_measure(fail_over_gb=20.0, calls=calls)  # out of memory above 20 GB
    search = smallest_n_cpu_moe(measure, 48, 100 * GB, n_threads=8, guess=31)
    assert search.n_cpu_moe == 31 and calls[0] == (31, 8)  # 3 + 17 layers = 20 GB: the most that runs
    assert any(not p.ok and "out of memory" in p.error for p in search.probes)


def test_thread_tuning_picks_the_fastest_run_that_worked():
    def measure(n, threads):
        if threads == 16:
            return {"ok": False, "error": "crashed"}
        return {"ok": True, "peak_vram_bytes": GB, "decode_tok_s": {4: 10.0, 8: 14.0, 12: 12.0}[threads]}
    best, probes = best_threads(measure, 48, [4, 8, 12, 16])
    assert best == 8 and [p.ok for p in probes] == [True, True, True, False]
    assert best_threads(lambda n, t: {"ok": False}, 48, [4, 8])[0] is None
    assert thread_candidates(16, 32) == [8, 16, 32] and thread_candidates(1) == [1]


def test_tune_document_adds_the_cpu_moe_and_vram_matched_rows(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"num_hidden_layers": 48}')
    lazymoe_row = {"engine": "lazymoe", "ok": True, "label": "lazymoe fetch", "model": "m", "dtype": "bfloat16",
                   "prompt_tokens": 8, "new_tokens": 16, "repeats": 3, "warmup": 1,
                   "options": {"model_path": str(model)}, "peak_vram_bytes": 12 * GB}
    doc = {"results": [lazymoe_row]}
    import lazymoe.bench.harness as harness

    original = harness.prompt_ids
    harness.prompt_ids = lambda model_dir, n: list(range(n))
    try:
        fake = fake_measure()
        full = []

        def measure(n, t):  # the full protocol: only for the rows
            full.append((n, t))
            return {**fake(n, t), "options": {"n_cpu_moe": n}}

        out = tune_document(doc, "m.gguf", [4, 8, 12], 60, measure=measure, probe=fake)
    finally:
        harness.prompt_ids = original
    labels = [r["label"] for r in out["results"]]
    assert labels[1] == "llama.cpp --cpu-moe -t 8" and labels[2].startswith("llama.cpp --n-cpu-moe 39 -t 8")
    assert out["results"][2]["peak_vram_bytes"] <= 12 * GB and out["results"][1]["options"]["cpu_moe"] is True
    assert out["results"][2]["options"]["cpu_moe"] is False
    assert out["llama_tuning"]["best_threads"] == 8 and out["llama_tuning"]["searches"][0]["n_cpu_moe"] == 39
    assert full == [(48, 8), (39, 8)]  # probes searched; the two rows ran the full protocol
    assert doc["results"] == [lazymoe_row]  # the input is left as it was
