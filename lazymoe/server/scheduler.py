"""One worker thread runs generations from a bounded queue, taking turns between keys.

The engine is not thread-safe, so exactly one thread calls it. Requests wait in one FIFO per key;
the worker takes the keys round-robin (alice, bob, alice, bob...), so one member who sends 20
requests does not make everyone else wait behind all 20.

With `max_batch > 1` and a backend that can batch, the worker decodes up to `max_batch` requests
together, one engine step for all of them, requests joining and leaving between steps
(continuous batching: `lazymoe.server.batching`). With `max_batch = 1` it runs one request at a
time, start to end (`_run` below).

Tokens go back to the HTTP handler (on the event loop) through an asyncio.Queue per job, filled
with `loop.call_soon_threadsafe`. The handler cancels a job by setting `job.cancelled`; the worker
checks it after every token (or every step) and stops that job's generation.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from lazymoe.server.backend import Backend, SamplingParams, can_batch
from lazymoe.server.errors import APIError, overloaded

log = logging.getLogger("lazymoe.server")

# Events a job sends to its handler: ("token", id), ("done", finish_reason), ("error", APIError)
Event = tuple[str, Any]


@dataclass(eq=False)
class Job:
    key: str  # the fairness group: the member's name
    prompt_ids: list[int]
    params: SamplingParams
    deadline_s: float  # time.monotonic() by which the last token must be out
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    enqueued_s: float = field(default_factory=time.monotonic)
    started_s: float | None = None
    first_token_s: float | None = None
    n_tokens: int = 0

    def send(self, kind: str, value: Any) -> None:
        """Hand an event to the handler's event loop (thread-safe; a closed loop drops it)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is gone: nobody is listening any more
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()


class FairQueue:
    """Jobs waiting for the engine: a FIFO per key, keys served round-robin. Not thread-safe."""

    def __init__(self) -> None:
        self._per_key: OrderedDict[str, deque[Job]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, job: Job) -> None:
        self._per_key.setdefault(job.key, deque()).append(job)
        self._size += 1

    def pop(self) -> Job | None:
        """The oldest job of the key whose turn it is; that key then goes to the back of the line."""
        if not self._per_key:
            return None
        key, jobs = next(iter(self._per_key.items()))
        job = jobs.popleft()
        del self._per_key[key]
        if jobs:
            self._per_key[key] = jobs  # re-inserted at the end: the next key goes first
        self._size -= 1
        return job

    def drain(self) -> list[Job]:
        jobs = [j for q in self._per_key.values() for j in q]
        self._per_key.clear()
        self._size = 0
        return jobs


