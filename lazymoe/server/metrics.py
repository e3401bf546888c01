"""What an instructor watches on `GET /metrics`: requests, tokens/s, queue depth, hit rate.

Plain text in the Prometheus exposition format by default (so a real monitoring stack can read it),
or JSON with `?format=json` (what the lab plots). Keys never appear. The admin sees every member's
figures; a member sees the server's totals and only their own figures (`member=` below).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

RATE_WINDOW_S = 10.0  # tokens/s is averaged over the last 10 seconds


class Metrics:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.started_s = clock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (endpoint, HTTP status) -> count
        self.requests_by_member: Counter[str] = Counter()
        self.prompt_tokens_by_member: Counter[str] = Counter()
        self.completion_tokens_by_member: Counter[str] = Counter()
        self.prompt_tokens_total = 0
        self.completion_tokens_total = 0
        self.cancelled_total = 0
        self._token_times: deque[float] = deque()  # one entry per generated token, s
        self._ttft_s: deque[float] = deque(maxlen=256)  # recent times to first token, s
        self.gauges: dict[str, Callable[[], float]] = {}  # name -> reader (queue depth...)
        self.engine_stats: Callable[[], dict[str, Any]] | None = None

    def count_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def count_member(self, member: str) -> None:
        """One generation request admitted for `member`."""
        with self._lock:
            self.requests_by_member[member] += 1

    def count_prompt(self, n_tokens: int, member: str | None = None) -> None:
        with self._lock:
            self.prompt_tokens_total += n_tokens
            if member is not None:
                self.prompt_tokens_by_member[member] += n_tokens

    def count_member_completion(self, member: str, n_tokens: int) -> None:
        """A finished request of `member` generated `n_tokens`."""
        with self._lock:
            self.completion_tokens_by_member[member] += n_tokens

    def count_cancelled(self) -> None:
        with self._lock:
            self.cancelled_total += 1

    def count_tokens(self, n_tokens: int) -> None:
        now_s = self._clock()
        with self._lock:
            self.completion_tokens_total += n_tokens
            self._token_times.extend([now_s] * n_tokens)
            self._trim(now_s)

    def observe_ttft(self, seconds: float) -> None:
        with self._lock:
            self._ttft_s.append(seconds)

    def _trim(self, now_s: float) -> None:
        while self._token_times and self._token_times[0] < now_s - RATE_WINDOW_S:
            self._token_times.popleft()

    def snapshot(self, member: str | None = None) -> dict[str, Any]:
        """Everything as one JSON-able dict; with `member`, only that member's own figures."""
        now_s = self._clock()
        with self._lock:
            self._trim(now_s)
            window_s = min(RATE_WINDOW_S, max(now_s - self.started_s, 1e-9))
            ttft = sorted(self._ttft_s)
            snap: dict[str, Any] = {
                "uptime_s": now_s - self.started_s,
                "requests_total": sum(self.requests.values()),
                "requests_by_status": _by_status(self.requests),
                "requests_by_member": (
                    dict(self.requests_by_member)
                    if member is None
                    else {member: self.requests_by_member[member]}
                ),
                "prompt_tokens_total": self.prompt_tokens_total,
                "completion_tokens_total": self.completion_tokens_total,
                "cancelled_total": self.cancelled_total,
                "tokens_per_s": len(self._token_times) / window_s,
                "ttft_p50_s": ttft[len(ttft) // 2] if ttft else None,
                "ttft_p90_s": ttft[int(len(ttft) * 0.9)] if ttft else None,
            }
            if member is not None:
                snap["member"] = {
                    "name": member,
                    "requests": self.requests_by_member[member],
                    "prompt_tokens": self.prompt_tokens_by_member[member],
                    "completion_tokens": self.completion_tokens_by_member[member],
                }
        for name, read in self.gauges.items():
            snap[name] = read()
        if self.engine_stats is not None:
            try:
                engine = self.engine_stats()
            except Exception as exc:  # metrics must not fail because the engine's stats did
                engine = {"error": str(exc)}
            snap["engine"] = {
                k: v for k, v in engine.items() if isinstance(v, int | float | str | None)
            }
            snap["hit_rate"] = engine.get("hit_rate")
        return snap

    def prometheus(self, member: str | None = None) -> str:
        snap = self.snapshot(member)
        lines = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, Any]]) -> None:
            lines.extend([f"# HELP lazymoe_{name} {help_text}", f"# TYPE lazymoe_{name} {kind}"])
            lines.extend(
                f"lazymoe_{name}{labels} {value}" for labels, value in samples if value is not None
            )

        with self._lock:
            by_endpoint = sorted(self.requests.items())
        metric(
            "requests_total",
            "counter",
            "HTTP requests by endpoint and status.",
            [(f'{{endpoint="{e}",status="{s}"}}', n) for (e, s), n in by_endpoint],
        )
        metric(
            "requests_by_member_total",
            "counter",
            "Requests per member (never keys).",
            [(f'{{member="{m}"}}', n) for m, n in sorted(snap["requests_by_member"].items())],
        )
        for name, kind, help_text in [
            ("prompt_tokens_total", "counter", "Prompt tokens admitted."),
            ("completion_tokens_total", "counter", "Tokens generated."),
            ("cancelled_total", "counter", "Requests whose client went away."),
            ("tokens_per_s", "gauge", f"Generated tokens per second, last {RATE_WINDOW_S:.0f} s."),
            ("ttft_p50_s", "gauge", "Median time to first token, recent requests, s."),
            ("queue_depth", "gauge", "Requests waiting for the engine."),
            ("in_flight", "gauge", "Requests being generated now."),
            ("batch_size", "gauge", "Requests decoding together now (one engine step for all)."),
            ("max_batch", "gauge", "The most requests that decode together (1: one at a time)."),
            ("hit_rate", "gauge", "Expert-cache hit rate reported by the engine."),
        ]:
            metric(name, kind, help_text, [("", snap.get(name))])
        return "\n".join(lines) + "\n"


def _by_status(requests: Counter[tuple[str, int]]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for (_, status), n in requests.items():
        out[str(status)] += n
    return dict(out)
