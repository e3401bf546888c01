"""End to end with the real engine: `lazymoe.engine.Engine` on a tiny random Qwen3-MoE checkpoint,
served on loopback. Streaming and non-streaming give the engine's own greedy tokens; 32 clients at
once all get theirs; a client killed mid-stream stops its generation while the others are served.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import requires_gpu

from lazymoe.paths import bundled_model_dir
from lazymoe.server.backend import EngineBackend, SamplingParams
from lazymoe.server.config import ServerConfig
from lazymoe.server.embedded import EmbeddedServer

pytestmark = pytest.mark.timeout(180)

PROMPTS = ["def add(a, b):", "import os\n", "class Cache:", "# sum of squares\n"]


@pytest.fixture(scope="module")
def engine_backend(tmp_path_factory):
    from lazymoe.models.random import make_random_checkpoint

    model_dir = make_random_checkpoint(
        tmp_path_factory.mktemp("tiny-random") / "tiny-random", seed=0
    )
    return EngineBackend.from_model_path(model_dir, device="cpu", vram_budget=None)


@pytest.fixture(scope="module")
def served(engine_backend, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.json"
    config = ServerConfig(port=0, max_queue=64, max_tokens_cap=256)
    with EmbeddedServer(engine_backend, config, keys_file=str(keys)) as server:
        yield server


def expected_text(backend, prompt: str, max_tokens: int) -> tuple[str, int]:
    """The engine's own greedy answer, called directly (only while the server is idle)."""
    ids = list(backend.stream(backend.encode(prompt), SamplingParams(max_tokens)))
    if ids and ids[-1] in backend.eos_token_ids:
        ids = ids[:-1]
    return backend.decode(ids), len(ids)


def client_for(server, **kwargs):
    return httpx.Client(
        base_url=server.root_url,
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=120,
        **kwargs,
    )


def stream_text(client, body) -> tuple[str, dict]:
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    pieces, usage = [], {}
    with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return "".join(pieces), usage
            event = json.loads(line[6:])
            assert "error" not in event, event
            usage = event.get("usage") or usage
            pieces.extend(c["text"] for c in event["choices"])
    raise AssertionError("the stream ended without data: [DONE]")


def test_streaming_and_not_streaming_give_the_engines_own_tokens(engine_backend, served):
    want, n_tokens = expected_text(engine_backend, PROMPTS[0], 24)
    with client_for(served) as client:
        body = {
            "model": engine_backend.model_id,
            "prompt": PROMPTS[0],
            "max_tokens": 24,
            "temperature": 0,
        }
        whole = client.post("/v1/completions", json=body).json()
        streamed, usage = stream_text(client, body)
        chat = {
            "model": engine_backend.model_id,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8,
            "temperature": 0,
        }
        chat_whole = client.post("/v1/chat/completions", json=chat).json()
    assert whole["choices"][0]["text"] == streamed == want
    assert whole["usage"] == usage and usage["completion_tokens"] == n_tokens
    assert chat_whole["usage"]["completion_tokens"] >= 1


def test_token_ids_outside_the_vocabulary_are_a_clear_error_in_the_engine_and_a_400(
    engine_backend, served
):
    engine, vocab_size = engine_backend.engine, engine_backend.vocab_size
    assert vocab_size == engine.model.get_input_embeddings().num_embeddings
    for bad in (vocab_size, -1):
        with pytest.raises(ValueError, match=rf"prompt_ids\[1\] = {bad} .* 0\.\.{vocab_size - 1}"):
            engine.generate([1, bad])
    with client_for(served) as client:
        response = client.post(
            "/v1/completions",
            json={"model": engine_backend.model_id, "prompt": [1, vocab_size], "max_tokens": 2},
        )
        assert response.status_code == 400, response.text
        assert f"0..{vocab_size - 1}" in response.json()["error"]["message"]
        ok = client.post(
            "/v1/completions",
            json={"model": engine_backend.model_id, "prompt": [1, vocab_size - 1], "max_tokens": 2},
        )
        assert ok.status_code == 200, ok.text


def test_the_prompt_cap_follows_the_models_context(engine_backend, served):
    context = engine_backend.engine.model.config.max_position_embeddings
    assert engine_backend.context_tokens == context
    assert served.app.state.config.max_prompt_tokens == min(context, 2048)


def test_32_concurrent_streaming_clients_all_get_the_right_tokens(engine_backend, served):
    max_tokens = 8
    wants = {p: expected_text(engine_backend, p, max_tokens)[0] for p in PROMPTS}
    body = {"model": engine_backend.model_id, "max_tokens": max_tokens, "temperature": 0}
    start_s = time.monotonic()
    with (
        client_for(served, limits=httpx.Limits(max_connections=40)) as client,
        ThreadPoolExecutor(32) as pool,
    ):
        futures = [
            pool.submit(stream_text, client, {**body, "prompt": PROMPTS[i % 4]}) for i in range(32)
        ]
        results = [f.result(timeout=120) for f in futures]
    elapsed_s = time.monotonic() - start_s
    for i, (text, usage) in enumerate(results):
        assert text == wants[PROMPTS[i % 4]], f"client {i} got different tokens"
        assert usage["completion_tokens"] >= 1
    assert elapsed_s < 120
    snap = served.app.state.metrics.snapshot()
    assert snap["queue_depth"] == 0 and snap["in_flight"] == 0


