"""Engine options are defined once (`EngineConfig` field metadata) and every front end has them all.

`lazymoe run`, `lazymoe serve` and `lazymoe bench` must offer every engine option under the same
flag, with the same default (the bench's own defaults only where `BENCH_DEFAULTS` says), and build
the `EngineConfig` that the flags say.
"""

from __future__ import annotations

import argparse
import json

import pytest

from lazymoe.bench import cli as bench_cli
from lazymoe.bench import harness
from lazymoe.engine import EngineConfig
from lazymoe.engine import cli as run_cli
from lazymoe.engine.options import add_engine_arguments, cli_fields, engine_flags
from lazymoe.models.random import make_random_checkpoint
from lazymoe.server import cli as serve_cli

FRONT_ENDS = {"run": run_cli, "serve": serve_cli, "bench": bench_cli}


def parser_of(module) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("options") / "olmoe", arch="olmoe")


@pytest.fixture(scope="module")
def experts_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("experts")
    (out / "manifest.json").write_text(json.dumps({}))  # the config only checks that it exists
    return out


def non_default_flags(model, experts_dir, **replace) -> tuple[list[str], dict]:
    """A flag for every engine option, each away from its default, and the fields they mean;
    `replace`: field -> the flag's words instead (several values for a swept option)."""
    fields = {
        "model_path": model, "device": "cpu", "dtype": "bfloat16", "vram_budget": "6GiB",
        "ram_budget": "512MiB", "placement": "cpu", "policy": "lfu", "prefetch": False,
        "experts_path": experts_dir, "kernel": "grouped", "decode": "model", "pin_checkpoint": True,
        "cpu_activations": "int8", "fetch_per_layer": 2,
        "h2d_bandwidth_gbps": 20.5, "cpu_bandwidth_gbps": 30.0, "devices": "cpu,cpu",
    }  # fmt: skip
    flags = []
    for name, flag in engine_flags().items():
        value = fields[name]
        if name in replace:
            flags += [flag, *replace[name]]
        else:
            flags += [flag] if isinstance(value, bool) else [flag, str(value)]
    return flags, fields


def test_every_engine_option_is_covered_by_this_test(model, experts_dir):
    _, fields = non_default_flags(model, experts_dir)
    assert set(fields) == {f.name for f in cli_fields()}  # a new option needs a value above


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_every_front_end_offers_every_engine_option(front_end):
    actions = {flag: a for a in parser_of(FRONT_ENDS[front_end])._actions for flag in a.option_strings}
    missing = [flag for flag in engine_flags().values() if flag not in actions]
    assert not missing, f"lazymoe {front_end} lacks {missing}"
    for name, flag in engine_flags().items():
        assert actions[flag].dest == name  # what EngineConfig.from_args reads


def test_the_front_ends_share_defaults_and_the_bench_differs_only_where_it_says():
    run = vars(parser_of(run_cli).parse_args([]))
    serve = vars(parser_of(serve_cli).parse_args([]))
    bench = vars(parser_of(bench_cli).parse_args([]))
    for f in cli_fields():
        assert serve[f.name] == run[f.name], f.name
        want = bench_cli.BENCH_DEFAULTS.get(f.name, run[f.name])
        if f.name in bench_cli.BENCH_SWEEP and want is not None and not isinstance(want, list):
            want = [want]
        assert bench[f.name] == want, f.name
    assert run["vram_budget"] is None and run["placement"] == "fetch" and run["dtype"] == "float32"


def test_lazymoe_run_builds_the_config_the_flags_say(model, experts_dir, monkeypatch):
    flags, fields = non_default_flags(model, experts_dir)
    made = []

    def fake_engine(config):
        made.append(config)
        raise ValueError("stop here: the test needs only the config")

    monkeypatch.setattr("lazymoe.engine.Engine", fake_engine)
    assert run_cli.run(parser_of(run_cli).parse_args(["abc", *flags])) == 1
    assert made == [EngineConfig(**fields)]


def test_lazymoe_serve_builds_the_config_the_flags_say(model, experts_dir, monkeypatch):
    from lazymoe.server.backend import EngineBackend

    flags, fields = non_default_flags(model, experts_dir)
    made = []
    monkeypatch.setattr(EngineBackend, "from_model_path",
                        classmethod(lambda cls, path, **kw: made.append(EngineConfig(path, **kw))))
    serve_cli._backend(parser_of(serve_cli).parse_args(flags))
    assert made == [EngineConfig(**fields)]


