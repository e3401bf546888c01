"""What the engine is asked to do: `EngineConfig` (where things live) and `GenerationConfig`.

Both validate themselves on construction, with messages that say what to change.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# parse_bytes is also imported from here (its old home)
from lazymoe.engine.optionspec import (
    cli,
    devices_arg,
    option_fields,
    parse_bytes,
    parse_devices,
    size_arg,
)
from lazymoe.engine.parts.policies import EvictionPolicy
from lazymoe.engine.parts.trace import RoutingTrace

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16", "float16")
# "fetch": copy the missed expert to where the model runs, compute it there; "cpu": compute it on
# the CPU from where it lives; "auto": choose per expert. "gpu" is fetch's old name (old commands
# and results files use it).
PLACEMENTS = ("fetch", "cpu", "auto")
PLACEMENT_ALIASES = {"gpu": "fetch"}
POLICY_NAMES = ("lru", "lfu", "fifo")  # lazymoe.engine.parts.policies.POLICIES
KERNELS = ("reference", "grouped", "batched", "fused")  # see lazymoe.engine.compute.kernels
DECODE_PATHS = ("auto", "model", "segments", "graphs", "device-cache")  # see lazymoe.engine.compute.graphs
CPU_ACTIVATIONS = ("float", "int8")  # lazymoe.quant.expert.expert_forward's `activations`


def count_or_share(value: str) -> int | None:
    """--fetch-per-layer's value: a whole number, or "share" (None: auto's share of each layer's
    misses, which a bench sweep can then hold beside counts)."""
    if value == "share":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give a whole number or 'share'") from None


def canonical_placement(value: str) -> str:
    """'gpu' (the old name) -> 'fetch'; every other value as it is."""
    return PLACEMENT_ALIASES.get(value, value)


def format_bytes(n_bytes: int | float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= size:
            return f"{n_bytes / size:.2f} {unit}"
    return f"{int(n_bytes)} B"


@dataclass
class EngineConfig:
    """Where each part of the model lives, and how the expert cache behaves.

    vram_budget: bytes of device memory for cached experts (None: every expert resident, the
        plain model). On a machine without a GPU the device is the CPU and its cache tier is RAM:
        then `ram_budget` sizes it (or `vram_budget` when only that one is given). With `devices`,
        each device gets this budget for the experts of its own layers.
    devices: split the decoder layers over several devices, in contiguous ranges balanced by
        count (lazymoe.engine.compute.split): e.g. ("cuda:0", "cuda:1") for two 12 GB GPUs, each
        holding its layers' weights and its own expert cache. The embedding lives on the first,
        the final norm and lm_head on the last. A "cpu" in the list runs its layers on the CPU
        with a RAM cache (`ram_budget`, else `vram_budget`): a GPU too small for the whole model
        hands its last layers to the CPU, like llama.cpp's -ngl. ("cpu", "cpu") computes exactly
        what one CPU does, with two of everything (the tests use it). None: one device, `device`.
    ram_budget: bytes of pinned RAM for a second tier under the GPU (None or 0: no RAM tier;
        misses are read from the memory-mapped checkpoint, which the OS page cache still helps).
    placement: where a missed expert is computed: "fetch" copies it to where the model runs
        (disk -> RAM -> VRAM on a GPU) and computes it there, "cpu" computes it on the CPU where
        it lives (llama.cpp's --cpu-moe), "auto" chooses per expert with a cost model fed by
        measured bandwidths (as Fiddler does). "gpu" is accepted as fetch's old name. On a
        CPU-only machine every placement computes on the CPU.
    policy: eviction policy name ("lru", "lfu", "fifo"), an `EvictionPolicy` instance (it keeps
        its state), or an `EvictionPolicy` subclass (a fresh one per tier).
    prefetch: predict the next layer's experts through its router and fetch them ahead.
    experts_path: a folder written by `lazymoe.engine.storage.extract.extract(model_path, ...)` (a
        per-layer contiguous layout, optionally quantized: fewer bytes per miss); None: read the
        experts from the checkpoint's own safetensors.
    kernel: how a layer's resident experts are computed (lazymoe.engine.compute.kernels): "reference"
        (one expert at a time, the simple path), "grouped" (prefill rows sorted by expert; decode
        a plain loop), "batched" (decode: gather the chosen slots, two batched matmuls), "fused"
        (decode: Triton kernels reading the slots in place, GPU only); None: "fused" on a GPU
        with Triton ("batched" without it), "grouped" on a CPU ("auto" is the same as None).
    decode: how a decode token runs (lazymoe.engine.compute.graphs): "model" (transformers' forward, one
        eager call per module), "segments" (the engine's own layer loop, cut at the routers),
        "graphs" (that loop captured as CUDA graphs: one launch per layer instead of ~100),
        "device-cache" (lazymoe.engine.compute.device_cache: the cache's lookups, evictions and
        fills done by the GPU itself, the whole token one graph; a GGUF file's experts, LRU,
        pin_checkpoint on a GPU); "auto": "device-cache" where it runs on a GPU, else "graphs"
        on a GPU when the model and placement allow it, else "model".
    pin_checkpoint: page-lock the memory-mapped expert files for CUDA (read-only
        cudaHostRegister) so a miss is one DMA copy from the mapping to VRAM at pinned bandwidth,
        with no host copy into a staging buffer first (measured on an H200: ~49 GB/s instead
        of ~20 GB/s from mapped pages, 3-8 GB/s from pages touched for the first time). The
        files stay locked in RAM until close(): it needs RAM for all of them, like llama.cpp's
        --mlock, and locking takes a while (~1.4 GB/s). GPU only; ignored on a CPU.
    fetch_per_layer: with decode "device-cache" and placement "auto", at most how many of a layer's
        missed experts a decode token fetches; the CPU computes the others while they cross the
        link (lazymoe.engine.compute.cpu_misses). None: a share of each layer's misses, first the
        one that keeps the link and the CPU equally busy by the measured speeds, then tuned as
        decode tokens run (cpu_misses.ShareTuner). (Placement "cpu" fetches none, "fetch" all.)
    cpu_activations: how the CPU computes a GGUF file's quantized experts
        (lazymoe.quant.expert.expert_forward): "float" (the default: every activation stays
        float32, tokens equal transformers on the dequantized weights) or "int8" (each block of
        32 inputs rounded to int8 with one scale, integer dot products, as llama.cpp's CPU code:
        2-4x faster there, each output off by about 1/254 of its block's largest input, so a
        token may differ now and then). Formats without an int8 kernel stay float.

    Fields with `cli(...)` metadata are also command-line options, defined once here for
    `lazymoe run`, `lazymoe serve` and `lazymoe bench` (`lazymoe.engine.options`).
    """

    model_path: str | Path = field(metadata=cli(
        "model folder (config.json, *.safetensors, tokenizer) or a .gguf file (experts stay "
        "quantized on the CPU)", flag="--model", metavar="PATH",
        none_means="the bundled tiny model"))
    device: str = field(default="auto", metadata=cli(
        "where the model runs; auto: a CUDA GPU if PyTorch sees one, else the CPU",
        choices=DEVICES))
    dtype: str = field(default="float32", metadata=cli("compute dtype", choices=DTYPES))
    vram_budget: str | int | None = field(default=None, metadata=cli(
        "memory for cached experts where the model runs, e.g. 6GiB or 512MiB (GiB = 2**30 bytes, "
        "GB = 10**9); with --gpus, per GPU", type=size_arg, metavar="SIZE",
        none_means="every expert resident"))
    devices: tuple[str, ...] | None = field(default=None, metadata=cli(
        "split the layers over these GPUs, e.g. 0,1 (cuda:0 and cuda:1), each with its own expert "
        "cache of --vram-budget; device names such as cpu work too", flag="--gpus",
        type=devices_arg, metavar="LIST", none_means="one device, --device"))
    ram_budget: str | int | None = field(default=None, metadata=cli(
        "pinned-RAM tier under the GPU, e.g. 24GiB (on a CPU-only machine: the cache itself)",
        type=size_arg, metavar="SIZE", none_means="no RAM tier"))
    placement: str = field(default="fetch", metadata=cli(
        "where a missed expert is computed: fetch (copy it to where the model runs, compute it "
        "there), cpu (compute it on the CPU where it lives, as llama.cpp's --cpu-moe), auto (choose "
        "per expert from measured bandwidths); 'gpu' is accepted as the old name of fetch",
        choices=PLACEMENTS, type=canonical_placement))
    policy: str | EvictionPolicy | type[EvictionPolicy] = field(default="lru", metadata=cli(
        "expert-cache eviction policy", choices=POLICY_NAMES))
    prefetch: bool = field(default=True, metadata=cli(
        "turn prefetch off (predicting the next layer's experts and fetching them ahead)",
        flag="--no-prefetch", switch=True))
    experts_path: str | Path | None = field(default=None, metadata=cli(
        "experts extracted by lazymoe.engine.storage.extract (e.g. int8: fewer bytes per miss)",
        metavar="DIR", none_means="the checkpoint's own safetensors"))
    kernel: str | None = field(default="auto", metadata=cli(
        "how resident experts are computed; auto: fused on a GPU with Triton, else batched; "
        "grouped on a CPU", choices=("auto", *KERNELS)))
    decode: str = field(default="auto", metadata=cli(
        "how a decode token runs; auto: the GPU keeps the cache itself (device-cache) or CUDA "
        "graphs on a GPU where they apply, else transformers' forward", choices=DECODE_PATHS))
    pin_checkpoint: bool = field(default=False, metadata=cli(
        "page-lock the mapped expert files for direct copies to the GPU (needs RAM for all of "
        "them)", switch=True))
    cpu_activations: str = field(default="float", metadata=cli(
        "how the CPU multiplies a GGUF file's experts: float (the same tokens as transformers on "
        "the dequantized weights) or int8 (the inputs rounded to 8-bit blocks, integer dot "
        "products, as llama.cpp does: 2-4x faster, slightly different numbers)",
        choices=CPU_ACTIVATIONS))
    fetch_per_layer: int | None = field(default=None, metadata=cli(
        "with decode device-cache and placement auto: at most how many of a layer's missed "
        "experts a token fetches to the GPU; the CPU computes the others at the same time ('share': a "
        "share of each layer's misses, as when it is not given)", type=count_or_share,
        metavar="N", none_means="a share of each layer's misses, tuned as tokens run"))
    # Measured bandwidths for placement="auto" (GB/s); None: measured at load time.
    h2d_bandwidth_gbps: float | None = field(default=None, metadata=cli(
        "host-to-GPU bandwidth for placement auto, GB/s", type=float, metavar="GB/S",
        none_means="measured at load time"))
    cpu_bandwidth_gbps: float | None = field(default=None, metadata=cli(
        "CPU memory bandwidth for placement auto, GB/s", type=float, metavar="GB/S",
        none_means="measured at load time"))
    # Parts written by a learner (lab08), objects rather than command-line options:
    # expert_reader(path, header, layer, expert) -> (gate, up, down) reads every expert (lab05b);
    # prefetch_predictor(hidden (D,), router_weight (E, D), top_k) -> ids guesses the next layer's
    # experts (lab07). None: the package's own (lazymoe.engine.storage.reader, parts.prefetch).
    expert_reader: Callable | None = None
    prefetch_predictor: Callable | None = None
    # Benchmarks only, not a command-line option: a RoutingTrace (or the path of one saved as .npz)
    # whose experts are fetched and computed in place of the router's choice; the routers still
    # run (lazymoe.engine.parts.replay). None: the model's own routing.
    routing_trace: RoutingTrace | str | Path | None = None
    vram_budget_bytes: int | None = field(init=False, default=None)
    ram_budget_bytes: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.model_path = Path(self.model_path)
        for name in ("expert_reader", "prefetch_predictor"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise TypeError(f"{name}={getattr(self, name)!r}: give a function, or None for the "
                                "package's own")
        if self.expert_reader is not None and self.experts_path is not None:
            raise ValueError("expert_reader reads the checkpoint's safetensors: leave experts_path "
                             "None when you give one")
        self.placement = canonical_placement(self.placement)
        if self.kernel == "auto":
            self.kernel = None
        if self.device not in DEVICES:
            raise ValueError(f"device={self.device!r}: choose one of {', '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if self.placement not in PLACEMENTS:
            raise ValueError(
                f"placement={self.placement!r}: choose one of {', '.join(PLACEMENTS)} "
                "('gpu' is accepted as the old name of 'fetch')"
            )
        if self.kernel not in (None, *KERNELS):
            raise ValueError(f"kernel={self.kernel!r}: choose one of {', '.join(KERNELS)}, 'auto' or None")
        if self.fetch_per_layer is not None and (
            isinstance(self.fetch_per_layer, bool) or not isinstance(self.fetch_per_layer, int)
            or self.fetch_per_layer < 0
        ):
            raise ValueError(f"fetch_per_layer={self.fetch_per_layer!r}: give a whole number >= 0, "
                             "or None to choose it from the measured speeds")  # fmt: skip
        if self.cpu_activations not in CPU_ACTIVATIONS:
            raise ValueError(f"cpu_activations={self.cpu_activations!r}: choose one of "
                             f"{', '.join(CPU_ACTIVATIONS)}")
        if self.decode not in DECODE_PATHS:
            raise ValueError(f"decode={self.decode!r}: choose one of {', '.join(DECODE_PATHS)}")
        is_policy_class = isinstance(self.policy, type) and issubclass(self.policy, EvictionPolicy)
        if not (isinstance(self.policy, (str, EvictionPolicy)) or is_policy_class):
            raise TypeError(
                f"policy={self.policy!r}: give a name ('lru', 'lfu', 'fifo') or an EvictionPolicy "
                "instance (a subclass of lazymoe.engine.parts.policies.EvictionPolicy)"
            )
        self._check_devices()
        self.vram_budget_bytes = parse_bytes(self.vram_budget, "vram_budget")
        self.ram_budget_bytes = parse_bytes(self.ram_budget, "ram_budget")
        if not self.model_path.exists():
            raise FileNotFoundError(
                f"model_path {self.model_path} does not exist: give a folder with config.json and "
                "*.safetensors, or a .gguf file (the bundled model: lazymoe.paths.bundled_model_dir(); build it with "
                "`python -m lazymoe.models.prepare`)"
            )

        if self.experts_path is not None:
            self.experts_path = Path(self.experts_path)
            if not (self.experts_path / "manifest.json").exists():
                raise FileNotFoundError(
                    f"experts_path {self.experts_path} holds no manifest.json: write it with "
                    f"lazymoe.engine.storage.extract.extract({str(self.model_path)!r}, out_dir, fmt=...)"
                )

    @classmethod
    def from_args(cls, namespace: argparse.Namespace, **overrides: Any) -> EngineConfig:
        """The config the command-line flags say (`lazymoe.engine.options.add_engine_arguments`);
        `overrides` (field name -> value) win. A missing --model means the bundled model."""
        values = {}
        for f in option_fields(cls):
            if f.name in overrides:
                values[f.name] = overrides.pop(f.name)
            elif hasattr(namespace, f.name):
                values[f.name] = getattr(namespace, f.name)
            else:
                raise ValueError(
                    f"the command line has no {f.metadata['cli'].flag_for(f.name)}: add the engine "
                    "options with lazymoe.engine.options.add_engine_arguments(parser)"
                )
            if isinstance(values[f.name], list):  # a swept option (lazymoe bench) holds several
                raise ValueError(
                    f"{f.name}={values[f.name]!r} holds several values: pass one as "
                    f"EngineConfig.from_args(args, {f.name}=...)"
                )
        if values["model_path"] is None:
            from lazymoe import paths

            values["model_path"] = paths.bundled_model_dir()
        return cls(**values, **overrides)

    def cli_values(self) -> dict[str, Any]:
        """The command-line fields as plain values (JSON-ready): what a results file records."""
        out = {}
        for f in option_fields(type(self)):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, EvictionPolicy | type):  # a policy object: record its name
                value = getattr(value, "name", None) or value.__name__
            out[f.name] = value
        return out

    def _check_devices(self) -> None:
        self.devices = parse_devices(self.devices)
        if self.devices is None:
            return
        if len(self.devices) < 2:
            raise ValueError(f"devices={self.devices}: one device is no split: name two or more (e.g. "
                             "--gpus 0,1), or leave devices None and choose the one with device=")
        gpus = [name for name in self.devices if name != "cpu"]
        if len(set(gpus)) < len(gpus):
            raise ValueError(f"devices={self.devices} names a GPU twice: name each GPU once")
        kinds = {name.split(":")[0] for name in self.devices}
        if self.device != "auto" and kinds != {self.device}:
            raise ValueError(f"device={self.device!r} and devices={self.devices} disagree: leave "
                             "device='auto' when you give devices (the model starts on the first)")

    def resolved_devices(self) -> tuple[str, ...] | None:
        """`devices`, each GPU checked against what PyTorch sees; None without a split."""
        if self.devices is None:
            return None
        import torch

        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        for name in self.devices:
            if name != "cpu" and int(name.split(":")[1]) >= n_gpus:
                fix = (f"name only GPUs 0..{n_gpus - 1}" if n_gpus else "see `lazymoe doctor`, or "
                       "leave devices (--gpus) out to run on one device")  # fmt: skip
                raise RuntimeError(f"devices names {name}, but PyTorch sees {n_gpus} CUDA GPU(s): {fix}")
        return self.devices

    def resolved_device(self) -> str:
        """Where the model starts: `device` made concrete, or the first of `devices`."""
        import torch

        if self.devices is not None:
            return self.resolved_devices()[0]
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                "device='cuda' but PyTorch sees no CUDA GPU: use device='cpu' (or 'auto'), or "
                "install a CUDA build of PyTorch (see `lazymoe doctor`)"
            )
        return self.device


@dataclass
class GenerationConfig:
    """How to pick each next token, and when to stop.

    temperature 0 is greedy (argmax). Otherwise logits / temperature, then top-k (0: off), then
    top-p nucleus (1.0: off), then one draw from the `seed`-ed generator.
    Generation stops after a token in `stop_token_ids` (None: the tokenizer's end-of-text; ()
    never) or once the decoded new text contains a stop string; that last token is included,
    so a caller that shows text cuts it at the stop string.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] | None = None  # None: the tokenizer's end-of-text id
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: give 0 or more")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: give 0 (greedy) or more")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p}: give a value in (0, 1]; 1.0 turns it off")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k}: give 0 (off) or a positive count")
        if self.stop_token_ids is not None:
            self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        self.stop_strings = tuple(self.stop_strings)
