"""Lab 03 checks: int8 per-row quantization, 4-bit group quantization, packing two weights a byte.

Each check calls the learner's function on small test matrices (one with an outlier) and compares
with lazymoe.quant. Rounding ties (x.5) may go either way: a few values one step apart still pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lazymoe import quant
from lazymoe.exercises.base import CheckResult, failed, not_started, passed
from lazymoe.exercises.solutions import tracked
from lazymoe.i18n import _
from lazymoe.quant.codecs import split_blocks


def sample_matrix(rows: int = 6, cols: int = 64, seed: int = 0) -> torch.Tensor:
    """Gaussian weights with one outlier in row 1 and an all-negative row 2 (float32)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[1, 5] = 0.9  # an outlier: its row (or group) gets a large scale
    w[2] = -w[2].abs()  # the largest |w| is negative: max(w) would be the wrong scale
    return w


def _reference_scales(w: torch.Tensor, fmt: str) -> torch.Tensor:
    """The scales lazymoe.quant stores for `w` in `fmt`, as (rows, groups) float32."""
    qt = quant.quantize(w, fmt)
    scales, _ = split_blocks(qt.data, qt.fmt, w.shape[-1])
    return scales[:, 0].reshape(w.shape[0], -1)


def _unpack_answer(name: str, answer, rows: int, groups: int) -> tuple[torch.Tensor, torch.Tensor] | CheckResult:
    if answer is None:
        return not_started(name)
    if not isinstance(answer, tuple) or len(answer) != 2:
        return failed(name, _('return a pair (q, scale), got {type_name}.').format(type_name=type(answer).__name__))
    q, scale = (torch.as_tensor(a) for a in answer)
    if q.dtype != torch.int8:
        hint = _(' (round first, then .to(torch.int8))') if q.is_floating_point() else ""
        return failed(name, _('q must be torch.int8 (one byte per weight), got {dtype}{hint}.').format(dtype=q.dtype, hint=hint))
    if scale.numel() != rows * groups:
        want = f"one per row: shape ({rows},) or ({rows}, 1)" if groups == 1 else f"one per group: shape ({rows}, {groups})"
        return failed(name, _('scale has {value} values; it needs {want}.').format(value=scale.numel(), want=want))
    return q, scale.to(torch.float32).reshape(rows, groups)