class _Planned(Exception):
    pass


def bench_plan(argv: list[str], monkeypatch) -> harness.BenchPlan:
    def fake_run_plan(plan, **_):
        raise _Planned(plan)

    monkeypatch.setattr(harness, "run_plan", fake_run_plan)
    with pytest.raises(_Planned) as planned:
        bench_cli.run(parser_of(bench_cli).parse_args(argv))
    return planned.value.args[0]


def test_lazymoe_bench_runs_one_config_per_swept_value_each_as_the_flags_say(
    model, experts_dir, monkeypatch
):
    sweep = {"placement": ["cpu", "auto"], "vram_budget": ["6GiB", "512MiB"], "device": ["cuda"],
             "devices": ["0,1"]}  # fmt: skip
    flags, fields = non_default_flags(model, experts_dir, **sweep)
    fields["devices"] = ("cuda:0", "cuda:1")
    plan = bench_plan([*flags, "--engines", "lazymoe", "--no-resident"], monkeypatch)
    specs = harness.build_specs(plan, llama_ok=False)
    configs = [EngineConfig(**spec["options"]) for spec in specs]
    # the harness hands each row its budget in bytes: exactly the flag's, 6GiB = 6 * 2**30
    # (fetch_per_layer is placement auto's: the cpu rows leave it unset)
    expected = [EngineConfig(**{**fields, "device": "cuda", "placement": placement, "vram_budget": budget,
                                "fetch_per_layer": fields["fetch_per_layer"] if placement == "auto" else None})
                for budget in (6 * 2**30, 512 * 2**20) for placement in ("cpu", "auto")]  # fmt: skip
    # compared on the engine options: the harness may add per-row fields of its own (a routing
    # trace) and more rows per configuration (one per routing regime)
    got, want = [c.cli_values() for c in configs], [c.cli_values() for c in expected]
    assert all(g in want for g in got) and all(w in got for w in want), (got, want)
    assert {s["vram_budget_gb"] for s in specs} == {6 * 2**30 / 1e9, 512 * 2**20 / 1e9}
    json.dumps(specs)  # the results file records each row's options


def test_the_bench_keeps_its_old_spellings(model, monkeypatch):
    argv = ["--model", str(model), "--engines", "lazymoe", "--device", "cuda"]
    plan = bench_plan([*argv, "--placements", "gpu", "auto", "--budgets", "5", "8.5"], monkeypatch)
    assert plan.placements == ("fetch", "auto") and plan.vram_budgets_gb == (5.0, 8.5)
    specs = harness.build_specs(plan, llama_ok=False)
    assert {s["options"]["vram_budget"] for s in specs if s["vram_budget_gb"]} == {5 * 10**9, 8.5e9}
    code = bench_cli.run(parser_of(bench_cli).parse_args([*argv, "--budgets", "5", "--vram-budget", "5GB"]))
    assert code == 2


def test_a_bad_engine_flag_is_refused_by_every_front_end_before_anything_runs(capsys):
    for module in FRONT_ENDS.values():
        with pytest.raises(SystemExit):
            parser_of(module).parse_args(["--vram-budget", "6 gigs"])
        assert "'6GiB'" in capsys.readouterr().err  # says what to write
        with pytest.raises(SystemExit):
            parser_of(module).parse_args(["--placement", "disk"])


def test_the_old_placement_name_is_accepted_and_means_fetch(model):
    args = parser_of(run_cli).parse_args(["--model", str(model), "--placement", "gpu"])
    assert EngineConfig.from_args(args).placement == "fetch"
    assert EngineConfig(model_path=model, placement="gpu").placement == "fetch"


def test_from_args_says_what_a_front_end_lacks(model):
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", dest="model_path")
    with pytest.raises(ValueError, match=r"--device.*add_engine_arguments"):
        EngineConfig.from_args(parser.parse_args(["--model", str(model)]))


