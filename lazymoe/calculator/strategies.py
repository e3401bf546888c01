"""Where the weights live and who computes them: one function per strategy, each a `Plan`.

    full_gpu         everything in one GPU's VRAM (or an Apple chip's unified memory)
    cpu_only         everything in RAM, computed by the CPU
    layer_split      the first layers on the GPU, the rest computed by the CPU from RAM
                     (llama.cpp's default: `-ngl N`)
    layer_streaming  some layers resident in VRAM, the rest copied over PCIe every token
                     (from pinned RAM, or the disk when RAM is short: ntransformer;
                     accelerate's disk offload)
    cpu_moe          MoE: everything but the experts on the GPU; the experts of n layers in RAM,
                     computed by the CPU (llama.cpp `--cpu-moe` / `--n-cpu-moe n`)
    expert_cache     MoE: everything but the experts on the GPU, plus a VRAM cache of experts
                     with hit rate h; misses cross PCIe (nalexand's lazy expert loader; lazymoe's engine)
    multi_gpu        layers (or tensors) split over several GPUs, activations over PCIe/NVLink

Each step's time is the sum of its parts (bytes / bandwidth per resource): an upper bound on
speed that ignores compute, launches and software. `overlap=True`, where offered, takes the
slowest part instead, as if every copy hid behind the other work (perfect prefetching).
"""

from __future__ import annotations

import math

from lazymoe.calculator.bounds import Bound, CalculatorError, Part, bound_from_parts, prefill_bound
from lazymoe.calculator.memory import MemoryStack
from lazymoe.calculator.plan import Plan
from lazymoe.calculator.workload import Machine, Workload
from lazymoe.i18n import _

__all__ = ["Plan", "cpu_moe", "cpu_only", "expert_cache", "full_gpu", "layer_split",
           "layer_streaming", "multi_gpu"]


def _need_gpu(machine: Machine, strategy: str) -> None:
    if machine.gpu is None:
        if machine.unified:
            raise CalculatorError(_("{strategy} moves weights between RAM and a graphics card, and "
                                    "this machine has one shared memory: choose full_gpu instead."
                                    ).format(strategy=strategy))
        raise CalculatorError(_("{strategy} needs a graphics card (GPU), and this machine has none: "
                                "pick a GPU, or choose cpu_only.").format(strategy=strategy))


def _need_experts(workload: Workload, strategy: str) -> None:
    m = workload.model
    if not m.has_expert_shapes:
        why = (_("{model} is dense: it has no experts to move") if not m.is_moe
               else _("{model} has no expert shapes in the catalog")).format(model=m.name)
        raise CalculatorError(_("{strategy} places a mixture-of-experts model's experts, and "
                                "{why}. Choose layer_split or layer_streaming, or pick an MoE "
                                "model.").format(strategy=strategy, why=why))


def _prefill(machine: Machine, workload: Workload) -> Bound | None:
    gpu = machine.gpu
    if gpu is None or gpu.fp16_tflops is None:
        return None
    m = workload.model
    return prefill_bound(gpu.fp16_tflops, m.params_active or m.params_total)


def _capacity(machine: Machine, gpus: int = 1) -> dict[str, float]:
    cap = {"RAM": float(machine.ram_usable_bytes)}
    if machine.has_gpu:
        cap["VRAM"] = float(machine.vram_bytes * gpus)
    if machine.unified:
        cap = {"VRAM": float(machine.ram_usable_bytes)}   # one memory, counted once
    return cap


def full_gpu(machine: Machine, workload: Workload) -> Plan:
    """All weights and the KV cache in one GPU: t = bytes per step / VRAM bandwidth."""
    if not machine.has_gpu:
        raise CalculatorError(_("full_gpu needs a GPU (or unified memory); this machine has none"))
    w = workload
    stack = MemoryStack((("VRAM", _("weights"), w.weight_bytes), ("VRAM", _("KV cache"), w.kv_cache_bytes),
                         ("VRAM", _("runtime overhead"), machine.gpu_overhead_bytes)), _capacity(machine))
    decode = bound_from_parts([Part(machine.vram_name, w.bytes_per_step, machine.vram_gbps)], w.batch)
    return Plan("full_gpu", stack, decode, False, (*w.notes(), *machine.bandwidth_notes()),
                _prefill(machine, w))


def cpu_only(machine: Machine, workload: Workload) -> Plan:
    """All weights and the KV cache in RAM, computed by the CPU: t = bytes per step / RAM bandwidth."""
    w = workload
    tier = "VRAM" if machine.unified else "RAM"
    stack = MemoryStack(((tier, _("weights"), w.weight_bytes), (tier, _("KV cache"), w.kv_cache_bytes)),
                        _capacity(machine))
    decode = bound_from_parts([Part("RAM", w.bytes_per_step, machine.ram_gbps)], w.batch)
    return Plan("cpu_only", stack, decode, False, (*w.notes(), *machine.bandwidth_notes()))


