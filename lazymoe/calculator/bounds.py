"""Speed bounds from bandwidth: how many tokens per second the bytes allow, and what limits it.

Decoding one token reads every weight it uses once (and the KV cache), so the time per token is
at least bytes / bandwidth for each memory or link the bytes come through. These are upper
bounds on speed: real engines add compute, kernel launches, synchronisation and Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lazymoe.i18n import _

GB = 1e9  # bandwidths are decimal GB/s, as on datasheets


class CalculatorError(ValueError):
    """An input the calculator cannot use; the message says which and what to change."""


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise CalculatorError(f"{name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class Part:
    """One resource a token's bytes pass through: `bytes_per_step` at `bandwidth_gbps`."""

    resource: str              # "VRAM", "RAM", "PCIe 4.0 x16", "disk", "NVLink", "compute"
    bytes_per_step: float      # bytes (or FLOPs for "compute") per decode step
    bandwidth_gbps: float      # GB/s (or TFLOP/s x 1000 for "compute")

    @property
    def seconds(self) -> float:
        return self.bytes_per_step / (self.bandwidth_gbps * GB)

    def describe(self) -> str:
        if self.resource == "compute":
            return _("{tflop:.3g} TFLOP at {tflops:.4g} TFLOP/s = {ms:.3g} ms").format(
                tflop=self.bytes_per_step / 1e12, tflops=self.bandwidth_gbps / 1e3, ms=self.seconds * 1e3)
        return _("{gb:.3g} GB through {resource} at {gbps:.4g} GB/s = {ms:.3g} ms").format(
            gb=self.bytes_per_step / GB, resource=self.resource, gbps=self.bandwidth_gbps,
            ms=self.seconds * 1e3)


