"""Members on a shared server (issue 21): wrong keys are throttled per address with bounded memory,
`/metrics` details are for the admin, each member can have their own limits from the keys file,
and a request refused with 503 does not use up the member's budget.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import httpx
import pytest
from test_server_api import assert_openai_error, serve, wait_until

from lazymoe.server import auth as auth_module
from lazymoe.server.auth import KeyStore
from lazymoe.server.fake import EchoBackend
from lazymoe.server.throttle import AuthThrottle

pytestmark = pytest.mark.timeout(60)


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def complete(root_url: str, key: str, prompt: str = "ab", max_tokens: int = 2) -> httpx.Response:
    return httpx.post(
        f"{root_url}/v1/completions",
        json={"model": "echo", "prompt": prompt, "max_tokens": max_tokens},
        headers=headers(key),
        timeout=30,
    )


# -- failed keys ------------------------------------------------------------------------------------
def test_a_flood_of_wrong_keys_is_throttled_and_a_valid_key_does_not_wait(tmp_path, monkeypatch):
    hashes = []
    real_scrypt = auth_module._scrypt

    def counting_scrypt(*args, **kwargs):
        hashes.append(threading.get_ident())
        return real_scrypt(*args, **kwargs)

    monkeypatch.setattr(auth_module, "_scrypt", counting_scrypt)
    with serve(tmp_path, auth_failures_per_minute=5) as (server, client):
        client.get("/v1/models").raise_for_status()  # the valid key is verified once, then cached
        hashes.clear()
        statuses: list[int] = []
        start = threading.Barrier(65)

        def wrong(i: int) -> None:
            # http.client, not httpx: 64 httpx clients would spend seconds of this process's CPU
            # on TLS contexts, which is the test's cost, not the server's.
            conn = http.client.HTTPConnection("127.0.0.1", server.config.port, timeout=30)
            start.wait()
            conn.request("GET", "/v1/models", headers=headers(f"lzm-0000{i:04x}.nope"))
            statuses.append(conn.getresponse().status)
            conn.close()

        flood = [threading.Thread(target=wrong, args=(i,)) for i in range(64)]
        for t in flood:
            t.start()
        start.wait()
        started_s = time.monotonic()
        assert client.get("/v1/models").status_code == 200
        waited_s = time.monotonic() - started_s
        assert waited_s < 1.0  # not queued behind 64 hashes of 50 ms (on 2 busy cores)
        for t in flood:
            t.join(30)
        assert len(statuses) == 64 and set(statuses) <= {401, 429}
        assert statuses.count(429) >= 50  # refused without hashing
        assert len(hashes) <= 8  # 5 failures a minute, plus the few already in progress
        assert len({*hashes}) <= 2  # hashed on a small fixed set of threads (bounded memory)
        for _ in range(5):  # the flood used up most of the 5 wrong keys a minute
            throttled = httpx.get(
                f"{server.root_url}/v1/models", headers=headers("lzm-00000001.nope"), timeout=30
            )
            if throttled.status_code == 429:
                break
        error = assert_openai_error(throttled, 429)
        assert "wrong" in error["message"] and int(throttled.headers["retry-after"]) >= 1
        assert client.get("/v1/models").status_code == 200  # a valid key from the same address


def test_the_throttle_table_never_grows_past_its_bound():
    clock = [0.0]
    throttle = AuthThrottle(failures_per_minute=3, max_addresses=100, clock=lambda: clock[0])
    for i in range(10_000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle) <= 100
    for _ in range(3):
        throttle.failed("192.168.0.1")
    assert throttle.retry_after_s("192.168.0.1") > 0
    assert throttle.retry_after_s("192.168.0.2") == 0
    clock[0] += 61
    assert throttle.retry_after_s("192.168.0.1") == 0  # the window slid past the failures


# -- the admin role ---------------------------------------------------------------------------------
def test_a_member_sees_only_their_own_metrics_and_the_admin_sees_all(tmp_path):
    with serve(tmp_path) as (server, admin):
        bob = server.keys.add("bob")
        complete(server.root_url, bob).raise_for_status()
        admin.post(
            "/v1/completions", json={"model": "echo", "prompt": "ab", "max_tokens": 2}
        ).raise_for_status()
        everyone = admin.get("/metrics", params={"format": "json"}).json()
        assert everyone["requests_by_member"] == {"you": 1, "bob": 1}
        mine = httpx.get(
            f"{server.root_url}/metrics", params={"format": "json"}, headers=headers(bob)
        ).json()
        assert mine["requests_by_member"] == {"bob": 1}
        assert mine["member"]["name"] == "bob" and mine["member"]["completion_tokens"] == 2
        text = httpx.get(f"{server.root_url}/metrics", headers=headers(bob)).text
        assert 'member="bob"' in text and 'member="you"' not in text


# -- per-member limits from the keys file ------------------------------------------------------------
def test_each_member_has_their_own_limits_from_the_keys_file(tmp_path):
    with serve(tmp_path, requests_per_minute=100) as (server, client):
        slow = server.keys.add("slow", requests_per_minute=1, tokens_per_day=50)
        complete(server.root_url, slow).raise_for_status()
        over = complete(server.root_url, slow)
        assert "1 requests per minute" in assert_openai_error(over, 429)["message"]
        for _ in range(3):  # the others keep the server's limit
            client.post(
                "/v1/completions", json={"model": "echo", "prompt": "ab", "max_tokens": 2}
            ).raise_for_status()
        daily = server.keys.add("daily", tokens_per_day=10)
        complete(server.root_url, daily, max_tokens=4).raise_for_status()  # 2 + 4 tokens
        over_day = complete(server.root_url, daily, max_tokens=8)
        assert "per day" in assert_openai_error(over_day, 429)["message"]


def test_an_old_keys_file_still_loads_with_the_servers_limits(tmp_path):
    store = KeyStore(tmp_path / "keys.json", create=True)
    key = store.add("alice")
    raw = json.loads(store.path.read_text())
    old_fields = {"member", "key_id", "salt", "hash", "n", "r", "p", "created"}
    raw["keys"] = [{k: v for k, v in r.items() if k in old_fields} for r in raw["keys"]]
    store.path.write_text(json.dumps(raw))
    record = KeyStore(store.path).identify(key)
    assert record is not None and record.member == "alice" and record.role == "member"
    assert record.requests_per_minute is None and record.tokens_per_day is None


def test_bad_limits_in_the_keys_file_are_refused_naming_the_member(tmp_path):
    store = KeyStore(tmp_path / "keys.json", create=True)
    with pytest.raises(ValueError, match="requests_per_minute"):
        store.add("alice", requests_per_minute=0)
    with pytest.raises(ValueError, match="role"):
        store.add("alice", role="root")


# -- 503 is free ----------------------------------------------------------------------------------------
def test_a_request_refused_with_503_does_not_count_against_the_limit(tmp_path):
    backend = EchoBackend(token_delay_s=0.02)
    with serve(tmp_path, backend, max_queue=1, max_batch=1, requests_per_minute=3) as (
        server,
        client,
    ):
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
        assert_openai_error(client.post("/v1/completions", json=body), 503)
        running.join(10)
        queued.join(10)
        third = client.post("/v1/completions", json={**body, "max_tokens": 2})
        assert third.status_code == 200, third.text  # the 503 did not use the third request
