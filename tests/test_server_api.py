"""The HTTP API on a real loopback server, with the deterministic echo model standing in for the engine.

Every error case answers in OpenAI's error shape with the right status, and the server keeps
serving afterwards. (tests/test_server_engine.py runs the real engine end to end.)
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager

import httpx
import pytest

from lazymoe.server.config import ServerConfig
from lazymoe.server.embedded import EmbeddedServer
from lazymoe.server.fake import EchoBackend

pytestmark = pytest.mark.timeout(60)


@contextmanager
def serve(tmp_path, backend=None, **limits):
    server = EmbeddedServer(
        backend or EchoBackend(),
        ServerConfig(port=0, **limits),
        keys_file=str(tmp_path / "keys.json"),
    )
    with (
        server,
        httpx.Client(
            base_url=server.root_url,
            headers={"Authorization": f"Bearer {server.api_key}"},
            timeout=30,
        ) as client,
    ):
        yield server, client


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("api"), max_prompt_tokens=64, max_tokens_cap=32) as pair:
        yield pair


def chat_body(content="hello", **extra):
    return {
        "model": "echo",
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        **extra,
    }


def assert_openai_error(response, status, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def still_serving(client):
    response = client.post("/v1/chat/completions", json=chat_body("ok", max_tokens=4))
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "okok"


def sse_events(response):
    events = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


# -- auth ----------------------------------------------------------------------------------------
def test_health_needs_no_key_but_everything_else_does(shared):
    server, _client = shared
    assert httpx.get(f"{server.root_url}/health").json()["status"] == "ok"
    for path in ("/v1/models", "/metrics"):
        error = assert_openai_error(httpx.get(server.root_url + path), 401)
        assert "Authorization: Bearer" in error["message"]
    no_key = httpx.post(f"{server.root_url}/v1/chat/completions", json=chat_body())
    assert_openai_error(no_key, 401)


def test_a_wrong_key_is_refused_and_a_right_one_accepted(shared):
    server, client = shared
    wrong = httpx.get(
        f"{server.root_url}/v1/models", headers={"Authorization": "Bearer lzm-1234abcd.nope"}
    )
    assert assert_openai_error(wrong, 401)["code"] == "invalid_api_key"
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "echo"


# -- every error case, and the server survives them ---------------------------------------------
def test_malformed_bodies_are_400(shared):
    _server, client = shared
    assert_openai_error(client.post("/v1/chat/completions", content=b"{not json"), 400)
    assert_openai_error(client.post("/v1/chat/completions", json=[1, 2]), 400)
    assert_openai_error(client.post("/v1/chat/completions", json=chat_body(n=2)), 400, "n")
    assert_openai_error(
        client.post("/v1/completions", json={"model": "echo", "prompt": ""}), 400, "prompt"
    )
    still_serving(client)


def test_bad_parameters_are_422_naming_the_field(shared):
    _server, client = shared
    assert_openai_error(
        client.post("/v1/chat/completions", json=chat_body(temperature=5)), 422, "temperature"
    )
    assert_openai_error(
        client.post("/v1/chat/completions", json=chat_body(max_tokens=0)), 422, "max_tokens"
    )
    assert_openai_error(
        client.post("/v1/chat/completions", json={"model": "echo"}), 422, "messages"
    )
    assert_openai_error(
        client.post("/v1/chat/completions", json=chat_body(stop=["a"] * 5)), 422, "stop"
    )
    still_serving(client)


def test_max_tokens_above_the_cap_is_400_and_an_unknown_model_404(shared):
    _server, client = shared
    assert_openai_error(
        client.post("/v1/chat/completions", json=chat_body(max_tokens=33)), 400, "max_tokens"
    )
    body = {**chat_body(), "model": "gpt-5"}
    assert (
        assert_openai_error(client.post("/v1/chat/completions", json=body), 404, "model")["code"]
        == "model_not_found"
    )
    still_serving(client)


def test_a_prompt_over_the_limit_is_413(shared):
    _server, client = shared
    error = assert_openai_error(
        client.post("/v1/completions", json={"model": "echo", "prompt": "x" * 65}), 413
    )
    assert "65 tokens" in error["message"]
    huge = client.post(
        "/v1/completions",
        content=b"x" * (4 * 2**20 + 1),
        headers={"content-type": "application/json"},
    )
    assert assert_openai_error(huge, 413)["code"] == "body_too_large"
    client.post(
        "/v1/completions", json={"model": "echo", "prompt": "x" * 64, "max_tokens": 1}
    ).raise_for_status()
    still_serving(client)


def test_over_a_keys_request_rate_is_429_with_retry_after(tmp_path):
    with serve(tmp_path, requests_per_minute=2) as (server, client):
        for _ in range(2):
            client.post(
                "/v1/completions", json={"model": "echo", "prompt": "a", "max_tokens": 1}
            ).raise_for_status()
        over = client.post(
            "/v1/completions", json={"model": "echo", "prompt": "a", "max_tokens": 1}
        )
        assert assert_openai_error(over, 429)["type"] == "rate_limit_error"
        assert int(over.headers["retry-after"]) >= 1
        assert httpx.get(f"{server.root_url}/health").status_code == 200


def test_over_a_keys_token_budget_is_429(tmp_path):
    with serve(tmp_path, tokens_per_minute=20, max_tokens_cap=16) as (_server, client):
        client.post(
            "/v1/completions", json={"model": "echo", "prompt": "ab", "max_tokens": 8}
        ).raise_for_status()
        over = client.post(
            "/v1/completions", json={"model": "echo", "prompt": "ab", "max_tokens": 16}
        )
        assert "tokens per minute" in assert_openai_error(over, 429)["message"]


def test_a_full_queue_is_503_and_the_waiting_requests_still_complete(tmp_path):
    backend = EchoBackend(token_delay_s=0.02)
    # one at a time (max_batch=1): the second request waits in the queue (batching: see
    # tests/test_server_batching.py)
    with serve(tmp_path, backend, max_queue=1, max_batch=1) as (server, client):
        body = {"model": "echo", "prompt": "ab", "max_tokens": 20}
        results = {}

        def call(name):
            results[name] = client.post("/v1/completions", json=body)

        running = threading.Thread(target=call, args=("running",))
        running.start()
        wait_until(lambda: backend.streams_open == 1)
        queued = threading.Thread(target=call, args=("queued",))
        queued.start()
        wait_until(lambda: server.app.state.scheduler.queue_depth == 1)
        full = client.post("/v1/completions", json=body)
        assert assert_openai_error(full, 503)["code"] == "queue_full"
        running.join(10)
        queued.join(10)
        assert [results[k].json()["choices"][0]["text"] for k in ("running", "queued")] == [
            "ab" * 10
        ] * 2


def test_an_engine_failure_is_500_and_the_server_carries_on(tmp_path):
    with serve(tmp_path, EchoBackend(fail_after=3)) as (_server, client):
        failed = client.post(
            "/v1/completions", json={"model": "echo", "prompt": "ab", "max_tokens": 8}
        )
        assert assert_openai_error(failed, 500)["code"] == "engine_error"
        body = {"model": "echo", "prompt": "ab", "max_tokens": 8, "stream": True}
        with client.stream("POST", "/v1/completions", json=body) as response:
            events = sse_events(response)
        assert events[-1]["error"]["code"] == "engine_error"
        ok = client.post("/v1/completions", json={"model": "echo", "prompt": "ab", "max_tokens": 3})
        assert ok.json()["choices"][0]["text"] == "aba"


def test_a_request_past_its_timeout_is_504(tmp_path):
    backend = EchoBackend(token_delay_s=0.05)
    with serve(tmp_path, backend, request_timeout_s=1.0, max_tokens_cap=100) as (_server, client):
        slow = client.post(
            "/v1/completions", json={"model": "echo", "prompt": "ab", "max_tokens": 100}
        )
        assert assert_openai_error(slow, 504)["code"] == "timeout"
        assert (
            client.post(
                "/v1/completions", json={"model": "echo", "prompt": "ab", "max_tokens": 2}
            ).status_code
            == 200
        )


# -- what a successful request returns -----------------------------------------------------------
def test_streaming_gives_the_same_text_and_usage_as_not_streaming(shared):
    _server, client = shared
    for path, body in [
        ("/v1/chat/completions", chat_body("héllo wörld", max_tokens=25)),
        ("/v1/completions", {"model": "echo", "prompt": "héllo wörld", "max_tokens": 25}),
    ]:
        whole = client.post(path, json=body).json()
        with client.stream(
            "POST", path, json={**body, "stream": True, "stream_options": {"include_usage": True}}
        ) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = sse_events(r)
        choices = [e["choices"][0] for e in events if e["choices"]]
        if path.endswith("chat/completions"):
            assert choices[0]["delta"]["role"] == "assistant"
            streamed = "".join(c["delta"].get("content") or "" for c in choices)
            expected = whole["choices"][0]["message"]["content"]
        else:
            streamed = "".join(c["text"] for c in choices)
            expected = whole["choices"][0]["text"]
        echo = EchoBackend()
        assert streamed == expected == echo.decode(echo.reply(echo.encode("héllo wörld"), 25))
        assert choices[-1]["finish_reason"] == whole["choices"][0]["finish_reason"] == "length"
        assert (
            events[-1]["usage"]
            == whole["usage"]
            == {"prompt_tokens": 13, "completion_tokens": 25, "total_tokens": 38}
        )


def test_stop_strings_and_end_of_sequence_finish_with_stop(tmp_path):
    with serve(tmp_path, EchoBackend(eos_after=5)) as (_server, client):
        eos = client.post(
            "/v1/completions", json={"model": "echo", "prompt": "abc", "max_tokens": 20}
        ).json()
        assert eos["choices"][0] == {
            "index": 0,
            "text": "abcab",
            "logprobs": None,
            "finish_reason": "stop",
        }
        stop = client.post(
            "/v1/completions",
            json={"model": "echo", "prompt": "abc", "max_tokens": 20, "stop": "ca"},
        )
        assert stop.json()["choices"][0]["text"] == "ab"


def test_metrics_count_requests_tokens_and_members(shared):
    server, client = shared
    client.post(
        "/v1/completions", json={"model": "echo", "prompt": "ab", "max_tokens": 5}
    ).raise_for_status()
    snap = client.get("/metrics", params={"format": "json"}).json()
    assert snap["requests_by_member"]["you"] >= 1 and snap["completion_tokens_total"] >= 5
    assert snap["queue_depth"] == 0 and snap["requests_by_status"]["200"] >= 1
    text = client.get("/metrics").text
    assert "lazymoe_completion_tokens_total" in text and "lazymoe_queue_depth 0" in text
    assert server.api_key not in text


# -- clients that go away, and a server that goes away -------------------------------------------
def test_a_client_killed_mid_stream_stops_its_generation_while_others_are_served(tmp_path):
    backend = EchoBackend(token_delay_s=0.02)
    with serve(tmp_path, backend, max_tokens_cap=500) as (server, client):
        body = {"model": "echo", "prompt": "ab", "max_tokens": 500, "stream": True}
        other = {}
        victim = httpx.Client(
            base_url=server.root_url, headers={"Authorization": f"Bearer {server.api_key}"}
        )
        with victim.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            while not next(lines).startswith("data: "):
                pass
            worker = threading.Thread(
                target=lambda: other.update(
                    r=client.post(
                        "/v1/completions", json={**body, "stream": False, "max_tokens": 4}
                    )
                )
            )
            worker.start()
        victim.close()  # the connection drops mid-stream
        worker.join(20)
        assert other["r"].json()["choices"][0]["text"] == "abab"  # the others are served
        wait_until(lambda: backend.streams_closed == 2)
        assert backend.tokens_generated < 200  # far from the 500 asked: generation stopped
        assert client.get("/metrics", params={"format": "json"}).json()["cancelled_total"] == 1


def test_shutdown_finishes_the_running_request_and_refuses_the_queued_one(tmp_path):
    backend = EchoBackend(token_delay_s=0.02)
    server = EmbeddedServer(
        backend, ServerConfig(port=0, max_batch=1), keys_file=str(tmp_path / "keys.json")
    ).start()
    client = httpx.Client(
        base_url=server.root_url, headers={"Authorization": f"Bearer {server.api_key}"}, timeout=30
    )
    body = {"model": "echo", "prompt": "ab", "max_tokens": 30}
    results = {}
    threads = [
        threading.Thread(
            target=lambda k=k: results.update({k: client.post("/v1/completions", json=body)})
        )
        for k in ("first", "second")
    ]
    threads[0].start()
    wait_until(lambda: backend.streams_open == 1)
    threads[1].start()
    wait_until(lambda: server.app.state.scheduler.queue_depth == 1)
    server.stop()
    for t in threads:
        t.join(20)
    assert results["first"].json()["choices"][0]["text"] == "ab" * 15
    assert assert_openai_error(results["second"], 503)["code"] == "shutting_down"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.root_url}/health", timeout=2)
    client.close()


def wait_until(condition, timeout_s=10.0):
    deadline_s = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline_s, "timed out waiting for the server"
        time.sleep(0.01)
