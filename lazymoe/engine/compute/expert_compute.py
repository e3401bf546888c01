"""How a layer's chosen experts are summed into the output, once `moe.py` has placed them.

`ExpertRuntime` (moe.py) decides which experts a layer needs and where each one is computed: in a
device slot (a hit, or a miss fetched into one) or on the CPU (placement "cpu", or "auto"'s
choice). This file is the arithmetic for each of those places, the part of the runtime that
touches tensors:

    _compute_device     experts in device slots: float (kernels.py: batched decode, per-expert
                        loop, grouped) or quantized (Triton's fused kernels in triton_quant.py on
                        a GPU, lazymoe.quant.expert slab by slab on a CPU)
    _compute_cpu        experts computed where they live (--cpu-moe): float weights from the RAM
                        tier or the file, or a GGUF file's stored bytes read in place
    _compute_reference  kernel "reference": one expert at a time, the path the others match
    reference_experts   the slow, obviously correct MoE, standalone, for tests

Every path adds `weight * expert(x)` in ascending expert id order, rounded to the output dtype
before the add, as transformers does, so greedy tokens match the full model.

Shapes: T tokens, K experts per token, D hidden size, I expert width.
    expert(x) = down @ (act(gate @ x) * (up @ x))        gate, up: (I, D), down: (D, I)
    out[t]    = sum over k of top_k_weights[t, k] * expert_{top_k_index[t, k]}(x[t])
    rows[e]   = [(t, k), ...]: the tokens that chose expert e, and at which top-k position
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lazymoe.engine.compute import kernels, triton_grouped, triton_quant
from lazymoe.engine.compute.kernels import expert_fused
from lazymoe.engine.compute.placement import CostModel
from lazymoe.engine.storage.store import ExpertWeights
from lazymoe.engine.storage.tiers import TierStack
from lazymoe.quant import kernels_bf16
from lazymoe.quant.expert import expert_forward, experts_forward

FUSED_CHUNK_TOKENS = 4096  # quantized Triton kernels: tokens per launch (the down grid's 2nd axis)


def expert_split(x: torch.Tensor, w: ExpertWeights, act) -> torch.Tensor:
    """One expert with separate gate (I, D), up (I, D), down (D, I): (n, D)."""
    return F.linear(act(F.linear(x, w.gate)) * F.linear(x, w.up), w.down)


def one_row_each(out: torch.Tensor, rows: dict, ids) -> bool:
    """A decode step's experts, each computing the one token once."""
    return out.shape[0] == 1 and all(len(rows[e]) == 1 for e in ids)


def several_one_row_each(out: torch.Tensor, rows: dict, ids) -> bool:
    """Several of them: what the CPU's experts-together paths take."""
    return len(ids) > 1 and one_row_each(out, rows, ids)


def reference_experts(
    hidden: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    read_expert: Callable[[int], ExpertWeights],
    act,
) -> torch.Tensor:
    """The slow, obviously correct MoE: every token, every chosen expert, one at a time.

    hidden (T, D), top_k_index (T, K), top_k_weights (T, K) -> (T, D). `read_expert(e)` gives
    expert e's weights (e.g. `lambda e: store.read(layer, e)`).
    """
    out = torch.zeros_like(hidden)
    for t in range(hidden.shape[0]):
        for k in range(top_k_index.shape[1]):
            w = read_expert(int(top_k_index[t, k]))
            w = w.to(hidden.dtype)
            out[t] += top_k_weights[t, k] * expert_split(hidden[t : t + 1], w, act)[0]
    return out


