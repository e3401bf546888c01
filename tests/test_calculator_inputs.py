"""The calculator's inputs beyond the datasheet: effective bandwidths, measured figures, and a
separate format for an MoE's experts and for the rest. Expected values are hand arithmetic."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from lazymoe import calculator as calc
from lazymoe.catalog import HardwareSpec, ModelSpec
from lazymoe.cli import main

GB = 1e9
GPU = HardwareSpec("test GPU", "gpu", 1000.0, memory_bytes=int(16e9), pcie_gen=4, pcie_lanes=16,
                   source="test")
CPU = HardwareSpec("test CPU", "cpu", 100.0, source="test")
MOE = ModelSpec("moe-11B", "moe", 11e9, params_active=3e9, layers=10, hidden=2048, experts=10,
                experts_per_token=2, params_per_expert=0.1e9, params_outside_experts=1e9)


def machine(**kw) -> calc.Machine:
    return calc.Machine(CPU, int(64e9), GPU, gpu_overhead_bytes=0, ram_reserve_bytes=0, **kw)


# ---- effective bandwidths ---------------------------------------------------------------------
def test_effective_link_replaces_the_nominal_rate_in_the_bound():
    # 10 GB of experts, 2 GB active per token at 8 bits; cache 5 GB -> uniform hit rate 0.5;
    # misses 1 GB per token: at 10 GB/s 100 ms, VRAM (1 GB outside + 2 GB experts) 3 ms
    w = calc.Workload(MOE, 8)
    p = calc.expert_cache(machine(effective_link_gbps=10.0), w, cache_bytes=5e9)
    assert p.tok_s == pytest.approx(1 / (3e9 / 1000e9 + 1e9 / 10e9))
    nominal = calc.expert_cache(machine(), w, cache_bytes=5e9)
    assert nominal.tok_s == pytest.approx(1 / (3e9 / 1000e9 + 1e9 / (1.969 * 16 * GB)))
    assert any("10 GB/s as entered" in n for n in p.notes)


def test_a_slower_slot_sets_the_nominal_link_and_its_name():
    m = machine(link="PCIe 3.0 x8")
    assert m.nominal_link_gbps == pytest.approx(0.985 * 8) and m.pcie_gbps == m.nominal_link_gbps
    assert m.gpu_link_name == "PCIe 3.0 x8"
    p = calc.layer_streaming(m, calc.Workload(MOE, 8), resident_layers=5)
    assert p.bottleneck == "PCIe 3.0 x8"


def test_effective_ram_and_vram_rates_are_used():
    w = calc.Workload(MOE, 8)
    p = calc.cpu_moe(machine(effective_ram_gbps=50.0, effective_vram_gbps=500.0), w, n_cpu_moe=10)
    # GPU: outside read 1 GB + KV 0 at 500 GB/s; CPU: 2 GB of active experts at 50 GB/s
    assert p.tok_s == pytest.approx(1 / (1e9 / 500e9 + 2e9 / 50e9))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"effective_link_gbps": 0.0}, "more than 0 GB/s"),
    ({"effective_ram_gbps": -5.0}, "more than 0 GB/s"),
    ({"link": "PCIe 9.0 x3"}, "PCIe 4.0 x16"),
])
def test_bad_bandwidths_say_what_to_enter(kwargs, message):
    with pytest.raises((calc.CalculatorError, ValueError), match=message):
        machine(**kwargs)


def test_a_link_without_a_gpu_is_refused_in_plain_words():
    with pytest.raises(calc.CalculatorError, match="pick a GPU"):
        calc.Machine(CPU, int(64e9), None, effective_link_gbps=6.5)


# ---- formats: experts and the rest ------------------------------------------------------------
def test_other_bits_apply_only_outside_the_experts():
    w = calc.Workload(MOE, 4, other_bits_per_weight=16)
    assert w.expert_bytes == pytest.approx(10e9 * 4 / 8)
    assert w.outside_bytes == pytest.approx(1e9 * 16 / 8)
    assert w.weights_read_per_step == pytest.approx(1e9 * 2 + 2e9 * 0.5)


def test_gpt_oss_ships_mxfp4_experts_and_bf16_rest():
    w = calc.Workload.from_names("GPT-OSS-120B")
    assert (w.bits_per_weight, w.other_bits_per_weight) == (4.25, 16.0)
    assert calc.Workload.from_names("GPT-OSS-120B", "MXFP4").other_bits_per_weight == 16.0
    q8_rest = calc.Workload.from_names("GPT-OSS-120B", "MXFP4", "Q8_0")
    assert q8_rest.other_bits_per_weight == 8.5 and q8_rest.format_label == "MXFP4 experts, Q8_0 rest"


def test_q4_k_m_gives_experts_and_rest_their_own_average():
    moe = calc.Workload.from_names("Qwen3-30B-A3B", "Q4_K_M")
    assert (moe.bits_per_weight, moe.other_bits_per_weight) == (4.84, 5.2)
    # Qwen's own Qwen3-30B-A3B-GGUF Q4_K_M file is 18.6 GB
    assert moe.weight_bytes / GB == pytest.approx(18.6, abs=0.2)
    dense = calc.Workload.from_names("Llama-3.1-8B", "Q4_K_M")
    assert dense.bits_per_weight == 4.9 and dense.other_bits_per_weight is None


def test_a_second_format_for_a_dense_model_is_refused():
    with pytest.raises(calc.CalculatorError, match="one format"):
        calc.Workload.from_names("Llama-3.1-8B", "Q4_K_M", "BF16")


def test_bytes_per_token_are_labelled_with_what_they_count():
    w = calc.Workload.from_names("Llama-3.1-8B", "Q4_K_M", context_tokens=4096)
    text = w.describe_read()
    assert f"{w.bytes_per_step / GB:.2f} GB read per token" in text
    assert f"{w.weights_read_per_step / GB:.2f} GB of weights" in text and "KV cache (4096 tokens)" in text
    no_kv = calc.Workload(ModelSpec("x", "dense", 1e9, source="t"), 8)   # no KV shape known
    assert no_kv.describe_read() == "1.00 GB read per token: weights only (no KV cache counted)"


# ---- the expert cache and its hit rate --------------------------------------------------------
def test_when_every_expert_fits_the_hit_rate_is_one():
    p = calc.expert_cache(machine(), calc.Workload(MOE, 8), hit_rate=0.46)
    assert p.options["hit_rate"] == 1.0 and p.options["everything_fits"]
    assert p.bottleneck == "VRAM" and p.tok_s == pytest.approx(1000e9 / 3e9)
    assert "hit rate 1" in p.notes[0]
    assert any("10 of 10 per layer, hit rate 1.00" in label for _, label, _ in p.memory.items)


def test_the_chart_label_carries_the_hit_rate_used():
    p = calc.expert_cache(machine(), calc.Workload(MOE, 8), hit_rate=0.7, cache_bytes=5e9)
    assert any("5 of 10 per layer, hit rate 0.70" in label for _, label, _ in p.memory.items)
    assert p.options["hit_rate"] == 0.7 and not p.options["everything_fits"]


# ---- measured bandwidths ----------------------------------------------------------------------
@dataclass
class Row:
    name: str
    gbps: float


@dataclass
class Report:
    results: list


REPORT = Report([Row("RAM copy, 1 thread (numpy)", 12.0), Row("RAM copy, 8 threads (torch)", 40.0),
                 Row("disk sequential read (/tmp)", 2.5), Row("GPU device copy", 800.0),
                 Row("host->GPU, pinned", 24.0), Row("host->GPU, pageable", 10.0)])


def test_measurements_are_saved_atomically_and_read_back():
    path = calc.save_measured(REPORT, quick=False)
    assert path == calc.measured_path() and path.parent.name.startswith("lazymoe-home")
    assert not list(path.parent.glob(".*.tmp")), "no temporary file left behind"
    raw = json.loads(path.read_text())
    assert raw["ram_gbps"] == 40.0 and raw["link_gbps"] == 24.0 and raw["vram_gbps"] == 800.0
    got = calc.load_measured()
    assert got.machine_kwargs() == {"effective_ram_gbps": 40.0, "effective_vram_gbps": 800.0,
                                    "effective_link_gbps": 24.0, "disk_gbps": 2.5}


def test_nothing_measured_is_none_and_a_damaged_file_says_how_to_fix_it():
    assert calc.load_measured() is None
    calc.measured_path().write_text("{not json")
    with pytest.raises(calc.CalculatorError, match="lab01"):
        calc.load_measured()


def test_default_bandwidths_are_the_datasheet_unless_measured():
    plain = calc.default_bandwidths(GPU, CPU)
    assert plain == {"link_gbps": pytest.approx(31.504), "ram_gbps": 100.0, "vram_gbps": 1000.0}
    calc.save_measured(REPORT)
    mine = calc.default_bandwidths(GPU, CPU, calc.load_measured())
    assert mine == {"link_gbps": 24.0, "ram_gbps": 40.0, "vram_gbps": 800.0}
    assert calc.default_bandwidths(None, CPU, calc.load_measured())["link_gbps"] is None


# ---- the command line -------------------------------------------------------------------------
def run_json(capsys, *argv) -> dict:
    assert main(["calc", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_link_gbps_and_slot(capsys):
    out = run_json(capsys, "--gpu", "3090", "--pcie", "3.0 x8", "--link-gbps", "6.5", "--ram-gb", "48",
                   "--model", "Llama-3.1-70B", "--format", "Q4_K_M", "--strategy", "layer_streaming",
                   "--resident-layers", "36")
    case = calc.case_study("ntransformer-70b")
    assert out["bandwidths_gbps"]["link"] == 6.5
    assert out["plans"]["layer_streaming"]["decode_tok_s"] == pytest.approx(case.bound().tok_s)
    assert out["plans"]["layer_streaming"]["bottleneck"] == "PCIe 3.0 x8"


def test_cli_other_format(capsys):
    out = run_json(capsys, "--gpu", "3090", "--model", "Qwen3-30B-A3B", "--format", "Q4_K_M",
                   "--other-format", "Q8_0", "--strategy", "cpu_moe")
    assert (out["bits_per_weight"], out["other_bits_per_weight"]) == (4.84, 8.5)
    assert main(["calc", "--gpu", "3090", "--model", "Llama-3.1-8B", "--other-format", "Q8_0"]) == 2
    assert "one format" in capsys.readouterr().out


def test_cli_measured_needs_lab01_then_uses_its_figures(capsys):
    assert main(["calc", "--gpu", "3090", "--model", "Qwen3-30B-A3B", "--measured"]) == 2
    assert "lab01" in capsys.readouterr().out
    calc.save_measured(REPORT)
    out = run_json(capsys, "--gpu", "3090", "--model", "Qwen3-30B-A3B", "--measured",
                   "--link-gbps", "20")
    assert out["bandwidths_gbps"] == {"vram": 800.0, "ram": 40.0, "link": 20.0, "disk": 2.5}
