"""The MoE experts, run out of the tiered cache: which experts a layer needs, and where each runs.

transformers' MoE block computes `router -> experts(hidden, top_k_index, top_k_weights)`. The
engine replaces `experts` with `OffloadedExperts`, which for one layer:

  1. reads the chosen expert ids (one host sync per layer: we must know what to fetch),
  2. looks each one up in the device tier; a miss is fetched (or computed on the CPU: placement
     "cpu", or "auto"'s cost model, `_compute_where`),
  3. during decode, guesses the next layer's experts and starts copying them (prefetch),
  4. computes each expert in ascending id order and adds `weight * expert(x)` into the output,
     exactly the order transformers uses, so greedy tokens match the full model.

This file is the bookkeeping of those steps (`ExpertRuntime.forward`, `resolve_decode` for the
graph decoder, `_prefetch`). The arithmetic of step 4 for each place an expert runs (device
slots, float or quantized; the CPU, from float weights or a GGUF file's stored bytes; the
`_compute_reference` loop the others are tested against; `reference_experts`) is
`expert_compute.py`, `ExpertRuntime`'s base class; how it is batched is `kernels.py`.

Shapes: T tokens, K experts per token, D hidden size, I expert width.
    expert(x) = down @ (act(gate @ x) * (up @ x))        gate, up: (I, D), down: (D, I)
    out[t]    = sum over k of top_k_weights[t, k] * expert_{top_k_index[t, k]}(x[t])
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict

import torch

from lazymoe.engine.compute import kernels, triton_quant
from lazymoe.engine.compute.expert_compute import ExpertCompute, reference_experts
from lazymoe.engine.compute.placement import CostModel
from lazymoe.engine.parts.prefetch import Prefetcher
from lazymoe.engine.parts.replay import TraceReplay
from lazymoe.engine.storage.tiers import TierStack

__all__ = ["ExpertRuntime", "OffloadedExperts", "reference_experts"]  # (tests import it from here)

QUANTIZED_KERNELS = ("grouped", "reference", "fused")  # what runs on a QuantizedPool


class ExpertRuntime(ExpertCompute):
    """Everything the per-layer modules share: tiers, placement, prefetch, counters. The compute
    paths (`_compute_device`, `_compute_cpu`, `_compute_reference`) are `ExpertCompute`'s."""

    def __init__(
        self,
        tiers: TierStack,
        act,
        placement: str,
        cost_model: CostModel | None,
        prefetcher: Prefetcher | None,
        expert_flops_per_token: int,
        top_k: int,
        kernel: str | None = None,
        replay: TraceReplay | None = None,
        cpu_activations: str = "float",
    ) -> None:
        self.tiers = tiers
        self.cpu_activations = cpu_activations  # quantized experts on the CPU: float or int8
        # benchmarks: a trace's experts in place of the router's (lazymoe.engine.parts.replay)
        self.replay = replay
        # None, or a Counter that every computed expert adds to: (layer, expert) -> token rows
        # (tests and lab checks read which experts ran; off by default, it costs a little)
        self.computed_experts: Counter | None = None
        self.act = act
        self.placement = placement
        self.cost_model = cost_model
        # layer -> (format, stored bytes) of gate, up, down for a GGUF model's experts, None for
        # float ones: what "auto" weighs a miss with (set by devices.py with the cost model)
        self.miss_parts: dict[int, tuple[tuple[str, int], ...] | None] = {}
        # a CPU-computed miss of a GGUF model (no float RAM tier) runs on its stored bytes
        self.cpu_reads_stored = tiers.ram is None and getattr(tiers.store, "quantized", False)
        self.prefetcher = prefetcher
        # the device-cache decoder (compute/device_cache.py) while its GPU tables hold the cache:
        # the host path hands it back (`reclaim`) before it looks anything up
        self.lent_to = None
        # the device-cache decoder that computes a pass's experts on its own tables (set for a
        # prompt or a batched step by `experts_on`: `DeviceCacheDecoder.batch_experts`), else None
        self.batch_on_device = None
        self.batch_prompt = False  # the passes are prompts' (their experts in tiles of tokens)
        self.pooled_cpu_steps = 0  # layer steps whose CPU-pool experts ran together (_pooled_cpu)
        self.stored_cpu_steps = 0  # the same, straight from a GGUF file's map (_stored_together)
        self.file_map = None  # a GGUF store's whole map as one flat tensor (_stored_together)
        self.expert_flops_per_token = expert_flops_per_token
        self.computed_on: defaultdict[str, int] = defaultdict(int)  # "device"/"cpu" -> experts
        pool = tiers.device.pool
        self.workspace = None  # the one-token decode path's buffers, made once
        # a GGUF model: slots hold stored bytes, computed by lazymoe.quant.expert (CPU) or by
        # the Triton kernels of triton_quant (GPU; the CPU under Triton's interpreter)
        self.quantized = getattr(pool, "quantized", False)
        if self.quantized:
            self.kernel = kernel or ("fused" if pool.device.type == "cuda" else "grouped")
            if self.kernel not in QUANTIZED_KERNELS:
                raise ValueError(f"kernel={self.kernel!r} cannot compute quantized experts (a GGUF "
                                 f"file's) yet: use one of {', '.join(QUANTIZED_KERNELS)}")
            reason = triton_quant.unavailable_reason(pool.device, torch.float32, act)
            if self.kernel == "fused" and reason:
                raise ValueError(f"kernel='fused' cannot compute quantized experts here: {reason}. "
                                 "Use kernel='grouped'.")  # fmt: skip
            return
        dtype = pool.gate_up.dtype
        self.kernel = kernel or kernels.default_kernel(pool.device, dtype, act)
        kernels.check_kernel(self.kernel, pool.device, dtype, act)
        if self.kernel in kernels.DECODE_KERNELS:
            self.workspace = kernels.DecodeWorkspace(top_k, pool.gate_up, pool.down, self.kernel)

    def _compute_where(self, layer: int, n_tokens: int) -> str:
        """Where a device-tier miss of `layer` is computed: "device" (fetch it) or "cpu"."""
        if not self.tiers.on_gpu or self.placement == "fetch":
            return "device"
        if self.placement == "cpu":
            return "cpu"
        nbytes, parts = self.miss_cost(layer)
        choice = self.cost_model.choose(nbytes, n_tokens, self.expert_flops_per_token, parts)
        return "cpu" if choice == "cpu" else "device"

    def miss_cost(self, layer: int) -> tuple[int, tuple[tuple[str, int], ...] | None]:
        """What "auto" weighs for a miss of `layer`: (bytes a fetch copies, the stored parts the
        CPU reads or None for a float expert). A fetch copies what a slot holds: the stored
        bytes (quantized slots; they vary by layer in a Q4_K_M file) or the dequantized floats."""
        parts = self.miss_parts.get(layer) if self.cpu_reads_stored else None
        if parts is not None and self.quantized:
            return sum(n for _, n in parts), parts
        return self.tiers.device.pool.slot_nbytes, parts

    @contextlib.contextmanager
    def experts_on(self, decoder, prompt: bool = False):
        """The model passes inside send their experts to `decoder.batch_experts` (a device-cache
        decoder whose tables hold the cache), or through the host's path when it is None.
        prompt: the passes are prompts', not decode steps: quantized experts on a GPU take the
        grouped kernels there (triton_grouped.py), on either path, so a prompt's tokens are the
        same whichever path and whichever other prompts share its pass."""
        self.batch_on_device, self.batch_prompt = decoder, prompt
        try:
            yield decoder
        finally:
            self.batch_on_device, self.batch_prompt = None, False

    def reclaim(self) -> None:
        """The cache back in the host's book, if the device-cache decoder holds it (its next
        step loads the book again)."""
        if self.lent_to is not None:
            self.lent_to.end()

    def settle_counts(self) -> None:
        """The hits and misses the device-cache decoder counted so far, into the host's book;
        the cache stays on the device (for `engine.stats()` between two tokens)."""
        if self.lent_to is not None:
            self.lent_to.flush_counts()

    def forward(
        self, layer: int, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        if self.batch_on_device is not None:
            return self.batch_on_device.batch_experts(layer, hidden, top_k_index, top_k_weights,
                                                      prompt=self.batch_prompt)  # fmt: skip
        self.reclaim()
        n_tokens, k = top_k_index.shape
        if self.replay is not None:  # the trace's experts, with the router's weights by position
            top_k_index = self.replay.ids_like(layer, top_k_index)
        guess = None
        if self.prefetcher is not None and n_tokens == 1:
            guess = self.prefetcher.predict(layer, hidden)
        if guess is not None:  # one host sync for both: this layer's ids and the guess
            flat = torch.cat([top_k_index.reshape(-1), guess[1].reshape(-1)]).tolist()
            ids, guessed = flat[: n_tokens * k], flat[n_tokens * k :]
        else:
            ids, guessed = top_k_index.reshape(-1).tolist(), []
        rows: dict[int, list[tuple[int, int]]] = defaultdict(list)  # expert -> [(token, k)]
        for i, e in enumerate(ids):
            rows[e].append(divmod(i, k))
        experts = sorted(rows)
        if self.prefetcher is not None:
            self.prefetcher.score(layer, set(experts))
        if self.computed_experts is not None:
            self.computed_experts.update({(layer, e): len(rows[e]) for e in experts})

        out = torch.zeros_like(hidden)
        capacity = self.tiers.device.pool.n_slots
        chunks = [experts[i : i + capacity] for i in range(0, len(experts), capacity)]
        for c, chunk in enumerate(chunks):
            protected = frozenset((layer, e) for e in chunk)
            plan = []
            for e in chunk:
                plan.append((e, self._device_slot((layer, e), len(rows[e]), protected)))
            if guess is not None and c == len(chunks) - 1:
                self._prefetch(guess[0], guessed, protected)
            if self.kernel == "reference":
                self._compute_reference(out, layer, hidden, top_k_weights, rows, plan)
                continue
            on_device = [(e, slot) for e, slot in plan if slot is not None]
            self._compute_device(out, hidden, top_k_weights, rows, on_device)
            on_cpu = [e for e, slot in plan if slot is None]
            if on_cpu:
                self._compute_cpu(out, layer, hidden, top_k_weights, rows, on_cpu)
        return out

    def resolve_decode(
        self,
        layer: int,
        ids: list[int],
        guess_layer: int | None,
        guessed: list[int],
        stream: torch.cuda.Stream | None = None,
    ) -> tuple[list[int], list[int]]:
        """The host half of one decode step's layer, for a caller that computes on the device
        itself (the graph decoder, placement "fetch" only, so every miss is fetched into a slot):
        look up (or fetch) each chosen expert, start the prefetch of
        the guessed next-layer experts, make the compute stream wait for the copies.

        ids: the router's K distinct expert ids for the one token, in top-k order.
        stream: the compute stream (GPU), if the caller has it at hand; else looked up here.
        Returns (slots, positions): per expert in ascending id order, its device slot and its
        position k in `ids` (which top-k weight it takes).
        """
        self.reclaim()
        if self.replay is not None:  # the trace's experts take the router's weights by position
            ids = self.replay.take(layer, 1)[0].tolist()
        positions = {e: k for k, e in enumerate(ids)}
        experts = sorted(positions)
        if len(experts) != len(ids):
            raise ValueError(f"layer {layer}: the router chose an expert twice ({ids})")
        if self.prefetcher is not None:
            self.prefetcher.score(layer, set(experts))
        if self.computed_experts is not None:
            self.computed_experts.update(dict.fromkeys(((layer, e) for e in experts), 1))
        protected = frozenset((layer, e) for e in experts)
        slots = [self._device_slot((layer, e), 1, protected) for e in experts]  # placement "fetch"
        if guess_layer is not None and self.prefetcher is not None:
            self._prefetch(guess_layer, guessed, protected)
        if stream is None and self.tiers.on_gpu:
            stream = torch.cuda.current_stream()  # looked up once per layer
        for slot in slots:  # GPU: the compute waits for the copies into the slots it reads
            self.tiers.wait_slot(slot, stream)
        self.computed_on["device"] += len(slots)
        return slots, [positions[e] for e in experts]

    def _device_slot(self, key, n_rows: int, protected: frozenset) -> int | None:
        """`key`'s device slot: a hit, or a miss fetched into one; None for a miss that
        placement computes on the CPU instead."""
        slot = self.tiers.lookup(key)
        if slot is None and self._compute_where(key[0], n_rows) == "device":
            slot = self.tiers.fetch(key, protected)
        return slot

    def _prefetch(self, layer: int, guessed: list[int], protected: frozenset) -> None:
        wanted = frozenset((layer, e) for e in guessed)
        if self.tiers.device.pool.n_slots < len(protected | wanted):
            self.prefetcher.remember(layer, guessed, [])  # no room: still score the guess
            return
        fetched = []
        for key in sorted(wanted):
            if self.tiers.device.book.slot_of(key) is None:
                self.tiers.fetch(key, protected | wanted)
                fetched.append(key[1])
        self.prefetcher.remember(layer, guessed, fetched)


class OffloadedExperts(torch.nn.Module):
    """Stands in for transformers' experts module of one layer; same call signature."""

    def __init__(self, layer: int, runtime: ExpertRuntime) -> None:
        super().__init__()
        self.layer = layer
        self.__dict__["runtime"] = runtime  # not a submodule: shared by every layer

    def forward(self, hidden_states, top_k_index, top_k_weights):  # (T, D), (T, K), (T, K)
        return self.runtime.forward(self.layer, hidden_states, top_k_index, top_k_weights)

    def extra_repr(self) -> str:
        return f"layer={self.layer}"