def layer_split(machine: Machine, workload: Workload, gpu_layers: int | None = None) -> Plan:
    """First `gpu_layers` layers on the GPU, the rest on the CPU (llama.cpp `-ngl`).

        f = gpu_layers / layers;  t = f x bytes / VRAM bandwidth + (1 - f) x bytes / RAM bandwidth
    gpu_layers=None: as many as fit in VRAM after the runtime overhead.
    """
    _need_gpu(machine, "layer_split")
    w, n = workload, workload.n_slices
    kv_layer = w.kv_cache_bytes / n
    if gpu_layers is None:
        budget = machine.vram_bytes - machine.gpu_overhead_bytes
        gpu_layers = max(0, min(n, math.floor(budget / (w.bytes_per_layer + kv_layer))))
    if not 0 <= gpu_layers <= n:
        raise CalculatorError(_("gpu_layers must be between 0 and {n}, got {value}").format(n=n, value=gpu_layers))
    f = gpu_layers / n
    stack = MemoryStack((
        ("VRAM", _("weights ({k} of {n} layers)").format(k=gpu_layers, n=n), f * w.weight_bytes),
        ("VRAM", _("KV cache (GPU layers)"), f * w.kv_cache_bytes),
        ("VRAM", _("runtime overhead"), machine.gpu_overhead_bytes),
        ("RAM", _("weights ({n} layers)").format(n=n - gpu_layers), (1 - f) * w.weight_bytes),
        ("RAM", _("KV cache (CPU layers)"), (1 - f) * w.kv_cache_bytes)), _capacity(machine))
    decode = bound_from_parts([Part("VRAM", f * w.bytes_per_step, machine.vram_gbps),
                               Part("RAM", (1 - f) * w.bytes_per_step, machine.ram_gbps)], w.batch)
    notes = (_("llama.cpp: -ngl {layers}").format(layers=gpu_layers), *w.notes(), *machine.bandwidth_notes())
    return Plan("layer_split", stack, decode, gpu_layers < n, notes,
                options={"gpu_layers": gpu_layers})


def layer_streaming(machine: Machine, workload: Workload, resident_layers: int | None = None,
                    overlap: bool = False) -> Plan:
    """`resident_layers` stay in VRAM; every other layer is copied to the GPU for every token.

        t = bytes per step / VRAM + streamed from RAM / PCIe + streamed from disk / min(disk, PCIe)
    A streamed layer moves whole: for an MoE, all its experts, used or not. Two layer-sized
    staging buffers are kept in VRAM. RAM holds what it can of the streamed layers; the disk the rest.
    """
    _need_gpu(machine, "layer_streaming")
    w, n = workload, workload.n_slices
    layer = w.bytes_per_layer
    fixed = w.kv_cache_bytes + machine.gpu_overhead_bytes + 2 * layer
    if resident_layers is None:
        resident_layers = max(0, min(n, math.floor((machine.vram_bytes - fixed) / layer)))
    if not 0 <= resident_layers <= n:
        raise CalculatorError(_("resident_layers must be between 0 and {n}, got {value}").format(
            n=n, value=resident_layers))
    streamed = (n - resident_layers) * layer
    in_ram = min(streamed, machine.ram_usable_bytes)
    on_disk = streamed - in_ram
    staging = 2 * layer if streamed else 0.0
    stack = MemoryStack((
        ("VRAM", _("weights ({k} of {n} layers resident)").format(k=resident_layers, n=n),
         resident_layers * layer),
        ("VRAM", _("KV cache"), w.kv_cache_bytes), ("VRAM", _("staging buffers"), staging),
        ("VRAM", _("runtime overhead"), machine.gpu_overhead_bytes),
        ("RAM", _("streamed layers (pinned)"), in_ram), ("disk", _("streamed layers"), on_disk)),
        _capacity(machine))
    link = machine.gpu_link_name
    decode = bound_from_parts([
        Part("VRAM", w.bytes_per_step, machine.vram_gbps),
        Part(link, in_ram, machine.pcie_gbps),
        Part("disk", on_disk, min(machine.disk_gbps, machine.pcie_gbps))], w.batch, overlap)
    notes = (_("{n} layers cross {link} for every token").format(n=n - resident_layers, link=link), *w.notes(),
             *machine.bandwidth_notes())
    return Plan("layer_streaming", stack, decode, streamed > 0, notes,
                options={"resident_layers": resident_layers, "overlap": overlap})


