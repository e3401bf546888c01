"""Lab 04's checks: a right answer passes, the usual wrong ones get a message that names the mistake."""

from __future__ import annotations

import pytest

from lazymoe.exercises.lab04 import check_queue_wait, check_ttft_and_rate
from lazymoe.server.loadtest import StreamTiming, queue_wait_bound_s, ttft_and_decode_rate


def test_the_package_timing_function_on_a_hand_computed_case():
    ttft_s, rate = ttft_and_decode_rate(10.0, [10.5, 10.6, 10.7, 10.8, 10.9])
    assert ttft_s == pytest.approx(0.5) and rate == pytest.approx(10.0)
    timing = StreamTiming(10.0, [10.5, 10.6, 10.7, 10.8, 10.9], 11.0, n_tokens=5, text="abcde")
    assert timing.ttft_s == pytest.approx(0.5) and timing.decode_tok_s == pytest.approx(10.0)
    assert timing.total_s == pytest.approx(1.0)


def test_queue_wait_on_a_hand_computed_case():
    # 3 users, 20 tokens at 10 tok/s, 0.5 s prefill: the third waits 2 * (0.5 + 2) + 0.5 s.
    assert queue_wait_bound_s(3, 20, 10.0, 0.5) == pytest.approx(5.5)
    assert queue_wait_bound_s(1, 20, 10.0, 0.5) == pytest.approx(0.5)


def right_timing(sent_s, arrivals_s):
    return arrivals_s[0] - sent_s, (len(arrivals_s) - 1) / (arrivals_s[-1] - arrivals_s[0])


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda s, a: None, "returned None"),
        (lambda s, a: 3.0, "return a pair"),
        (lambda s, a: ((a[0] - s) * 1000, right_timing(s, a)[1]), "milliseconds"),
        (lambda s, a: (a[-1] - s, right_timing(s, a)[1]), "LAST token"),
        (lambda s, a: (a[0] - s, len(a) / (a[-1] - s)), "includes the wait"),
        (lambda s, a: (a[0] - s, len(a) / (a[-1] - a[0])), "gaps"),
        (lambda s, a: (a[0] - s, (a[-1] - a[0]) / (len(a) - 1)), "seconds per token"),
        (lambda s, a: 1 / 0, "ZeroDivisionError"),
        (lambda s, a: (0.8, 20.0), "should be"),  # right for the first case only: hard-coded
    ],
)
def test_timing_check_names_the_mistake(wrong, message):
    result = check_ttft_and_rate(wrong)
    assert not result.passed and message in result.message


def test_timing_check_passes_a_right_answer():
    assert check_ttft_and_rate(right_timing).passed


def right_wait(n_users, max_tokens, rate, prefill_s):
    return (n_users - 1) * (prefill_s + max_tokens / rate) + prefill_s


@pytest.mark.parametrize(
    ("wrong", "message"),
    [
        (lambda n, m, r, p: None, "returned None"),
        (lambda n, m, r, p: n * (p + m / r), "IN FRONT"),
        (lambda n, m, r, p: (n - 1) * (p + m / r), "their own prefill"),
        (lambda n, m, r, p: (n - 1) * m / r + p, "also pays its prefill"),
        (lambda n, m, r, p: (n - 1) * (p + m * r) + p, "not a time"),
        (lambda n, m, r, p: 42.0, "the answer is"),
    ],
)
def test_queue_check_names_the_mistake(wrong, message):
    result = check_queue_wait(wrong)
    assert not result.passed and message in result.message


def test_queue_check_passes_a_right_answer():
    assert check_queue_wait(right_wait).passed
