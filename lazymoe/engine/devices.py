"""One expert cache per device: the layers each device runs, its tiers and its `ExpertRuntime`.

An engine on one device has one `DeviceShare` holding every layer. With `EngineConfig.devices`
the layers are split (`compute/split.py`) and each device gets a share of its own:

    share i:  devices[i], its decoder layers, a TierStack sized by the per-device budget for the
              experts of those layers only, and an ExpertRuntime that every one of its layers'
              `OffloadedExperts` calls

Numbers add up over the shares (`engine_stats`): hits, misses, bytes moved, pools, expert
computations; each share's own figures are listed under `EngineStats.devices`. Prefetch guesses
the next layer's experts while this one runs: across a device boundary it would fill the wrong
device's cache, so one shared `Prefetcher` covers every device but skips those transitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from lazymoe.engine.compute import split
from lazymoe.engine.compute.moe import ExpertRuntime, OffloadedExperts
from lazymoe.engine.compute.placement import CostModel, expert_parts, measure_cost_model
from lazymoe.engine.config import format_bytes
from lazymoe.engine.parts.prefetch import Prefetcher
from lazymoe.engine.parts.replay import TraceReplay
from lazymoe.engine.stats import EngineStats
from lazymoe.engine.storage.tiers import TierStack
from lazymoe.i18n import _

if TYPE_CHECKING:
    from lazymoe.engine.engine import Engine


@dataclass
class DeviceShare:
    """What one device holds and runs."""

    device: torch.device
    layers: list[int]  # decoder layers that run here
    moe_layers: list[int]  # of those, the MoE layers: their experts are cached here
    experts_per_layer: int
    tiers: TierStack
    runtime: ExpertRuntime | None = None  # made once every device has its tiers

    @property
    def total_experts(self) -> int:
        return len(self.moe_layers) * self.experts_per_layer

    def as_dict(self) -> dict:
        """This device's own figures (one entry of `EngineStats.devices`)."""
        book, computed = self.tiers.device.book.stats, self.runtime.computed_on
        on_gpu = self.device.type == "cuda"
        return {
            "device": str(self.device),
            "layers": list(self.layers),
            "hits": book.hits,
            "misses": book.misses,
            "bytes_moved": self.tiers.bytes_moved,
            "slots": self.tiers.device.pool.n_slots,
            "pool_bytes": self.tiers.device.pool.nbytes,
            "vram_in_use_bytes": torch.cuda.memory_allocated(self.device) if on_gpu else 0,
            "experts_on_device": computed["device"],
            "experts_on_cpu": computed["cpu"],
        }


def build_shares(engine: Engine) -> list[DeviceShare]:
    """Place the layers (split when `engine.config.devices` names several devices), then give
    each device its tiers and runtime and bind its layers' experts to that runtime."""
    config = engine.config
    n_layers = len(engine.model.model.layers)
    names = config.resolved_devices()
    if names is None:
        devices, assignment = [engine.device], [0] * n_layers
    else:
        devices = [torch.device(name) for name in names]
        if engine.quantized_experts and len({d.type for d in devices}) > 1:
            raise ValueError(f"devices={names}: quantized (GGUF) experts cannot be split across a "
                             "CPU and a GPU yet: name GPUs only, or CPUs only")
        assignment = split.place(engine.model, devices)
    shares = []
    for index, device in enumerate(devices):
        layers = [layer for layer, where in enumerate(assignment) if where == index]
        moe_layers = [layer for layer in layers if layer in engine.blocks]
        if not moe_layers:
            raise ValueError(f"{device} would run layers {layers} without a MoE block, so it "
                             "would cache no experts: name fewer devices")
        n_experts = len(moe_layers) * engine.num_experts
        with split.current_device(device):  # its copy stream, events and buffers on that GPU
            tiers = engine._build_tiers(device, n_experts, fresh_policy=index > 0)
        shares.append(DeviceShare(device, layers, moe_layers, engine.num_experts, tiers))

    prefetcher = None
    if config.prefetch and any(s.tiers.device.pool.n_slots < s.total_experts for s in shares):
        prefetcher = Prefetcher(engine.blocks, config.prefetch_predictor)
        for layer, nxt in list(prefetcher.next_layer.items()):
            if assignment[layer] != assignment[nxt]:  # the next layer caches on another device
                del prefetcher.next_layer[layer]
    replay = TraceReplay.from_config(config.routing_trace, engine.moe_layers, engine.num_experts,
                                     engine.top_k)  # fmt: skip
    act = next(iter(engine.blocks.values())).experts.act_fn  # before the placeholders go
    for share in shares:
        with split.current_device(share.device):
            _make_runtime(engine, share, act, prefetcher, replay)
        for layer in share.moe_layers:
            block = engine.blocks[layer]
            block.experts = OffloadedExperts(layer, share.runtime)
            if len(shares) > 1:  # its experts' streams and kernels are that GPU's
                split.guard_device(block.experts, share.device)
    return shares


def _make_runtime(engine: Engine, share: DeviceShare, act, prefetcher, replay) -> None:
    config = engine.config
    cost_model = None
    if config.placement == "auto" and share.tiers.on_gpu:
        cost_model = _cost_model(engine, share.device)
    share.runtime = ExpertRuntime(
        share.tiers, act, config.placement, cost_model, prefetcher,
        expert_flops_per_token=6 * engine.intermediate * engine.hidden,
        top_k=engine.top_k, kernel=config.kernel, replay=replay,
        cpu_activations=config.cpu_activations,
    )  # fmt: skip
    if cost_model is not None:  # what auto weighs per layer: a quantized expert's stored parts
        share.runtime.miss_parts = {layer: expert_parts(engine.store, layer) for layer in share.moe_layers}
    if share.tiers.device.pool.n_slots >= share.total_experts:
        _load_every_expert(share)


