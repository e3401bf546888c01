"""Bound tokens/s against model size on one machine (the widget's and notebooks' size plot)."""

from __future__ import annotations

from dataclasses import dataclass

from lazymoe.calculator.planning import plan
from lazymoe.calculator.workload import Machine, Workload
from lazymoe.catalog import ModelSpec

DEFAULT_SIZES_B = (0.5, 1, 2, 3, 4, 7, 8, 14, 24, 32, 47, 70, 120, 235, 405, 671)


@dataclass(frozen=True)
class CurvePoint:
    params_total: float
    tok_s: float
    strategy: str
    verdict: str


def size_curve(machine: Machine, bits_per_weight: float, sizes_b=DEFAULT_SIZES_B,
               strategy: str = "auto", active_fraction: float = 1.0) -> list[CurvePoint]:
    """For a generic model of each size (billions of parameters), the best plan's bound.

    active_fraction < 1 describes an MoE whose expert shapes we do not spell out: each token reads
    that fraction of the weights (e.g. 0.1 for 30B-A3B). KV cache is left out (weights only).
    """
    points = []
    for size_b in sizes_b:
        params = size_b * 1e9
        kind = "dense" if active_fraction >= 1 else "moe"
        spec = ModelSpec(name=f"{size_b:g}B", kind=kind, params_total=params,
                         params_active=params * active_fraction)
        p = plan(machine, Workload(spec, bits_per_weight), strategy)
        points.append(CurvePoint(params, p.tok_s if p.fits else 0.0, p.strategy, p.verdict.label))
    return points
