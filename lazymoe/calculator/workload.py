"""What runs (a model at a format, context and batch) and what it runs on (GPU, CPU, RAM, disk).

All byte counts here are bookkeeping over the catalog's parameter counts: no tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

from lazymoe import catalog
from lazymoe.calculator.bounds import CalculatorError
from lazymoe.catalog import HardwareSpec, ModelSpec

GiB = 2**30
# Assumptions, not measurements: change them where you know better.
GPU_OVERHEAD_BYTES = GiB // 2   # CUDA context + scratch buffers per GPU; `nvidia-smi` shows yours
RAM_RESERVE_BYTES = 2 * GiB     # left to the OS, the browser and the notebook
# A PCIe 3.0 x4 NVMe SSD's sequential read (e.g. Samsung 970 EVO Plus datasheet: 3,500 MB/s).
DISK_GBPS = 3.5


@dataclass(frozen=True)
class Workload:
    """A model at a weight format, for `context_tokens` of context and `batch` sequences.

    bits_per_weight         bits per weight, scales included (formats.yaml)
    other_bits_per_weight   for MoE: the weights outside the experts, when they are kept at
                            another format (GPT-OSS: MXFP4 experts, BF16 rest); None = same
    kv_bits                 bits per cached K/V value (16 for an fp16 cache, 8 for q8_0)
    """

    model: ModelSpec
    bits_per_weight: float
    other_bits_per_weight: float | None = None
    context_tokens: int = 4096
    batch: int = 1
    kv_bits: float = 16.0

    def __post_init__(self) -> None:
        if not 0 < self.bits_per_weight <= 32:
            raise CalculatorError(f"bits_per_weight must be in (0, 32], got {self.bits_per_weight}")
        if self.context_tokens < 1 or self.batch < 1:
            raise CalculatorError("context_tokens and batch must be at least 1")

    @classmethod
    def from_names(cls, model: str, fmt: str | None = None, **kwargs) -> Workload:
        """Build from catalog names: `Workload.from_names("Qwen3-30B-A3B", "Q4_K_M")`."""
        spec = catalog.model(model)
        bits = catalog.weight_format(fmt or spec.native_format).bits_per_weight
        return cls(spec, bits, **kwargs)

    # ---- bytes held -----------------------------------------------------------------------
    @property
    def _other_bits(self) -> float:
        return self.other_bits_per_weight or self.bits_per_weight

    @property
    def expert_bytes(self) -> float:
        """All routed experts of all layers (0 for a dense model or unknown expert shapes)."""
        m = self.model
        if not m.has_expert_shapes:
            return 0.0
        return m.n_moe_layers * m.experts * m.params_per_expert * self.bits_per_weight / 8

    @property
    def outside_bytes(self) -> float:
        """Everything but the routed experts (all weights, for a dense model)."""
        m = self.model
        if not m.has_expert_shapes:
            return m.params_total * self.bits_per_weight / 8
        return m.params_outside_experts * self._other_bits / 8

    @property
    def weight_bytes(self) -> float:
        return self.expert_bytes + self.outside_bytes

    @property
    def kv_cache_bytes(self) -> float:
        """context x batch x KV layers x (2 x kv_heads x head_dim) x kv_bits / 8."""
        values = self.model.kv_values_per_token_layer
        layers = self.model.n_kv_layers
        if values is None or layers is None:
            return 0.0
        return self.context_tokens * self.batch * layers * values * self.kv_bits / 8

    # ---- bytes read per decode step (one token for each sequence of the batch) ------------
    def experts_touched_per_layer(self) -> float:
        """Distinct experts a layer uses for the batch: E x (1 - (1 - k/E)^B), uniform routing."""
        m = self.model
        return m.experts * (1 - (1 - m.experts_per_token / m.experts) ** self.batch)

    @property
    def active_expert_bytes_per_step(self) -> float:
        m = self.model
        if not m.has_expert_shapes:
            return 0.0
        return (m.n_moe_layers * self.experts_touched_per_layer() * m.params_per_expert
                * self.bits_per_weight / 8)

    @property
    def outside_read_bytes_per_step(self) -> float:
        """Non-expert weights read per step; the input embedding gives one row, not its table."""
        m = self.model
        if m.is_moe and not m.has_expert_shapes:
            return m.params_active * self.bits_per_weight / 8   # only the published total known
        params = m.params_outside_experts if m.has_expert_shapes else m.params_total
        return (params - m.params_input_embedding) * self._other_bits / 8

    @property
    def weights_read_per_step(self) -> float:
        return self.outside_read_bytes_per_step + self.active_expert_bytes_per_step

    @property
    def bytes_per_step(self) -> float:
        """Weights read once per step, plus every sequence's KV cache (at full context)."""
        return self.weights_read_per_step + self.kv_cache_bytes

    @property
    def bytes_per_layer(self) -> float:
        """Weight bytes of one layer, embeddings spread evenly (what layer splits move)."""
        return self.weight_bytes / self.n_slices

    @property
    def n_slices(self) -> int:
        """Layers to split by; 100 slices when the catalog does not give the layer count."""
        return self.model.layers or 100

    def notes(self) -> list[str]:
        m, out = self.model, []
        if m.is_moe and not m.has_expert_shapes:
            out.append(f"{m.name}: expert shapes unknown, so each token is taken to read "
                       f"{m.params_active / 1e9:.1f}B parameters as one block")
        if m.kv_values_per_token_layer is None:
            out.append(f"{m.name}: KV shape unknown, KV cache left out")
        if self.kv_cache_bytes > 0:
            out.append(f"the KV cache is counted at its full length, {self.context_tokens} tokens")
        return out


