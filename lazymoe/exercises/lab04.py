"""Checks for lab 04 (the shared server): timing a stream, and predicting the wait in a queue.

Each check calls the learner's function on made-up numbers, compares it with the package's own
`lazymoe.server.loadtest` functions, and says what looks wrong; it never raises on a wrong answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from lazymoe.exercises.base import CheckResult, failed, not_started, passed
from lazymoe.exercises.solutions import tracked
from lazymoe.i18n import _
from lazymoe.server.loadtest import queue_wait_bound_s, ttft_and_decode_rate


def _close(a: float, b: float, rel: float = 1e-3) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


@tracked("lab04.ttft")
def check_ttft_and_rate(fn: Callable[[float, list[float]], tuple[float, float]]) -> CheckResult:
    """fn(sent_s, arrivals_s) -> (ttft_s, decode_tok_s)."""
    name = _('time to first token and decode speed')
    # (sent at, first token after, tokens, seconds between tokens)
    cases = [(100.0, 0.8, 11, 0.05), (3.0, 2.5, 31, 0.02)]
    for sent_s, ttft_s, n, gap_s in cases:
        arrivals_s = [sent_s + ttft_s + i * gap_s for i in range(n)]
        try:
            got = fn(sent_s, list(arrivals_s))
        except Exception as exc:  # a learner's bug is a message, not a crash
            return failed(name, _('your function raised {error_type}: {exc}').format(error_type=type(exc).__name__, exc=exc))
        if got is None:
            return not_started(name)
        if not isinstance(got, tuple | list) or len(got) != 2:
            return failed(name, _('return a pair (ttft_s, decode_tok_s); you returned {got!r}').format(got=got))
        ttft, rate = float(got[0]), float(got[1])
        want_ttft, want_rate = ttft_and_decode_rate(sent_s, arrivals_s)
        if not _close(ttft, want_ttft):
            if _close(ttft, want_ttft * 1000):
                return failed(
                    name, _('your TTFT is 1000x too large: keep it in seconds, not milliseconds')
                )
            if _close(ttft, arrivals_s[-1] - sent_s):
                return failed(
                    name, _('that is the time to the LAST token: TTFT ends at the first one')
                )
            return failed(
                name,
                _('TTFT should be {want_ttft:.3f} s for request {sent_s} -> first token {value}; you gave {ttft:.3f}').format(want_ttft=want_ttft, sent_s=sent_s, value=arrivals_s[0], ttft=ttft),
            )
        if not _close(rate, want_rate):
            if _close(rate, n / (arrivals_s[-1] - sent_s)):
                return failed(
                    name,
                    _('your rate includes the wait for the first token: decode speed starts at the first token'),
                )
            if _close(rate, n / (arrivals_s[-1] - arrivals_s[0])):
                return failed(
                    name,
                    _('{n} tokens have {value} gaps between them: count the tokens after the first').format(n=n, value=n - 1),
                )
            if _close(rate, 1 / want_rate):
                return failed(name, _('that is seconds per token: tokens per second is its inverse'))
            return failed(
                name, _('decode speed should be {want_rate:.2f} tok/s here; you gave {rate:.2f}').format(want_rate=want_rate, rate=rate)
            )
    return passed(
        name, _('TTFT is the wait for the first token; decode speed counts the tokens after it.')
    )


@tracked("lab04.queue")
def check_queue_wait(fn: Callable[[int, int, float, float], float]) -> CheckResult:
    """fn(n_users, max_tokens, decode_tok_s, prefill_s) -> seconds the last user waits for a first token."""
    name = _('the wait at the back of the queue')
    for n_users, max_tokens, rate, prefill_s in [
        (16, 32, 40.0, 0.1),
        (4, 100, 25.0, 0.5),
        (1, 64, 10.0, 0.2),
    ]:
        try:
            got = fn(n_users, max_tokens, rate, prefill_s)
        except Exception as exc:
            return failed(name, _('your function raised {error_type}: {exc}').format(error_type=type(exc).__name__, exc=exc))
        if got is None:
            return not_started(name)
        got, want = float(got), queue_wait_bound_s(n_users, max_tokens, rate, prefill_s)
        if _close(got, want):
            continue
        per_request_s = prefill_s + max_tokens / rate
        if _close(got, n_users * per_request_s):
            return failed(
                name,
                _('the last user waits for the users IN FRONT of them (n_users - 1), then only for their own prefill'),
            )
        if _close(got, (n_users - 1) * per_request_s):
            return failed(
                name,
                _('almost: after the others finish, the last user still waits for their own prefill'),
            )
        if _close(got, (n_users - 1) * max_tokens / rate + prefill_s) and n_users > 1:
            return failed(
                name, _('every request in front also pays its prefill, not only the last one')
            )
        if _close(got, (n_users - 1) * (prefill_s + max_tokens * rate) + prefill_s):
            return failed(
                name, _('max_tokens * tok/s is not a time: divide tokens by tokens per second')
            )
        return failed(
            name,
            _('for {n_users} users, {max_tokens} tokens each at {rate} tok/s and {prefill_s} s prefill the answer is {want:.2f} s; you gave {got:.2f}').format(n_users=n_users, max_tokens=max_tokens, rate=rate, prefill_s=prefill_s, want=want, got=got),
        )
    return passed(
        name, _('one request at a time: everyone in front of you costs a prefill plus their tokens.')
    )
