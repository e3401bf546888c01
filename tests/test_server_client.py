"""The labs' client helpers (where is the server, which key) and the `lazymoe serve` command."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from lazymoe import client
from lazymoe.paths import bundled_model_dir
from lazymoe.server.config import ServerConfig
from lazymoe.server.embedded import EmbeddedServer, free_port
from lazymoe.server.fake import EchoBackend

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def echo_server(tmp_path):
    with EmbeddedServer(
        EchoBackend(), ServerConfig(port=0), keys_file=str(tmp_path / "keys.json")
    ) as server:
        yield server


def test_nothing_configured_means_the_embedded_server(monkeypatch):
    monkeypatch.delenv("LAZYMOE_API_BASE", raising=False)
    assert client.configured() is None


def test_the_environment_wins_over_the_config_file(monkeypatch):
    client.save_config("http://file:1/v1", "file-key")
    monkeypatch.delenv("LAZYMOE_API_BASE", raising=False)
    assert client.configured() == ("http://file:1/v1", "file-key", str(client.config_path()))
    monkeypatch.setenv("LAZYMOE_API_BASE", "http://env:2/v1")
    monkeypatch.setenv("LAZYMOE_API_KEY", "env-key")
    assert client.configured() == ("http://env:2/v1", "env-key", "environment")
    assert oct(client.config_path().stat().st_mode & 0o777) == "0o600"


def test_connect_through_the_environment_and_use_both_clients(echo_server, monkeypatch):
    monkeypatch.setenv("LAZYMOE_API_BASE", echo_server.base_url)
    monkeypatch.setenv("LAZYMOE_API_KEY", echo_server.api_key)
    with client.connect() as conn:
        assert (conn.model, conn.source, conn.server) == ("echo", "environment", None)
        reply = conn.openai().completions.create(model=conn.model, prompt="ab", max_tokens=3)
        assert reply.choices[0].text == "aba"
        with conn.http() as http:
            assert http.get("/v1/models").json()["data"][0]["id"] == "echo"
        assert conn.metrics()["requests_by_member"] == {"you": 1}
    assert echo_server.running  # closing a connection to someone else's server leaves it alone


def test_a_server_that_does_not_answer_says_how_to_fall_back(monkeypatch):
    monkeypatch.setenv("LAZYMOE_API_BASE", f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(ConnectionError, match="unset LAZYMOE_API_BASE"):
        client.connect()


def test_a_refused_key_is_a_permission_error(echo_server):
    with pytest.raises(PermissionError, match="LAZYMOE_API_KEY"):
        client.connect(echo_server.base_url, "lzm-00000000.wrong")


def test_no_model_and_no_server_says_how_to_build_the_model(monkeypatch, tmp_path):
    monkeypatch.delenv("LAZYMOE_API_BASE", raising=False)
    monkeypatch.setenv("LAZYMOE_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"lazymoe\.models\.prepare"):
        client.connect()


# -- the command line ----------------------------------------------------------------------------
def lazymoe(*args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lazymoe", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        **kwargs,
    )


def test_keys_are_made_listed_and_revoked_from_the_command_line(tmp_path):
    keys = str(tmp_path / "keys.json")
    made = lazymoe("serve", "--keys", keys, "--add-key", "alice")
    assert made.returncode == 0, made.stderr
    key = made.stdout.split("\n")[1].strip()
    assert key.startswith("lzm-") and key not in (tmp_path / "keys.json").read_text()
    assert lazymoe("serve", "--keys", keys, "--list-keys").stdout.split() == ["alice"]
    assert lazymoe("serve", "--keys", keys, "--revoke-key", "alice").returncode == 0
    assert lazymoe("serve", "--keys", keys, "--revoke-key", "alice").returncode == 1


def test_an_admin_key_and_a_members_own_limits_from_the_command_line(tmp_path):
    from lazymoe.server.auth import KeyStore

    keys = str(tmp_path / "keys.json")
    admin = lazymoe("serve", "--keys", keys, "--add-key", "teacher", "--admin")
    limited = lazymoe(
        "serve", "--keys", keys, "--add-key", "alice", "--key-requests-per-minute", "5",
        "--key-tokens-per-day", "20000",
    )  # fmt: skip
    assert admin.returncode == limited.returncode == 0, admin.stderr + limited.stderr
    store = KeyStore(keys)
    teacher = store.identify(admin.stdout.split("\n")[1].strip())
    alice = store.identify(limited.stdout.split("\n")[1].strip())
    assert teacher.is_admin and not alice.is_admin
    assert (alice.requests_per_minute, alice.tokens_per_minute, alice.tokens_per_day) == (
        5,
        None,
        20000,
    )
    bad = lazymoe("serve", "--keys", keys, "--add-key", "bob", "--key-tokens-per-day", "0")
    assert bad.returncode == 2 and "tokens_per_day" in bad.stderr


def test_serving_on_an_open_address_without_keys_is_refused():
    refused = lazymoe("serve", "--fake", "--host", "0.0.0.0")
    assert refused.returncode == 2 and "no keys file" in refused.stderr


def test_lazymoe_serve_answers_and_stops_cleanly_on_ctrl_c(tmp_path):
    keys, port = str(tmp_path / "keys.json"), free_port()
    key = lazymoe("serve", "--keys", keys, "--add-key", "bob").stdout.split("\n")[1].strip()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable,
        "-m",
        "lazymoe",
        "serve",
        "--fake",
        "--keys",
        keys,
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline_s = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline_s, "lazymoe serve did not start"
                time.sleep(0.1)
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions",
            json={"model": "echo", "prompt": "hi", "max_tokens": 4},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert reply.json()["choices"][0]["text"] == "hihi"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert key not in proc.stdout.read()  # keys are never logged
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.skipif(not (bundled_model_dir() / "config.json").exists(),
                    reason="the bundled model is not built (`make data`)")  # fmt: skip
def test_lazymoe_serve_says_what_its_engine_runs_at_start(monkeypatch, capsys):
    """As `lazymoe run` does: the model, device, decode path and cache tiers (an instructor sees
    whether the fast paths are on, and why not)."""
    from lazymoe.server import cli as serve_cli
    from lazymoe.server import embedded

    class NoServer:
        def run(self):
            return None

    monkeypatch.setattr(embedded, "build_server", lambda *args, **kwargs: NoServer())
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    args = parser.parse_args(["--model", str(bundled_model_dir()), "--device", "cpu"])
    assert serve_cli.run(args) == 0
    out = capsys.readouterr()
    assert "decode model" in out.err and "tier ram: 64 of 64 experts" in out.err
    assert "tiny-moe on http://127.0.0.1:" in out.out
