"""Per-key request and token budgets over a sliding minute and a sliding day (pure bookkeeping).

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
DAY_S = 86_400.0
DAY_BUCKET_S = 60.0  # the day's tokens are kept per minute: at most 1440 entries a key


@dataclass(frozen=True)
class Budget:
    """One member's limits (the server's, or their own from the keys file)."""

    requests_per_minute: int
    tokens_per_minute: int
    tokens_per_day: int | None = None  # None: no daily limit


@dataclass(eq=False)
class Reservation:
    key: str
    tokens: int
    entry: list  # the [time s, tokens] entry in the key's minute window, updated by `settle`
    day_entry: list  # the [minute start s, tokens] bucket of the key's day window
    request_s: float  # when it was admitted (its entry in the requests window)


class LimitExceeded(Exception):
    """A key is over one of its budgets; `retry_after_s` says when it will fit again."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimiter:
    """Requests and tokens per key per minute on a sliding 60 s window, and tokens per day.

    The server's limits apply unless `admit` is given the member's own `Budget`.
    """

    def __init__(
        self,
        requests_per_minute: int,
        tokens_per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        tokens_per_day: int | None = None,
    ) -> None:
        self.default = Budget(requests_per_minute, tokens_per_minute, tokens_per_day)
        self._clock = clock
        self._lock = threading.Lock()
        self._requests: dict[str, deque[float]] = defaultdict(deque)  # arrival times, s
        self._tokens: dict[str, deque[list]] = defaultdict(deque)  # [time s, tokens]
        self._day: dict[str, deque[list]] = defaultdict(deque)  # [minute start s, tokens]

    @property
    def requests_per_minute(self) -> int:
        return self.default.requests_per_minute

    @property
    def tokens_per_minute(self) -> int:
        return self.default.tokens_per_minute

    def _expire(self, key: str, now_s: float) -> None:
        requests, tokens, day = self._requests[key], self._tokens[key], self._day[key]
        while requests and requests[0] <= now_s - WINDOW_S:
            requests.popleft()
        while tokens and tokens[0][0] <= now_s - WINDOW_S:
            tokens.popleft()
        while day and day[0][0] <= now_s - DAY_S:
            day.popleft()

    def admit(self, key: str, tokens: int, budget: Budget | None = None) -> Reservation:
        """Count one request reserving `tokens`, or raise LimitExceeded (and count nothing)."""
        b = budget or self.default
        with self._lock:
            now_s = self._clock()
            self._expire(key, now_s)
            requests, used, day = self._requests[key], self._tokens[key], self._day[key]
            if len(requests) >= b.requests_per_minute:
                wait_s = requests[0] + WINDOW_S - now_s
                raise LimitExceeded(
                    f"over {b.requests_per_minute} requests per minute for this key: "
                    f"wait {wait_s:.0f} s",
                    wait_s,
                )
            if tokens > b.tokens_per_minute:
                raise LimitExceeded(
                    f"this request needs {tokens} tokens (prompt + max_tokens) but a key may use "
                    f"{b.tokens_per_minute} per minute: ask for fewer max_tokens",
                    WINDOW_S,
                )
            in_window = sum(t for _, t in used)
            if in_window + tokens > b.tokens_per_minute:
                wait_s = _wait_until_free(
                    used, b.tokens_per_minute - in_window, tokens, now_s, WINDOW_S
                )
                raise LimitExceeded(
                    f"over {b.tokens_per_minute} tokens per minute for this key "
                    f"({in_window} used in the last minute, {tokens} asked): wait {wait_s:.0f} s",
                    wait_s,
                )
            today = sum(t for _, t in day)
            if b.tokens_per_day is not None and today + tokens > b.tokens_per_day:
                wait_s = _wait_until_free(day, b.tokens_per_day - today, tokens, now_s, DAY_S)
                raise LimitExceeded(
                    f"over {b.tokens_per_day} tokens per day for this key ({today} used in the "
                    f"last 24 hours, {tokens} asked): wait {wait_s / 3600:.1f} hours or ask the "
                    "instructor for a larger budget",
                    wait_s,
                )
            entry = [now_s, tokens]
            bucket_s = now_s - now_s % DAY_BUCKET_S
            if not day or day[-1][0] != bucket_s:
                day.append([bucket_s, 0])
            day[-1][1] += tokens
            requests.append(now_s)
            used.append(entry)
            return Reservation(key, tokens, entry, day[-1], now_s)

    def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Replace a reservation by the tokens the request really used (never more than reserved)."""
        with self._lock:
            new = max(0, min(used_tokens, reservation.tokens))
            reservation.day_entry[1] += new - reservation.entry[1]
            reservation.entry[1] = new

    def release(self, reservation: Reservation) -> None:
        """Undo a reservation as if the request never came (it was refused with 503 after all)."""
        self.settle(reservation, 0)
        with self._lock:
            requests = self._requests[reservation.key]
            if reservation.request_s in requests:
                requests.remove(reservation.request_s)

    def tokens_in_window(self, key: str) -> int:
        with self._lock:
            self._expire(key, self._clock())
            return sum(t for _, t in self._tokens[key])

    def tokens_today(self, key: str) -> int:
        """Tokens used by `key` in the last 24 hours."""
        with self._lock:
            self._expire(key, self._clock())
            return sum(t for _, t in self._day[key])


def _wait_until_free(
    entries: deque[list], free: int, tokens: int, now_s: float, window_s: float
) -> float:
    """Seconds until enough old [time s, tokens] entries leave the window for `tokens` to fit."""
    for at_s, t in entries:
        free += t
        if free >= tokens:
            return at_s + window_s - now_s
    return window_s