def test_a_client_killed_mid_stream_stops_the_engine_and_others_are_served(engine_backend, served):
    want, _ = expected_text(engine_backend, PROMPTS[1], 6)
    # Prompt + max_tokens must fit the model's context (256 tokens for this checkpoint).
    _, full_length = expected_text(
        engine_backend, PROMPTS[2], 200
    )  # uncancelled, it would make this many
    assert full_length > 20, "pick a prompt whose answer is long enough to be cut"
    metrics = served.app.state.metrics
    cancelled_before = metrics.snapshot()["cancelled_total"]
    tokens_before = engine_backend.stats()["tokens"]
    body = {
        "model": engine_backend.model_id,
        "prompt": PROMPTS[2],
        "max_tokens": 200,
        "temperature": 0,
        "stream": True,
    }
    other: dict = {}
    victim = client_for(served)
    with victim.stream("POST", "/v1/completions", json=body) as response:
        lines = response.iter_lines()
        chunks = 0
        while chunks < 3:
            chunks += next(lines).startswith("data: ")
        with client_for(served) as client:
            worker = threading.Thread(
                target=lambda: other.update(
                    text=stream_text(client, {**body, "prompt": PROMPTS[1], "max_tokens": 6})[0]
                )
            )
            worker.start()
            victim.close()  # killed mid-stream
            worker.join(60)
    assert other["text"] == want
    deadline_s = time.monotonic() + 10
    while metrics.snapshot()["cancelled_total"] == cancelled_before:
        assert time.monotonic() < deadline_s, "the server never noticed the client went away"
        time.sleep(0.05)
    used = engine_backend.stats()["tokens"] - tokens_before
    assert used < full_length, (
        f"the killed request ran to the end ({used} tokens): it was not cancelled"
    )


def test_connect_starts_an_embedded_server_on_a_model_and_close_stops_it(
    engine_backend, monkeypatch
):
    from lazymoe import client

    monkeypatch.delenv("LAZYMOE_API_BASE", raising=False)
    model_dir = engine_backend.engine.config.model_path
    with client.connect(model_path=model_dir, device="cpu") as conn:
        assert conn.source == "embedded" and conn.model == model_dir.name
        reply = conn.openai().chat.completions.create(
            model=conn.model,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            temperature=0,
        )
        assert reply.usage.completion_tokens >= 1
        root = conn.root_url
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{root}/health", timeout=2)


@pytest.mark.skipif(
    not (bundled_model_dir() / "config.json").exists(),
    reason="the bundled model is not built (`make data`)",
)
def test_the_bundled_model_streams_real_text_identically(tmp_path):
    """Real BPE merges and non-ASCII text: the pieces still add up to the engine's own decode."""
    backend = EngineBackend.from_model_path(bundled_model_dir(), device="cpu")
    prompt = "# café -> résumé\ndef parse(text):"
    want, n_tokens = expected_text(backend, prompt, 20)
    with (
        EmbeddedServer(backend, keys_file=str(tmp_path / "keys.json")) as server,
        client_for(server) as client,
    ):
        body = {"model": backend.model_id, "prompt": prompt, "max_tokens": 20, "temperature": 0}
        whole = client.post("/v1/completions", json=body).json()
        streamed, usage = stream_text(client, body)
    assert whole["choices"][0]["text"] == streamed == want
    assert usage["completion_tokens"] == n_tokens


@pytest.mark.gpu
@requires_gpu
def test_serving_from_the_gpu_with_a_small_expert_cache(tmp_path):
    """On CUDA with room for a few experts only: the server still returns the engine's own tokens."""
    from lazymoe.models.random import make_random_checkpoint

    model_dir = make_random_checkpoint(tmp_path / "tiny-random", seed=1)
    backend = EngineBackend.from_model_path(model_dir, device="cuda", vram_budget="36KiB")
    want, _ = expected_text(backend, PROMPTS[0], 16)
    with (
        EmbeddedServer(backend, keys_file=str(tmp_path / "keys.json")) as server,
        client_for(server) as client,
    ):
        body = {"model": backend.model_id, "prompt": PROMPTS[0], "max_tokens": 16, "temperature": 0}
        assert client.post("/v1/completions", json=body).json()["choices"][0]["text"] == want
        assert stream_text(client, body)[0] == want
        assert client.get("/metrics", params={"format": "json"}).json()["engine"]["misses"] > 0
