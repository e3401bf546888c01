"""Continuous batching: the worker thread decodes every request in flight with one engine step.

One loop, on the scheduler's worker thread (the only thread that touches the engine):

    admit   waiting jobs join, taken round-robin by member, until `max_batch` are live; their
            prompts are prefilled together (one pass, `add_many`; grouped by length) and each
            first token sent at once
    step    one decode step for all live jobs: a new token each, the union of their experts
            fetched once per layer (that is the saving: one fetch serves every job that routes
            to the expert)
    retire  jobs that are over leave the batch at once, which frees their KV cache:
            end of sequence -> "stop", max_tokens -> "length", client gone -> "cancelled",
            past the deadline -> 504 with the tokens so far, shutdown grace over -> 503

Between two steps new jobs take the free slots, so nobody waits for a whole answer of someone
else. Per user, a step of 8 jobs is slower than a step of 1; all together, many more tokens come
out per second.

A job alone in the batch is not slowed down by batching: the engine's batch decodes one live
sequence on the engine's single-sequence path (the CUDA-graph decoder on a GPU, twice the eager
loop's speed there), and moves it into the batched loop between two tokens when a second job is
admitted (`lazymoe.engine.batch`); its tokens are the same either way. /health's `decode_steps`
counts the steps of each path ("single", "batched").

A prefill that fails answers that job only (500); a step that fails answers every job in the
batch (500) and the next job starts a fresh batch: the server stays up.
"""

from __future__ import annotations

import logging
import time

from lazymoe.server.backend import BackendBatch
from lazymoe.server.errors import APIError
from lazymoe.server.scheduler import Job, Scheduler, engine_failed

log = logging.getLogger("lazymoe.server")

Outcome = str | APIError  # a finish reason ("stop", "length", "cancelled") or the error to answer


class BatchLoop:
    """Runs the scheduler's jobs continuously batched until the server stops and all are done."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.batch: BackendBatch | None = None  # made at the first job; fresh after a failed step
        self.live = scheduler.running  # handle -> job; /health and /metrics read its size
        self._over: list[tuple[Job, Outcome]] = []  # retired since the last answers

    def run(self) -> None:
        s = self.scheduler
        while True:
            jobs = s.take(s.max_batch - len(self.live), wait=not self.live)
            if jobs is None:
                return  # shutting down, nothing queued, nothing live
            self._admit(jobs)
            for handle, job in list(self.live.items()):
                if job.cancelled.is_set():  # the client went away: free the slot before the step
                    self._retire(handle, "cancelled")
            if self.live:
                self._step()
            self._answer()

    def _admit(self, jobs: list[Job]) -> None:
        """Prefill the jobs and send each its first token: together in one pass where the batch
        can (`add_many`), else one after another. A job cancelled or past its deadline by the
        time its prefill would start is answered so instead (`refuse_stale`)."""
        s = self.scheduler
        try:
            if self.batch is None:
                self.batch = s.backend.batch()
        except Exception as exc:  # no batch at all: every job gets the error
            log.exception("the engine's batch could not be made")
            self._over.extend((job, engine_failed(exc)) for job in jobs if not s.refuse_stale(job))
            return
        if len(jobs) > 1 and callable(getattr(self.batch, "add_many", None)):
            jobs = [job for job in jobs if not s.refuse_stale(job)]
            for job in jobs:
                job.started_s = time.monotonic()
            try:
                results = self.batch.add_many([j.prompt_ids for j in jobs], [j.params for j in jobs])
            except Exception as exc:  # the batch refused them all
                results = [exc] * len(jobs)
            for job, result in zip(jobs, results, strict=True):
                self._joined(job, result)
            self._answer()
            return
        for job in jobs:
            if s.refuse_stale(job):  # checked just before its turn: others prefill meanwhile
                continue
            job.started_s = time.monotonic()
            try:
                result = self.batch.add(job.prompt_ids, job.params)
            except Exception as exc:  # this job's prefill failed: answer it, the others go on
                result = exc
            self._joined(job, result)
            self._answer()  # a one-token answer goes out before the next job's prefill

    def _joined(self, job: Job, result: tuple[int, int] | Exception) -> None:
        """A job's prefill done: live with its first token sent, or answered with the error."""
        if isinstance(result, Exception):
            log.error("prefill of %s failed", job.job_id, exc_info=result)
            self._over.append((job, engine_failed(result)))
            return
        handle, first = result
        self.live[handle] = job
        self._take(handle, first)

    def _step(self) -> None:
        assert self.batch is not None
        try:
            new = self.batch.step()
        except Exception as exc:  # every job in the batch fails; the server carries on
            log.exception("a batched step failed: %d requests get 500", len(self.live))
            error = engine_failed(exc)
            for handle in list(self.live):
                self._retire(handle, error)
            self.batch = None  # what comes next starts a fresh batch
            return
        for handle in list(self.live):
            if handle in new:
                self._take(handle, new[handle])
            elif self.batch.finished(handle):
                self._retire(handle, "stop")
            else:
                missing = "the engine's step made no token for this request"
                self._retire(handle, APIError(500, missing, code="engine_error"))

    def _take(self, handle: int, token_id: int) -> None:
        """One new token of a live job: send it, and retire the job if it is over."""
        job = self.live[handle]
        outcome = self.scheduler.deliver(job, token_id)
        if outcome is None and self.batch is not None and self.batch.finished(handle):
            outcome = "stop"  # the engine ended it (a stop id of its own)
        if outcome is not None:
            self._retire(handle, outcome)

    def _retire(self, handle: int, outcome: Outcome) -> None:
        job = self.live.pop(handle)
        if self.batch is not None:
            try:
                self.batch.remove(handle)  # frees its KV cache now
            except Exception:  # a broken batch must not keep the answer from going out
                log.exception("removing %s from the batch failed", job.job_id)
        self._over.append((job, outcome))

    def _answer(self) -> None:
        """Answer the retired jobs, after refreshing the engine's stats (so /metrics counts them)."""
        if not self._over:
            return
        self.scheduler.refresh_stats()
        over, self._over = self._over, []
        for job, outcome in over:
            self.scheduler.answer(job, outcome)