class ExpertCompute:
    """The compute paths of `ExpertRuntime` (its base class): `out += weight * expert(x)` for
    experts in device slots, on the CPU, or by the reference loop.

    The attributes below are set by `ExpertRuntime.__init__`.
    """

    tiers: TierStack
    act: Callable[[torch.Tensor], torch.Tensor]
    kernel: str  # "reference", or one of kernels.py's / QUANTIZED_KERNELS
    quantized: bool  # a GGUF model: device slots hold stored bytes
    workspace: kernels.DecodeWorkspace | None  # the one-token decode path's buffers
    cpu_reads_stored: bool  # a CPU-computed miss runs on the file's stored bytes
    computed_on: defaultdict[str, int]  # "device"/"cpu" -> experts computed
    batch_prompt: bool  # the pass is a prompt's (ExpertRuntime.experts_on)
    pooled_cpu_steps: int  # layer steps whose CPU-pool experts ran together (_pooled_cpu)
    stored_cpu_steps: int  # layer steps whose experts ran together from the file (_stored_together)
    file_map: torch.Tensor | None  # a GGUF store's whole map, flat (_stored_together), made once
    cpu_activations: str  # quantized experts on the CPU: "float" or "int8" (expert_forward's)
    cost_model: CostModel | None  # placement auto's measured speeds (its cpu_float_kernel), or None

    def _compute_device(self, out, hidden, top_k_weights, rows, on_device) -> None:
        """The fast paths (kernels.py) for experts whose weights are in device slots."""
        if not on_device:
            return
        pool = self.tiers.device.pool
        if self.quantized:  # GPU: the compute stream waits for the copies into the slots
            for _, slot in on_device:
                self.tiers.wait_slot(slot)
        if self.quantized:
            if self.kernel == "fused":  # Triton dequantizes in registers (triton_quant), any batch:
                # each (token, expert) pair reads its expert's bytes, which at a few MB per expert
                # beats writing a float copy of it (a prefill of 24 tokens took 0.6 s that way)
                self._fused_quantized(out, hidden, top_k_weights, rows, on_device)
            elif not self._pooled_cpu(out, hidden, top_k_weights, rows, on_device):
                for e, slot in on_device:  # on the CPU, one expert after another (lazymoe.quant.expert)
                    q = pool.expert(slot)
                    self._add_rows(out, hidden, top_k_weights, rows[e], lambda x, q=q: expert_forward(
                        x, q.gate, q.up, q.down, self.act, activations=self.cpu_activations))
            self.computed_on["device"] += len(on_device)
            return
        for _, slot in on_device:
            self.tiers.device_weights(slot)  # GPU: wait for copies into the slot
        self.computed_on["device"] += len(on_device)
        one_row_each = all(len(rows[e]) == 1 for e, _ in on_device)  # a router may repeat one
        if out.shape[0] == 1 and self.kernel in kernels.DECODE_KERNELS and one_row_each:
            slots = [slot for _, slot in on_device]
            positions = [rows[e][0][1] for e, _ in on_device]
            kernels.batched_decode(
                out, hidden, top_k_weights, slots, positions, pool.gate_up, pool.down,
                self.workspace, self.act,
            )  # fmt: skip
        elif out.shape[0] == 1:  # decode on a CPU: the plain loop reads each expert once
            for e, slot in on_device:
                self._add(out, hidden, top_k_weights, rows[e], pool.gate_up[slot], pool.down[slot])
        else:
            groups = [(rows[e], pool.gate_up[slot], pool.down[slot]) for e, slot in on_device]
            kernels.grouped(out, hidden, top_k_weights, groups, self.act)

    def _pooled_cpu(self, out, hidden, top_k_weights, rows, on_device) -> bool:
        """A decode step's quantized experts in a CPU pool, together (`_together`); False when
        they cannot go together."""
        ids = [e for e, _ in on_device]
        if not several_one_row_each(out, rows, ids):
            return False
        pool = self.tiers.device.pool
        experts = [pool.expert(slot) for _, slot in on_device]
        if not self._together(out, hidden, top_k_weights, rows, ids, experts, pool.data):
            return False
        self.pooled_cpu_steps += 1
        return True

    def _stored_together(self, out, layer, hidden, top_k_weights, rows, on_cpu) -> bool:
        """A decode step's CPU-computed experts straight from the GGUF file's map, together
        (`_together`); False when they cannot go together (the store is not one mapped file)."""
        store = self.tiers.store
        if not several_one_row_each(out, rows, on_cpu) or not hasattr(store, "map_tensor"):
            return False
        start = time.perf_counter()
        if self.file_map is None:  # the whole file as one flat tensor over its map: no copy
            self.file_map = store.map_tensor(torch.uint8, torch.device("cpu"))
        experts = [store.read_quantized(layer, e) for e in on_cpu]
        if not self._together(out, hidden, top_k_weights, rows, on_cpu, experts, self.file_map):
            return False
        seconds = (time.perf_counter() - start) / len(on_cpu)  # the stored bytes' share each
        for q in experts:
            self.tiers.links["disk->cpu"].add(layer, q.nbytes, seconds)
        self.stored_cpu_steps += 1
        return True

    def _together(self, out, hidden, top_k_weights, rows, ids, experts, base) -> bool:
        """out += each expert's weighted output, in the order of `ids`, with the numbers one
        expert after another gives; each kind of matmul of all of them in one parallel region
        (lazymoe.quant.expert.experts_forward, their bytes in `base`). False, and out untouched,
        when they cannot go together."""
        ys = experts_forward(hidden, [(q.gate, q.up, q.down) for q in experts], base, self.act,
                             self.cpu_activations)  # fmt: skip
        if ys is None:
            return False
        for e, y in zip(ids, ys, strict=True):
            self._add_rows(out, hidden, top_k_weights, rows[e], lambda x, y=y: y)
        return True

    def _fused_quantized(self, out, hidden, top_k_weights, rows, on_device) -> None:
        """The tokens' experts by the quantized Triton kernels, read in place from the slots;
        FUSED_CHUNK_TOKENS tokens per launch (each token's sum is its own, so chunks are exact).
        A prompt's pass (`batch_prompt`) takes the grouped kernels, as the device-cache decoder's
        tables do (triton_grouped.py: each expert once for all its tokens); a decode step the
        per-pair ones."""
        pool = self.tiers.device.pool
        layout = triton_quant.SlotLayout.of(pool.expert(on_device[0][1]))  # one layer's formats
        grouped = self.batch_prompt and triton_grouped.supports(layout)
        pairs = sorted((t, e, slot, k) for e, slot in on_device for t, k in rows[e])  # by token
        for first in range(0, out.shape[0], FUSED_CHUNK_TOKENS):
            last = min(first + FUSED_CHUNK_TOKENS, out.shape[0])
            chunk = [(t - first, slot, k) for t, _, slot, k in pairs if first <= t < last]
            if not chunk:
                continue
            n, per_token = len(chunk), Counter(t for t, *_ in chunk)
            starts = [0]
            for t in range(last - first):
                starts.append(starts[-1] + per_token[t])
            cols = [[c[1] for c in chunk], [c[2] for c in chunk], [c[0] for c in chunk], starts]
            index = torch.tensor([v for col in cols for v in col], dtype=torch.int32).to(out.device)
            args = (out[first:last], hidden[first:last], top_k_weights[first:last], index[:n],
                    index[n : 2 * n], pool.data, layout, index[2 * n : 3 * n], index[3 * n :])  # fmt: skip
            if grouped:
                triton_grouped.grouped_experts(*args, n_experts=len(on_device))
            else:
                triton_quant.fused_decode_quantized(*args)

    def _compute_cpu(self, out, layer, hidden, top_k_weights, rows, on_cpu) -> None:
        """Experts computed where they live (--cpu-moe): one trip of the hidden state to the
        host and one trip of the summed result back, torch's CPU threads for the matmuls."""
        hidden_cpu, weights_cpu = hidden.to("cpu"), top_k_weights.to("cpu")
        dtype = hidden_cpu.dtype
        if self.cpu_reads_stored:  # a GGUF file's experts: the CPU kernels read the stored bytes
            partial = torch.zeros_like(hidden_cpu)
            if not self._stored_together(partial, layer, hidden_cpu, weights_cpu, rows, on_cpu):
                for e in on_cpu:
                    self._add_stored_expert(partial, (layer, e), rows[e], (hidden_cpu, weights_cpu))
            out.add_(partial.to(out.device, out.dtype))
            self.computed_on["cpu"] += len(on_cpu)
            return
        if self.tiers.ram is None and hasattr(self.tiers.store, "views"):  # read in place from
            partial = torch.zeros_like(hidden_cpu)  # the file's map: no copy of the expert first
            self._cpu_from_views(partial, layer, hidden_cpu, weights_cpu, rows, on_cpu)
            out.add_(partial.to(out.device, out.dtype))
            self.computed_on["cpu"] += len(on_cpu)
            return
        groups = []
        for e in on_cpu:
            gate_up, w = self.tiers.host_weights((layer, e))
            if gate_up is None:
                gate_up = torch.cat([w.gate, w.up])  # (2I, D): read from the file anyway
            groups.append((rows[e], gate_up.to(dtype), w.down.to(dtype)))
        partial = torch.zeros_like(hidden_cpu)
        kernels.grouped(partial, hidden_cpu, weights_cpu, groups, self.act)
        out.add_(partial.to(out.device, out.dtype))
        self.computed_on["cpu"] += len(on_cpu)

    def _cpu_from_views(self, out, layer, hidden, top_k_weights, rows, on_cpu) -> None:
        """Float experts on the CPU over the checkpoint's map (`store.views`): a decode step's
        BF16 ones by lazymoe.quant.kernels_bf16 (2-3x torch's rate for one token on the dev
        machine) unless the cost model measured torch faster here, the others by torch; each
        expert's bytes count on the disk->cpu link."""
        store, dtype = self.tiers.store, hidden.dtype
        start = time.perf_counter()
        experts = [store.views(layer, e) for e in on_cpu]
        numba_ok = self.cost_model is None or self.cost_model.cpu_float_kernel == "numba"
        if numba_ok and dtype == torch.bfloat16 and one_row_each(out, rows, on_cpu) and all(
            p.dtype == dtype for w in experts for p in vars(w).values()
        ):
            ys = kernels_bf16.experts_forward(hidden, experts, self.act)  # (n, D) float32
            # as _add_rows does per expert (weighted in the model's dtype, then added in turn:
            # the same bits), in a few torch calls for all of them, not six each
            places = torch.tensor([rows[e][0][1] for e in on_cpu])
            weighted = ys.to(dtype) * top_k_weights[0, places, None]
            for y in weighted.to(out.dtype):
                out[0].add_(y)
        else:
            for e, w in zip(on_cpu, experts, strict=True):
                self._add_rows(out, hidden, top_k_weights, rows[e],
                               lambda x, w=w: expert_split(x, w.to(dtype), self.act))  # fmt: skip
        seconds = (time.perf_counter() - start) / max(1, len(on_cpu))
        for w in experts:
            self.tiers.links["disk->cpu"].add(layer, w.nbytes, seconds)

    def _compute_reference(self, out, layer, hidden, top_k_weights, rows, plan) -> None:
        """The simple path: one expert at a time, in ascending id order."""
        host = None  # (hidden, top_k_weights) on the CPU, made once if some expert needs them
        for e, slot in plan:
            if slot is None:
                if host is None:
                    host = (hidden.to("cpu"), top_k_weights.to("cpu"))
                self._add_cpu_expert(out, (layer, e), rows[e], host)
            elif self.quantized:  # the whole expert dequantized to float32, the plain formula
                self.tiers.wait_slot(slot)  # GPU: once the copy into the slot is done
                w = self.tiers.device.pool.expert(slot).dequantize(torch.float32)
                self._add_rows(out, hidden, top_k_weights, rows[e],
                               lambda x, w=w: expert_split(x.to(torch.float32), w, self.act))
                self.computed_on["device"] += 1
            else:
                w = self.tiers.device_weights(slot)
                pool = self.tiers.device.pool
                self._add(out, hidden, top_k_weights, rows[e], pool.gate_up[slot], w.down)
                self.computed_on["device"] += 1

    def _add(self, out, hidden, top_k_weights, rows, gate_up, down) -> None:
        """out[t] += top_k_weights[t, k] * expert(hidden[t]) for (t, k) in rows."""
        if len(rows) == 1 and out.shape[0] == 1:  # decode: no index tensors to build
            _, k = rows[0]
            y = expert_fused(hidden, gate_up, down, self.act) * top_k_weights[:, k : k + 1]
            out.add_(y.to(out.dtype))  # round like transformers: to the output dtype, then add
            return
        tok = torch.tensor([t for t, _ in rows], device=hidden.device)
        pos = torch.tensor([k for _, k in rows], device=hidden.device)
        y = expert_fused(hidden[tok], gate_up, down, self.act) * top_k_weights[tok, pos, None]
        out.index_add_(0, tok, y.to(out.dtype))

    def _add_rows(self, out, hidden, top_k_weights, rows, expert) -> None:
        """out[t] += top_k_weights[t, k] * expert(hidden[t]) for (t, k) in rows; `expert` maps
        (n, D) rows to (n, D) float32 (the quantized paths)."""
        tok = torch.tensor([t for t, _ in rows], device=hidden.device)
        pos = torch.tensor([k for _, k in rows], device=hidden.device)
        y = expert(hidden[tok]).to(hidden.dtype) * top_k_weights[tok, pos, None]
        out.index_add_(0, tok, y.to(out.dtype))  # like transformers: weighted, then added

    def _add_stored_expert(self, out, key, rows, host) -> None:
        """A quantized expert on the CPU straight from the file's map (lazymoe.quant.expert:
        no float copy of its weights); its stored bytes count on the disk->cpu link."""
        start = time.perf_counter()
        q = self.tiers.store.read_quantized(*key)
        self._add_rows(out, *host, rows, lambda x: expert_forward(
            x, q.gate, q.up, q.down, self.act, activations=self.cpu_activations))
        self.tiers.links["disk->cpu"].add(key[0], q.nbytes, time.perf_counter() - start)

    def _add_cpu_expert(self, out, key, rows, host) -> None:
        if self.cpu_reads_stored:
            self._add_stored_expert(out, key, rows, host)
            self.computed_on["cpu"] += 1
            return
        hidden_cpu, weights_cpu = host
        gate_up, w = self.tiers.host_weights(key)
        dtype = hidden_cpu.dtype
        tok = torch.tensor([t for t, _ in rows])
        pos = torch.tensor([k for _, k in rows])
        x = hidden_cpu[tok]
        if gate_up is not None:
            y = expert_fused(x, gate_up.to(dtype), w.down.to(dtype), self.act)
        else:
            y = expert_split(x, w.to(dtype), self.act)
        y = y * weights_cpu[tok, pos, None]
        out.index_add_(0, tok.to(out.device), y.to(out.device, out.dtype))
        self.computed_on["cpu"] += 1
