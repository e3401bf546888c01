"""Hardware, model and weight-format catalogs, read from data/catalog/*.yaml.

Each row carries its unit in the value ("24 GiB", "1008 GB/s", "30.5B") and names its source.
The loader converts units once, here, so the calculator works in plain numbers: bytes, GB/s
(decimal, 1e9 bytes per second), TFLOP/s, parameter counts. A row with a missing field, an
unknown field or an unknown unit raises `CatalogError` naming the file and the row.

    >>> from lazymoe import catalog
    >>> catalog.hardware("4090").bandwidth_gbps
    1008.0
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from lazymoe.paths import data_dir

BYTE_UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
              "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
BANDWIDTH_UNITS = {"MB/s": 1e-3, "GB/s": 1.0, "TB/s": 1e3}          # -> GB/s
COMPUTE_UNITS = {"GFLOP/s": 1e-3, "TFLOP/s": 1.0, "PFLOP/s": 1e3}   # -> TFLOP/s
COUNT_SUFFIXES = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}   # parameter counts
HARDWARE_KINDS = ("gpu", "cpu", "unified")
MODEL_KINDS = ("dense", "moe")
# PCIe payload bandwidth per lane and direction, GB/s (see lazymoe.hardware.PCIE_LANE_GBPS).
PCIE_LANE_GBPS = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}


class CatalogError(ValueError):
    """A catalog row is malformed; the message names the file, the row and the field."""


@dataclass(frozen=True)
class HardwareSpec:
    """One GPU, unified-memory chip or CPU memory configuration (numbers from its datasheet)."""

    name: str
    kind: str                                 # gpu | cpu | unified
    bandwidth_gbps: float                     # memory bandwidth, GB/s
    memory_bytes: int | None = None           # VRAM or unified memory; None for a CPU row
    memory_type: str = ""
    pcie_gen: int | None = None
    pcie_lanes: int | None = None
    nvlink_gbps: float | None = None          # both directions added, as vendors quote it
    fp16_tflops: float | None = None          # dense tensor throughput
    source: str = ""
    note: str = ""

    @property
    def link_gbps(self) -> float | None:
        """Host link bandwidth, one direction = lanes x per-lane rate of the PCIe generation."""
        if self.pcie_gen is None or self.pcie_lanes is None:
            return None
        return PCIE_LANE_GBPS[self.pcie_gen] * self.pcie_lanes

    @property
    def link_name(self) -> str:
        return f"PCIe {self.pcie_gen}.0 x{self.pcie_lanes}" if self.pcie_gen else "none"


@dataclass(frozen=True)
class ModelSpec:
    """A model's shape: what decides its bytes, its KV cache and what each token reads."""

    name: str
    kind: str                                 # dense | moe
    params_total: float
    params_active: float | None = None        # as published; dense: None (= total)
    layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    kv_layers: int | None = None
    kv_dim: int | None = None
    params_input_embedding: float = 0.0
    experts: int | None = None
    experts_per_token: int | None = None
    shared_experts: int = 0
    moe_layers: int | None = None
    params_per_expert: float | None = None
    params_outside_experts: float | None = None
    native_format: str = "BF16"
    native_other_format: str | None = None    # MoE: the non-expert weights' format, if different
    source: str = ""
    note: str = ""

    @property
    def is_moe(self) -> bool:
        return self.kind == "moe"

    @property
    def has_expert_shapes(self) -> bool:
        """True when the expert split is known (what CPU-MoE and the expert cache need)."""
        return self.is_moe and None not in (
            self.experts, self.experts_per_token, self.params_per_expert,
            self.params_outside_experts, self.layers)

    @property
    def n_moe_layers(self) -> int:
        return self.moe_layers or self.layers or 0

    @property
    def kv_values_per_token_layer(self) -> int | None:
        """Values cached per token and layer, K and V together (2 x kv_heads x head_dim)."""
        if self.kv_dim is not None:
            return self.kv_dim
        if self.kv_heads is None or self.head_dim is None:
            return None
        return 2 * self.kv_heads * self.head_dim

    @property
    def n_kv_layers(self) -> int | None:
        return self.kv_layers or self.layers


@dataclass(frozen=True)
class WeightFormat:
    """A weight format; a mix (llama.cpp's Q4_K_M) may give each part of an MoE its own average.

    bits_per_weight         the whole-file figure (what a dense model gets)
    expert_bits_per_weight  the routed experts' average bits per weight; None = bits_per_weight
    other_bits_per_weight   everything else's average (attention, embeddings, output head, router)
    """

    name: str
    bits_per_weight: float
    block: str = ""
    source: str = ""
    expert_bits_per_weight: float | None = None
    other_bits_per_weight: float | None = None
    mix_source: str = ""

    @property
    def expert_bits(self) -> float:
        return self.expert_bits_per_weight or self.bits_per_weight

    @property
    def other_bits(self) -> float:
        return self.other_bits_per_weight or self.bits_per_weight


