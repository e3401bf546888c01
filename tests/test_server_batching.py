"""Continuous batching in the server (issue 21, item 2): requests in flight decode together.

The scheduler is driven directly (jobs queued before its worker starts, so who joins which batch
is deterministic) with the echo model, whose batch records each step's size; then over HTTP; then
the real engine on the bundled model, where every request must get exactly its own tokens.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from test_server_api import serve, wait_until
from test_server_engine import client_for, stream_text

from lazymoe.paths import bundled_model_dir
from lazymoe.server.backend import EngineBackend, SamplingParams
from lazymoe.server.config import ServerConfig
from lazymoe.server.embedded import EmbeddedServer
from lazymoe.server.fake import EchoBackend
from lazymoe.server.scheduler import Job, Scheduler

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def job(loop, prompt: str, max_tokens: int, key: str = "you", timeout_s: float = 30.0) -> Job:
    return Job(
        key=key,
        prompt_ids=list(prompt.encode()),
        params=SamplingParams(max_tokens),
        deadline_s=time.monotonic() + timeout_s,
        loop=loop,
    )


async def outcome(job: Job) -> tuple[list[int], str, object]:
    """(tokens, "done" or "error", finish reason or APIError) once the job is answered."""
    tokens = []
    while True:
        kind, value = await asyncio.wait_for(job.events.get(), timeout=30)
        if kind == "token":
            tokens.append(value)
        else:
            return tokens, kind, value


def answers(loop, jobs: list[Job]) -> list[tuple]:
    async def gather():
        return await asyncio.gather(*(outcome(j) for j in jobs))

    return loop.run_until_complete(gather())


def run_queued(loop, backend, jobs: list[Job], max_batch: int) -> list[tuple]:
    """Queue every job, then start the worker; each job's outcome, in order."""
    scheduler = Scheduler(backend, max_queue=64, max_batch=max_batch)
    for j in jobs:
        scheduler.submit(j)
    scheduler.start()
    try:
        return answers(loop, jobs)
    finally:
        scheduler.stop(grace_s=1.0)


# -- the scheduler with the echo model -----------------------------------------------------------
def test_queued_requests_decode_in_one_batch_and_each_gets_its_own_answer(loop):
    prompts = [("abc", 3), ("hello", 5), ("xy", 7), ("12345", 9), ("q", 11)]
    batched = EchoBackend()
    results = run_queued(loop, batched, [job(loop, p, n) for p, n in prompts], max_batch=8)
    for (prompt, n), (tokens, kind, reason) in zip(prompts, results, strict=True):
        assert tokens == batched.reply(list(prompt.encode()), n)
        assert (kind, reason) == ("done", "length")
    # all five join, then leave as they finish: the shortest after 2 steps, the longest after 10
    assert batched.step_sizes == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert batched.streams_open == 0 and batched.streams_closed == 5

    alone = EchoBackend()  # max_batch=1: one at a time through `stream`, no batch at all
    one_by_one = run_queued(loop, alone, [job(loop, p, n) for p, n in prompts], max_batch=1)
    assert one_by_one == results and alone.step_sizes == []


def test_end_of_sequence_finishes_with_stop_and_is_not_sent(loop):
    backend = EchoBackend(eos_after=4)
    (tokens, kind, reason), long = run_queued(
        loop, backend, [job(loop, "abc", 20), job(loop, "xyz", 3)], max_batch=4
    )
    assert tokens == list(b"abca") and (kind, reason) == ("done", "stop")
    assert long == (list(b"xyz"), "done", "length")


def test_admission_takes_turns_between_members(loop):
    backend = EchoBackend()
    alice = [job(loop, f"alice{i}", 4, key="alice") for i in range(6)]
    bob = job(loop, "bob", 4, key="bob")
    run_queued(loop, backend, [*alice, bob], max_batch=2)
    joined = [bytes(p).decode() for p in backend.prefills]
    # bob queued last, behind six of alice's, yet his request is in the first batch
    assert joined[:2] == ["alice0", "bob"]
    assert joined[2:] == [f"alice{i}" for i in range(1, 6)]


def test_a_failing_prefill_answers_that_request_only(loop):
    backend = EchoBackend(bad_prompt="boom")
    ok1, bad, ok2 = run_queued(
        loop, backend, [job(loop, "ok1", 6), job(loop, "boom", 6), job(loop, "ok2", 6)], 4
    )
    assert bad[0] == [] and bad[1] == "error"
    assert bad[2].status == 500 and "refuses the prompt" in bad[2].message
    assert ok1 == (list(b"ok1ok1"), "done", "length") and ok2 == (list(b"ok2ok2"), "done", "length")
    assert backend.step_sizes[0] == 2 and backend.streams_open == 0


