"""Decode one token in a few dozen launches: the layers as a loop we own, captured as CUDA graphs.

Why: a decode token of Qwen3-30B-A3B runs about a hundred small kernels per layer (norms,
projections, rotary, attention, router, experts). Eager PyTorch spends ~10-20 us of host time
on each, so 48 layers cost tens of milliseconds of Python and launches while the GPU, which
needs well under a millisecond for the arithmetic, waits. A CUDA graph records a fixed sequence
of kernels once and replays it with one launch.

A MoE layer cannot be one fixed sequence: which experts it reads is known only after its router
runs, and a missed expert must be fetched first. So each token is cut at the routers:

    segment 0        embed -> rotary, mask -> layer 0 up to its router's top-k
    segment i        layer i-1's experts (slots read from a device index) -> layer i up to its router
    segment L        layer L-1's experts -> final norm -> lm_head

Between two segments the host does what the eager path does at that point (`moe.ExpertRuntime`):
reads the router's ids (one sync per layer), looks them up in the cache, fetches misses on the
copy stream, starts the prefetch of the guessed next-layer experts, and writes the chosen slots
into the device index that the next segment reads. Each segment is one CUDA graph.

A GGUF model's experts (a `QuantizedPool` of stored bytes) are computed the same way, by the
kernels of triton_quant that dequantize in registers, with each layer's slot layout fixed when
the decoder is made: a segment still reads only device tensors.

The KV cache is fixed buffers of `max_len` positions (`StaticKV`); the token's position is a
device tensor and the attention mask hides the positions after it. Prefill (many tokens at once,
launches amortized) still runs through transformers; its keys and values are copied in.

decode="segments" runs the same loop without graphs (any device: the CPU tests check it token
for token against transformers); decode="graphs" captures it (CUDA only).
"""

from __future__ import annotations

import contextlib
import time

import torch

from lazymoe.engine.compute import kernels, triton_kernels, triton_quant
from lazymoe.models.archs import ARCHS
from lazymoe.models.params import attention_head_dim

# decoder layers of the plain norm -> attention -> norm -> routed-experts form, whose router
# returns (logits, top-k weights, top-k ids): the registry's records with segmented_decoder
GRAPH_ARCHS = tuple(name for name, arch in ARCHS.items() if arch.segmented_decoder)


def unsupported_reason(engine, any_placement: bool = False) -> str | None:
    """Why the segmented decoder cannot run this engine, or None when it can. any_placement: for
    the device-cache decoder, which computes placement "cpu"/"auto"'s misses on the CPU itself
    (cpu_misses.py); the graph decoder fetches every miss."""
    model_type = engine.spec.model_type
    if len(getattr(engine, "shares", ())) > 1:
        return "the layers are split across devices (devices=): the layer loop runs on one device"
    if not engine.spec.segmented_decoder:
        return f"model type {model_type!r} (the layer loop is written for {', '.join(GRAPH_ARCHS)})"
    n_layers = len(engine.model.model.layers)
    if engine.moe_layers != list(range(n_layers)):
        return "some layers are dense (the layer loop expects a MoE block in every layer)"
    if getattr(engine, "quantized_experts", False):  # slots of stored bytes (triton_quant)
        reason = triton_quant.unavailable_reason(engine.device, engine.dtype, engine.runtime.act)
        if reason is not None:
            return f"quantized experts (a GGUF file's) need the quantized Triton kernels: {reason}"
    if engine.config.placement != "fetch" and not any_placement:
        return (f"placement={engine.config.placement!r} (experts computed on the CPU need the eager "
                "path, or decode='device-cache')")  # fmt: skip
    if any(hasattr(block.gate, "original") for block in engine.blocks.values()):
        return "a learner router is set (set_router): its code may not be graph-safe"
    return None