@dataclass(frozen=True)
class Bound:
    """An upper bound on tokens per second, and the resource that sets it.

    tok_s        tokens per second, all sequences of the batch together
    bottleneck   the resource that takes the most time per step
    detail       the arithmetic, in words
    parts        every resource's share of one step
    overlap      True: transfers overlap (step time = the slowest part); False: they add up
    """

    tok_s: float
    bottleneck: str
    detail: str
    parts: tuple[Part, ...] = field(default=())
    overlap: bool = False

    @property
    def ms_per_token(self) -> float:
        return 1e3 / self.tok_s if self.tok_s > 0 else float("inf")

    def seconds_by_resource(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for part in self.parts:
            out[part.resource] = out.get(part.resource, 0.0) + part.seconds
        return out


def bound_from_parts(parts: Sequence[Part], tokens_per_step: int = 1,
                     overlap: bool = False) -> Bound:
    """tok/s = tokens_per_step / step time; step time = sum of parts (or the largest, if overlap)."""
    parts = tuple(p for p in parts if p.bytes_per_step > 0)
    if not parts:
        raise CalculatorError("nothing is read per token: check the model's parameter counts")
    for p in parts:
        _positive(f"bandwidth of {p.resource}", p.bandwidth_gbps)
    seconds = [p.seconds for p in parts]
    step_s = max(seconds) if overlap else sum(seconds)
    slowest = parts[seconds.index(max(seconds))]
    joiner = _("; overlapped, the slowest sets the pace") if overlap else _("; added up")
    detail = "; ".join(p.describe() for p in parts)
    if len(parts) > 1:
        detail += joiner
    detail += _(" -> {ms:.3g} ms per step").format(ms=step_s * 1e3)
    if tokens_per_step > 1:
        detail += _(" for {n} tokens (one per sequence)").format(n=tokens_per_step)
    return Bound(tokens_per_step / step_s, slowest.resource, detail, parts, overlap)


def decode_bound_tok_s(bandwidth_gbps: float, bytes_per_token: float) -> float:
    """Upper bound on decode speed: tok/s = bandwidth (bytes/s) / bytes read per token.

    Example (the source Module 01): 700 GB/s and a 14 GB model -> 700e9 / 14e9 = 50 tok/s.
    """
    _positive("bandwidth_gbps", bandwidth_gbps)
    _positive("bytes_per_token", bytes_per_token)
    return bandwidth_gbps * GB / bytes_per_token


def decode_bound(bandwidth_gbps: float, bytes_per_token: float, resource: str = "memory") -> Bound:
    """`decode_bound_tok_s` as a `Bound` that names the resource (the bottleneck)."""
    return bound_from_parts([Part(resource, bytes_per_token, bandwidth_gbps)])


def expert_cache_bound(resident_bytes_per_token: float, expert_bytes_per_token: float,
                       hit_rate: float, vram_bandwidth_gbps: float, link_bandwidth_gbps: float,
                       link: str = "PCIe", overlap: bool = False) -> Bound:
    """Decode bound of an MoE whose experts are cached in VRAM with hit rate h.

        t = (resident + experts) / VRAM bandwidth  +  (1 - h) x experts / link bandwidth
        tok/s = 1 / t

    resident_bytes_per_token   bytes read per token that always live in VRAM (attention, norms,
                               router, shared experts, output head; the KV cache)
    expert_bytes_per_token     bytes of the routed experts a token uses (top-k x layers x expert)
    hit_rate                   fraction of those expert bytes already in VRAM (0..1); the misses
                               cross the link (PCIe from pinned RAM, or the disk's rate)
    overlap                    True if copies overlap compute (perfect prefetch): t = max(...)
    """
    if not 0.0 <= hit_rate <= 1.0:
        raise CalculatorError(f"hit_rate must be between 0 and 1, got {hit_rate!r}")
    parts = [Part("VRAM", resident_bytes_per_token + expert_bytes_per_token, vram_bandwidth_gbps),
             Part(link, (1.0 - hit_rate) * expert_bytes_per_token, link_bandwidth_gbps)]
    return bound_from_parts(parts, overlap=overlap)


def expert_cache_bound_tok_s(resident_bytes_per_token: float, expert_bytes_per_token: float,
                             hit_rate: float, vram_bandwidth_gbps: float,
                             link_bandwidth_gbps: float) -> float:
    """`expert_cache_bound(...).tok_s`: the same formula, as a number."""
    return expert_cache_bound(resident_bytes_per_token, expert_bytes_per_token, hit_rate,
                              vram_bandwidth_gbps, link_bandwidth_gbps).tok_s


def hit_rate_needed(target_tok_s: float, resident_bytes_per_token: float,
                    expert_bytes_per_token: float, vram_bandwidth_gbps: float,
                    link_bandwidth_gbps: float) -> float:
    """The hit rate an expert cache needs to reach `target_tok_s` (the formula above, solved for h).

        h = 1 - (1/target - (resident + experts)/VRAM) x link / experts

    0 means even a cold cache is fast enough; above 1 means no cache can reach the target.
    """
    _positive("target_tok_s", target_tok_s)
    _positive("expert_bytes_per_token", expert_bytes_per_token)
    vram_s = (resident_bytes_per_token + expert_bytes_per_token) / (vram_bandwidth_gbps * GB)
    slack_s = 1.0 / target_tok_s - vram_s
    h = 1.0 - slack_s * link_bandwidth_gbps * GB / expert_bytes_per_token
    return max(0.0, h)


def prefill_bound(tflops: float, params_active: float, efficiency: float = 1.0) -> Bound:
    """Prefill (prompt) bound from compute: tok/s = FLOP/s / (2 x active parameters).

    A prompt's tokens go through the weights together, so the weights are read once for many
    tokens and arithmetic, not bandwidth, is the limit: 2 FLOPs (multiply, add) per weight per token.
    """
    _positive("tflops", tflops)
    _positive("params_active", params_active)
    flops_per_token = 2.0 * params_active
    return bound_from_parts([Part("compute", flops_per_token, tflops * 1e3 * efficiency)])
