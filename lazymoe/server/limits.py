"""Per-key request and token budgets over a sliding one-minute window (pure bookkeeping).

A request reserves `prompt_tokens + max_tokens` when it is admitted; when it ends, `settle`
replaces the reservation with what it really used. So a key cannot start 50 long generations at
once just because none of them has finished yet.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 60.0


@dataclass(eq=False)
class Reservation:
    key: str
    tokens: int
    entry: list  # the [time s, tokens] entry in the key's window, updated by `settle`


class LimitExceeded(Exception):
    """A key is over one of its budgets; `retry_after_s` says when it will fit again."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimiter:
    """`requests_per_minute` and `tokens_per_minute` for each key, on a sliding 60 s window."""

    def __init__(
        self,
        requests_per_minute: int,
        tokens_per_minute: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._requests: dict[str, deque[float]] = defaultdict(deque)  # arrival times, s
        self._tokens: dict[str, deque[list]] = defaultdict(deque)  # [time s, tokens]

    def _expire(self, key: str, now_s: float) -> None:
        requests, tokens = self._requests[key], self._tokens[key]
        while requests and requests[0] <= now_s - WINDOW_S:
            requests.popleft()
        while tokens and tokens[0][0] <= now_s - WINDOW_S:
            tokens.popleft()

    def admit(self, key: str, tokens: int) -> Reservation:
        """Count one request reserving `tokens`, or raise LimitExceeded (and count nothing)."""
        with self._lock:
            now_s = self._clock()
            self._expire(key, now_s)
            requests, used = self._requests[key], self._tokens[key]
            if len(requests) >= self.requests_per_minute:
                wait_s = requests[0] + WINDOW_S - now_s
                raise LimitExceeded(
                    f"over {self.requests_per_minute} requests per minute for this key: "
                    f"wait {wait_s:.0f} s",
                    wait_s,
                )
            if tokens > self.tokens_per_minute:
                raise LimitExceeded(
                    f"this request needs {tokens} tokens (prompt + max_tokens) but a key may use "
                    f"{self.tokens_per_minute} per minute: ask for fewer max_tokens",
                    WINDOW_S,
                )
            in_window = sum(t for _, t in used)
            if in_window + tokens > self.tokens_per_minute:
                # Wait until enough old entries have left the window.
                free, wait_s = self.tokens_per_minute - in_window, WINDOW_S
                for at_s, t in used:
                    free += t
                    if free >= tokens:
                        wait_s = at_s + WINDOW_S - now_s
                        break
                raise LimitExceeded(
                    f"over {self.tokens_per_minute} tokens per minute for this key "
                    f"({in_window} used in the last minute, {tokens} asked): wait {wait_s:.0f} s",
                    wait_s,
                )
            entry = [now_s, tokens]
            requests.append(now_s)
            used.append(entry)
            return Reservation(key, tokens, entry)

    def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Replace a reservation by the tokens the request really used (never more than reserved)."""
        with self._lock:
            reservation.entry[1] = max(0, min(used_tokens, reservation.tokens))

    def tokens_in_window(self, key: str) -> int:
        with self._lock:
            self._expire(key, self._clock())
            return sum(t for _, t in self._tokens[key])
