"""The server's bookkeeping, without HTTP: keys, budgets, the fair queue, text streaming, config."""

from __future__ import annotations

import asyncio
import json
import stat

import pytest

from lazymoe.server.auth import KeyFileError, KeyStore, bearer_key
from lazymoe.server.backend import SamplingParams
from lazymoe.server.config import ServerConfig
from lazymoe.server.detok import TextStream
from lazymoe.server.fake import EchoBackend
from lazymoe.server.limits import LimitExceeded, RateLimiter
from lazymoe.server.scheduler import FairQueue, Job


# -- keys ----------------------------------------------------------------------------------------
def test_a_new_key_verifies_as_its_member_and_the_file_holds_only_a_hash(tmp_path):
    store = KeyStore(tmp_path / "keys.json", create=True)
    key = store.add("alice")
    assert store.verify(key) == "alice"
    text = (tmp_path / "keys.json").read_text()
    secret = key.split(".", 1)[1]
    assert secret not in text and key not in text
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600


def test_wrong_missing_or_malformed_keys_are_refused(tmp_path):
    store = KeyStore(tmp_path / "keys.json", create=True)
    key = store.add("alice")
    key_id, secret = key.split(".", 1)
    wrong = secret[:-1] + ("y" if secret.endswith("x") else "x")  # (1 key in 64 ends in x)
    assert store.verify(f"{key_id}.{wrong}") is None  # right member, wrong secret
    assert store.verify("lzm-00000000.whatever") is None  # unknown key id
    assert store.verify("not-a-key") is None
    assert store.verify("") is None and store.verify(None) is None


def test_each_member_gets_their_own_key_with_its_own_salt(tmp_path):
    store = KeyStore(tmp_path / "keys.json", create=True)
    a, b = store.add("alice"), store.add("bob")
    assert (store.verify(a), store.verify(b)) == ("alice", "bob")
    records = json.loads((tmp_path / "keys.json").read_text())["keys"]
    assert len({r["salt"] for r in records}) == 2


def test_a_revoked_key_stops_working_even_after_it_was_cached(tmp_path):
    store = KeyStore(tmp_path / "keys.json", create=True)
    key = store.add("alice")
    assert store.verify(key) == "alice"
    assert store.revoke("alice") == 1
    assert store.verify(key) is None


def test_keys_added_by_another_process_are_picked_up(tmp_path):
    server_side = KeyStore(tmp_path / "keys.json", create=True)
    assert server_side.members() == []
    key = KeyStore(tmp_path / "keys.json").add("carol")  # e.g. `lazymoe serve --add-key carol`
    assert server_side.verify(key) == "carol"


def test_a_missing_or_broken_keys_file_says_how_to_fix_it(tmp_path):
    with pytest.raises(KeyFileError, match="--add-key"):
        KeyStore(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(KeyFileError, match="not a lazymoe keys file"):
        KeyStore(tmp_path / "bad.json")


def test_member_names_are_checked(tmp_path):
    with pytest.raises(ValueError, match="member name"):
        KeyStore(tmp_path / "keys.json", create=True).add("bad name with spaces")


def test_bearer_header_parsing():
    assert bearer_key("Bearer abc") == "abc"
    assert bearer_key("bearer abc") == "abc"
    assert bearer_key("Basic abc") is None
    assert bearer_key("Bearer ") is None
    assert bearer_key(None) is None


# -- per-key budgets -----------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_requests_per_minute_is_per_key_and_slides():
    clock = Clock()
    limiter = RateLimiter(requests_per_minute=2, tokens_per_minute=10_000, clock=clock)
    limiter.admit("alice", 1)
    limiter.admit("alice", 1)
    with pytest.raises(LimitExceeded, match="2 requests per minute") as info:
        limiter.admit("alice", 1)
    assert 0 < info.value.retry_after_s <= 60
    limiter.admit("bob", 1)  # another key has its own budget
    clock.now_s += 60.1
    limiter.admit("alice", 1)  # the window has moved on


def test_tokens_per_minute_reserves_up_front_and_settles_to_what_was_used():
    clock = Clock()
    limiter = RateLimiter(requests_per_minute=100, tokens_per_minute=100, clock=clock)
    first = limiter.admit("alice", 60)  # prompt + max_tokens
    with pytest.raises(LimitExceeded, match="tokens per minute"):
        limiter.admit("alice", 60)
    limiter.settle(first, 20)  # it stopped early: 20 tokens really used
    assert limiter.tokens_in_window("alice") == 20
    limiter.admit("alice", 60)
    with pytest.raises(LimitExceeded, match="ask for fewer max_tokens"):
        limiter.admit("bob", 101)  # can never fit


def test_a_refused_request_costs_nothing():
    limiter = RateLimiter(requests_per_minute=1, tokens_per_minute=10, clock=Clock())
    with pytest.raises(LimitExceeded):
        limiter.admit("alice", 11)
    limiter.admit("alice", 10)  # the refused one did not use the single request


# -- the fair queue ------------------------------------------------------------------------------
def _job(key: str, tag: int) -> Job:
    loop = asyncio.new_event_loop()
    loop.close()
    return Job(key=key, prompt_ids=[tag], params=SamplingParams(1), deadline_s=0.0, loop=loop)


def test_the_queue_takes_turns_between_keys_and_keeps_each_keys_order():
    queue = FairQueue()
    for tag in range(4):
        queue.push(_job("alice", tag))
    queue.push(_job("bob", 10))
    queue.push(_job("carol", 20))
    order = []
    while (job := queue.pop()) is not None:
        order.append((job.key, job.prompt_ids[0]))
    assert order == [
        ("alice", 0),
        ("bob", 10),
        ("carol", 20),
        ("alice", 1),
        ("alice", 2),
        ("alice", 3),
    ]
    assert len(queue) == 0


# -- text streaming ------------------------------------------------------------------------------
def _stream(text: str, stop=()) -> tuple[list[str], TextStream]:
    backend = EchoBackend()
    ts = TextStream(backend.decode, stop)
    pieces = [ts.push(t) for t in backend.encode(text)]
    pieces.append(ts.finish())
    return pieces, ts


def test_pieces_add_up_to_the_decoded_text_and_never_split_a_character():
    text = "naïve café → 東京 ok"
    pieces, ts = _stream(text)
    assert "".join(pieces) == text == ts.text
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces  # the first bytes of a multi-byte character were held back


def test_a_stop_string_ends_the_text_before_it_even_across_tokens():
    pieces, ts = _stream("abc STOP def", stop=["STOP"])
    assert "".join(pieces) == "abc " and ts.stopped
    pieces, ts = _stream("abc STO def", stop=["STOP"])  # a near miss is released in full
    assert "".join(pieces) == "abc STO def" and not ts.stopped


# -- config --------------------------------------------------------------------------------------
def test_config_refuses_an_open_port_without_keys_and_nonsense_limits(tmp_path):
    with pytest.raises(ValueError, match="no keys file"):
        ServerConfig(host="0.0.0.0")
    ServerConfig(host="0.0.0.0", keys_file=tmp_path / "keys.json")  # fine with keys
    with pytest.raises(ValueError, match="max_queue"):
        ServerConfig(max_queue=0)
    with pytest.raises(ValueError, match="port"):
        ServerConfig(port=70000)
