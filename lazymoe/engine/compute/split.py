"""Layers split across devices: two 12 GB GPUs hold what one 24 GB GPU would.

A MoE model is a stack of decoder layers. Cut the stack into contiguous ranges, one per device,
and a token runs range by range: only its hidden state (T x D numbers, a few KB per token)
crosses from one device to the next, once per boundary. Each device holds its own layers'
attention and routers and caches its own layers' experts, so the memory of both cards adds up.
It adds no speed: the devices take turns, one range after the other (no pipelining).

    split_layers(5, 2) -> [0, 0, 0, 1, 1]     layer -> device, contiguous, balanced by count
    embedding, rotary tables   the first device (where the token ids go)
    decoder layer i            devices[split[i]], with its MoE block's expert cache
    final norm, lm_head        the last device; the logits come back to the first (the sampler's)

How tensors follow the layers: a forward pre-hook on each decoder layer moves what the layer is
called with (hidden states, rotary cos/sin, attention mask, positions) to the layer's device when
it is elsewhere, once per forward pass for the tensors every layer shares. transformers'
DynamicCache makes each layer's keys and values on the device of the first keys it sees, so the KV
cache splits by itself. The experts' code (`moe.ExpertRuntime`) uses the current CUDA device's
stream, so each layer's experts run with their own GPU made current (`guard_device`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch

from lazymoe.engine.loading import _rebuild_rotary


def split_layers(n_layers: int, n_devices: int) -> list[int]:
    """The device index of each layer: contiguous ranges, sizes differing by at most one (the
    first devices take the extra layers). split_layers(5, 2) == [0, 0, 0, 1, 1]."""
    if n_devices < 1:
        raise ValueError(f"n_devices={n_devices}: give at least one device")
    if n_devices > n_layers:
        raise ValueError(f"{n_devices} devices for {n_layers} layers: each device needs at least "
                         f"one layer; use at most {n_layers} devices")
    size, extra = divmod(n_layers, n_devices)
    out: list[int] = []
    for device in range(n_devices):
        out += [device] * (size + (device < extra))
    return out


def tensors_to(value, device: torch.device, memo: dict | None = None):
    """`value` with every tensor in it (also inside tuples, lists, dicts) on `device`. `memo`
    (id -> (tensor, moved)) lets tensors shared by many layers cross once per forward pass."""
    if isinstance(value, torch.Tensor):
        if value.device == device:
            return value
        if memo is None:
            return value.to(device)
        key = (id(value), device)
        if key not in memo:  # the entry holds `value` itself, so its id is not reused meanwhile
            memo[key] = (value, value.to(device))
        return memo[key][1]
    if isinstance(value, tuple | list):
        return type(value)(tensors_to(v, device, memo) for v in value)
    if isinstance(value, dict):
        return {k: tensors_to(v, device, memo) for k, v in value.items()}
    return value  # a cache object, a flag, None


class _MoveInputs:
    """Forward pre-hook (with kwargs): the module's tensor arguments on `device`."""

    def __init__(self, device: torch.device, memo: dict) -> None:
        self.device, self.memo = device, memo

    def __call__(self, module, args, kwargs):
        # the hidden states change at every layer: moved without the memo; the rest (rotary
        # cos/sin, mask, positions) is the same object for every layer of one forward pass
        args = tuple(tensors_to(a, self.device) for a in args)
        kwargs = {k: tensors_to(v, self.device, None if k == "hidden_states" else self.memo)
                  for k, v in kwargs.items()}  # fmt: skip
        return args, kwargs


def _move_module(module: torch.nn.Module, device: torch.device) -> None:
    module.to(device)
    for name, value in vars(module).items():  # plain tensor attributes (not buffers) too
        if isinstance(value, torch.Tensor) and value.device != device:
            setattr(module, name, value.to(device))


def place(model, devices: Sequence[torch.device]) -> list[int]:
    """Move `model`'s parts to `devices` (split by `split_layers`) and hook the layers so that
    tensors follow. Returns the device index of each decoder layer.

    Expects a transformers causal LM (`model.model.layers`, `.embed_tokens`, `.norm`,
    `model.lm_head`), e.g. just loaded on the CPU. Tied embeddings (lm_head sharing the
    embedding's matrix) get a copy of it on the last device.
    """
    devices = [torch.device(d) for d in devices]
    base, layers = model.model, model.model.layers
    first, last = devices[0], devices[-1]
    assignment = split_layers(len(layers), len(devices))
    memo: dict = {}  # tensors moved during the current forward pass; emptied when one starts
    tied = model.lm_head.weight is base.embed_tokens.weight
    for name, child in base.named_children():
        if name not in ("layers", "norm"):
            _move_module(child, first)
    for layer, index in zip(layers, assignment, strict=True):
        _move_module(layer, devices[index])
        layer.register_forward_pre_hook(_MoveInputs(devices[index], memo), with_kwargs=True)
        # engine.batch() calls each layer's attention itself, with the rotary cos/sin of the first
        layer.self_attn.register_forward_pre_hook(_MoveInputs(devices[index], memo), with_kwargs=True)
    _move_module(base.norm, last)
    if tied and first != last:
        model.lm_head.weight = torch.nn.Parameter(base.embed_tokens.weight.detach().to(last),
                                                  requires_grad=False)
    else:
        _move_module(model.lm_head, last)
    for name, child in model.named_children():
        if name not in ("model", "lm_head"):
            _move_module(child, first)
    _rebuild_rotary(model, str(first))  # rotary tables are computed, not loaded: made anew there
    base.embed_tokens.register_forward_pre_hook(lambda *_: memo.clear())  # a pass starts
    # logits back where the token ids and the samplers live
    model.lm_head.register_forward_hook(lambda _m, _a, out: out.to(first))
    return assignment


class _DeviceGuard:
    """Pre- and post-hook pair: `device` is the current CUDA device while the module runs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.entered: list[torch.cuda.device] = []

    def enter(self, *_) -> None:
        guard = torch.cuda.device(self.device)
        guard.__enter__()
        self.entered.append(guard)

    def leave(self, *_) -> None:
        if self.entered:
            self.entered.pop().__exit__(None, None, None)


def current_device(device: torch.device):
    """A context in which `device` is the current CUDA device (nothing changes for a CPU)."""
    return torch.cuda.device(device) if torch.device(device).type == "cuda" else nullcontext()


def guard_device(module: torch.nn.Module, device: torch.device) -> None:
    """Run `module` with `device` as the current CUDA device (no-op for a CPU): the tiers' copy
    stream and slot events order against `torch.cuda.current_stream()`, which must be the
    stream of the GPU whose slots they are."""
    if torch.device(device).type != "cuda":
        return
    guard = _DeviceGuard(torch.device(device))
    module.register_forward_pre_hook(guard.enter)
    module.register_forward_hook(guard.leave, always_call=True)  # restored after an error too


def layer_ranges(layers: list[int]) -> str:
    """[0, 1, 2, 5, 6] -> '0-2, 5-6': a device's layers in words."""
    parts, start = [], None
    for i, layer in enumerate(layers):
        if start is None:
            start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            parts.append(f"{start}" if start == layer else f"{start}-{layer}")
            start = None
    return ", ".join(parts)