@dataclass(frozen=True)
class Machine:
    """A computer: an optional GPU (x gpu_count), the host's memory system, RAM size and a disk.

    host is a catalog row of kind "cpu" (RAM bandwidth) or "unified" (Apple: one memory for CPU
    and GPU; then `gpu` is None and the GPU strategies use the unified memory).
    """

    host: HardwareSpec
    ram_bytes: int
    gpu: HardwareSpec | None = None
    gpu_count: int = 1
    disk_gbps: float = DISK_GBPS
    use_nvlink: bool = False
    gpu_overhead_bytes: int = GPU_OVERHEAD_BYTES
    ram_reserve_bytes: int = RAM_RESERVE_BYTES

    def __post_init__(self) -> None:
        if self.gpu is not None and self.gpu.kind != "gpu":
            raise CalculatorError(f"{self.gpu.name} is a {self.gpu.kind} row: pass it as host=")
        if self.host.kind == "gpu":
            raise CalculatorError(f"{self.host.name} is a GPU: pass it as gpu=, and a CPU row as host=")
        if self.gpu_count < 1:
            raise CalculatorError("gpu_count must be at least 1")
        if self.use_nvlink and (self.gpu is None or not self.gpu.nvlink_gbps):
            raise CalculatorError("use_nvlink=True, but this GPU has no NVLink in the catalog")

    @classmethod
    def from_names(cls, host: str, ram_gb: float | None = None, gpu: str | None = None,
                   **kwargs) -> Machine:
        """`Machine.from_names("DDR5-5600 dual", 64, gpu="RTX 3090")`; ram_gb in GiB."""
        host_spec = catalog.hardware(host)
        if ram_gb is None:
            if host_spec.memory_bytes is None:
                raise CalculatorError(f"{host_spec.name} is a CPU row: say how much RAM (ram_gb)")
            ram_bytes = host_spec.memory_bytes
        else:
            ram_bytes = int(ram_gb * GiB)
        return cls(host_spec, ram_bytes, catalog.hardware(gpu) if gpu else None, **kwargs)

    @property
    def unified(self) -> bool:
        return self.host.kind == "unified"

    @property
    def has_gpu(self) -> bool:
        return self.gpu is not None or self.unified

    @property
    def vram_bytes(self) -> int:
        """Memory of one GPU (the unified memory, on an Apple machine)."""
        if self.gpu is not None:
            return self.gpu.memory_bytes or 0
        return self.ram_bytes if self.unified else 0

    @property
    def vram_gbps(self) -> float:
        return self.gpu.bandwidth_gbps if self.gpu is not None else self.host.bandwidth_gbps

    @property
    def vram_name(self) -> str:
        return "VRAM" if self.gpu is not None else "unified memory"

    @property
    def ram_gbps(self) -> float:
        return self.host.bandwidth_gbps

    @property
    def pcie_gbps(self) -> float:
        if self.gpu is None or self.gpu.link_gbps is None:
            raise CalculatorError("this machine has no GPU host link in the catalog")
        return self.gpu.link_gbps

    @property
    def gpu_link_name(self) -> str:
        return self.gpu.link_name if self.gpu is not None else "none"

    @property
    def ram_usable_bytes(self) -> int:
        return max(0, self.ram_bytes - self.ram_reserve_bytes)

    def describe(self) -> str:
        gpu = f"{self.gpu_count} x {self.gpu.name}" if self.gpu else "no GPU"
        return f"{gpu}; {self.host.name}; {self.ram_bytes / GiB:.0f} GiB RAM"
