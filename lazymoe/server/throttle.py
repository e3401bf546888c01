"""Wrong keys cost the server a 16 MiB, ~50 ms scrypt hash each, so they are throttled per client
address before any hashing: a few wrong keys a minute per address, a few checks at once.

The table of addresses is bounded (the least recently seen address is forgotten first), so a flood
from many addresses cannot grow the server's memory either. A valid key that was verified before
never reaches this throttle: its check is a cached HMAC lookup.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

WINDOW_S = 60.0


@dataclass
class _Address:
    failures_s: deque[float] = field(default_factory=deque)  # when each wrong key came, s
    checking: int = 0  # key checks (hashes) in progress for this address


class AuthThrottle:
    """Per address: at most `failures_per_minute` wrong keys and `max_checking` checks at once.

    Thread-safe; `max_addresses` bounds the memory (a few hundred bytes an address), and
    `max_checking_total` the checks waiting for a hash, all addresses together.
    """

    def __init__(
        self,
        failures_per_minute: int,
        max_checking: int = 4,
        max_checking_total: int = 32,
        max_addresses: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures_per_minute = failures_per_minute
        self.max_checking = max_checking
        self.max_checking_total = max_checking_total  # all addresses: bounds the hashing queue
        self._checking_total = 0
        self.max_addresses = max_addresses
        self._clock = clock
        self._lock = threading.Lock()
        self._addresses: OrderedDict[str, _Address] = OrderedDict()

    def __len__(self) -> int:
        return len(self._addresses)

    def _get(self, address: str) -> _Address:
        entry = self._addresses.get(address)
        if entry is None:
            entry = self._addresses[address] = _Address()
            if len(self._addresses) > self.max_addresses:
                self._addresses.popitem(last=False)  # forget the least recently seen address
        else:
            self._addresses.move_to_end(address)
        now_s = self._clock()
        while entry.failures_s and entry.failures_s[0] <= now_s - WINDOW_S:
            entry.failures_s.popleft()
        return entry

    def retry_after_s(self, address: str) -> float:
        """0 if `address` may try a key now, else how many seconds until it may."""
        with self._lock:
            entry = self._get(address)
            if len(entry.failures_s) < self.failures_per_minute:
                return 0.0
            return max(entry.failures_s[0] + WINDOW_S - self._clock(), 0.001)

    def begin(self, address: str) -> bool:
        """Start one key check for `address`; False when it has too many running (refuse it)."""
        with self._lock:
            entry = self._get(address)
            if (
                entry.checking >= self.max_checking
                or self._checking_total >= self.max_checking_total
            ):
                return False
            entry.checking += 1
            self._checking_total += 1
            return True

    def end(self, address: str) -> None:
        with self._lock:
            self._checking_total = max(0, self._checking_total - 1)
            entry = self._addresses.get(address)  # None if a flood pushed it out meanwhile
            if entry is not None and entry.checking:
                entry.checking -= 1

    def failed(self, address: str) -> None:
        """Note one wrong key from `address`."""
        with self._lock:
            entry = self._get(address)
            entry.failures_s.append(self._clock())
            if len(entry.failures_s) > self.failures_per_minute:
                entry.failures_s.popleft()  # only the last few matter: bounded per address too
