"""Lab 01's checks: a right answer passes, the usual wrong ones fail saying what is wrong."""

from __future__ import annotations

from lazymoe.exercises import lab01


def test_decode_bound_right_answer_passes():
    result = lab01.check_decode_bound(lambda bw_gbps, n_bytes: bw_gbps * 1e9 / n_bytes)
    assert result.passed and "50 tok/s" in result.message


def test_decode_bound_starter_is_not_started():
    result = lab01.check_decode_bound(lambda bw_gbps, n_bytes: None)
    assert not result.passed and "returned None" in result.message


def test_decode_bound_gb_vs_bytes_is_named():
    result = lab01.check_decode_bound(lambda bw_gbps, n_bytes: bw_gbps / n_bytes)
    assert not result.passed and "GB and bytes" in result.message


def test_decode_bound_wrong_direction_is_named():
    result = lab01.check_decode_bound(lambda bw_gbps, n_bytes: n_bytes / (bw_gbps * 1e9))
    assert not result.passed and "wrong way" in result.message


def test_decode_bound_gib_vs_gb_is_named():
    result = lab01.check_decode_bound(lambda bw_gbps, n_bytes: bw_gbps * 2**30 / n_bytes)
    assert not result.passed and "GiB" in result.message


def test_decode_bound_exception_is_reported_not_raised():
    result = lab01.check_decode_bound(lambda bw_gbps, n_bytes: 1 / 0)
    assert not result.passed and "ZeroDivisionError" in result.message


def right_moe(outside, per_expert, top_k, layers, bits):
    return (outside + layers * top_k * per_expert) * bits / 8


def test_moe_bytes_right_answer_passes():
    assert lab01.check_moe_bytes_per_token(right_moe).passed


def test_moe_bytes_counting_every_expert_is_named():
    def every_expert(outside, per_expert, top_k, layers, bits):
        return (outside + layers * 128 * per_expert) * bits / 8

    result = lab01.check_moe_bytes_per_token(every_expert)
    assert not result.passed and "every expert" in result.message


def test_moe_bytes_forgetting_the_shared_weights_is_named():
    result = lab01.check_moe_bytes_per_token(lambda o, e, k, n, b: n * k * e * b / 8)
    assert not result.passed and "outside the experts" in result.message


def test_moe_bytes_returning_parameters_is_named():
    result = lab01.check_moe_bytes_per_token(lambda o, e, k, n, b: o + n * k * e)
    assert not result.passed and "parameter count" in result.message


def test_moe_bytes_bits_vs_bytes_is_named():
    result = lab01.check_moe_bytes_per_token(lambda o, e, k, n, b: (o + n * k * e) * b)
    assert not result.passed and "bits vs bytes" in result.message
