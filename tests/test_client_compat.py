"""lazymoe.client and lab 04 against another OpenAI-compatible server: llama-cpp-python's own.

One `python -m llama_cpp.server` on the bundled model's GGUF twin, on loopback with an API key,
serves every test here (about 20 s to export and start on 2 cores; lab 04 runs in ~30 s more).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import nbformat
import pytest
from conftest import notebook_env

from lazymoe import client, paths
from lazymoe.server import loadtest
from lazymoe.server.embedded import free_port

pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server] (make install-test)")

REPO = Path(__file__).resolve().parents[1]
LAB04 = REPO / "labs" / "lab04_shared_server.ipynb"
MODULE04 = REPO / "course" / "04_serving.ipynb"
KEY = "compat-test-key"
START_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """(base_url ending in /v1, model id) of a running llama-cpp-python server."""
    from lazymoe.models.gguf_export import export_gguf

    tmp = tmp_path_factory.mktemp("llama-server")
    gguf = export_gguf(paths.bundled_model_dir(), tmp / "tiny-moe-f32.gguf", "f32", progress=False)
    port = free_port()
    log = (tmp / "server.log").open("w")
    # --interrupt_requests False: queue concurrent requests instead of cutting the running one off
    # (llama-cpp-python's default), which is what a group server wants and what lab 04 measures
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
         "--port", str(port), "--api_key", KEY, "--n_ctx", "512", "--n_threads", "1",
         "--interrupt_requests", "False", "--verbose", "False"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {(tmp / 'server.log').read_text()[-2000:]}")
            try:
                r = httpx.get(f"{base_url}/models", headers={"Authorization": f"Bearer {KEY}"})
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer in {START_TIMEOUT_S:.0f} s")
            time.sleep(0.5)
        yield base_url, r.json()["data"][0]["id"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_connect_finds_the_model_and_refuses_a_wrong_key(llama_server):
    base_url, model = llama_server
    with client.connect(base_url, KEY) as conn:
        assert conn.model == model
        assert conn.source == "arguments"
    with pytest.raises(PermissionError, match="refused the key"):
        client.connect(base_url, "not-the-key")


def test_error_of_reads_fastapi_detail(llama_server):
    base_url, model = llama_server
    with client.connect(base_url, KEY) as conn, conn.http() as http:
        body = {"model": model, "prompt": "x", "max_tokens": 2}
        wrong = http.post("/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert "error" not in wrong.json()  # the shape lab 04 used to expect
        err = client.error_of(wrong)
        assert err is not None and "api key" in err["message"].lower()
        assert client.error_of(http.post("/v1/completions", json=body)) is None


def test_lazymoe_extras_are_detected_and_skipped(llama_server, capsys):
    base_url, _ = llama_server
    with client.connect(base_url, KEY) as conn:
        assert conn.has_metrics is False
        with pytest.raises(LookupError, match="no lazymoe /metrics"):
            conn.metrics()
        assert conn.metrics_or_note("the hit rate") is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "skipped the hit rate" in out[0]


def test_stream_timing_gets_a_token_count(llama_server):
    base_url, _ = llama_server
    with client.connect(base_url, KEY) as conn:
        timing = loadtest.stream_once(conn, "def fibonacci(n):", max_tokens=8)
    assert timing.arrivals_s and timing.text
    assert timing.n_tokens == 0  # llama-cpp-python sends no usage in a stream...
    assert client.fill_token_counts(timing)  # ...so one token per piece of text
    assert timing.n_tokens == len(timing.arrivals_s) <= 8
    assert timing.decode_tok_s > 0
    assert not client.fill_token_counts(timing)  # already counted: left alone


def _run_against(notebook: Path, llama_server, tmp_path, monkeypatch) -> str:
    """Run `notebook` headless with the server's address and key in the environment, as a member
    of a group whose server is llama-cpp-python's; every code cell's printed text, joined."""
    from nbclient import NotebookClient

    base_url, _ = llama_server
    notebook_env(monkeypatch)  # as tests/test_notebooks.py runs every notebook, plus the server's address
    monkeypatch.setenv("LAZYMOE_HOME", str(tmp_path / "home"))  # progress goes here, not ~
    monkeypatch.setenv("LAZYMOE_API_BASE", base_url)
    monkeypatch.setenv("LAZYMOE_API_KEY", KEY)
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=240, startup_timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(notebook.parent)}}).execute()
    return "\n".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )


@pytest.mark.notebook
@pytest.mark.timeout(300)
def test_module04_runs_against_llama_cpp_server(llama_server, tmp_path, monkeypatch):
    text = _run_against(MODULE04, llama_server, tmp_path, monkeypatch)
    assert "source='environment'" in text  # print(conn): it used the server, not a local one
    assert '"finish_reason"' in text  # the raw answer, in OpenAI's shape
    assert "skipped the engine's own timing" in text  # no lazymoe /metrics there...
    assert "ms per request (engine time and HTTP together)" in text  # ...the client's figure only
    assert "the engine worked" not in text


@pytest.mark.notebook
@pytest.mark.timeout(300)
def test_lab04_runs_against_llama_cpp_server(llama_server, tmp_path, monkeypatch):
    text = _run_against(LAB04, llama_server, tmp_path, monkeypatch)
    assert "from:   environment" in text  # it used the server, not a local one
    assert "401" in text and "api key" in text.lower()  # the wrong key's error, read
    assert "skipped the engine's own timing" in text
    assert "skipped watching /metrics under load" in text
    assert "counting one token per piece of text" in text
    assert "left alone (not ours)" in text
