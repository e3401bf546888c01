"""Choosing among the strategies: run one by name, compare them all, or take the best that fits."""

from __future__ import annotations

from lazymoe.calculator.bounds import CalculatorError
from lazymoe.calculator.memory import gib
from lazymoe.calculator.strategies import (
    Plan,
    cpu_moe,
    cpu_only,
    expert_cache,
    full_gpu,
    layer_split,
    layer_streaming,
    multi_gpu,
)
from lazymoe.calculator.workload import Machine, Workload
from lazymoe.i18n import _

STRATEGIES = {
    "full_gpu": full_gpu, "cpu_only": cpu_only, "layer_split": layer_split,
    "layer_streaming": layer_streaming, "cpu_moe": cpu_moe, "expert_cache": expert_cache,
    "multi_gpu": multi_gpu,
}
DESCRIPTIONS = {
    "full_gpu": "everything in VRAM",
    "cpu_only": "everything in RAM, the CPU computes",
    "layer_split": "layers split GPU / CPU (llama.cpp -ngl)",
    "layer_streaming": "layers streamed to the GPU over PCIe (ntransformer)",
    "cpu_moe": "experts on the CPU (llama.cpp --cpu-moe / --n-cpu-moe)",
    "expert_cache": "expert cache in VRAM, misses over PCIe (lazymoe)",
    "multi_gpu": "layers split over several GPUs",
}


def compare(machine: Machine, workload: Workload) -> dict[str, Plan | str]:
    """Every strategy with its default options: a Plan, or the reason it does not apply."""
    out: dict[str, Plan | str] = {}
    for name, fn in STRATEGIES.items():
        try:
            out[name] = fn(machine, workload)
        except CalculatorError as exc:
            out[name] = str(exc)
    return out


def plan(machine: Machine, workload: Workload, strategy: str = "auto", **options) -> Plan:
    """One strategy by name, or "auto": the fastest plan that fits (else the fastest of all)."""
    if strategy != "auto":
        if strategy not in STRATEGIES:
            raise CalculatorError(f"unknown strategy {strategy!r}; choose from auto, "
                                  f"{', '.join(STRATEGIES)}")
        return STRATEGIES[strategy](machine, workload, **options)
    plans = [p for p in compare(machine, workload).values() if isinstance(p, Plan)]
    fitting = [p for p in plans if p.fits] or plans
    return max(fitting, key=lambda p: p.tok_s)


def describe(p: Plan) -> str:
    """A few lines a person can read: verdict, bound, bottleneck, memory per tier."""
    tiers = ", ".join(f"{t} {gib(p.memory.total(t))}" + (
        _(" of {capacity}").format(capacity=gib(p.memory.capacity[t])) if t in p.memory.capacity else "")
        for t in ("VRAM", "RAM", "disk") if p.memory.total(t) > 0)
    head = _("{strategy}: {verdict} - {tok_s:.3g} tok/s at most, limited by {bottleneck}").format(
        strategy=p.strategy, verdict=p.verdict.label, tok_s=p.tok_s, bottleneck=p.bottleneck)
    return head + "\n  " + _("memory: {tiers}").format(tiers=tiers) + f"\n  {p.decode.detail}"
