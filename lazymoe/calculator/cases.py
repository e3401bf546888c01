"""The public case studies of the course, as calculator inputs, with what each reported.

Each case names its original source, the strategy that matches what was run, the inputs the
source publishes (an effective link rate, the formats the model ships in) and every assumption we
had to add because the source does not say (which CPU, how much RAM, which disk). The bound must
come out at or above the reported speed; the gap between them is the lesson (course/01_hardware.ipynb
and course/06_offloading.ipynb discuss each one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lazymoe.calculator.planning import plan
from lazymoe.calculator.strategies import Plan
from lazymoe.calculator.workload import Machine, Workload
from lazymoe.i18n import _

GB = 1e9


@dataclass(frozen=True)
class CaseStudy:
    key: str
    title: str
    source: str                   # the original source and the figure it reports
    machine: Machine
    workload: Workload
    strategy: str
    reported_tok_s: float
    options: dict = field(default_factory=dict)
    assumptions: tuple[str, ...] = ()
    gap: str = ""                 # why the real speed is below the bound
    reported_rounding_tok_s: float = 0.0   # half a unit of the reported figure's last digit

    @property
    def reported_low_tok_s(self) -> float:
        """The lowest speed the published (rounded) figure can stand for: 0.25 for '0.3 tok/s'."""
        return self.reported_tok_s - self.reported_rounding_tok_s

    def bound(self) -> Plan:
        return plan(self.machine, self.workload, self.strategy, **self.options)


def _qwen3_coder_next() -> Workload:
    # FP8 experts; the source says the non-expert part weighs ~4.6 GB (some of it kept in BF16),
    # so its bits per weight are set to make 2.7B parameters weigh 4.6 GB.
    return Workload(Workload.from_names("Qwen3-Coder-Next-80B", "FP8").model, 8.0,
                    other_bits_per_weight=4.6e9 * 8 / 2.7e9, context_tokens=1024,
                    format_label=_("FP8 experts, ~4.6 GB rest"))


def case_studies() -> list[CaseStudy]:
    """Every public case study of the course, built fresh from the catalog (order is stable), its
    texts in the learner's language."""
    lazy = _("nalexand/Qwen3-Coder-OPTIMIZED (GitHub, posted to r/LocalLLaMA)")
    ntransformer = _("ntransformer's README (xaskasdf/ntransformer on GitHub; Show HN: 'Llama 3.1 70B on "
                     "a single RTX 3090 via NVMe-to-GPU bypassing the CPU')")
    cpu_moe = _("a report on GPT-OSS-120B with llama.cpp --cpu-moe (Hacker News summary)")
    rotary = _("'Rotary GPU: Exploring Local Execution Paths for Large Mixture-of-Experts Models Under "
               "Limited GPU Memory' (Jo 2026, arXiv:2605.29135)")
    laptop_3070ti = Machine.from_names("Laptop, DDR5-5600 dual channel", 32, gpu="RTX 3070 Ti Laptop")
    rig_3090 = Machine.from_names("Desktop, DDR5-5600 dual channel", 64, gpu="RTX 3090")
    # ntransformer's README: an RTX 3090 with 48 GB of RAM whose slot runs at PCIe 3.0 x8, and
    # "the bottleneck is PCIe H2D bandwidth at Gen3 x8 (~6.5 GB/s)": the effective link rate.
    rig_ntransformer = Machine.from_names("Desktop, DDR5-5600 dual channel", 48, gpu="RTX 3090",
                                          link="PCIe 3.0 x8", effective_link_gbps=6.5)
    laptop_4060 = Machine.from_names("Laptop, DDR5-5600 dual channel", 32, gpu="RTX 4060 Laptop")
    gpt_oss = Workload.from_names("GPT-OSS-120B", context_tokens=4096)   # MXFP4 experts, BF16 rest
    rotary_model = Workload.from_names("Qwen3.6-35B-A3B (class)", "Q4_K_M", context_tokens=2048)
    # ~6.3 GB of VRAM: 1.8 GB non-expert weights + KV + 0.5 GiB runtime leave ~3.9 GB for experts,
    # 8 of the 40 layers' experts (or the same bytes as a cache).
    rotary_expert_gb = 3.9
    cache_18 = 18 * 48 * 3.15e6 * 1.0   # max_gpu_cache=18 experts per layer, 48 layers, FP8 bytes
    disk = _("the disk: a PCIe 3.0 NVMe SSD at 3.5 GB/s (the source recommends a fast NVMe, no model named)")
    ram_cpu = _("RAM: dual-channel DDR5-5600 (89.6 GB/s); the source does not name the CPU or memory")
    gpt_oss_formats = _("MXFP4 experts, BF16 rest; context 4096")
    rotary_assumed = (_("format: llama.cpp's Q4_K_M mix (experts 4.84 bits, the rest 5.2; the paper "
                        "does not say)"), _("RAM: 32 GB of dual-channel DDR5-5600 (not in the paper)"),
                      _("host link: the laptop GPU's PCIe 4.0 x8 at its nominal 15.75 GB/s"))
    rotary_reported = _("{source}: 21.06 tok/s over 2048 tokens").format(source=rotary)
    return [
        CaseStudy(
            "lazy-experts-80b", _("Qwen3-Coder-Next 80B (FP8) on an 8 GB RTX 3070 Ti laptop, "
                                  "experts lazily loaded into a VRAM + pinned-RAM cache"),
            _("{source}: ~1.2 tok/s warm").format(source=lazy), laptop_3070ti, _qwen3_coder_next(),
            "expert_cache", 1.2,
            {"hit_rate": 0.85, "cache_bytes": cache_18},
            (_("hit rate 85%: the best the source reports ('up to 85%')"),
             _("VRAM cache: max_gpu_cache=18 experts per layer (~2.7 GB, the source says ~3 GB)"),
             disk, _("RAM: 32 GB as reported; misses not in RAM come from the disk")),
            _("The bound assumes every miss streams at full disk and PCIe speed. The real loader "
              "fetches ~3 MB experts one by one from safetensors files (small reads, each with its "
              "own latency), waits for each copy before computing, and runs ~480 tiny expert "
              "matmuls per token from Python: overheads the bound does not count.")),
        CaseStudy(
            "accelerate-disk-80b", _("The same model with accelerate's device_map='auto' "
                                     "(disk offload)"), _("{source}: 255 s per token").format(source=lazy),
            laptop_3070ti, _qwen3_coder_next(), "layer_streaming", 1 / 255, {},
            (disk, _("accelerate moves whole layers: every expert of an offloaded layer, used or not")),
            _("accelerate loads offloaded weights from disk tensor by tensor on the critical path, "
              "with no overlap and little reuse of what RAM could hold.")),
        CaseStudy(
            "ntransformer-70b", _("Llama 3.1 70B Q4_K_M on one RTX 3090: 36 layers in VRAM, "
                                  "44 streamed from pinned RAM over PCIe 3.0 x8"),
            _("{source}: 0.3 tok/s").format(source=ntransformer),
            rig_ntransformer, Workload.from_names("Llama-3.1-70B", "Q4_K_M"), "layer_streaming",
            0.3, {"resident_layers": 36},
            (_("host link: PCIe 3.0 x8 at the ~6.5 GB/s the README measured (nominal 7.88 GB/s)"),
             _("RAM: 48 GB as in the README, enough to pin the 44 streamed layers"),
             _("format: Q4_K_M at its whole-file 4.9 bits per weight")),
            _("None to speak of: the bound, about 0.27 tok/s, is within the rounding of the reported "
              "0.3 tok/s (one digit, like '~6.5 GB/s'). ntransformer moves its ~23 GB per token at "
              "the link's full effective rate; only a faster link (or fewer bytes) can help."),
            reported_rounding_tok_s=0.05),
        CaseStudy(
            "cpu-moe-gpt-oss-5gb", _("GPT-OSS-120B, all experts on the CPU (--cpu-moe), ~5 GB VRAM"),
            _("{source}: 18.04 tok/s decode").format(source=cpu_moe),
            rig_3090, gpt_oss, "cpu_moe", 18.04, {"n_cpu_moe": 36},
            (_("GPU: an RTX 3090 (the 22 GB run needs a 24 GB card; the source names none)"), ram_cpu,
             _("formats as shipped: MXFP4 experts, BF16 for the rest (the source says BF16); context 4096")),
            _("The CPU reaches perhaps 60-80% of its RAM's theoretical bandwidth in matrix-vector "
              "work, and the GPU waits for the CPU's experts at every layer (no overlap).")),
        CaseStudy(
            "cpu-moe-gpt-oss-8gb",
            _("GPT-OSS-120B, --n-cpu-moe 36 (all 36 MoE layers on the CPU), ~8 GB VRAM"),
            _("{source}: 25.62 tok/s decode").format(source=cpu_moe),
            rig_3090, gpt_oss, "cpu_moe", 25.62, {"n_cpu_moe": 36},
            (_("GPU: an RTX 3090"), ram_cpu, gpt_oss_formats),
            _("As above. With dual-channel DDR4-3200 the bound would be below 25.62 tok/s, so the "
              "machine must have faster memory than that: the bound tells us about the hardware.")),
        CaseStudy(
            "cpu-moe-gpt-oss-22gb", _("GPT-OSS-120B, experts of 8 layers moved to the GPU, ~22 GB VRAM"),
            _("{source}: 30.82 tok/s decode").format(source=cpu_moe),
            rig_3090, gpt_oss, "cpu_moe", 30.82, {"n_cpu_moe": 28},
            (_("GPU: an RTX 3090"), ram_cpu, gpt_oss_formats),
            _("Moving 8 of 36 layers' experts to the GPU removes 2/9 of the CPU's bytes: the bound "
              "rises by about a fifth, and so did the measurement (25.6 -> 30.8).")),
        CaseStudy(
            "rotary-gpu-cpu-moe", _("A Qwen3.6-35B-A3B-class MoE on an 8 GB RTX 4060 Laptop, ~6.3 GB "
                                    "VRAM, explained as CPU-MoE: 8 layers' experts on the GPU, 32 "
                                    "computed by the CPU"),
            rotary_reported,
            laptop_4060, rotary_model, "cpu_moe", 21.06, {"n_cpu_moe": 32},
            (*rotary_assumed, _("~6.3 GB of VRAM = non-expert weights + KV + runtime + the experts "
                                "of 8 layers (~3.9 GB)")),
            _("Four times the measurement: with the experts computed where they live, RAM and VRAM "
              "share the work and nothing crosses PCIe. The paper's method is its own, so the "
              "measured speed leaves room for the CPU's real bandwidth and the software.")),
        CaseStudy(
            "rotary-gpu-expert-cache", _("The same laptop and model, explained as an expert cache: "
                                         "~3.9 GB of experts cached in VRAM, misses copied over PCIe 4.0 x8"),
            rotary_reported,
            laptop_4060, rotary_model, "expert_cache", 21.06,
            {"cache_bytes": rotary_expert_gb * GB},
            (*rotary_assumed, _("hit rate: what uniform routing gives, cache / all experts (~20%)")),
            _("Only just above the measurement: at uniform routing's hit rate, the misses over "
              "PCIe 4.0 x8 alone take most of a token's time. A method that copies experts must hit "
              "its cache far more often than uniform routing would (real routing is skewed), or "
              "compute the misses on the CPU, as CPU-MoE does.")),
    ]


