"""`lazymoe run`: text on stdout, numbers on stderr, a clear message and exit code 1 on a bad budget."""

from __future__ import annotations

import json

import pytest

from lazymoe.cli import main
from lazymoe.models.random import make_random_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("m") / "olmoe", arch="olmoe")


def test_run_streams_text_and_writes_stats(tiny, tmp_path, capsys):
    stats_path = tmp_path / "stats.json"
    code = main(["run", "abc", "--model", str(tiny), "--device", "cpu", "--vram-budget", "30KiB",
                 "--max-new-tokens", "5", "--stats-json", str(stats_path)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0
    assert out.startswith("abc")
    assert "tok/s" in err and "hit rate" in err and "tier ram: 5 of 24 experts" in err
    stats = json.loads(stats_path.read_text())
    assert 1 <= stats["tokens"] <= 5 and stats["misses"] > 0


def test_run_with_a_budget_too_small_says_the_minimum(tiny, capsys):
    code = main(["run", "abc", "--model", str(tiny), "--device", "cpu", "--vram-budget", "1KiB"])
    assert code == 1
    assert "give at least" in capsys.readouterr().err


def test_run_with_graphs_on_a_cpu_says_what_to_use(tmp_path, capsys):
    qwen3 = make_random_checkpoint(tmp_path / "qwen3", arch="qwen3_moe")
    code = main(["run", "abc", "--model", str(qwen3), "--device", "cpu", "--decode", "graphs"])
    assert code == 1
    assert "needs a CUDA device: use 'segments' or 'model'" in capsys.readouterr().err
    code = main(["run", "abc", "--model", str(qwen3), "--device", "cpu", "--decode", "segments",
                 "--max-new-tokens", "3", "--quiet"])  # fmt: skip
    assert code == 0 and capsys.readouterr().out.startswith("abc")


# -- the model as the first word: `lazymoe run model.gguf "prompt"` --------------------------------
@pytest.fixture(scope="module")
def q8_twin(tmp_path_factory):
    from gguf_models import twin

    return twin("q8_0", tmp_path_factory.mktemp("gguf"))


def test_run_takes_a_gguf_file_as_its_first_word(q8_twin, capsys):
    code = main(["run", str(q8_twin), "def add(a, b):", "--device", "cpu", "--max-new-tokens", "3"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("def add(a, b):") and len(out) > len("def add(a, b):\n")
    assert f"model {q8_twin}" in err  # engine.describe(): the file it opened


@pytest.mark.parametrize("which", ["gguf file", "model folder"])
def test_run_with_only_a_model_uses_the_default_prompt(which, q8_twin, tiny, capsys):
    model = q8_twin if which == "gguf file" else tiny
    code = main(["run", str(model), "--device", "cpu", "--max-new-tokens", "2"])
    out, err = capsys.readouterr()
    assert code == 0 and out.startswith("def ") and f"model {model} (" in err


def test_run_takes_the_same_model_both_ways_and_refuses_two_different_ones(q8_twin, tiny, capsys):
    same = main(["run", str(q8_twin), "abc", "--model", str(q8_twin), "--device", "cpu",
                 "--max-new-tokens", "2", "--quiet"])  # fmt: skip
    assert same == 0 and capsys.readouterr().out.startswith("abc")
    assert main(["run", str(q8_twin), "abc", "--model", str(tiny)]) == 2
    err = capsys.readouterr().err
    assert "two models" in err and str(q8_twin) in err and str(tiny) in err


@pytest.mark.parametrize("case", ["missing", "not-gguf-bytes", "text-file", "empty-folder", "gguf-folder"])
def test_run_names_a_path_that_is_not_a_model_and_says_what_to_give(case, tmp_path, capsys):
    words = {
        "missing": [str(tmp_path / "nowhere.gguf")],
        "not-gguf-bytes": [str(tmp_path / "page.gguf")],  # a web page saved under a .gguf name
        "text-file": [str(tmp_path / "notes.txt"), "abc"],
        "empty-folder": [str(tmp_path / "empty")],
        "gguf-folder": [str(tmp_path / "downloads")],
    }[case]
    (tmp_path / "page.gguf").write_text("<html>not found</html>")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "model-Q4_K_M.gguf").write_bytes(b"GGUF")
    assert main(["run", *words]) == 2
    err = capsys.readouterr().err
    assert words[0] in err
    want = {
        "missing": "does not exist (.gguf files in",  # the ones beside it, as a hint
        "not-gguf-bytes": "is not a GGUF file",
        "text-file": "is a file but not a model: give a .gguf file, or a model folder",
        "empty-folder": "folder without config.json, so not a model folder: give a .gguf file",
        "gguf-folder": "give one of them (" + str(tmp_path / "downloads" / "model-Q4_K_M.gguf"),
    }[case]
    assert want in err, err


def test_an_unquoted_prompt_gets_a_hint_about_quotes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "write", "a poem"]) == 2
    err = capsys.readouterr().err
    assert "write does not exist" in err and "put quotes around the whole prompt" in err
    assert main(["run", "a", "b", "c"]) == 2
    assert "at most a model and one prompt" in capsys.readouterr().err