# field name -> (parser kind, required)
_HARDWARE_FIELDS = {
    "name": ("str", True), "kind": ("str", True), "bandwidth": ("bandwidth", True),
    "memory": ("bytes", False), "memory_type": ("str", False), "link": ("link", False),
    "nvlink": ("bandwidth", False), "fp16": ("compute", False),
    "source": ("str", True), "note": ("str", False),
}
_MODEL_FIELDS = {
    "name": ("str", True), "kind": ("str", True), "params_total": ("count", True),
    "params_active": ("count", False), "layers": ("int", False), "hidden": ("int", False),
    "heads": ("int", False), "kv_heads": ("int", False), "head_dim": ("int", False),
    "kv_layers": ("int", False), "kv_dim": ("int", False),
    "params_input_embedding": ("count", False), "experts": ("int", False),
    "experts_per_token": ("int", False), "shared_experts": ("int", False),
    "moe_layers": ("int", False), "params_per_expert": ("count", False),
    "params_outside_experts": ("count", False), "native_format": ("str", False),
    "native_other_format": ("str", False), "source": ("str", True), "note": ("str", False),
}
_FORMAT_FIELDS = {
    "name": ("str", True), "bits_per_weight": ("float", True), "block": ("str", False),
    "source": ("str", True), "expert_bits_per_weight": ("float", False),
    "other_bits_per_weight": ("float", False), "mix_source": ("str", False),
}


def _with_unit(text: str, units: dict[str, float], where: str, name: str) -> float:
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z/]*)\s*", str(text))
    if not match:
        raise CatalogError(f"{where}: field '{name}' = {text!r} is not '<number> <unit>'")
    number, unit = match.groups()
    if unit not in units:
        raise CatalogError(f"{where}: field '{name}' has unknown unit {unit!r} in {text!r}; "
                           f"use one of {', '.join(u for u in units if u)}")
    return float(number) * units[unit]


def _parse(value: object, kind: str, where: str, name: str) -> object:
    if kind == "str":
        return str(value)
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CatalogError(f"{where}: field '{name}' = {value!r} must be a plain number")
        return int(value) if kind == "int" else float(value)
    if kind == "bytes":
        return int(_with_unit(value, BYTE_UNITS, where, name))
    if kind == "bandwidth":
        return _with_unit(value, BANDWIDTH_UNITS, where, name)
    if kind == "compute":
        return _with_unit(value, COMPUTE_UNITS, where, name)
    if kind == "count":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return _with_unit(value, COUNT_SUFFIXES, where, name)
    if kind == "link":
        match = re.fullmatch(r"PCIe\s*([1-6])(?:\.0)?\s*x(1|2|4|8|16)", str(value).strip())
        if not match:
            raise CatalogError(f"{where}: field '{name}' = {value!r}: write it as 'PCIe 4.0 x16'")
        return int(match[1]), int(match[2])
    raise AssertionError(kind)


def _rows(path: Path, spec: dict[str, tuple[str, bool]]) -> list[dict]:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise CatalogError(f"{path} is missing: is LAZYMOE_DATA pointing at the data folder?") from exc
    if not isinstance(raw, list):
        raise CatalogError(f"{path}: expected a list of rows, got {type(raw).__name__}")
    rows, seen = [], set()
    for i, row in enumerate(raw):
        label = row.get("name", "?") if isinstance(row, dict) else repr(row)
        where = f"{path.name}, row {i + 1} ({label})"
        if not isinstance(row, dict):
            raise CatalogError(f"{where}: a row must be a mapping of field: value")
        unknown = sorted(set(row) - set(spec))
        if unknown:
            raise CatalogError(f"{where}: unknown field(s) {unknown}; known: {sorted(spec)}")
        missing = [k for k, (_, required) in spec.items() if required and row.get(k) in (None, "")]
        if missing:
            raise CatalogError(f"{where}: missing required field(s) {missing}")
        parsed = {k: _parse(v, spec[k][0], where, k) for k, v in row.items() if v is not None}
        if parsed["name"] in seen:
            raise CatalogError(f"{where}: the name {parsed['name']!r} appears twice")
        seen.add(parsed["name"])
        parsed["_where"] = where
        rows.append(parsed)
    return rows


