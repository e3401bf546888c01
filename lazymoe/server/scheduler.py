"""One worker thread runs generations from a bounded queue, taking turns between keys.

The engine is not thread-safe, so exactly one thread calls it. Requests wait in one FIFO per key;
the worker serves the keys round-robin (alice, bob, alice, bob...), so one member who sends 20
requests does not make everyone else wait behind all 20. Batching several requests into one
forward pass is a later improvement.

Tokens go back to the HTTP handler (on the event loop) through an asyncio.Queue per job, filled
with `loop.call_soon_threadsafe`. The handler cancels a job by setting `job.cancelled`; the worker
checks it after every token and closes the engine's stream.
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

from lazymoe.server.backend import Backend, SamplingParams
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
    """Admits jobs into a bounded FairQueue and runs them one at a time on a worker thread."""

    def __init__(self, backend: Backend, max_queue: int, metrics: Any = None) -> None:
        self.backend = backend
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue = FairQueue()
        self._cond = threading.Condition()
        self._accepting = True
        self._abort = threading.Event()  # set when the shutdown grace time is over
        self._running: Job | None = None
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
        return 1 if self._running is not None else 0

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
    def _next(self) -> Job | None:
        with self._cond:
            while not len(self._queue):
                if not self._accepting:
                    return None
                self._cond.wait(timeout=1.0)
            return self._queue.pop()

    def _refresh_stats(self) -> None:
        try:
            self.engine_stats = self.backend.stats()
        except Exception as exc:  # stats must never take the worker down
            self.engine_stats = {"error": f"{type(exc).__name__}: {exc}"}

    def _work(self) -> None:
        self._refresh_stats()
        while (job := self._next()) is not None:
            if job.cancelled.is_set():
                job.send("done", "cancelled")
                continue
            if time.monotonic() > job.deadline_s:
                job.send(
                    "error",
                    APIError(
                        504, "the request timed out while waiting in the queue", code="timeout"
                    ),
                )
                continue
            self._running = job
            try:
                outcome = self._run(job)
            except Exception as exc:  # the server must outlive a failing generation
                log.exception("generation %s failed", job.job_id)
                outcome = APIError(
                    500, f"the engine failed: {type(exc).__name__}: {exc}", code="engine_error"
                )
            finally:
                self._running = None
            self._refresh_stats()  # before answering, so /metrics already counts this request
            if isinstance(outcome, APIError):
                job.send("error", outcome)
            else:
                job.send("done", outcome)

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
                if token_id in self.backend.eos_token_ids:
                    reason = "stop"
                    break
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
                    break
                if now_s > job.deadline_s:
                    reason = APIError(
                        504, f"the request timed out after {job.n_tokens} tokens", code="timeout"
                    )
                    break
                if self._abort.is_set():
                    reason = overloaded("the server shut down during this request", "shutting_down")
                    break
            else:
                if job.n_tokens < job.params.max_new_tokens:
                    reason = "stop"  # the engine ended on an end-of-sequence token
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # stops the engine's generator: frees its work at once
        return reason
