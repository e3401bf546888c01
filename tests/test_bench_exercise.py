"""lab09's check: a correct roofline passes; the usual slips fail with a message that names them."""

from __future__ import annotations

from lazymoe.exercises.lab09 import check_bound

GB = 1e9


def right(dense, experts, h, vram, link):
    return 1 / ((dense + experts) / (vram * GB) + (1 - h) * experts / (link * GB))


def test_a_correct_bound_passes():
    assert check_bound(right)


def test_an_empty_body_is_not_started():
    result = check_bound(lambda *args: None)
    assert not result and "returned None" in result.message


def test_mixing_gb_and_bytes_is_named():
    result = check_bound(lambda d, e, h, v, link: right(d, e, h, v, link) * 1e9)
    assert not result and "GB and bytes" in result.message


def test_seconds_instead_of_tokens_per_second_is_named():
    result = check_bound(lambda d, e, h, v, link: 1 / right(d, e, h, v, link))
    assert not result and "seconds per token" in result.message


def test_a_backwards_hit_rate_is_named():
    result = check_bound(lambda d, e, h, v, link: right(d, e, 1 - h, v, link))
    assert not result and "backwards" in result.message


def test_forgetting_the_vram_term_is_named():
    result = check_bound(lambda d, e, h, v, link: 1 / ((1 - h) * e / (link * GB)))
    assert not result and "VRAM term" in result.message


def test_a_crashing_function_is_reported_not_raised():
    result = check_bound(lambda *args: 1 / 0)
    assert not result and "ZeroDivisionError" in result.message
