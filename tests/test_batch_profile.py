"""lazymoe.bench.batch_profile on the bundled model (CPU): what it records for each user count."""

from __future__ import annotations

import json

import pytest

from lazymoe.bench import batch_profile
from lazymoe.paths import bundled_model_dir

pytestmark = pytest.mark.skipif(
    not (bundled_model_dir() / "config.json").exists(),
    reason="the bundled model is not built (`make data`)",
)


def test_it_times_prefills_and_steps_per_user_count(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert batch_profile.main(["--model", str(bundled_model_dir()), "--device", "cpu",
                               "--users", "1", "3", "--steps", "2", "--prompt-tokens", "5",
                               "--compare-host", "--out", str(out)]) == 0  # fmt: skip
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert [(r["n_users"], r["device_experts"]) for r in rows] == [
        (1, True), (1, False), (3, True), (3, False)]  # fmt: skip
    for row in rows:
        assert len(row["step_ms"]) == 2 and row["step_ms_median"] > 0
        assert row["prefill_together_ms"] > 0 and row["prefill_one_by_one_ms"] > 0
        # the 2 timed steps took the path their user count takes
        path = "single" if row["n_users"] == 1 else "batched"
        assert row["paths"][path] == 2 and sum(row["paths"].values()) == 2
        assert "cumulative" in row["cprofile_step"] and "Self CPU" in row["ops_by_host_time"]
        assert row["device_steps"] == 0  # the CPU: no device-cache decoder
    assert "3 users, device_experts=False" in capsys.readouterr().out