class Scheduler:
    """Admits jobs into a bounded FairQueue and runs them on a worker thread: up to `max_batch`
    together when the backend can batch, else one at a time."""

    def __init__(
        self, backend: Backend, max_queue: int, metrics: Any = None, max_batch: int = 1
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: give 1 (one at a time) or more")
        self.backend = backend
        self.max_queue = max_queue
        self.metrics = metrics
        # requests decoding together; 1 when the backend cannot batch
        self.max_batch = max_batch if can_batch(backend) else 1
        self._queue = FairQueue()
        self._cond = threading.Condition()
        self._accepting = True
        self._abort = threading.Event()  # set when the shutdown grace time is over
        self.running: dict[int, Job] = {}  # jobs being generated now (the batch), by handle
        self._thread: threading.Thread | None = None
        # The engine's stats as of the last finished request, read on the worker thread: the
        # engine is not thread-safe, so /metrics never calls it while it generates.
        self.engine_stats: dict[str, Any] = {}

    # -- the handler's side ----------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return len(self.running)

    @property
    def accepting(self) -> bool:
        return self._accepting

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise APIError 503 when the queue is full or the server is stopping."""
        with self._cond:
            if not self._accepting:
                raise overloaded("the server is shutting down: try again later", "shutting_down")
            if len(self._queue) >= self.max_queue:
                raise overloaded(
                    f"the queue is full ({self.max_queue} requests waiting): retry in a moment"
                )
            self._queue.push(job)
            self._cond.notify()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="lazymoe-engine", daemon=True)
            self._thread.start()

    def begin_shutdown(self, grace_s: float) -> None:
        """Refuse new jobs and every queued job (503); the running one may finish within `grace_s`."""
        with self._cond:
            self._accepting = False
            refused = self._queue.drain()
            self._cond.notify_all()
        for job in refused:
            job.send(
                "error", overloaded("the server is shutting down: try again later", "shutting_down")
            )
        timer = threading.Timer(grace_s, self._abort.set)
        timer.daemon = True
        timer.start()

    def stop(self, grace_s: float = 30.0) -> None:
        if self._accepting:
            self.begin_shutdown(grace_s)
        if self._thread is not None:
            self._thread.join(timeout=grace_s + 5.0)

    # -- the worker thread -----------------------------------------------------------------------
    def take(self, n_jobs: int, wait: bool) -> list[Job] | None:
        """Up to `n_jobs` waiting jobs, round-robin by key. With `wait`, block until there is
        one; None once the server stops accepting and nothing is left (the worker may exit)."""
        with self._cond:
            while wait and not len(self._queue):
                if not self._accepting:
                    return None
                self._cond.wait(timeout=1.0)
            jobs = []
            while len(jobs) < n_jobs and (job := self._queue.pop()) is not None:
                jobs.append(job)
            return jobs

    def refresh_stats(self) -> None:
        try:
            self.engine_stats = self.backend.stats()
        except Exception as exc:  # stats must never take the worker down
            self.engine_stats = {"error": f"{type(exc).__name__}: {exc}"}

    def refuse_stale(self, job: Job) -> bool:
        """Answer a job that should not start (cancelled, or out of time in the queue): True."""
        if job.cancelled.is_set():
            job.send("done", "cancelled")
            return True
        if time.monotonic() > job.deadline_s:
            job.send(
                "error",
                APIError(504, "the request timed out while waiting in the queue", code="timeout"),
            )
            return True
        return False

    def deliver(self, job: Job, token_id: int) -> str | APIError | None:
        """Send `job` one new token. Returns why the job is over now, or None to go on:
        "stop" (end of sequence, not sent), "length" (max_tokens), 504 (deadline), 503 (shutdown)."""
        if token_id in self.backend.eos_token_ids:
            return "stop"
        now_s = time.monotonic()
        if job.first_token_s is None:
            job.first_token_s = now_s
            if self.metrics is not None:
                self.metrics.observe_ttft(now_s - job.enqueued_s)
        job.n_tokens += 1
        job.send("token", token_id)
        if self.metrics is not None:
            self.metrics.count_tokens(1)
        if job.n_tokens >= job.params.max_new_tokens:
            return "length"
        if now_s > job.deadline_s:
            return APIError(
                504, f"the request timed out after {job.n_tokens} tokens", code="timeout"
            )
        if self._abort.is_set():
            return overloaded("the server shut down during this request", "shutting_down")
        return None

    @staticmethod
    def answer(job: Job, outcome: str | APIError) -> None:
        if isinstance(outcome, APIError):
            job.send("error", outcome)
        else:
            job.send("done", outcome)

    def _work(self) -> None:
        self.refresh_stats()
        if self.max_batch > 1:
            from lazymoe.server.batching import BatchLoop

            BatchLoop(self).run()
            return
        while (jobs := self.take(1, wait=True)) is not None:
            job = jobs[0]
            if self.refuse_stale(job):
                continue
            self.running[0] = job
            try:
                outcome = self._run(job)
            except Exception as exc:  # the server must outlive a failing generation
                log.exception("generation %s failed", job.job_id)
                outcome = engine_failed(exc)
            finally:
                self.running.clear()
            self.refresh_stats()  # before answering, so /metrics already counts this request
            self.answer(job, outcome)

    def _run(self, job: Job) -> str | APIError:
        """Generate `job`'s tokens; returns the finish reason, or the APIError to answer with."""
        job.started_s = time.monotonic()
        stream = self.backend.stream(job.prompt_ids, job.params)
        reason: str | APIError = "length"
        try:
            for token_id in stream:
                if job.cancelled.is_set():
                    reason = "cancelled"
                    break
                if (outcome := self.deliver(job, token_id)) is not None:
                    reason = outcome
                    break
            else:
                if job.n_tokens < job.params.max_new_tokens:
                    reason = "stop"  # the engine ended on an end-of-sequence token
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # stops the engine's generator: frees its work at once
        return reason


def engine_failed(exc: Exception) -> APIError:
    return APIError(500, f"the engine failed: {type(exc).__name__}: {exc}", code="engine_error")
