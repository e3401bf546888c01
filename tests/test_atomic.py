"""lazymoe.atomic.write_json: old file or new file, never half of one; permission bits as asked."""

from __future__ import annotations

import json
import stat

import pytest

from lazymoe import atomic


class Unserializable:
    pass


def test_writes_and_replaces(tmp_path):
    path = tmp_path / "sub" / "state.json"
    atomic.write_json(path, {"a": 1})
    atomic.write_json(path, {"a": 2}, indent=1)
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp file left


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "state.json"
    atomic.write_json(path, {"a": 1}, durable=True)
    with pytest.raises(TypeError):
        atomic.write_json(path, {"a": Unserializable()})  # fails halfway through json.dump
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_mode_is_kept_or_forced(tmp_path):
    path = tmp_path / "keys.json"
    atomic.write_json(path, {}, mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o640)
    atomic.write_json(path, {"b": 1})  # mode None keeps what the file has
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