def cpu_moe(machine: Machine, workload: Workload, n_cpu_moe: int | None = None) -> Plan:
    """MoE experts of `n_cpu_moe` layers in RAM, computed by the CPU; all else on the GPU.

        t = (non-expert + KV + GPU layers' active experts) / VRAM + CPU layers' active experts / RAM
    n_cpu_moe=None: the fewest CPU layers that let the rest fit in VRAM (llama.cpp's advice:
    lower --n-cpu-moe until VRAM is full). --cpu-moe is n_cpu_moe = all MoE layers.
    """
    _need_gpu(machine, "cpu_moe")
    _need_experts(workload, "cpu_moe")
    w, big_m = workload, workload.model.n_moe_layers
    layer_experts = w.expert_bytes / big_m
    fixed = w.outside_bytes + w.kv_cache_bytes + machine.gpu_overhead_bytes
    if n_cpu_moe is None:
        room = machine.vram_bytes - fixed
        n_cpu_moe = big_m if room <= 0 else max(0, big_m - math.floor(room / layer_experts))
    if not 0 <= n_cpu_moe <= big_m:
        raise CalculatorError(_("n_cpu_moe must be between 0 and {n}, got {value}").format(n=big_m, value=n_cpu_moe))
    f_cpu = n_cpu_moe / big_m
    stack = MemoryStack((
        ("VRAM", _("non-expert weights"), w.outside_bytes), ("VRAM", _("KV cache"), w.kv_cache_bytes),
        ("VRAM", _("experts of {n} layers").format(n=big_m - n_cpu_moe), (1 - f_cpu) * w.expert_bytes),
        ("VRAM", _("runtime overhead"), machine.gpu_overhead_bytes),
        ("RAM", _("experts of {n} layers").format(n=n_cpu_moe), f_cpu * w.expert_bytes)), _capacity(machine))
    gpu_bytes = (w.outside_read_bytes_per_step + w.kv_cache_bytes
                 + (1 - f_cpu) * w.active_expert_bytes_per_step)
    decode = bound_from_parts([Part("VRAM", gpu_bytes, machine.vram_gbps),
                               Part("RAM", f_cpu * w.active_expert_bytes_per_step,
                                    machine.ram_gbps)], w.batch)
    notes = (_("llama.cpp: --n-gpu-layers 999 --n-cpu-moe {n}").format(n=n_cpu_moe), *w.notes(),
             *machine.bandwidth_notes())
    return Plan("cpu_moe", stack, decode, n_cpu_moe > 0, notes, _prefill(machine, w),
                options={"n_cpu_moe": n_cpu_moe})


def expert_cache(machine: Machine, workload: Workload, hit_rate: float | None = None,
                 cache_bytes: float | None = None, overlap: bool = False) -> Plan:
    """MoE: non-expert weights resident in VRAM, plus a cache of experts with hit rate h.

        t = (non-expert + KV + active experts) / VRAM + (1 - h) x active experts / link
    where the link is PCIe for misses found in pinned RAM, min(disk, PCIe) for the rest.
    cache_bytes=None: all VRAM left after the resident part. hit_rate=None: cache / all experts,
    what uniform (random) routing gives; real routing is skewed and does better (lab06 measures it).
    When the cache holds every expert, every lookup hits: the hit rate is 1, whatever was asked.
    """
    _need_gpu(machine, "expert_cache")
    _need_experts(workload, "expert_cache")
    w, notes = workload, list(workload.notes())
    fixed = w.outside_bytes + w.kv_cache_bytes + machine.gpu_overhead_bytes
    if cache_bytes is None:
        cache_bytes = max(0.0, machine.vram_bytes - fixed)
    if hit_rate is not None and not 0.0 <= hit_rate <= 1.0:
        raise CalculatorError(_("the hit rate must be between 0 and 1, got {value!r}").format(value=hit_rate))
    cache_bytes = min(cache_bytes, w.expert_bytes)
    if cache_bytes >= w.expert_bytes:
        if hit_rate is not None and hit_rate < 1:
            notes.insert(0, _("every expert fits in VRAM, so every lookup hits: hit rate 1, "
                              "not the {asked:.2f} asked for").format(asked=hit_rate))
        else:
            notes.insert(0, _("every expert fits in VRAM: hit rate 1, nothing crosses the link"))
        hit_rate = 1.0
    elif hit_rate is None:
        hit_rate = cache_bytes / w.expert_bytes
        notes.insert(0, _("hit rate {rate:.0%} = cache / all experts (uniform routing)").format(rate=hit_rate))
    rest = w.expert_bytes - cache_bytes
    in_ram = min(rest, machine.ram_usable_bytes)
    f_ram = in_ram / rest if rest > 0 else 1.0
    slots = cache_bytes / w.expert_bytes * w.model.experts
    stack = MemoryStack((
        ("VRAM", _("non-expert weights"), w.outside_bytes), ("VRAM", _("KV cache"), w.kv_cache_bytes),
        ("VRAM", _("expert cache ({slots:.0f} of {experts} per layer, hit rate {hit_rate:.2f})").format(
            slots=slots, experts=w.model.experts, hit_rate=hit_rate), cache_bytes),
        ("VRAM", _("runtime overhead"), machine.gpu_overhead_bytes),
        ("RAM", _("experts (pinned)"), in_ram), ("disk", _("experts"), rest - in_ram)), _capacity(machine))
    misses = (1 - hit_rate) * w.active_expert_bytes_per_step
    decode = bound_from_parts([
        Part("VRAM", w.outside_read_bytes_per_step + w.kv_cache_bytes
             + w.active_expert_bytes_per_step, machine.vram_gbps),
        Part(machine.gpu_link_name, f_ram * misses, machine.pcie_gbps),
        Part("disk", (1 - f_ram) * misses, min(machine.disk_gbps, machine.pcie_gbps))],
        w.batch, overlap)
    notes += machine.bandwidth_notes()
    return Plan("expert_cache", stack, decode, hit_rate < 1, tuple(notes),
                options={"hit_rate": hit_rate, "cache_bytes": cache_bytes, "overlap": overlap,
                         "everything_fits": cache_bytes >= w.expert_bytes})


