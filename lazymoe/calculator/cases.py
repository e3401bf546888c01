"""The case studies of the source documents, as calculator inputs, with what each reported.

Each case names its seed file and the original source inside it, the strategy that matches what
was run, and every assumption we had to add because the source does not say (which CPU, how
much RAM, which disk). The bound must come out at or above the reported speed; the gap between
them is the lesson (course/01_hardware.ipynb and course/06 discuss each one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lazymoe.calculator.planning import plan
from lazymoe.calculator.strategies import Plan
from lazymoe.calculator.workload import Machine, Workload

GB = 1e9


@dataclass(frozen=True)
class CaseStudy:
    key: str
    title: str
    source: str                   # seed file and the original source it reports
    machine: Machine
    workload: Workload
    strategy: str
    reported_tok_s: float
    options: dict = field(default_factory=dict)
    assumptions: tuple[str, ...] = ()
    gap: str = ""                 # why the real speed is below the bound

    def bound(self) -> Plan:
        return plan(self.machine, self.workload, self.strategy, **self.options)


def _qwen3_coder_next() -> Workload:
    # Seed 000: FP8 experts; the non-expert part weighs ~4.6 GB (some of it kept in BF16), so its
    # bits per weight are set to make 2.7B parameters weigh 4.6 GB.
    return Workload.from_names("Qwen3-Coder-Next-80B", "FP8", other_bits_per_weight=4.6e9 * 8 / 2.7e9,
                               context_tokens=1024)


def case_studies() -> list[CaseStudy]:
    """Every case study of seeds 000, 001, 003 and 004, built fresh from the catalog."""
    laptop_3070ti = Machine.from_names("Laptop, DDR5-5600 dual channel", 32, gpu="RTX 3070 Ti Laptop")
    rig_3090 = Machine.from_names("Desktop, DDR5-5600 dual channel", 64, gpu="RTX 3090")
    laptop_4060 = Machine.from_names("Laptop, DDR5-5600 dual channel", 32, gpu="RTX 4060 Laptop")
    gpt_oss = Workload.from_names("GPT-OSS-120B", "MXFP4", other_bits_per_weight=16, context_tokens=4096)
    cache_18 = 18 * 48 * 3.15e6 * 1.0   # max_gpu_cache=18 experts per layer, 48 layers, FP8 bytes
    disk = "the disk: a PCIe 3.0 NVMe SSD at 3.5 GB/s (the source recommends a fast NVMe, no model named)"
    ram_cpu = "RAM: dual-channel DDR5-5600 (89.6 GB/s); the source does not name the CPU or memory"
    return [
        CaseStudy(
            "seed000-lazy-experts", "Qwen3-Coder-Next 80B (FP8) on an 8 GB RTX 3070 Ti laptop, "
            "experts lazily loaded into a VRAM + pinned-RAM cache",
            "seed 000: nalexand/Qwen3-Coder-OPTIMIZED (r/LocalLLaMA), ~1.2 tok/s warm",
            laptop_3070ti, _qwen3_coder_next(), "expert_cache", 1.2,
            {"hit_rate": 0.85, "cache_bytes": cache_18},
            ("hit rate 85%: the best the source reports ('up to 85%')",
             "VRAM cache: max_gpu_cache=18 experts per layer (~2.7 GB, the source says ~3 GB)",
             disk, "RAM: 32 GB as reported; misses not in RAM come from the disk"),
            "The bound assumes every miss streams at full disk and PCIe speed. The real loader "
            "fetches ~3 MB experts one by one from safetensors files (small reads, each with its "
            "own latency), waits for each copy before computing, and runs ~480 tiny expert "
            "matmuls per token from Python: overheads the bound does not count."),
        CaseStudy(
            "seed000-accelerate-disk", "The same model with accelerate's device_map='auto' "
            "(disk offload)", "seed 000: nalexand/Qwen3-Coder-OPTIMIZED, 255 s per token",
            laptop_3070ti, _qwen3_coder_next(), "layer_streaming", 1 / 255, {},
            (disk, "accelerate moves whole layers: every expert of an offloaded layer, used or not"),
            "accelerate loads offloaded weights from disk tensor by tensor on the critical path, "
            "with no overlap and little reuse of what RAM could hold."),
        CaseStudy(
            "seed001-ntransformer", "Llama 3.1 70B Q4_K_M on one RTX 3090: 36 layers in VRAM, "
            "44 streamed from pinned RAM over PCIe", "seed 001: ntransformer (Hacker News), 0.3 tok/s",
            rig_3090, Workload.from_names("Llama-3.1-70B", "Q4_K_M"), "layer_streaming", 0.3,
            {"resident_layers": 36},
            ("RAM: 64 GB DDR5 (enough to pin the 44 streamed layers; not in the source)",
             "PCIe 4.0 x16 at its theoretical 31.5 GB/s"),
            "PCIe 4.0 x16 delivers ~25 GB/s in practice, not 31.5; the tiered engine moves some "
            "layers from NVMe rather than RAM, and copies that do not overlap compute add up."),
        CaseStudy(
            "seed003-cpu-moe-5gb", "GPT-OSS-120B, all experts on the CPU (--cpu-moe), ~5 GB VRAM",
            "seed 003: llama.cpp --cpu-moe report (Hacker News summary), 18.04 tok/s decode",
            rig_3090, gpt_oss, "cpu_moe", 18.04, {"n_cpu_moe": 36},
            ("GPU: an RTX 3090 (the 22 GB run needs a 24 GB card; the source names none)", ram_cpu,
             "non-expert weights in BF16, as the source says; context 4096"),
            "The CPU reaches perhaps 60-80% of its RAM's theoretical bandwidth in matrix-vector "
            "work, and the GPU waits for the CPU's experts at every layer (no overlap)."),
        CaseStudy(
            "seed003-cpu-moe-8gb", "GPT-OSS-120B, --n-cpu-moe 36 (all 36 MoE layers on the CPU), ~8 GB VRAM",
            "seed 003: llama.cpp --cpu-moe report, 25.62 tok/s decode",
            rig_3090, gpt_oss, "cpu_moe", 25.62, {"n_cpu_moe": 36},
            ("GPU: an RTX 3090", ram_cpu, "non-expert weights in BF16; context 4096"),
            "As above. With dual-channel DDR4-3200 the bound would be below 25.62 tok/s, so the "
            "machine must have faster memory than that: the bound tells us about the hardware."),
        CaseStudy(
            "seed003-cpu-moe-22gb", "GPT-OSS-120B, experts of 8 layers moved to the GPU, ~22 GB VRAM",
            "seed 003: llama.cpp --cpu-moe report, 30.82 tok/s decode",
            rig_3090, gpt_oss, "cpu_moe", 30.82, {"n_cpu_moe": 28},
            ("GPU: an RTX 3090", ram_cpu, "non-expert weights in BF16; context 4096"),
            "Moving 8 of 36 layers' experts to the GPU removes 2/9 of the CPU's bytes: the bound "
            "rises by about a fifth, and so did the measurement (25.6 -> 30.8)."),
        CaseStudy(
            "seed004-rotary-gpu", "A Qwen3.6-35B-A3B-class MoE on an 8 GB RTX 4060 Laptop, ~6.3 GB VRAM",
            "seed 004: arXiv:2605.29135 (Rotary GPU), 21.06 tok/s over 2048 tokens",
            laptop_4060, Workload.from_names("Qwen3.6-35B-A3B (class)", "Q4_K_M"), "layer_split", 21.06,
            {"gpu_layers": 26},
            ("format Q4_K_M (the paper does not say)", "RAM: 32 GB of dual-channel DDR5-5600",
             "26% of the weights on the GPU, which with the runtime overhead fills ~6.3 GB",
             "only total and active parameter counts are known: each token reads 3B parameters"),
            "The paper's method moves weights through VRAM; PCIe 4.0 x8 (15.75 GB/s) alone could "
            "carry all 3B active parameters at Q4_K_M only ~8.6 times a second, so most of the work "
            "must run where the weights already are (VRAM or the CPU's RAM)."),
    ]


def module01_example_machines() -> list[tuple[str, Machine]]:
    """The example machines of the source Module 01 (seed 002), as calculator machines."""
    office = "Office PC, DDR4-2666 dual channel"
    return [
        ("office PC, no GPU, 16 GB RAM", Machine.from_names(office, 16)),
        ("gaming laptop, RTX 3070 (8 GB)", Machine.from_names("Laptop, DDR5-5600 dual", 16, gpu="RTX 3070")),
        ("gaming laptop, RTX 4080 Laptop (12 GB)",
         Machine.from_names("Laptop, DDR5-5600 dual", 32, gpu="RTX 4080 Laptop")),
        ("shared server, 2 x 12 GB GPUs on PCIe 3.0",
         Machine.from_names("Desktop, DDR4-3200 dual", 64, gpu="Tesla P100 PCIe 12GB", gpu_count=2)),
    ]
