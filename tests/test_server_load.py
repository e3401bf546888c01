"""64 concurrent streams on one loopback server, a quarter of them dropping mid-stream (issue 21).

Every stream that finishes has its whole text and `[DONE]`; the dropped ones stop generating; the
server is healthy afterwards. The echo model stands in for the engine so it runs in seconds.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from test_server_api import serve, wait_until

from lazymoe.server.fake import EchoBackend

pytestmark = pytest.mark.timeout(60)

N_CLIENTS = 64
MAX_TOKENS = 24


def test_64_streams_with_disconnects_stay_correct(tmp_path):
    backend = EchoBackend(token_delay_s=0.005)
    with serve(tmp_path, backend, max_queue=N_CLIENTS) as (server, client):
        outcomes: dict[int, tuple[str, str, bool]] = {}
        start = threading.Barrier(N_CLIENTS)

        def user(i: int) -> None:
            prompt = f"u{i:02d}-"
            body = {"model": "echo", "prompt": prompt, "max_tokens": MAX_TOKENS, "stream": True}
            start.wait()
            with (
                httpx.Client(
                    base_url=server.root_url,
                    headers={"Authorization": f"Bearer {server.api_key}"},
                    timeout=30,
                ) as mine,
                mine.stream("POST", "/v1/completions", json=body) as response,
            ):
                text, done = [], False
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    text.append(json.loads(line[6:])["choices"][0]["text"])
                    if i % 4 == 0 and len(text) >= 2:
                        break  # this client walks away mid-stream
            outcomes[i] = (prompt, "".join(text), done)

        users = [threading.Thread(target=user, args=(i,)) for i in range(N_CLIENTS)]
        for t in users:
            t.start()
        for t in users:
            t.join(45)
        assert len(outcomes) == N_CLIENTS
        for i, (prompt, text, done) in outcomes.items():
            expected = backend.decode(backend.reply(backend.encode(prompt), MAX_TOKENS))
            if i % 4:
                assert done and text == expected, (i, text)
            else:
                assert expected.startswith(text)
        wait_until(lambda: backend.streams_open == 0 and backend.streams_closed == N_CLIENTS)
        health = httpx.get(f"{server.root_url}/health").json()
        assert health["status"] == "ok" and health["queue_depth"] == 0 and health["in_flight"] == 0
        snap = client.get("/metrics", params={"format": "json"}).json()
        assert snap["requests_by_status"]["200"] >= N_CLIENTS
        assert snap["completion_tokens_total"] < N_CLIENTS * MAX_TOKENS  # the dropped ones stopped
