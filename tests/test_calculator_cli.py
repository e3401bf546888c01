"""`lazymoe calc`: catalog names or explicit numbers in, a table or JSON out."""

from __future__ import annotations

import json

from lazymoe import calculator as calc
from lazymoe.cli import main


def run_json(capsys, *argv) -> dict:
    assert main(["calc", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_catalog_names_give_every_strategy_with_its_bottleneck(capsys):
    out = run_json(capsys, "--gpu", "RTX 4060 Laptop", "--host", "Laptop, DDR5-5600", "--ram-gb", "32",
                   "--model", "Qwen3-30B-A3B", "--format", "Q4_K_M")
    plans = out["plans"]
    assert plans["full_gpu"]["verdict"] == "does not fit"
    assert plans["cpu_moe"]["bottleneck"] == "RAM"
    assert "skipped" in plans["multi_gpu"]
    machine = calc.Machine.from_names("Laptop, DDR5-5600", 32, gpu="RTX 4060 Laptop")
    expected = calc.cpu_moe(machine, calc.Workload.from_names("Qwen3-30B-A3B", "Q4_K_M"))
    assert plans["cpu_moe"]["decode_tok_s"] == expected.tok_s


def test_explicit_numbers_reproduce_the_module01_example(capsys):
    # 700 GB/s and a 14 GB model (14B parameters at 8 bits, no KV): 50 tok/s.
    out = run_json(capsys, "--vram-gb", "40", "--vram-gbps", "700", "--params-b", "14", "--bits", "8",
                   "--strategy", "full_gpu")
    assert out["plans"]["full_gpu"]["decode_tok_s"] == 50.0


def test_strategy_options_reach_the_strategy(capsys):
    out = run_json(capsys, "--gpu", "3090", "--ram-gb", "96", "--model", "gpt-oss-120b",
                   "--strategy", "cpu_moe", "--n-cpu-moe", "28")
    assert "--n-cpu-moe 28" in out["plans"]["cpu_moe"]["notes"][0]


def test_table_output_and_case_list(capsys):
    assert main(["calc", "--gpu", "4090", "--model", "Llama-3.1-8B", "--format", "Q4_K_M"]) == 0
    text = capsys.readouterr().out
    assert "full_gpu" in text and "best that fits" in text
    assert main(["calc", "--cases"]) == 0
    assert "ntransformer-70b" in capsys.readouterr().out


def test_unknown_names_say_what_to_do(capsys):
    assert main(["calc", "--model", "no-such-model"]) == 2
    assert "lazymoe calc --list" in capsys.readouterr().out
    assert main(["calc", "--gpu", "4090"]) == 2
    assert "--model" in capsys.readouterr().out