def multi_gpu(machine: Machine, workload: Workload, mode: str = "layer") -> Plan:
    """The model over `machine.gpu_count` GPUs; activations cross PCIe or NVLink.

    mode="layer" (pipeline): each GPU holds 1/n of the layers and works in turn; one hidden-state
        vector crosses each of the n-1 boundaries per token:
        t = bytes per step / VRAM + (n - 1) x hidden x 2 bytes x batch / link
    mode="tensor": every layer is cut n ways and the GPUs read their shares at once, but each layer
        ends in 2 all-reduces (ring: each GPU sends 2 (n-1)/n of the vector):
        t = bytes per step / (n x VRAM) + layers x 2 x 2 (n-1)/n x hidden x 2 bytes x batch / link
    The bytes are tiny at batch 1; the real cost of "tensor" on PCIe is latency (many small
    transfers), which bandwidth bounds do not show: see the course notebook.
    """
    _need_gpu(machine, "multi_gpu")
    n, w, m = machine.gpu_count, workload, workload.model
    if n < 2:
        raise CalculatorError(_("multi_gpu splits the model over several GPUs, and this machine "
                                "has one: set the number of GPUs to 2 or more, or choose another "
                                "strategy."))
    if mode not in ("layer", "tensor"):
        raise CalculatorError(_("mode must be 'layer' or 'tensor', got {value!r}").format(value=mode))
    notes = [_("{n} GPUs, {mode} split; memory is per GPU x {n}").format(n=n, mode=mode)]
    hidden, layers = m.hidden or 8192, m.layers or 80
    if m.hidden is None or m.layers is None:
        notes.append(_("{model}: shape unknown, so a 70B-class shape is assumed (hidden 8192, 80 layers)")
                     .format(model=m.name))
    if machine.use_nvlink:
        link, link_gbps = "NVLink", machine.gpu.nvlink_gbps / 2   # vendors add both directions
    else:
        link, link_gbps = machine.gpu_link_name, machine.pcie_gbps
    act = hidden * 2 * w.batch   # bytes: one fp16 hidden vector per sequence
    stack = MemoryStack((
        ("VRAM", _("weights (1/{n} per GPU)").format(n=n), w.weight_bytes),
        ("VRAM", _("KV cache"), w.kv_cache_bytes),
        ("VRAM", _("runtime overhead x {n}").format(n=n), n * machine.gpu_overhead_bytes)), _capacity(machine, n))
    if mode == "layer":
        parts = [Part("VRAM", w.bytes_per_step, machine.vram_gbps), Part(link, (n - 1) * act, link_gbps)]
    else:
        parts = [Part("VRAM", w.bytes_per_step / n, machine.vram_gbps),
                 Part(link, layers * 2 * 2 * (n - 1) / n * act, link_gbps)]
    return Plan(f"multi_gpu_{mode}", stack, bound_from_parts(parts, w.batch), False,
                (*notes, *w.notes(), *machine.bandwidth_notes()), options={"mode": mode})