def _hardware_row(row: dict) -> HardwareSpec:
    where = row.pop("_where")
    if row["kind"] not in HARDWARE_KINDS:
        raise CatalogError(f"{where}: kind {row['kind']!r} must be one of {HARDWARE_KINDS}")
    if row["kind"] != "cpu" and "memory" not in row:
        raise CatalogError(f"{where}: a {row['kind']} row needs 'memory'")
    pcie_gen, pcie_lanes = row.pop("link", (None, None))
    return HardwareSpec(
        name=row["name"], kind=row["kind"], bandwidth_gbps=row["bandwidth"],
        memory_bytes=row.get("memory"), memory_type=row.get("memory_type", ""),
        pcie_gen=pcie_gen, pcie_lanes=pcie_lanes, nvlink_gbps=row.get("nvlink"),
        fp16_tflops=row.get("fp16"), source=row["source"], note=row.get("note", ""))


def _model_row(row: dict) -> ModelSpec:
    where = row.pop("_where")
    if row["kind"] not in MODEL_KINDS:
        raise CatalogError(f"{where}: kind {row['kind']!r} must be one of {MODEL_KINDS}")
    model = ModelSpec(**row)
    if model.is_moe and model.params_active is None:
        raise CatalogError(f"{where}: an MoE row needs 'params_active'")
    if model.has_expert_shapes:
        # The parts must add up: outside + moe_layers x experts x per-expert = total.
        summed = model.params_outside_experts + (
            model.n_moe_layers * model.experts * model.params_per_expert)
        if abs(summed / model.params_total - 1) > 0.03:
            raise CatalogError(
                f"{where}: params_outside_experts + moe_layers x experts x params_per_expert = "
                f"{summed / 1e9:.2f}B, but params_total is {model.params_total / 1e9:.2f}B; "
                "fix one of them")
    return model


@lru_cache(maxsize=8)
def _load(folder: str) -> tuple[dict[str, HardwareSpec], dict[str, ModelSpec], dict[str, WeightFormat]]:
    base = Path(folder)
    hw = {r.name: r for r in map(_hardware_row, _rows(base / "hardware.yaml", _HARDWARE_FIELDS))}
    models = {r.name: r for r in map(_model_row, _rows(base / "models.yaml", _MODEL_FIELDS))}
    formats = {}
    for row in _rows(base / "formats.yaml", _FORMAT_FIELDS):
        row.pop("_where")
        formats[row["name"]] = WeightFormat(**row)
    for m in models.values():
        for field_name in ("native_format", "native_other_format"):
            value = getattr(m, field_name)
            if value is not None and value not in formats:
                raise CatalogError(f"models.yaml, row {m.name!r}: {field_name} {value!r} "
                                   f"is not in formats.yaml ({', '.join(formats)})")
        if m.native_other_format is not None and not m.has_expert_shapes:
            raise CatalogError(f"models.yaml, row {m.name!r}: native_other_format needs an MoE "
                               "with expert shapes (experts, params_per_expert, ...)")
    return hw, models, formats


def parse_link(text: str) -> tuple[int, int]:
    """'PCIe 4.0 x16' (or '4.0 x16') -> (4, 16): PCIe generation and lanes."""
    text = text if text.strip().lower().startswith("pcie") else f"PCIe {text}"
    return _parse(text, "link", "link", "pcie")


def catalog_dir() -> Path:
    return data_dir() / "catalog"


def all_hardware() -> dict[str, HardwareSpec]:
    return dict(_load(str(catalog_dir()))[0])


def all_models() -> dict[str, ModelSpec]:
    return dict(_load(str(catalog_dir()))[1])


def all_formats() -> dict[str, WeightFormat]:
    return dict(_load(str(catalog_dir()))[2])


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9.]", "", text.lower())


def _find(table: dict, query: str, what: str):
    """Exact name, then case/space-insensitive name, then a unique substring ('4090')."""
    if query in table:
        return table[query]
    key = _norm(query)
    exact = [v for k, v in table.items() if _norm(k) == key]
    if exact:
        return exact[0]
    partial = [k for k in table if key and key in _norm(k)]
    if len(partial) == 1:
        return table[partial[0]]
    hint = f"it matches several: {', '.join(partial)}" if partial else "no name matches"
    raise CatalogError(f"unknown {what} {query!r} ({hint}); `lazymoe calc --list` shows them all")


def hardware(name: str) -> HardwareSpec:
    """A hardware row by name or a unique part of it ('4090', 'm4 max', 'ddr5-5600 dual')."""
    return _find(all_hardware(), name, "hardware")


def model(name: str) -> ModelSpec:
    return _find(all_models(), name, "model")


def weight_format(name: str) -> WeightFormat:
    return _find(all_formats(), name, "format")


__all__ = [
    "CatalogError", "HardwareSpec", "ModelSpec", "WeightFormat", "all_formats", "all_hardware",
    "all_models", "catalog_dir", "hardware", "model", "parse_link", "weight_format",
]