def _cost_model(engine: Engine, device: torch.device) -> CostModel:
    """placement="auto"'s bandwidths: the configured ones, else measured for `device`."""
    cfg = engine.config  # measured per GPU: each has its own PCIe link (current: this one)
    # a GGUF file's experts: the CPU kernel's rate per format present (a Q4_K_M file has several)
    parts = [expert_parts(engine.store, layer) for layer in engine.moe_layers]
    formats = {fmt for layer_parts in parts if layer_parts for fmt, _ in layer_parts}
    measured = measure_cost_model(engine.hidden, engine.intermediate, engine.dtype, str(device),
                                  formats=formats)  # fmt: skip
    return CostModel(
        cfg.h2d_bandwidth_gbps or measured.h2d_bandwidth_gbps,
        cfg.cpu_bandwidth_gbps or measured.cpu_bandwidth_gbps,
        measured.cpu_gflops,
        measured.cpu_format_gbps,
        measured.cpu_float_gbps,
        measured.cpu_float_kernel,
    )


def _load_every_expert(share: DeviceShare) -> None:
    """A budget that holds them all: every expert of the share's layers resident, loaded once."""
    keys = [(layer, e) for layer in share.moe_layers for e in range(share.experts_per_layer)]
    quiet = len(keys) < 256
    for key in tqdm(keys, desc="loading experts", unit="expert", disable=quiet):
        share.tiers.fetch(key, frozenset())


# -- numbers over every device ------------------------------------------------------------------
def engine_stats(shares: list[DeviceShare], totals: dict, prefetcher: Prefetcher | None) -> EngineStats:
    """The engine's `EngineStats`: every count added up over the devices, plus each device's."""
    per_device = [share.as_dict() for share in shares]
    details = [share.tiers.as_dict() for share in shares]
    tiers, links = details[0]["tiers"], details[0]["links"]
    if len(shares) > 1:
        tiers = _merge_tiers([d["tiers"] for d in details])
        links = _merge_links([d["links"] for d in details])
    return EngineStats(
        **totals,
        **{key: sum(d[key] for d in per_device) for key in _ADDED_UP},
        prefetch_accuracy=prefetcher.stats.accuracy if prefetcher else 0.0,
        tiers=tiers,
        links=links,
        prefetch=prefetcher.stats.as_dict() if prefetcher else {},
        devices=per_device,
    )


_ADDED_UP = ("hits", "misses", "bytes_moved", "pool_bytes", "vram_in_use_bytes",
             "experts_on_device", "experts_on_cpu")  # fmt: skip


def _merge_tiers(per_device: list[dict]) -> dict:
    """Tier name -> counts added up over devices; per-layer rows joined (each layer is on one)."""
    out: dict = {}
    for tiers in per_device:
        for name, t in tiers.items():
            m = out.setdefault(name, {**t, "hits": 0, "misses": 0, "evictions": 0, "slots": 0,
                                      "pool_bytes": 0, "per_layer": {}})  # fmt: skip
            for key in ("hits", "misses", "evictions", "slots", "pool_bytes"):
                m[key] += t[key]
            m["per_layer"].update(t["per_layer"])
    for m in out.values():
        lookups = m["hits"] + m["misses"]
        m["hit_rate"] = m["hits"] / lookups if lookups else 0.0
        m["per_layer"] = dict(sorted(m["per_layer"].items()))
    return out


def _merge_links(per_device: list[dict]) -> dict:
    """Link name ("disk->vram", ...) -> transfers, bytes and seconds added up over devices."""
    out: dict = {}
    for links in per_device:
        for name, link in links.items():
            m = out.setdefault(name, {"transfers": 0, "bytes": 0, "seconds": 0.0, "bytes_per_layer": {}})
            for key in ("transfers", "bytes", "seconds"):
                m[key] += link[key]
            for layer, nbytes in link["bytes_per_layer"].items():
                m["bytes_per_layer"][layer] = m["bytes_per_layer"].get(layer, 0) + nbytes
    for m in out.values():
        m["bytes_per_layer"] = dict(sorted(m["bytes_per_layer"].items()))
    return dict(sorted(out.items()))


def describe_lines(shares: list[DeviceShare], total_experts: int) -> list[str]:
    """One line per tier; with several devices, one line per device (its layers, its tiers)."""
    if len(shares) == 1:
        return [
            _("tier {tier}: {slots} of {total} experts ({size}), policy {policy}").format(
                tier=tier.name, slots=tier.pool.n_slots, total=total_experts,
                size=format_bytes(tier.pool.nbytes), policy=tier.book.policy.name)
            for tier in shares[0].tiers.tiers
        ]  # fmt: skip
    lines = []
    for share in shares:
        tiers = "; ".join(
            _("{tier} {slots} of {total} experts ({size})").format(
                tier=tier.name, slots=tier.pool.n_slots, total=share.total_experts,
                size=format_bytes(tier.pool.nbytes))
            for tier in share.tiers.tiers
        )  # fmt: skip
        lines.append(_("{device}: layers {layers}, {tiers}, policy {policy}").format(
            device=share.device, layers=split.layer_ranges(share.layers), tiers=tiers,
            policy=share.tiers.device.book.policy.name))  # fmt: skip
    return lines