def _diagnose_scale(name: str, scale: torch.Tensor, ref: torch.Tensor, w: torch.Tensor, qmax: int) -> CheckResult | None:
    """None if the scales agree; otherwise a message naming the likely mistake."""
    if torch.allclose(scale, ref, rtol=1e-4, atol=1e-12):
        return None
    ratio = float((scale / ref).median())
    groups = ref.shape[1]
    signed_max = w.reshape(w.shape[0], groups, -1).amax(dim=-1) / qmax
    if abs(ratio - qmax) < 0.01 * qmax:
        return failed(name, _('your scales are {qmax}x too large: scale = max|w| / {qmax}, not max|w|.').format(qmax=qmax))
    if torch.allclose(scale * ref, torch.ones_like(ref), rtol=1e-3):
        return failed(name, _('your scale is upside down: return scale = max|w| / qmax (you returned its inverse).'))
    for wrong in (qmax + 1, 2 * qmax + 1, 2 * qmax):
        if abs(ratio - qmax / wrong) < 1e-3:
            return failed(
                name, _('you divided by {wrong}; divide max|w| by {qmax}: the symmetric range is -{qmax}..{qmax}, so the largest |w| lands exactly on {qmax}.').format(wrong=wrong, qmax=qmax)
            )
    if torch.allclose(scale, signed_max, rtol=1e-4):
        return failed(name, _('use the largest ABSOLUTE value (w.abs().amax(...)): a row whose biggest weight is negative needs a scale too (look at row 2).'))
    rows, cols = w.shape
    strided = w.reshape(rows, cols // groups, groups).abs().amax(dim=1) / qmax  # every groups-th weight
    if groups > 1 and torch.allclose(scale, strided, rtol=1e-4):
        return failed(name, _('your groups take every k-th weight; a group is `group_size` NEIGHBOURS in one row: w.reshape(rows, cols // group_size, group_size).'))
    bad = int((~torch.isclose(scale, ref, rtol=1e-4)).sum())
    return failed(name, _('{bad} of {value} scales differ from max|w| / {qmax} of their {value2} (median ratio yours/expected = {ratio:.4g}).').format(bad=bad, value=ref.numel(), qmax=qmax, value2='row' if groups == 1 else 'group', ratio=ratio))


def _diagnose_q(name: str, q: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, qmax: int) -> CheckResult | None:
    expanded = scale.repeat_interleave(w.shape[1] // scale.shape[1], dim=1)
    exact = w / expanded.clamp_min(1e-30)
    if q.shape != w.shape:
        return failed(name, _("q has shape {value}; it must have the weights' shape {value2}.").format(value=tuple(q.shape), value2=tuple(w.shape)))
    if int(q.abs().max()) > qmax:
        return failed(name, _('some q are outside -{qmax}..{qmax}: clamp after rounding.').format(qmax=qmax))
    if torch.equal(q, torch.trunc(exact).to(torch.int8)) and not torch.equal(q, torch.round(exact).to(torch.int8)):
        return failed(name, _('you truncated (dropped the fraction); round to the nearest step with torch.round: truncation doubles the worst error.'))
    off = (q.to(torch.float32) - torch.round(exact)).abs()
    if (off > 1).any() or (off == 1).float().mean() > 0.01:
        return failed(name, _('{value} of {value2} values of q are not round(w / scale).').format(value=int((off > 0).sum()), value2=q.numel()))
    return None


def _diagnose(name: str, q: torch.Tensor, scale: torch.Tensor, ref: torch.Tensor, w: torch.Tensor,
              qmax: int) -> CheckResult | None:
    """The scales first (a wrong scale makes every q wrong), then q. (Not `a or b`: a failure is falsy.)"""
    problem = _diagnose_scale(name, scale, ref, w, qmax)
    return problem if problem is not None else _diagnose_q(name, q, w, scale, qmax)


@tracked("lab03.int8")
def check_int8_rows(fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]) -> CheckResult:
    """fn(w) -> (q, scale): q int8 (R, C), scale (R,) with scale = max|w_row| / 127, q = round(w / scale)."""
    name = _('int8 per-row quantization')
    w = sample_matrix()
    ref_scale = _reference_scales(w, "int8_row")
    got = _unpack_answer(name, fn(w.clone()), w.shape[0], 1)
    if isinstance(got, CheckResult):
        return got
    q, scale = got
    problem = _diagnose(name, q, scale, ref_scale, w, 127)
    if problem is not None:
        return problem
    err = quant.relative_error(w, q.to(torch.float32) * scale)
    return passed(name, _("matches lazymoe.quant's int8_row; relative error {err:.2%} at 8 bits per weight (+ one float32 scale per row).").format(err=err))


@tracked("lab03.int4")
def check_int4_groups(fn: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor] | None]) -> CheckResult:
    """fn(w, group_size) -> (q, scales): q int8 (R, C) in -7..7, scales (R, C // group_size) = max|w_group| / 7."""
    name = _('4-bit group quantization')
    results = []
    for group in (32, 16):
        w = sample_matrix(cols=64, seed=group)
        ref_scale = _reference_scales(w, f"int4_g{group}")
        got = _unpack_answer(name, fn(w.clone(), group), w.shape[0], w.shape[1] // group)
        if isinstance(got, CheckResult):
            if group == 16 and "scale has" in got.message:
                got.details.append(_('it worked with group_size=32: use the group_size argument, not a fixed 32.'))
            return got
        q, scale = got
        problem = _diagnose(name, q, scale, ref_scale, w, 7)
        if problem is not None:
            return problem
        expanded = scale.repeat_interleave(group, dim=1)
        results.append(quant.relative_error(w, q.to(torch.float32) * expanded))
    int8_err = quant.compare_formats(sample_matrix(cols=64, seed=32), ["int8_row"])[0].rel_error
    return passed(name, _("matches lazymoe.quant's int4_g32; relative error {value:.1%} (int8 per row: {int8_err:.1%}) at 4 + 32/32 = 5 bits per weight.").format(value=results[0], int8_err=int8_err))


@tracked("lab03.pack")
def check_pack_int4(fn: Callable[[torch.Tensor], torch.Tensor | None]) -> CheckResult:
    """fn(q) -> packed: q (blocks, 32) int8 in -8..7 -> (blocks, 16) uint8, byte j = (q[j]+8) | (q[j+16]+8) << 4."""
    name = _('packing two 4-bit values per byte')
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-8, 8, (4, 32), generator=g, dtype=torch.int8)
    ref = quant.pack_nibbles((q + 8).to(torch.uint8))
    out = fn(q.clone())
    if out is None:
        return not_started(name)
    out = torch.as_tensor(out)
    if tuple(out.shape) != tuple(ref.shape):
        return failed(name, _('packed has shape {value}; 32 values of 4 bits fill {value2} bytes, so it must be {value3}.').format(value=tuple(out.shape), value2=ref.shape[1], value3=tuple(ref.shape)))
    if out.dtype != torch.uint8:
        return failed(name, _('packed must be torch.uint8, got {dtype}.').format(dtype=out.dtype))
    if torch.equal(out, ref):
        return passed(name, _("byte for byte GGUF's 4-bit layout: 16 bytes carry 32 weights."))
    pairs = ((q[:, 0::2] + 8) | ((q[:, 1::2] + 8) << 4)).to(torch.uint8)
    if torch.equal(out, pairs):
        return failed(name, _('you packed neighbours (0,1), (2,3), ...; GGUF pairs weight j with weight j + 16: low nibble = q[:, j], high nibble = q[:, j + 16].'))
    swapped = quant.pack_nibbles(torch.cat([q[:, 16:], q[:, :16]], dim=1).add(8).to(torch.uint8))
    if torch.equal(out, swapped):
        return failed(name, _('low and high nibbles are swapped: the first half goes in the low 4 bits.'))
    no_offset = (q[:, :16].to(torch.uint8) & 0x0F) | ((q[:, 16:].to(torch.uint8) & 0x0F) << 4)
    if torch.equal(out, no_offset):
        return failed(name, _('add 8 first: a nibble holds 0..15, so -8..7 is stored as q + 8.'))
    bad = int((out != ref).sum())
    return failed(name, _('{bad} of {value} bytes differ from (q[:, j] + 8) | (q[:, j + 16] + 8) << 4.').format(bad=bad, value=ref.numel()))