def case_study(key: str) -> CaseStudy:
    """One case by its key ('ntransformer-70b'); the error lists the keys."""
    cases = {c.key: c for c in case_studies()}
    if key not in cases:
        from lazymoe.calculator.bounds import CalculatorError

        raise CalculatorError(_("no case study {key!r}; the cases are: {keys}").format(
            key=key, keys=", ".join(cases)))
    return cases[key]


def module01_example_machines() -> list[tuple[str, Machine]]:
    """The example machines of the study group's Module 01, as calculator machines. The labels stay
    English in every language: course/01_hardware.ipynb looks machines up by them."""
    office = "Office PC, DDR4-2666 dual channel"
    return [
        ("office PC, no GPU, 16 GB RAM", Machine.from_names(office, 16)),
        ("gaming laptop, RTX 3070 (8 GB)", Machine.from_names("Laptop, DDR5-5600 dual", 16, gpu="RTX 3070")),
        ("gaming laptop, RTX 4080 Laptop (12 GB)",
         Machine.from_names("Laptop, DDR5-5600 dual", 32, gpu="RTX 4080 Laptop")),
        ("shared server, 2 x 12 GB GPUs on PCIe 3.0",
         Machine.from_names("Desktop, DDR4-3200 dual", 64, gpu="Tesla P100 PCIe 12GB", gpu_count=2)),
    ]
