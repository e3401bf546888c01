"""Lab 03's checks: a right answer passes, each typical mistake gets its own explanation."""

from __future__ import annotations

import pytest
import torch

from lazymoe.exercises import lab03


def int8_rows(w, divisor=127, absolute=True, rounding=torch.round, invert=False):
    top = w.abs().amax(dim=1) if absolute else w.amax(dim=1)
    scale = top / divisor
    q = rounding(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, (1 / scale if invert else scale)


def int4_groups(w, group_size, divisor=7, clamp=True, rounding=torch.round, strided=False):
    rows, cols = w.shape
    if strided:
        g = w.reshape(rows, group_size, cols // group_size).transpose(1, 2)  # every k-th weight
    else:
        g = w.reshape(rows, cols // group_size, group_size)
    scale = g.abs().amax(dim=-1, keepdim=True) / divisor
    q = rounding(g / scale)
    if clamp:
        q = q.clamp(-7, 7)
    if strided:
        q = q.transpose(1, 2)
    return q.reshape(rows, cols).to(torch.int8), scale.squeeze(-1)


def test_int8_rows_right_answer_passes():
    result = lab03.check_int8_rows(int8_rows)
    assert result.passed, result
    assert "relative error" in result.message


def test_int8_rows_scale_of_shape_rows_by_one_also_passes():
    assert lab03.check_int8_rows(lambda w: (int8_rows(w)[0], int8_rows(w)[1][:, None])).passed


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (lambda w: None, "returned None"),
        (lambda w: int8_rows(w)[0], "return a pair"),
        (lambda w: (int8_rows(w)[0].float(), int8_rows(w)[1]), "torch.int8"),
        (lambda w: (int8_rows(w)[0], int8_rows(w)[1][:3]), "one per row"),
        (lambda w: int8_rows(w, divisor=1), "127x too large"),
        (lambda w: int8_rows(w, divisor=128), "divided by 128"),
        (lambda w: int8_rows(w, divisor=255), "divided by 255"),
        (lambda w: int8_rows(w, invert=True), "inverse"),
        (lambda w: int8_rows(w, absolute=False), "ABSOLUTE"),
        (lambda w: int8_rows(w, rounding=torch.trunc), "truncated"),
        (lambda w: (int8_rows(w)[0].flip(1), int8_rows(w)[1]), "not round(w / scale)"),
    ],
)
def test_int8_rows_mistakes_are_named(answer, expected):
    result = lab03.check_int8_rows(answer)
    assert not result.passed
    assert expected in str(result), str(result)


def test_int4_groups_right_answer_passes():
    result = lab03.check_int4_groups(int4_groups)
    assert result.passed, result


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (lambda w, g: None, "returned None"),
        (lambda w, g: int4_groups(w, 32), "use the group_size argument"),
        (lambda w, g: int8_rows(w), "one per group"),
        (lambda w, g: int4_groups(w, g, divisor=8), "divided by 8"),
        (lambda w, g: int4_groups(w, g, divisor=15), "divided by 15"),
        (lambda w, g: int4_groups(w, g, divisor=1), "7x too large"),
        (lambda w, g: int4_groups(w, g, strided=True), "NEIGHBOURS"),
        (lambda w, g: int4_groups(w, g, rounding=torch.trunc), "truncated"),
    ],
)
def test_int4_groups_mistakes_are_named(answer, expected):
    result = lab03.check_int4_groups(answer)
    assert not result.passed
    assert expected in str(result), str(result)


def test_int4_groups_out_of_range_values_are_caught():
    def unclamped(w, g):
        q, scale = int4_groups(w, g)
        q[0, 0] = 9
        return q, scale

    assert "clamp" in str(lab03.check_int4_groups(unclamped))


def pack(q):
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[:, :16] | (u[:, 16:] << 4)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (lambda q: None, "returned None"),
        (lambda q: pack(q)[:, :8], "must be (4, 16)"),
        (lambda q: pack(q).to(torch.int32), "torch.uint8"),
        (lambda q: ((q[:, 0::2] + 8) | ((q[:, 1::2] + 8) << 4)).to(torch.uint8), "neighbours"),
        (lambda q: pack(torch.cat([q[:, 16:], q[:, :16]], dim=1)), "swapped"),
        (lambda q: (q[:, :16].to(torch.uint8) & 15) | ((q[:, 16:].to(torch.uint8) & 15) << 4), "add 8"),
    ],
)
def test_pack_int4_mistakes_are_named(answer, expected):
    result = lab03.check_pack_int4(answer)
    assert not result.passed
    assert expected in str(result), str(result)


def test_pack_int4_right_answer_passes():
    assert lab03.check_pack_int4(pack).passed