def test_overrides_win_and_a_swept_option_needs_one(model):
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser, sweep=("placement",))
    args = parser.parse_args(["--model", str(model), "--placement", "cpu", "auto"])
    with pytest.raises(ValueError, match="several values"):
        EngineConfig.from_args(args)
    assert EngineConfig.from_args(args, placement="auto", device="cpu").placement == "auto"


def test_lazymoe_bench_takes_model_folders_as_words_as_well_as_by_flag(model, monkeypatch):
    argv = ["--engines", "lazymoe", "--device", "cuda", "--placement", "fetch", "--vram-budget", "5GB"]
    by_word = bench_plan([str(model), *argv], monkeypatch)
    by_flag = bench_plan(["--model", str(model), *argv], monkeypatch)
    both = bench_plan([str(model), "--model", str(model), *argv], monkeypatch)
    assert [m.model_dir for m in by_word.models] == [str(model)]
    assert by_word.models == by_flag.models == both.models


def test_lazymoe_bench_refuses_two_model_lists_and_a_broken_gguf_file_saying_what_to_give(
    model, tmp_path, capsys
):
    other = make_random_checkpoint(tmp_path / "other", arch="olmoe")
    run = lambda *argv: bench_cli.run(parser_of(bench_cli).parse_args(list(argv)))  # noqa: E731
    assert run(str(model), "--model", str(other)) == 2
    err = capsys.readouterr().err
    assert "two lists of models" in err and str(other) in err
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(20))
    assert run(str(gguf)) == 2
    err = capsys.readouterr().err
    assert f"{gguf} is not a readable GGUF file" in err and "download it again" in err
    assert run(str(tmp_path / "missing")) == 2
    assert f"{tmp_path / 'missing'} does not exist" in capsys.readouterr().err


# -- one way: config and options share the leaf optionspec, and no engine module is in a loop ---
def test_no_engine_module_is_in_an_import_loop_not_even_through_a_function():
    from import_graph import import_graph, import_loops

    graph = import_graph()
    assert graph["lazymoe.engine.optionspec"] == set()  # a leaf: config and options both use it
    assert "lazymoe.engine.options" not in graph["lazymoe.engine.config"]
    assert "lazymoe.engine.config" in graph["lazymoe.engine.options"]
    loops = [loop for loop in import_loops(graph) if any(m.startswith("lazymoe.engine") for m in loop)]
    assert not loops, f"modules that import each other in a circle: {loops}"


def test_the_loop_check_reads_imports_in_functions_and_skips_those_that_never_run_on_import():
    import ast

    from import_graph import import_loops, runtime_imports

    source = """
from typing import TYPE_CHECKING
import a
if TYPE_CHECKING:
    import b
else:
    import c
def f():
    from d import x
if __name__ == "__main__":
    import e
"""
    names = [n.names[0].name if isinstance(n, ast.Import) else n.module
             for n in runtime_imports(ast.parse(source))]
    assert sorted(names) == ["a", "c", "d", "typing"]
    assert import_loops({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_loops({"a": {"b"}, "b": set()}) == []


def test_old_import_homes_still_work():
    from lazymoe.engine import config, options, optionspec

    assert config.parse_bytes is optionspec.parse_bytes and options.size_arg is optionspec.size_arg
    assert options.cli is optionspec.cli and options.CliOption is optionspec.CliOption


def test_a_fetch_sweep_holds_auto_s_share_beside_counts(model, monkeypatch, capsys):
    """--fetch-per-layer share 3: one auto row with the share of each layer's misses (None), one
    fetching at most 3; a word that is neither is refused, naming what to write."""
    argv = ["--model", str(model), "--engines", "lazymoe", "--device", "cuda", "--no-resident",
            "--placement", "auto", "--budgets", "5", "--routing", "independent"]  # fmt: skip
    plan = bench_plan([*argv, "--fetch-per-layer", "share", "3"], monkeypatch)
    specs = harness.build_specs(plan, llama_ok=False)
    assert [s["options"]["fetch_per_layer"] for s in specs] == [None, 3]
    assert [s["label"].endswith(", fetch 3 a layer") for s in specs] == [False, True]
    with pytest.raises(SystemExit):
        parser_of(run_cli).parse_args(["--model", str(model), "--fetch-per-layer", "most"])
    assert "'most': give a whole number or 'share'" in capsys.readouterr().err