class StaticKV:
    """Keys and values in fixed buffers (1, KV heads, max_len, head dim) per layer.

    Quacks like a transformers cache for the attention modules: `update()` writes the token at
    `position` (a device tensor, so a graph replays it for any position) and returns the whole
    buffers; the attention mask hides what lies after the position.
    """

    def __init__(self, n_layers, kv_heads, head_dim, max_len, dtype, device, position) -> None:
        shape = (1, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len
        self.position = position  # (1,) long on the device

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.keys[layer_idx].index_copy_(2, self.position, key_states)
        self.values[layer_idx].index_copy_(2, self.position, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def load(self, cache, length: int) -> None:
        """Copy the first `length` positions of a transformers DynamicCache (after prefill)."""
        if length > self.max_len:
            raise ValueError(f"{length} cached positions do not fit max_len={self.max_len}")
        for i, layer in enumerate(cache.layers):
            self.keys[i][:, :, :length].copy_(layer.keys[:, :, :length])
            self.values[i][:, :, :length].copy_(layer.values[:, :, :length])

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.keys + self.values)  # bytes


class SegmentedDecoder:
    """One decode token at a time through the layer loop above; `graphs=True` captures it.

    Made by `Engine._decoder_for`, after `Engine._resolve_decode_path` has checked that the
    engine can run it (`unsupported_reason`, and a CUDA device for graphs).
    """

    def __init__(self, engine, max_len: int, graphs: bool) -> None:
        model, cfg = engine.model, engine.model.config
        self.base, self.lm_head = model.model, model.lm_head
        self.layers = list(self.base.layers)
        self.blocks = [engine.blocks[i] for i in range(len(self.layers))]
        self.runtime = engine.runtime
        self.top_k, self.max_len, self.graphs = engine.top_k, max_len, graphs
        device, dtype = engine.device, engine.dtype
        pin = device.type == "cuda"
        n, k = len(self.layers), self.top_k

        self.inputs_host = torch.zeros(2, dtype=torch.long, pin_memory=pin)  # token, position
        self.inputs = torch.zeros(2, dtype=torch.long, device=device)
        head_dim = attention_head_dim(cfg)
        self.kv = StaticKV(n, cfg.num_key_value_heads, head_dim, max_len, dtype, device, self.inputs[1:])
        self.positions = torch.arange(max_len, device=device)
        self.mask = torch.zeros((1, 1, 1, max_len), dtype=dtype, device=device)
        self.ids_host = torch.zeros(n, 2 * k, dtype=torch.long, pin_memory=pin)  # top-k, guess
        self.index_host = torch.zeros(n, 2, k, dtype=torch.long, pin_memory=pin)  # slots, positions
        self.index = torch.zeros(n, 2, k, dtype=torch.long, device=device)
        self._ids_np, self._index_np = self.ids_host.numpy(), self.index_host.numpy()  # no copies
        pool = self.pool = self.runtime.tiers.device.pool
        self.dtype = dtype
        self.quantized = getattr(pool, "quantized", False)  # a GGUF file's bytes (QuantizedPool)
        if self.quantized:  # per layer, where gate/up/down sit in a slot; the kernels' fixed inputs
            width = (engine.intermediate, engine.hidden)
            formats = [engine.store.formats(i) for i in range(n)]
            self.layouts = [triton_quant.SlotLayout(f, *width) for f in formats]
            self.pairs = (  # the one token's K (expert, token) pairs: every pair -> token 0
                torch.zeros(k, dtype=torch.int32, device=device),
                torch.tensor([0, k], dtype=torch.int32, device=device),  # as moe.py passes them
            )
            self.h = torch.empty(k, engine.intermediate, dtype=torch.float32, device=device)
            self.workspace = None  # the float kernels' buffers: not used
        else:
            ws = self.runtime.workspace
            self.workspace = ws or kernels.DecodeWorkspace(k, pool.gate_up, pool.down)
        self.state: list[tuple | None] = [None] * n  # per layer: (moe input, residual, weights)
        self.rope = None
        # kernel "fused" or quantized experts (Triton runs anyway): the model's RMSNorms run as
        # one Triton kernel each inside the segments
        self.norms = self._triton_norms() if self.quantized or self.workspace.fused else []
        self.logits = None
        self.cuda_graphs: list[torch.cuda.CUDAGraph] = []
        # host seconds per part of a step: waiting for the GPU (the router's ids), the cache's
        # bookkeeping and fetches, issuing index copies and graph replays (or eager segments)
        self.reset_timings()
        if graphs:
            self._capture()

    # -- the segments ----------------------------------------------------------------------------
    def _segment(self, i: int) -> None:
        n = len(self.layers)
        if i == 0:
            h = self._embed()
        else:
            x, residual, weights = self.state[i - 1]
            h = residual + self._experts(i - 1, x, weights).view(residual.shape)
        if i < n:
            self.state[i] = self._up_to_router(i, h)
        else:
            self.logits = self.lm_head(self.base.norm(h))[0, -1]

    def _embed(self) -> torch.Tensor:
        """The token's embedding (1, 1, D); the rotary angles and the mask for its position."""
        token, position = self.inputs[:1].view(1, 1), self.inputs[1:]
        h = self.base.embed_tokens(token)
        self.rope = self.base.rotary_emb(h, position_ids=position.view(1, 1))
        hidden = torch.where(self.positions <= position, 0.0, float("-inf"))
        self.mask.copy_(hidden.view(1, 1, 1, -1))
        return h

    def _up_to_router(self, i: int, h: torch.Tensor) -> tuple:
        """Layer i from its input to its router's choice: (moe input, residual, top-k weights);
        the top-k ids (and the prefetch guess for layer i + 1) go to `ids_host[i]`."""
        x, residual, weights, ids = self._route(i, h)
        wanted = [ids.reshape(-1)]
        prefetcher = self.runtime.prefetcher
        guess = prefetcher.predict(i, x) if prefetcher is not None else None
        if guess is not None:
            wanted.append(guess[1].reshape(-1))
        flat = torch.cat(wanted)
        self.ids_host[i, : flat.shape[0]].copy_(flat, non_blocking=True)
        return x, residual, weights

    def _route(self, i: int, h: torch.Tensor) -> tuple:
        """Layer i up to its router: (moe input (1, D), residual, top-k weights, top-k ids)."""
        layer = self.layers[i]
        residual = h
        x = layer.input_layernorm(h)
        x, _ = layer.self_attn(
            hidden_states=x, position_embeddings=self.rope, attention_mask=self.mask, cache=self.kv
        )
        h = residual + x
        residual = h
        x = layer.post_attention_layernorm(h).view(-1, h.shape[-1])  # (1, D)
        _, weights, ids = self.blocks[i].gate(x)
        return x, residual, weights, ids

    def _experts(self, i: int, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        slots, positions = self.index[i, 0], self.index[i, 1]
        if self.quantized:  # read in place from the byte slots, dequantized in registers
            triton_quant.fused_decode_quantized(
                out, x, weights, slots, positions, self.pool.data, self.layouts[i], *self.pairs,
                self.h,
            )  # fmt: skip
            return out
        kernels.batched_decode_indexed(
            out, x, weights, slots, positions, self.pool.gate_up, self.pool.down,
            self.workspace, self.runtime.act,
        )  # fmt: skip
        return out

    def _triton_norms(self) -> list[tuple[torch.nn.Module, str, torch.nn.Module]]:
        """(parent, name, Triton stand-in) for every RMSNorm the segments call."""
        found = [(self.base, "norm")]
        for layer in self.layers:
            found += [(layer, "input_layernorm"), (layer, "post_attention_layernorm")]
            found += [
                (layer.self_attn, name)
                for name in ("q_norm", "k_norm")
                if hasattr(layer.self_attn, name)
            ]
        swaps = []
        for parent, name in found:
            norm = getattr(parent, name)
            if type(norm).__name__.endswith("RMSNorm") and norm.weight.dtype == self.dtype:
                swaps.append((parent, name, triton_kernels.TritonRMSNorm(norm)))
        return swaps

    @contextlib.contextmanager
    def _swapped_norms(self):
        """The Triton RMSNorms in place of the model's while segments run or are captured; the
        model (which prefill still runs through transformers) gets its own back afterwards."""
        originals = [getattr(parent, name) for parent, name, _ in self.norms]
        try:
            for parent, name, triton_norm in self.norms:
                setattr(parent, name, triton_norm)
            yield
        finally:
            for (parent, name, _), original in zip(self.norms, originals, strict=True):
                setattr(parent, name, original)

    def _run(self, i: int) -> None:
        if self.graphs:
            self.cuda_graphs[i].replay()
        else:
            self._segment(i)  # inside step's _swapped_norms()

    def _capture(self) -> None:
        """Warm up on a side stream (library handles, lazy inits), then record each segment.

        The warm-up writes garbage into the KV buffers at position 0; prefill overwrites it.
        """
        n = len(self.layers)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with self._swapped_norms():
            with torch.cuda.stream(side):  # also compiles the Triton kernels, before any capture
                for i in range(n + 1):
                    self._segment(i)
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            pool = torch.cuda.graph_pool_handle()  # one memory pool: segments replay in order
            for i in range(n + 1):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self._segment(i)
                self.cuda_graphs.append(graph)

    # -- one token -------------------------------------------------------------------------------
    def load_prefill(self, cache, length: int) -> None:
        self.kv.load(cache, length)

    def step(self, token: int, position: int) -> torch.Tensor:
        """Feed `token` at `position`; the next token's logits (V,) (a buffer: read it now)."""
        if position >= self.max_len:
            raise ValueError(f"position {position} is past max_len={self.max_len}")
        # eager segments call the model's modules: the Triton norms go in once per token (graphs
        # recorded them at capture)
        with contextlib.nullcontext() if self.graphs else self._swapped_norms():
            return self._step(token, position)

    def _step(self, token: int, position: int) -> torch.Tensor:
        k, t = self.top_k, self.timings
        clock = time.perf_counter
        stream = torch.cuda.current_stream() if self.graphs else None  # once per token
        start = clock()
        self.inputs_host[0], self.inputs_host[1] = token, position
        self.inputs.copy_(self.inputs_host, non_blocking=True)
        self._run(0)
        for i in range(len(self.layers)):
            launched = clock()
            t["launch_s"] += launched - start
            if self.graphs:
                stream.synchronize()  # this layer's ids are in ids_host
            ids = self._ids_np[i].tolist()
            waited = clock()
            t["wait_s"] += waited - launched
            guess_layer = i + 1 if i + 1 < len(self.layers) else None
            slots, positions = self.runtime.resolve_decode(i, ids[:k], guess_layer, ids[k:], stream)
            start = clock()
            t["plan_s"] += start - waited
            self._index_np[i, 0], self._index_np[i, 1] = slots, positions  # numpy: ~1 us, not ~10
            self.index[i].copy_(self.index_host[i], non_blocking=True)
            self._run(i + 1)
        t["launch_s"] += clock() - start
        t["tokens"] += 1
        return self.logits

    def end(self) -> None:
        """The generation on this decoder is over (the engine calls it; nothing to do here: the
        device-cache decoder hands its cache back to the host's book)."""

    def reset_timings(self) -> None:
        """Start counting tokens and host seconds (wait, plan, launch) afresh. Not while a batch's
        lone sequence holds this decoder: the batch reads the token count to see whether anyone
        else decoded on it."""
        self.timings = {"tokens": 0, "wait_s": 0.0, "plan_s": 0.0, "launch_s": 0.0}

    def timing_per_layer_us(self) -> dict[str, float]:
        """Mean host microseconds per layer and token: wait (GPU busy), plan, launch."""
        per = max(1, self.timings["tokens"]) * len(self.layers)
        return {k[:-2]: v / per * 1e6 for k, v in self.timings.items() if k.endswith("_s")}
