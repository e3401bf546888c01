"""ExpertStore: where expert bytes live, and reading one expert without loading the file.

An MoE checkpoint keeps its experts in safetensors files, either one tensor per expert and
projection (what transformers 5 `save_pretrained` writes, and what the Hub checkpoints hold):

    model.layers.{L}.mlp.experts.{E}.gate_proj.weight          (I, D)   qwen3_moe, olmoe, qwen2_moe
    model.layers.{L}.block_sparse_moe.experts.{E}.w1.weight     (I, D)   mixtral (w1 gate, w3 up, w2 down)

or fused across experts (transformers 5's in-memory layout, written by some converters):

    model.layers.{L}.mlp.experts.gate_up_proj   (E, 2I, D)   gate = [:, :I], up = [:, I:]
    model.layers.{L}.mlp.experts.down_proj      (E, D, I)

The store reads each file's safetensors header (8-byte length + JSON: dtype, shape, byte offsets)
and memory-maps the file, so one read touches only that expert's bytes, 3 * I * D * bytes_per_param,
and `read_into` copies them straight from the mapped file into a (pinned) buffer: one copy, no
allocation. Every projection of one expert is contiguous in both layouts (for fused tensors the
expert index is the outermost dimension). Qwen2-MoE's shared expert runs for every token: it is
not an expert to cache and the store does not list it.

`ExpertStore.open(path)` also opens a folder written by `extract()` (a per-layer contiguous
layout, see lazymoe/engine/storage/extract.py).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from lazymoe.engine.storage import pagelock
from lazymoe.engine.storage.extracted import ExtractedStore
from lazymoe.engine.storage.safetensors_file import (
    ExpertStoreError,
    SafetensorsFile,
    safetensors_files,
    torch_dtype,
)
from lazymoe.engine.storage.weights import ExpertSource, ExpertWeights
from lazymoe.models.archs import (
    ROLES,
    Arch,
    UnknownArchitectureError,
    get_arch,
    moe_block_pattern,
    moe_layers_from_config,
)

__all__ = ["ExpertStore", "ExpertStoreError", "ExpertWeights", "moe_layers_from_config"]

# an expert tensor's key: layer, MoE block (every name the registry's checkpoints use), the rest
_LAYER = re.compile(rf"(?:^|\.)layers\.(\d+)\.({moe_block_pattern()})\.experts\.(.+)$")


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ExpertStoreError(
            f"{path} not found: point the store at a Hugging Face model folder (config.json + "
            "*.safetensors), e.g. lazymoe.paths.bundled_model_dir()"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExpertStoreError(
            f"{path} is not valid JSON ({err}): download the model again"
        ) from err


def arch_spec(config: dict, where: Path) -> Arch:
    """The architecture record of config.json, or an error naming the supported ones."""
    try:
        return get_arch(config.get("model_type"))
    except UnknownArchitectureError as err:
        raise ExpertStoreError(f"{where}: {err} (by the expert store)") from err


def num_experts_of(config: dict, where: Path) -> int:
    """Routed experts per layer, in the field the architecture's configs use."""
    try:
        return arch_spec(config, where).num_experts(config)
    except UnknownArchitectureError as err:
        raise ExpertStoreError(f"{where}: {err}") from err


