"""The bandwidth-bound speed calculator: pure functions over catalog numbers, no tensors.

Decode speed is bounded by how fast the bytes each token needs can be read:

    tok/s <= bandwidth / bytes read per token          (700 GB/s / 14 GB = 50 tok/s)

A dense model reads all its weights per token; an MoE reads its shared weights and the top-k
experts of each layer; both read the KV cache. When the weights do not fit in VRAM, a strategy
decides where they live and through which memory or link each byte travels; every result names
the resource that takes the most time (its bottleneck).

    from lazymoe import calculator as calc
    calc.decode_bound_tok_s(700, 14e9)                                  # 50.0
    m = calc.Machine.from_names("DDR5-5600 dual", 32, gpu="RTX 4060 Laptop")
    w = calc.Workload.from_names("Qwen3-30B-A3B", "Q4_K_M")
    calc.plan(m, w).verdict.label                                       # the best strategy's verdict
"""

from lazymoe.calculator.bounds import (
    Bound,
    CalculatorError,
    Part,
    bound_from_parts,
    decode_bound,
    decode_bound_tok_s,
    expert_cache_bound,
    expert_cache_bound_tok_s,
    hit_rate_needed,
    prefill_bound,
)
from lazymoe.calculator.cases import CaseStudy, case_studies, case_study, module01_example_machines
from lazymoe.calculator.curves import size_curve
from lazymoe.calculator.measured import (
    MeasuredBandwidths,
    default_bandwidths,
    load_measured,
    measured_path,
    save_measured,
)
from lazymoe.calculator.memory import MemoryStack, memory_needed, where_it_fits
from lazymoe.calculator.planning import DESCRIPTIONS, STRATEGIES, compare, describe, plan
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
from lazymoe.calculator.verdict import Verdict, verdict
from lazymoe.calculator.workload import Machine, Workload

__all__ = [
    "DESCRIPTIONS", "STRATEGIES", "Bound", "CalculatorError", "CaseStudy", "Machine",
    "MeasuredBandwidths", "MemoryStack", "Part", "Plan", "Verdict", "Workload", "bound_from_parts",
    "case_studies", "case_study", "compare", "cpu_moe", "cpu_only", "decode_bound",
    "decode_bound_tok_s", "default_bandwidths", "describe", "expert_cache", "expert_cache_bound",
    "expert_cache_bound_tok_s", "full_gpu", "hit_rate_needed", "layer_split", "layer_streaming",
    "load_measured", "measured_path", "memory_needed", "module01_example_machines", "multi_gpu",
    "plan", "prefill_bound", "save_measured", "size_curve", "verdict", "where_it_fits",
]
