"""Lab 02 checks: the size of the KV cache, and fitting the decode roofline.

    check_kv_cache_bytes(fn)   fn(num_layers, num_kv_heads, head_dim, n_tokens, bytes_per_value) -> int
    check_fit_roofline(fn)     fn(bytes_per_token, seconds_per_token) -> (bandwidth_gbps, overhead_s)

Both compare with the package (lazymoe.models.speed.fit_roofline, and the formula
2 * layers * kv_heads * head_dim * tokens * bytes) and name the usual slip when they disagree.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from lazymoe.exercises.base import CheckResult, failed, not_started, passed
from lazymoe.exercises.solutions import tracked
from lazymoe.i18n import _
from lazymoe.models.speed import fit_roofline

KV_CASES = (  # (layers, kv_heads, head_dim, tokens, bytes_per_value)
    (4, 2, 32, 256, 4),  # the tiny model, float32
    (48, 4, 128, 32768, 2),  # a Qwen3-30B-A3B-like shape, bf16, 32k context
    (32, 8, 128, 4096, 2),
)


def kv_cache_bytes(num_layers: int, num_kv_heads: int, head_dim: int, n_tokens: int,
                   bytes_per_value: int) -> int:
    """K and V, per layer, per KV head, per token: 2 * L * H_kv * d_head * T * bytes."""
    return 2 * num_layers * num_kv_heads * head_dim * n_tokens * bytes_per_value


_KV_SLIPS = (  # (what the learner probably computed, the hint)
    (lambda L, H, d, T, b: L * H * d * T * b, "half the answer: both K and V are cached (the factor 2)."),
    (lambda L, H, d, T, b: 16 * L * H * d * T * b,
     "8x too large: bytes_per_value is already in bytes, do not multiply by 8 bits."),
    (lambda L, H, d, T, b: 2 * L * H * d * T, "too small: multiply by bytes_per_value."),
    (lambda L, H, d, T, b: 2 * H * d * T * b, "too small: every layer keeps its own K and V."),
    (lambda L, H, d, T, b: 2 * L * H * d * b, "too small: the cache grows with every token."),
    (lambda L, H, d, T, b: 2 * L * d * T * b, "too small: multiply by the number of KV heads."),
)


@tracked("lab02.kv_cache")
def check_kv_cache_bytes(fn: Callable[..., int]) -> CheckResult:
    name = "kv_cache_bytes"
    got = [fn(*case) for case in KV_CASES]
    if any(g is None for g in got):
        return not_started(name)
    try:
        got = [float(g) for g in got]
    except (TypeError, ValueError):
        return failed(name, _('return a number of bytes, got {type_name}.').format(type_name=type(got[0]).__name__))
    want = [kv_cache_bytes(*case) for case in KV_CASES]
    if all(math.isclose(g, w, rel_tol=1e-9) for g, w in zip(got, want, strict=True)):
        return passed(name, _('correct: 2 * layers * kv_heads * head_dim * tokens * bytes.'))
    for slip, hint in _KV_SLIPS:
        if all(math.isclose(g, slip(*case), rel_tol=1e-9) for g, case in zip(got, KV_CASES, strict=True)):
            return failed(name, hint)
    for g, w, case in zip(got, want, KV_CASES, strict=True):
        if not math.isclose(g, w, rel_tol=1e-9):
            layers, kv_heads, head_dim, tokens, nbytes = case
            return failed(name, _('for layers={layers}, kv_heads={kv_heads}, head_dim={head_dim}, tokens={tokens}, bytes={nbytes}: you returned {g:.0f}, expected {w} (ratio {value:.3g}).').format(layers=layers, kv_heads=kv_heads, head_dim=head_dim, tokens=tokens, nbytes=nbytes, g=g, w=w, value=g / w))
    return failed(name, _('unexpected answer'))  # unreachable: some case differs


def _synthetic_points() -> tuple[np.ndarray, np.ndarray, float, float]:
    bandwidth_gbps, overhead_s = 12.5, 0.004
    x = np.array([20e6, 60e6, 170e6, 400e6])  # bytes per token
    noise = np.array([1.02, 0.99, 1.01, 0.995])
    y = (overhead_s + x / (bandwidth_gbps * 1e9)) * noise
    return x, y, bandwidth_gbps, overhead_s


@tracked("lab02.fit")
def check_fit_roofline(fn: Callable) -> CheckResult:
    name = "fit_roofline"
    x, y, true_bw, _overhead_s = _synthetic_points()
    answer = fn(list(x), list(y))
    if answer is None:
        return not_started(name)
    if not isinstance(answer, tuple | list) or len(answer) != 2:
        return failed(name, _('return a pair (bandwidth_gbps, overhead_s), got {answer!r}.').format(answer=answer))
    bw, overhead = (float(a) for a in answer)
    want_bw, want_overhead = fit_roofline(x, y)
    if math.isclose(bw, want_bw, rel_tol=1e-3) and math.isclose(overhead, want_overhead,
                                                                rel_tol=1e-2, abs_tol=1e-5):
        return passed(name, _('correct: on these points {want_bw:.1f} GB/s and {value:.1f} ms of fixed cost per token (the truth was {true_bw} GB/s, 4 ms: the fit recovers it through the noise).').format(want_bw=want_bw, value=want_overhead * 1e3, true_bw=true_bw))
    slope = 1 / (want_bw * 1e9)
    if math.isclose(bw, slope, rel_tol=1e-3) or math.isclose(bw, slope * 1e9, rel_tol=1e-3):
        return failed(name, _('you returned the slope (seconds per byte); bandwidth is its inverse: 1 / slope bytes/s, then / 1e9 for GB/s.'))
    if math.isclose(bw, want_bw * 1e9, rel_tol=1e-3):
        return failed(name, _('your bandwidth is 1e9x too large: return GB/s (divide bytes/s by 1e9).'))
    if math.isclose(bw, want_bw * 2**30 / 1e9, rel_tol=1e-3) or math.isclose(bw, want_bw * 1e9 / 2**30, rel_tol=1e-3):
        return failed(name, _('close, but that is GiB/s: datasheets and the calculator use GB/s = 1e9 bytes/s.'))
    if math.isclose(bw, want_bw, rel_tol=1e-3):
        return failed(name, _('bandwidth right, overhead wrong: the intercept of the fit is {value:.2f} ms, you returned {value2:.2f} ms.').format(value=want_overhead * 1e3, value2=overhead * 1e3))
    through_origin = float((x @ y) / (x @ x))
    if math.isclose(bw, 1 / through_origin / 1e9, rel_tol=1e-3):
        return failed(name, _('your line goes through the origin: allow a fixed cost per token (fit seconds = overhead + bytes / bandwidth, e.g. np.polyfit(x, y, 1)).'))
    return failed(name, _('expected about {want_bw:.2f} GB/s and {value:.2f} ms; you returned {bw:.4g} and {overhead:.4g}. Fit a straight line seconds vs bytes.').format(want_bw=want_bw, value=want_overhead * 1e3, bw=bw, overhead=overhead))