class ExpertStore(ExpertSource):
    """Reads experts from a checkpoint's safetensors files. Use `ExpertStore.open(model_dir)`.

    Attributes: arch, num_layers (decoder layers), moe_layers, num_experts, hidden_size (D),
    intermediate_size (I), dtype, expert_nbytes = 3 * I * D * dtype size (bytes).
    """

    def __init__(self, model_dir: Path, config: dict, locations: dict, dtype: torch.dtype) -> None:
        spec = arch_spec(config, model_dir)
        self.model_dir = model_dir
        self.config = config
        self.arch: str = config["model_type"]
        self.num_layers: int = config["num_hidden_layers"]
        self.moe_layers: list[int] = sorted({layer for layer, _ in locations})
        self.num_experts: int = num_experts_of(config, model_dir)
        self.hidden_size: int = config["hidden_size"]
        self.intermediate_size: int = spec.expert_width(config)
        self.dtype = dtype
        self._locations = locations  # (layer, expert) -> {"gate"|"up"|"down": Span}

    @classmethod
    def open(cls, model_dir: str | Path) -> ExpertStore:
        """Index the experts of the checkpoint in `model_dir` (reads headers only).

        A folder holding `manifest.json` from `extract()` opens as an `ExtractedStore`, a .gguf
        file as a `GGUFExpertStore` (quantized experts, read from the file's memory map).
        """
        model_dir = Path(model_dir)
        if model_dir.suffix.lower() == ".gguf" and model_dir.is_file():
            from lazymoe.engine.storage.gguf_file import GGUFExpertStore  # experts stay quantized

            return GGUFExpertStore.open(model_dir)
        if (model_dir / "manifest.json").is_file():
            return ExtractedStore.open(model_dir)
        config = read_config(model_dir)
        spec = arch_spec(config, model_dir)
        files = [SafetensorsFile(path) for path in safetensors_files(model_dir)]
        locations: dict[tuple[int, int], dict] = {}  # (layer, expert) -> {role: Span}
        shapes: dict[str, tuple[int, ...]] = {}
        dtypes: set[str] = set()
        names = dict(zip(spec.expert_projections, ROLES, strict=True))  # checkpoint name -> role
        for file in files:
            for name, info in file.tensors.items():
                m = _LAYER.search(name)
                if m is None:
                    continue
                layer, parts = int(m.group(1)), m.group(3).split(".")
                dtypes.add(info["dtype"])
                shape = tuple(info["shape"])
                if parts[0].isdigit() and len(parts) == 3 and parts[1] in names:  # per expert
                    role = names[parts[1]]
                    shapes[role] = shape
                    span = file.span(name, 0, shape)
                    locations.setdefault((layer, int(parts[0])), {})[role] = span
                elif (
                    parts[0] in ("gate_up_proj", "down_proj") and len(shape) == 3
                ):  # fused (E, ...)
                    n_experts, rows, cols = shape
                    for e in range(n_experts):
                        slot = locations.setdefault((layer, e), {})
                        if parts[0] == "down_proj":
                            slot["down"] = file.span(name, e * rows * cols, (rows, cols))
                            shapes["down"] = (rows, cols)
                        else:  # rows [0, I) are gate_proj, [I, 2I) up_proj
                            half = rows // 2
                            slot["gate"] = file.span(name, e * rows * cols, (half, cols))
                            slot["up"] = file.span(name, (e * rows + half) * cols, (half, cols))
                            shapes["gate"] = shapes["up"] = (half, cols)
        _check_complete(model_dir, config, spec, locations, shapes)
        if len(dtypes) != 1:
            raise ExpertStoreError(
                f"{model_dir}: experts are stored in mixed dtypes {sorted(dtypes)}"
            )
        return cls(model_dir, config, locations, torch_dtype(dtypes.pop()))

    # -- reading --------------------------------------------------------------------------------
    def read(self, layer: int, expert: int) -> ExpertWeights:
        """One expert's weights as new CPU tensors in the checkpoint's dtype."""
        return ExpertWeights(*(t.clone() for t in vars(self.views(layer, expert)).values()))

    def views(self, layer: int, expert: int) -> ExpertWeights:
        """One expert's weights as tensors over the mapped file (no copy; read-only use)."""
        loc = self._where(layer, expert)
        return ExpertWeights(*(loc[role].view() for role in ("gate", "up", "down")))

    def read_into(self, layer: int, expert: int, out: ExpertWeights, non_blocking: bool = False) -> int:
        """Copy one expert into preallocated buffers `out` (pinned RAM, or even VRAM) straight
        from the memory-mapped file; returns the bytes read. A dtype other than the checkpoint's
        is converted on the way. non_blocking: for a GPU `out` and a page-locked file
        (pin_for_cuda), the copies are only enqueued on the current stream."""
        src = self.views(layer, expert)
        nbytes = 0
        for role in ("gate", "up", "down"):
            s, dst = getattr(src, role), getattr(out, role)
            if dst.shape != s.shape:
                raise ExpertStoreError(
                    f"buffer for {role} of expert ({layer}, {expert}) has shape {tuple(dst.shape)}, "
                    f"the checkpoint has {tuple(s.shape)}: allocate it with store.empty_buffers()"
                )
            dst.copy_(s, non_blocking=non_blocking)
            nbytes += s.numel() * s.element_size()
        return nbytes

    def keys(self) -> list[tuple[int, int]]:
        """Every (layer, expert) the store holds, layer by layer."""
        return sorted(self._locations)

    def _files(self) -> list[SafetensorsFile]:
        """The files the experts live in, each once, in a stable order."""
        files = {id(span.file): span.file for spans in self._locations.values() for span in spans.values()}
        return list(files.values())

    @property
    def file_nbytes(self) -> int:
        """Bytes `pin_for_cuda` locks: every file holding experts, whole."""
        return sum(file.path.stat().st_size for file in self._files())

    def pin_for_cuda(self) -> int:
        """Page-lock every expert file's mapping for CUDA (see SafetensorsFile.pin_for_cuda): the
        tiers then copy misses straight from the mapping to VRAM. Needs RAM for all the files
        (like llama.cpp's --mlock). Returns the bytes this call locked; close() unlocks them."""
        pinned, nbytes = [], 0
        try:
            for file in self._files():
                nbytes += file.pin_for_cuda()
                pinned.append(file)
        except Exception:
            for file in pinned:  # nothing stays locked after a failure
                file.close()
            raise
        return nbytes

    def part_offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """Where each expert's gate, up and down lie: (offsets (layers, E, 3) int64, bytes from
        the first byte of `map_tensor`; sizes (layers, 3) int64 bytes), layers in `moe_layers`
        order. For a reader of the maps themselves (compute/device_cache.py)."""
        base = min(file.map().ctypes.data for file in self._files())
        offsets = np.empty((len(self.moe_layers), self.num_experts, 3), dtype=np.int64)
        sizes = np.empty((len(self.moe_layers), 3), dtype=np.int64)
        for j, layer in enumerate(self.moe_layers):
            for e in range(self.num_experts):
                loc = self._where(layer, e)
                for r, role in enumerate(ROLES):
                    span = loc[role]
                    offsets[j, e, r] = span.file.map().ctypes.data - base + span.start
                    sizes[j, r] = math.prod(span.shape) * span.dtype.itemsize
        return offsets, sizes

    def map_tensor(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The expert files' maps as one flat tensor of `dtype` from the lowest one's first byte
        (no copy). On a GPU the page-locked maps, read over PCIe (`pin_for_cuda` first): the
        tensor spans every file (the addresses between them are never read). On the CPU (tests)
        one file only."""
        files = self._files()
        if device.type == "cuda":
            if not self.pinned:
                raise ExpertStoreError(f"{self.model_dir}: the GPU reads the files in place only "
                                       "once they are page-locked: pin_checkpoint=True")  # fmt: skip
            base = min(file.map().ctypes.data for file in files)
            end = max(file.map().ctypes.data + file.map().nbytes for file in files)
            return pagelock.device_view(base, end - base, dtype, device)
        if len(files) != 1:
            raise ExpertStoreError(f"{self.model_dir}: on a CPU the experts are read in place "
                                   f"from one file, not {len(files)}")  # fmt: skip
        return pagelock.host_view(files[0].map(), dtype)

    @property
    def pinned(self) -> bool:
        files = self._files()
        return bool(files) and all(file._pinned for file in files)

    def close(self) -> None:
        """Drop the memory maps and unlock them (reads after this map the files again)."""
        for file in self._files():
            file.close()

    def _where(self, layer: int, expert: int) -> dict:
        loc = self._locations.get((layer, expert))
        if loc is None:
            raise KeyError(
                f"no expert ({layer}, {expert}) in {self.model_dir}: MoE layers are "
                f"{self.moe_layers}, experts 0..{self.num_experts - 1}"
            )
        return loc


def _check_complete(
    model_dir: Path, config: dict, spec: Arch, locations: dict, shapes: dict
) -> None:
    num_experts = num_experts_of(config, model_dir)
    intermediate, hidden = config.get(spec.expert_width_field), config.get("hidden_size")
    expected = {
        "gate": (intermediate, hidden),
        "up": (intermediate, hidden),
        "down": (hidden, intermediate),
    }
    for role, shape in shapes.items():
        if tuple(shape) != expected[role]:
            raise ExpertStoreError(
                f"{model_dir}: expert {role} tensors have shape {tuple(shape)} but config.json says "
                f"{expected[role]} ({spec.expert_width_field}={intermediate}, hidden_size={hidden}): "
                "the weights and the config do not belong together"
            )
    for layer in moe_layers_from_config(config):
        for e in range(num_experts):
            missing = {"gate", "up", "down"} - set(locations.get((layer, e), {}))
            if missing:
                raise ExpertStoreError(
                    f"{model_dir}: expert ({layer}, {e}) lacks its {sorted(missing)} weights "
                    f"(model.layers.{layer}.{spec.moe_block}.experts...): the checkpoint is incomplete "
                    "or not the architecture config.json names"
                )
