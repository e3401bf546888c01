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
