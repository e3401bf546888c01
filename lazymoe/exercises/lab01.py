"""Lab 01 checks: write the decode bound yourself, then an MoE's bytes per token.

Each check calls the learner's function on a few cases and compares with the calculator
(`lazymoe.calculator`). A wrong answer is explained: which case, what was expected, and the
mistake the ratio points to (GB vs bytes, GB vs GiB, divided the wrong way, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from lazymoe import calculator as calc
from lazymoe.catalog import ModelSpec
from lazymoe.exercises.base import CheckResult, failed, not_started, passed
from lazymoe.exercises.solutions import tracked
from lazymoe.i18n import _

# (bandwidth GB/s, bytes per token): the source module's example first
DECODE_CASES = [(700.0, 14e9), (936.0, 42.5e9), (89.6, 1.9e9), (51.2, 4.9e9)]
# (params outside experts, params per expert, top-k, MoE layers, bits per weight)
MOE_CASES = [(1.54e9, 4.72e6, 8, 48, 4.9), (2.15e9, 24.9e6, 4, 36, 4.25), (1.6e9, 176.2e6, 2, 32, 16)]


def _diagnose(got: float, want: float) -> str:
    """Name the usual mistake from the ratio got / want."""
    ratio = got / want
    hints = [(1e9, _('1e9 too large: did you mix GB and bytes (1 GB = 1e9 bytes)?')),
             (1e-9, _('1e9 too small: did you mix GB and bytes (1 GB = 1e9 bytes)?')),
             (2**30 / 1e9, _('7% too large: GiB (2^30) on one side and GB (10^9) on the other')),
             (1e9 / 2**30, _('7% too small: GiB (2^30) on one side and GB (10^9) on the other')),
             (1e3, _('1000x too large: milliseconds where seconds were wanted?')),
             (1e-3, _('1000x too small: seconds vs milliseconds, or MB vs GB?')),
             (8.0, _('8x too large: bits vs bytes (8 bits per byte)')),
             (1 / 8, _('8x too small: bits vs bytes (8 bits per byte)')),
             (0.5, _('half the right value: each token reads each byte once, not twice'))]
    for factor, hint in hints:
        if math.isclose(ratio, factor, rel_tol=0.02):
            return hint
    return _('off by a factor of {ratio:.3g}').format(ratio=ratio)


@tracked("lab01.decode_bound")
def check_decode_bound(fn: Callable[[float, float], float]) -> CheckResult:
    """fn(bandwidth_gbps, bytes_per_token) -> tokens per second (upper bound)."""
    name = _('decode bound')
    details = []
    for bandwidth_gbps, n_bytes in DECODE_CASES:
        want = calc.decode_bound_tok_s(bandwidth_gbps, n_bytes)
        try:
            got = fn(bandwidth_gbps, n_bytes)
        except Exception as exc:
            return failed(name, _('your function raised {error_type}: {exc}').format(error_type=type(exc).__name__, exc=exc))
        if got is None:
            return not_started(name)
        if not isinstance(got, (int, float)) or not math.isfinite(got):
            return failed(name, _('return a number of tokens per second, got {got!r}').format(got=got))
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        case = _('{bandwidth_gbps} GB/s, {value:g} GB per token: expected {want:.4g} tok/s, got {got:.4g}').format(bandwidth_gbps=bandwidth_gbps, value=n_bytes / 1e9, want=want, got=got)
        if got > 0 and math.isclose(got, n_bytes / (bandwidth_gbps * 1e9), rel_tol=1e-3):
            return failed(name, _('you divided the wrong way: that is seconds per token. tokens/s = bandwidth / bytes per token.'), case)
        if got > 0 and math.isclose(got * want, 1, rel_tol=1e-3):
            return failed(name, _('that is seconds per token; tokens/s is its inverse.'), case)
        details.append((case, _diagnose(got, want) if got > 0 else "not a positive speed"))
    if details:
        return failed(name, _('not yet: {value}').format(value=details[0][1]), *(f"{c} ({h})" for c, h in details))
    return passed(name, _('tokens/s <= bandwidth / bytes per token. 700 GB/s over 14 GB: 50 tok/s.'))


@tracked("lab01.moe_bytes")
def check_moe_bytes_per_token(fn: Callable[[float, float, int, int, float], float]) -> CheckResult:
    """fn(params_outside, params_per_expert, top_k, moe_layers, bits) -> bytes read per token."""
    name = _('MoE bytes per token')
    details = []
    for outside, per_expert, top_k, layers, bits in MOE_CASES:
        spec = ModelSpec("exercise", "moe", outside + layers * 128 * per_expert, params_active=0,
                         layers=layers, experts=128, experts_per_token=top_k,
                         params_per_expert=per_expert, params_outside_experts=outside)
        want = calc.Workload(spec, bits).weights_read_per_step
        try:
            got = fn(outside, per_expert, top_k, layers, bits)
        except Exception as exc:
            return failed(name, _('your function raised {error_type}: {exc}').format(error_type=type(exc).__name__, exc=exc))
        if got is None:
            return not_started(name)
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        case = (_('outside {value:g}B, expert {value2:g}M, top-{top_k}, {layers} layers, {bits} bits: expected {value3:.4g} GB, got {value4:.4g} GB').format(value=outside / 1e9, value2=per_expert / 1e6, top_k=top_k, layers=layers, bits=bits, value3=want / 1e9, value4=got / 1e9))
        all_experts = (outside + layers * 128 * per_expert) * bits / 8
        if math.isclose(got, all_experts, rel_tol=1e-3):
            return failed(name, _('you counted every expert: a token reads only its top-k experts per layer (plus the weights outside the experts).'), case)
        if math.isclose(got, layers * top_k * per_expert * bits / 8, rel_tol=1e-3):
            return failed(name, _('you left out the weights outside the experts (attention, router, norms, output head): every token reads them too.'), case)
        if math.isclose(got, want * 8 / bits, rel_tol=1e-3):
            return failed(name, _('that is a parameter count: multiply by bits per weight / 8 for bytes.'), case)
        details.append((case, _diagnose(got, want)))
    if details:
        return failed(name, _('not yet: {value}').format(value=details[0][1]), *(f"{c} ({h})" for c, h in details))
    return passed(name, _('bytes/token = (outside + layers x top-k x expert) x bits / 8.'))
