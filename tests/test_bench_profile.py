"""`python -m lazymoe.bench.profile` (GPU only to run): on the CPU, its command line becomes the
engine configs it would profile, with `lazymoe run`'s engine options, and its transformers
baseline decodes with the current cache argument."""

from __future__ import annotations

import argparse
import warnings

import pytest

from lazymoe.bench import profile
from lazymoe.engine.options import engine_flags
from lazymoe.models.random import make_random_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("profile") / "qwen3", arch="qwen3_moe")


def configs(model, *words: str):
    return profile.engine_configs(profile.parse_args(["--model", str(model), *words]))


def test_the_device_recipe_command_parses():
    """scripts/device_bench.sh suite_profile runs exactly this."""
    args = profile.parse_args(["--layers", "8", "--model", "DIR", "--hf", "--out", "FILE"])
    assert (args.layers, args.model_path, args.hf, args.out) == (8, "DIR", True, "FILE")
    assert args.budgets == [("all", None), ("8", int(8e9 * 8 / 48))]  # 8 GB of 48 layers, at 8


def test_it_offers_every_engine_option():
    parser = argparse.ArgumentParser()
    profile.add_arguments(parser)
    flags = {flag for action in parser._actions for flag in action.option_strings}
    assert set(engine_flags().values()) <= flags


def test_defaults_profile_bfloat16_on_the_gpu_for_two_decode_paths_and_two_budgets(model):
    rows = configs(model)
    assert [(c.kernel, c.decode, label, c.vram_budget_bytes) for label, c in rows] == [
        ("batched", "graphs", "all", None),
        ("batched", "graphs", "8", int(8e9 * 8 / 48)),
        ("batched", "model", "all", None),
        ("batched", "model", "8", int(8e9 * 8 / 48)),
    ]
    assert {(c.device, c.dtype, c.placement, str(c.model_path)) for _, c in rows} == {
        ("cuda", "bfloat16", "fetch", str(model))
    }


def test_engine_options_sweep_and_the_old_spellings_still_work(model):
    rows = configs(
        model,
        "--kernels",
        "fused",
        "batched",
        "--decode",
        "graphs",
        "--vram-budget",
        "1GiB",
        "--ram-budget",
        "2GiB",
        "--no-prefetch",
    )
    assert [(c.kernel, c.vram_budget_bytes, label) for label, c in rows] == [
        ("fused", 2**30, None),
        ("batched", 2**30, None),
    ]
    assert all(c.ram_budget_bytes == 2 * 2**30 and not c.prefetch for _, c in rows)
    layers = configs(model, "--layers", "4", "--budgets", "12")
    assert [c.vram_budget_bytes for _, c in layers] == [int(12e9 * 4 / 48)] * 2


@pytest.mark.parametrize(
    "words",
    [
        ["--vram-budget", "1GiB", "--budgets", "8"],  # two ways to say the budgets
        ["--budgets", "eight"],
        ["--kernel", "fastest"],
    ],
)
def test_bad_command_lines_are_refused(words, capsys):
    with pytest.raises(SystemExit):
        profile.parse_args(words)
    assert "error:" in capsys.readouterr().err


def test_the_transformers_baseline_decodes_greedily_without_deprecation_warnings(model):
    from lazymoe.engine.reference import full_model, reference_greedy

    hf = full_model(model)
    prompt = [5, 6, 7, 8]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        tokens = list(profile.hf_stream(hf, prompt, 5))
    assert tokens == reference_greedy(hf, prompt, 5)