class GroupBackend(EchoBackend):
    """The echo model whose batch prefills waiting prompts together (`add_many`), as the
    engine's does: each call's size written down."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.groups: list[int] = []

    def batch(self):
        batch, groups = super().batch(), self.groups

        def add_many(prompts, params):
            groups.append(len(prompts))
            out = []
            for prompt_ids, p in zip(prompts, params, strict=True):
                try:
                    out.append(batch.add(prompt_ids, p))
                except Exception as exc:  # as the engine's batch returns it
                    out.append(exc)
            return out

        batch.add_many = add_many
        return batch


def test_waiting_requests_are_prefilled_together_and_a_bad_one_fails_alone(loop):
    """Everyone waiting joins in one `add_many` (the engine: one padded pass), so nobody's first
    token waits for the prefills of all the others; a prompt the batch refuses gets its 500,
    the rest decode as before."""
    backend = GroupBackend(bad_prompt="boom")
    prompts = [("abc", 3), ("boom", 4), ("hello", 5), ("xy", 7)]
    results = run_queued(loop, backend, [job(loop, p, n) for p, n in prompts], max_batch=8)
    assert backend.groups == [4]  # one call for the four waiting
    for (prompt, n), (tokens, kind, reason) in zip(prompts, results, strict=True):
        if prompt == "boom":
            assert tokens == [] and kind == "error" and reason.status == 500
        else:
            assert tokens == backend.reply(list(prompt.encode()), n)
            assert (kind, reason) == ("done", "length")
    assert backend.step_sizes[0] == 3 and backend.streams_open == 0


def test_a_failing_step_answers_500_to_the_batch_and_a_fresh_batch_serves_the_next(loop):
    backend = EchoBackend(fail_after=3, token_delay_s=0.01)
    scheduler = Scheduler(backend, max_queue=8, max_batch=4)
    first = [job(loop, "ab", 8), job(loop, "cd", 8)]
    for j in first:
        scheduler.submit(j)
    scheduler.start()
    try:
        failed = answers(loop, first)
        for tokens, kind, error in failed:
            assert len(tokens) == 3 and kind == "error"
            assert error.status == 500 and error.code == "engine_error"
        assert backend.streams_open == 0 and scheduler.in_flight == 0
        after = job(loop, "ef", 3)
        scheduler.submit(after)
        assert loop.run_until_complete(outcome(after)) == (list(b"efe"), "done", "length")
    finally:
        scheduler.stop(grace_s=1.0)


def test_a_cancelled_request_leaves_the_batch_at_once_and_frees_its_slot(loop):
    backend = EchoBackend(token_delay_s=0.01)
    scheduler = Scheduler(backend, max_queue=8, max_batch=2)
    leaver, stayer, waiting = job(loop, "ab", 400), job(loop, "cd", 400), job(loop, "ef", 5)
    for j in (leaver, stayer, waiting):
        scheduler.submit(j)
    scheduler.start()

    async def scenario():
        for _ in range(3):  # the leaver's first three tokens, then its client goes away
            assert (await leaver.events.get())[0] == "token"
        leaver.cancel()
        while (event := await leaver.events.get())[0] == "token":
            pass
        assert event == ("done", "cancelled")
        return await outcome(waiting)

    try:
        tokens, kind, reason = loop.run_until_complete(scenario())
        assert (bytes(tokens), kind, reason) == (b"efefe", "done", "length")
        assert stayer.n_tokens < 400 and scheduler.in_flight == 1  # it took the leaver's slot
        assert backend.streams_closed == 2  # the leaver's sequence and the waiting one's
        assert max(backend.step_sizes) == 2
        stayer.cancel()
    finally:
        scheduler.stop(grace_s=1.0)
    assert backend.tokens_generated < 200


def test_a_request_past_its_deadline_gets_504_with_its_tokens_so_far(loop):
    backend = EchoBackend(token_delay_s=0.02)
    late = job(loop, "ab", 200, timeout_s=0.3)
    on_time = job(loop, "cd", 10)
    (late_tokens, kind, error), fine = run_queued(loop, backend, [late, on_time], max_batch=4)
    assert kind == "error" and error.status == 504 and error.code == "timeout"
    assert 0 < len(late_tokens) < 200 and f"after {len(late_tokens)} tokens" in error.message
    assert fine == (list(b"cdcdcdcdcd"), "done", "length")
    assert backend.streams_open == 0


def test_shutdown_grace_over_answers_the_batch_503(loop):
    backend = EchoBackend(token_delay_s=0.01)
    scheduler = Scheduler(backend, max_queue=8, max_batch=4)
    jobs = [job(loop, "ab", 400), job(loop, "cd", 400)]
    for j in jobs:
        scheduler.submit(j)
    scheduler.start()
    wait_until(lambda: scheduler.in_flight == 2)
    scheduler.begin_shutdown(grace_s=0.1)
    for tokens, kind, error in answers(loop, jobs):
        assert kind == "error" and error.status == 503 and 0 < len(tokens) < 400
    scheduler.stop(grace_s=1.0)
    assert backend.streams_open == 0


def test_a_backend_without_batch_is_served_one_at_a_time():
    class NoBatch(EchoBackend):
        batch = None  # e.g. an engine without continuous batching

    assert Scheduler(NoBatch(), max_queue=8, max_batch=8).max_batch == 1
    assert Scheduler(EchoBackend(), max_queue=8, max_batch=8).max_batch == 8
    with pytest.raises(ValueError, match="max_batch"):
        ServerConfig(max_batch=0)


# -- over HTTP -----------------------------------------------------------------------------------
N_USERS = 6


def test_concurrent_http_requests_share_one_batch_and_get_their_single_answers(tmp_path):
    backend = EchoBackend(token_delay_s=0.02)
    with serve(tmp_path, backend, max_batch=8) as (server, client):
        start, done = threading.Barrier(N_USERS), threading.Event()
        batch_sizes, max_batches = [], set()

        def user(i: int) -> str:
            body = {"model": "echo", "prompt": f"user{i}:", "max_tokens": 40}
            start.wait()
            return client.post("/v1/completions", json=body).json()["choices"][0]["text"]

        def watch() -> None:  # what an instructor sees on /health meanwhile
            while not done.is_set():
                health = httpx.get(f"{server.root_url}/health").json()
                batch_sizes.append(health["batch_size"])
                max_batches.add(health["max_batch"])
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        with ThreadPoolExecutor(N_USERS) as pool:
            texts = list(pool.map(user, range(N_USERS)))
        done.set()
        watcher.join(10)
        for i, text in enumerate(texts):
            prompt = backend.encode(f"user{i}:")
            assert text == backend.decode(backend.reply(prompt, 40))
        assert max(backend.step_sizes) == N_USERS  # all of them in one step
        assert max_batches == {8} and max(batch_sizes) >= 2
        snap = client.get("/metrics", params={"format": "json"}).json()
        assert snap["max_batch"] == 8 and snap["batch_size"] == 0 and snap["in_flight"] == 0
        assert "lazymoe_max_batch 8" in client.get("/metrics").text


def test_max_batch_1_serves_one_request_at_a_time_as_before(tmp_path):
    backend = EchoBackend(token_delay_s=0.01)
    with serve(tmp_path, backend, max_batch=1, max_queue=8) as (server, client):
        body = {"model": "echo", "prompt": "ab", "max_tokens": 10}
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(client.post, "/v1/completions", json=body) for _ in range(3)]
            scheduler, in_flight = server.app.state.scheduler, []

            def one_runs_while_others_wait() -> bool:  # (between two requests none runs)
                in_flight.append(scheduler.in_flight)
                return scheduler.queue_depth > 0 and in_flight[-1] == 1

            wait_until(one_runs_while_others_wait)
            texts = [f.result(timeout=30).json()["choices"][0]["text"] for f in futures]
        assert texts == ["ab" * 5] * 3 and backend.step_sizes == []
        assert max(in_flight) == 1  # never two at once
        assert httpx.get(f"{server.root_url}/health").json()["max_batch"] == 1


# -- the real engine -----------------------------------------------------------------------------
PROMPTS = [
    "def fibonacci(n):",
    "import os\nimport sys\n",
    "class Stack:\n    def __init__(self):",
    "# read a CSV file and sum a column\n",
    "for i in range(10):",
]


class RecordingBackend(EngineBackend):
    """The engine backend, with the size of every batched step written down."""

    step_sizes: list[int]

    def batch(self):
        inner, sizes = super().batch(), self.step_sizes

        class Recorded:
            def __getattr__(self, name):
                return getattr(inner, name)

            def __len__(self):
                return len(inner)

            def step(self):
                sizes.append(len(inner))
                return inner.step()

        return Recorded()


@pytest.mark.skipif(
    not (bundled_model_dir() / "config.json").exists(),
    reason="the bundled model is not built (`make data`)",
)
def test_the_real_engine_batched_over_http_gives_each_request_its_own_tokens(tmp_path):
    from lazymoe.engine import Engine

    expert_nbytes = Engine.from_pretrained(bundled_model_dir(), device="cpu").expert_nbytes
    budget = 12 * expert_nbytes  # room for 12 of the 64 experts: it fetches the others
    backend = RecordingBackend.from_model_path(
        bundled_model_dir(), device="cpu", vram_budget=budget
    )
    backend.step_sizes = []
    lengths = [24, 32, 16, 28, 20]
    alone = []  # each prompt served alone, straight from the engine: the reference
    for prompt, n in zip(PROMPTS, lengths, strict=True):
        ids = list(backend.stream(backend.encode(prompt), SamplingParams(n)))
        ids = ids[:-1] if ids and ids[-1] in backend.eos_token_ids else ids
        alone.append((backend.decode(ids), len(ids)))
    misses_before = backend.stats()["misses"]
    config = ServerConfig(port=0, max_batch=8)
    with EmbeddedServer(backend, config, keys_file=str(tmp_path / "keys.json")) as server:
        start = threading.Barrier(len(PROMPTS))

        def user(i: int) -> tuple[str, dict]:
            body = {"model": backend.model_id, "prompt": PROMPTS[i], "max_tokens": lengths[i],
                    "temperature": 0}  # fmt: skip
            with client_for(server) as client:
                start.wait()
                return stream_text(client, body)

        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            results = list(pool.map(user, range(len(PROMPTS))))
    for i, ((text, usage), (want, n_tokens)) in enumerate(zip(results, alone, strict=True)):
        assert text == want, f"request {i} got other tokens batched than alone"
        assert usage["completion_tokens"] == n_tokens
    assert max(backend.step_sizes) >= 2, backend.step_sizes  # they really decoded together
    assert backend.stats()["misses"] > misses_before  # a budget that makes it fetch experts


@pytest.mark.skipif(
    not (bundled_model_dir() / "config.json").exists(),
    reason="the bundled model is not built (`make data`)",
)
def test_a_lone_request_decodes_on_the_single_path_until_others_join_over_http(tmp_path):
    """One request alone for a while (the engine's single-sequence path), then two more join (it
    moves into the batch between two tokens, the newcomers do not wait for it to end), then they
    leave: each gets its tokens alone, and /health counts the steps of each path."""
    backend = EngineBackend.from_model_path(bundled_model_dir(), device="cpu", decode="segments")
    lengths = [48, 12, 16]
    alone = []
    for prompt, n in zip(PROMPTS, lengths, strict=False):
        ids = list(backend.stream(backend.encode(prompt), SamplingParams(n)))
        ids = ids[:-1] if ids and ids[-1] in backend.eos_token_ids else ids
        alone.append((backend.decode(ids), len(ids)))
    assert all(n == want for (_, n), want in zip(alone, lengths, strict=True))  # no early stop
    backend.decode_steps.update(single=0, batched=0)  # count the server's steps only
    config = ServerConfig(port=0, max_batch=8)
    with EmbeddedServer(backend, config, keys_file=str(tmp_path / "keys.json")) as server:
        scheduler = server.app.state.scheduler

        def user(i: int) -> tuple[str, dict]:
            body = {"model": backend.model_id, "prompt": PROMPTS[i], "max_tokens": lengths[i],
                    "temperature": 0}  # fmt: skip
            with client_for(server) as client:
                return stream_text(client, body)

        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(user, 0)
            wait_until(lambda: any(j.n_tokens >= 6 for j in list(scheduler.running.values())))
            health = httpx.get(f"{server.root_url}/health").json()
            assert health["decode_steps"]["single"] >= 5 and health["decode_steps"]["batched"] == 0
            others = [pool.submit(user, i) for i in (1, 2)]
            results = [first.result(), *(f.result() for f in others)]
        health = httpx.get(f"{server.root_url}/health").json()
        with client_for(server) as client:
            snap = client.get("/metrics", params={"format": "json"}).json()
    for i, ((text, usage), (want, n_tokens)) in enumerate(zip(results, alone, strict=True)):
        assert text == want, f"request {i} got other tokens than alone"
        assert usage["completion_tokens"] == n_tokens
    steps = health["decode_steps"]
    # every token after each request's first is one step of one path; a batched step serves 2-3
    n_steps = sum(n - 1 for n in lengths)
    assert steps["batched"] >= 1 and steps["single"] >= 6
    alone_steps, together_steps = steps["single"], steps["batched"]
    assert 2 * together_steps + alone_steps <= n_steps <= 3 * together_steps + alone_steps
    assert (snap["decode_steps_single"], snap["decode_steps_batched"]) == (
        steps["single"], steps["batched"])  # fmt: skip


def test_ttft_percentiles_of_a_load_on_a_hand_computed_case():
    from lazymoe.server.loadtest import LoadResult, StreamTiming

    ttfts = [0.1 * (i + 1) for i in range(20)]  # 0.1 .. 2.0 s, one user each
    load = LoadResult(20, [StreamTiming(0.0, [t], t, 1, "x") for t in reversed(ttfts)], 2.0)
    assert load.ttft_s() == pytest.approx(1.05)  # median of an even count: the middle two
    assert load.ttft_s("p95") == pytest.approx(1.9)  # nearest rank: the 19th of 20
    assert load.ttft_s("max") == pytest.approx(2.0)
    with pytest.raises(ValueError, match="p95"):
        load.ttft_s("p99")
