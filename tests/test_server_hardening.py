"""Adversarial requests against a loopback server (issue 21): each gets the right OpenAI error,
costs a bounded amount of memory and event-loop time, and leaves the server (and, where HTTP allows,
the same keep-alive connection) serving.

Raw sockets and http.client are used where httpx would hide what is tested: chunked uploads,
half-sent requests, and whether the connection stayed open.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time

import httpx
import pytest
from test_server_api import assert_openai_error, chat_body, serve, still_serving

from lazymoe.server.fake import EchoBackend

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with serve(
        tmp_path_factory.mktemp("hardening"),
        max_prompt_tokens=64,
        max_tokens_cap=32,
        header_timeout_s=1.0,
        body_timeout_s=1.0,
    ) as pair:
        yield pair


def port_of(server) -> int:
    return server.config.port


def keep_alive_pair(server, first: tuple[str, str, bytes], headers: dict[str, str]):
    """Send two requests on one HTTP/1.1 connection: (first response, whether it stayed open)."""
    conn = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=10)
    method, path, body = first
    conn.request(method, path, body=body, headers={"Content-Type": "application/json", **headers})
    response = conn.getresponse()
    payload = response.read()
    stayed_open = conn.sock is not None  # http.client drops the socket on `Connection: close`
    conn.request(
        "POST",
        "/v1/completions",
        body=json.dumps({"model": "echo", "prompt": "ok", "max_tokens": 2}),
        headers={"Content-Type": "application/json", **headers},
    )
    second = conn.getresponse()
    assert json.loads(second.read())["choices"][0]["text"] == "ok"
    conn.close()
    return response.status, json.loads(payload), response.headers, stayed_open


def auth(server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"}


def chunked_upload(server, headers: dict[str, str], total_bytes: int, chunk_bytes: int = 65536):
    """POST a chunked body of `total_bytes`, stopping as soon as the server answers.

    Returns (status line, bytes sent). Polling before each chunk means the answer is read before
    the server closes the socket, so it is never lost to a reset.
    """
    sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=10)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\n{head}\r\n".encode()
    )
    sent, chunk = 0, b"[" + b" " * (chunk_bytes - 1)
    try:
        try:
            while sent < total_bytes:
                if select.select([sock], [], [], 0)[0]:
                    break
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
            else:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while this chunk was on its way
        sock.settimeout(10)
        answer = sock.recv(4096)
    finally:
        sock.close()
    return answer.split(b"\r\n", 1)[0].decode(), sent


# -- 1. the body-size limit holds for chunked uploads, and no key means the body is never read ---
def test_a_chunked_body_over_the_limit_is_413(shared):
    server, client = shared
    status, sent = chunked_upload(server, auth(server), total_bytes=64 * 2**20)
    assert " 413 " in status + " "
    # It stopped reading soon after the 4 MiB limit (the rest of what was sent sat in the
    # loopback socket buffers, a few MiB each way).
    assert sent < 32 * 2**20
    still_serving(client)


def test_without_a_key_the_body_is_not_read_before_the_401(shared):
    server, client = shared
    status, sent = chunked_upload(server, {}, total_bytes=48 * 2**20)
    assert " 401 " in status + " "
    assert sent < 4 * 2**20  # refused after the headers, long before the 48 MiB
    still_serving(client)


# -- 2. an empty prompt list is 400, and the keep-alive connection survives errors ----------------
def test_an_empty_prompt_list_is_400_on_a_connection_that_stays_open(shared):
    server, _client = shared
    body = json.dumps({"model": "echo", "prompt": []}).encode()
    status, payload, _headers, stayed_open = keep_alive_pair(
        server, ("POST", "/v1/completions", body), auth(server)
    )
    assert status == 400 and payload["error"]["param"] == "prompt"
    assert stayed_open


class BrokenTokenizer(EchoBackend):
    def encode(self, text: str) -> list[int]:
        if text == "boom":
            raise RuntimeError("a tokenizer bug")
        return super().encode(text)


def test_an_unexpected_500_keeps_the_connection_open(tmp_path):
    with serve(tmp_path, BrokenTokenizer()) as (server, _client):
        body = json.dumps({"model": "echo", "prompt": "boom"}).encode()
        status, payload, _headers, stayed_open = keep_alive_pair(
            server, ("POST", "/v1/completions", body), auth(server)
        )
        assert status == 500 and payload["error"]["type"] == "server_error"
        assert stayed_open


# -- 3. token ids are range-checked ---------------------------------------------------------------
@pytest.mark.parametrize("token_id", [99999, -1, 257])
def test_token_ids_outside_the_vocabulary_are_400_naming_the_range(shared, token_id):
    _server, client = shared
    response = client.post("/v1/completions", json={"model": "echo", "prompt": [5, token_id]})
    error = assert_openai_error(response, 400, "prompt")
    assert str(token_id) in error["message"] and "0..256" in error["message"]
    still_serving(client)


# -- 4. seed ---------------------------------------------------------------------------------------
def test_a_seed_out_of_range_is_400_and_the_largest_allowed_one_works(shared):
    _server, client = shared
    for seed in (2**64, -1):
        response = client.post(
            "/v1/chat/completions", json=chat_body(seed=seed, temperature=0.7, max_tokens=2)
        )
        assert_openai_error(response, 400, "seed")
    ok = client.post(
        "/v1/chat/completions", json=chat_body(seed=2**63 - 1, temperature=0.7, max_tokens=2)
    )
    assert ok.status_code == 200, ok.text


# -- 5. text that is not valid Unicode --------------------------------------------------------------
def test_a_lone_surrogate_in_the_text_is_400(shared):
    _server, client = shared
    raw = b'{"model": "echo", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    response = client.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert "surrogate" in assert_openai_error(response, 400, "messages")["message"]
    raw = b'{"model": "echo", "prompt": "x\\udfffy"}'
    response = client.post(
        "/v1/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert_openai_error(response, 400, "prompt")
    still_serving(client)


# -- 6. a wrong method ------------------------------------------------------------------------------
def test_get_on_a_post_route_is_405_with_allow(shared):
    _server, client = shared
    response = client.get("/v1/chat/completions")
    error = assert_openai_error(response, 405)
    assert error["type"] == "invalid_request_error"
    assert response.headers["allow"] == "POST"


# -- 7. a huge prompt is refused before tokenizing, and tokenizing never blocks the event loop ----
class SlowTokenizer(EchoBackend):
    """Tokenizing takes 1 s per call (a real tokenizer on a few MB), and counts the characters."""

    def __init__(self) -> None:
        super().__init__()
        self.chars_encoded = 0

    def encode(self, text: str) -> list[int]:
        self.chars_encoded += len(text)
        time.sleep(1.0)
        return super().encode(text)


def test_a_huge_prompt_is_413_without_being_tokenized(tmp_path):
    backend = SlowTokenizer()
    with serve(tmp_path, backend, max_prompt_tokens=64) as (_server, client):
        started_s = time.monotonic()
        response = client.post(
            "/v1/completions", json={"model": "echo", "prompt": "x" * (39 * 10**5)}
        )
        assert assert_openai_error(response, 413)["code"] == "context_length_exceeded"
        assert backend.chars_encoded == 0 and time.monotonic() - started_s < 1.0


def test_health_answers_while_a_prompt_is_being_tokenized(tmp_path):
    backend = SlowTokenizer()
    with serve(tmp_path, backend, max_prompt_tokens=64) as (server, client):
        worker = threading.Thread(
            target=client.post,
            args=("/v1/completions",),
            kwargs={"json": {"model": "echo", "prompt": "abc", "max_tokens": 2}},
        )
        worker.start()
        while backend.chars_encoded == 0:
            time.sleep(0.01)
        started_s = time.monotonic()
        assert httpx.get(f"{server.root_url}/health", timeout=5).status_code == 200
        assert time.monotonic() - started_s < 0.5  # not stuck behind the 1 s tokenizer
        worker.join(10)


# -- /v1/models/{id} --------------------------------------------------------------------------------
def test_a_model_can_be_retrieved_by_id(shared):
    _server, client = shared
    card = client.get("/v1/models/echo").json()
    assert card == {"id": "echo", "object": "model", "created": 0, "owned_by": "lazymoe"}
    error = assert_openai_error(client.get("/v1/models/gpt-5"), 404)
    assert error["code"] == "model_not_found"


def test_the_openai_client_retrieves_the_model(shared):
    openai = pytest.importorskip("openai")
    server, _client = shared
    api = openai.OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
    assert api.models.retrieve("echo").id == "echo"


# -- prompt caps never above the model's context -----------------------------------------------------
def test_the_prompt_cap_is_clamped_to_the_models_context(tmp_path):
    with serve(
        tmp_path, EchoBackend(context_tokens=100), max_prompt_tokens=2048, max_tokens_cap=64
    ) as (
        server,
        client,
    ):
        assert server.app.state.config.max_prompt_tokens == 100
        assert any("context" in note for note in server.app.state.notes)
        over = client.post("/v1/completions", json={"model": "echo", "prompt": "x" * 101})
        assert "100" in assert_openai_error(over, 413)["message"]
        too_long = client.post(
            "/v1/completions", json={"model": "echo", "prompt": "x" * 90, "max_tokens": 20}
        )
        assert assert_openai_error(too_long, 400, "max_tokens")["code"] == "context_length_exceeded"
        # Without max_tokens the default shrinks to what fits.
        fits = client.post("/v1/completions", json={"model": "echo", "prompt": "x" * 90})
        assert fits.json()["usage"]["completion_tokens"] == 10


# -- read timeouts ----------------------------------------------------------------------------------
def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing, or None if it still held the socket open."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


def test_half_sent_headers_are_closed_after_the_header_timeout(shared):
    server, client = shared
    with socket.create_connection(("127.0.0.1", port_of(server))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        started_s = time.monotonic()
        assert closed_within(sock, 5.0) is not None
        assert time.monotonic() - started_s < 3.0
    still_serving(client)


def test_a_half_sent_body_is_408_after_the_body_timeout(shared):
    server, client = shared
    with socket.create_connection(("127.0.0.1", port_of(server))) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in auth(server).items())
        sock.sendall(
            f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: 100\r\n{head}\r\n".encode()
            + b'{"model": '
        )
        started_s = time.monotonic()
        answer = closed_within(sock, 5.0)
        assert answer is not None and answer.startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started_s < 3.0
    still_serving(client)
