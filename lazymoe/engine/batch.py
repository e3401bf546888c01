"""Continuous batching: several requests decode together, one pass through the model per step.

    with engine.batch() as batch:
        a, first_a = batch.add(engine.tokenizer.encode("def "), GenerationConfig(max_new_tokens=32))
        b, first_b = batch.add(engine.tokenizer.encode("SELECT"), GenerationConfig(max_new_tokens=8))
        while len(batch):
            new = batch.step()                    # {handle: token} for every live sequence
        print(batch.tokens(a), batch.tokens(b))

Why it helps a MoE engine: at decode time the cost of a step is mostly reading expert weights
(from VRAM, RAM or disk), not arithmetic. Alone, each user's token reads its own top-k experts in
every layer. Batched, the B tokens of one step go through each layer's MoE block together: the
union of the experts they chose is looked up (and, on a miss, fetched) once, and each expert's
weights are read once for all the tokens that routed to it. So one fetch serves every sequence
that wants that expert, and the attention, norm and lm_head weights are read once per step for B
tokens instead of once per token. Aggregate tokens/s rises with B.

What it costs: a step does the work of B tokens (B attentions, a union of experts larger than
one token's top-k), so each user waits a little longer between their own tokens; and new
requests' prompts (prefill) run between steps, pausing everyone else while they do. The
expert cache must hold the batch's union, not one user's experts: when it holds one user's recent
experts but not the union, one request alone gets hits that the batch loses (bundled model, 4
users, 16 of 64 experts cached: 704 fetches together against 443 one after another; with 2
slots, 723 against 903). Prefetch guesses one token's next experts, so it runs only while one
sequence is live.

One decode step, for the B live sequences (T = B tokens, one per sequence, D hidden size, L the
batch KV's positions):

    embed the B last tokens; rotary angles of the B positions   (B, 1, D), (B, 1, head dim)
    per layer:  input norm                                       (B, 1, D)
                attention, one call for all B: each row's token  (B, 1, D)
                  written at its own position in the batch KV
                  (batch_kv.py), mask (B, 1, 1, L) hiding each
                  row's positions after its own
                residual add -> post-attention norm -> MoE block (or dense MLP) on all B tokens
                at once -> residual add                          (B, 1, D)
    final norm -> lm_head -> (B, V); per sequence: its own sampler, stop checks

One call per layer matters on a GPU: an attention call is ~30 small kernels (projections, norms,
rotary, attention, cache write), and calling it once per sequence cost ~30 x B x layers launches a
step (measured on an H200, Qwen3-30B-A3B shapes, 16 users: batched serving slower than one at a
time, 35.8 against 88.9 tok/s). Each batched sequence owns a row of the batch KV (`BatchKV`):
its prefill keys and values are copied into it when it first takes a batched step (and the
prefill cache freed), and the row is freed when the sequence finishes, is removed, or goes on
alone; the buffers grow and shrink with the rows in use and their lengths (formula in
batch_kv.py).

Two or more live sequences always run this eager layer loop (experts through `ExpertRuntime`,
whatever placement, quantization, prefetch or learner router the engine has). The host's path
for a MoE block reads the layer's expert ids (one GPU sync) and looks each distinct expert up
in Python: ~3 ms a layer, ~140 ms a step at 16 users (measured on an H200, Qwen3-30B-A3B
shapes in Q4_0, every expert in VRAM), while one user's token takes ~11 ms. So on
decode="device-cache" (compute/device_cache.py: the GPU keeps the expert cache itself) a
batched step's experts, and those of a new request's prefill, run on the device's tables
instead (`DeviceCacheDecoder.batch_experts`): the pass's distinct experts looked up on the GPU,
each miss filled once from the page-locked file, every token's experts computed in one launch,
no host sync. It decides as the host's book would (the same hits, evictions and LRU order) and
adds in the same order (the same tokens); it takes passes whose experts the slots can hold at
once (`can_batch`), larger ones take the host's path; `device_steps` counts the batched steps
that ran there. That alone changed little (146 ms a step at 16 users, of which the GPU worked
26 ms: data/results/h200-batch-profile-eager.json): transformers' layer code issues ~60 small
GPU operations a layer from Python. So on a GPU such a step is recorded once per batch size as a
CUDA graph and replayed (`_graph_step`, `graph_steps`; `graphs=False` keeps every step eager):
16 users 232 tok/s against 82 one at a time, 32 users 354 against 89 (same H200 and model,
data/results/serve-h200-qwen3-q4_0-device-batch-graphs.json). A graph reads the batch KV's
buffers where they are, so from the first one on the buffers only grow (`BatchKV.keep`).

Prompts that wait together join together (`add_many`, which the server uses): one padded pass
through the model for all of them (grouped by length, `prefill_groups`), so the last of 16 users
does not wait for 15 prefills before its first token (16 prompts of 24 tokens: 575 ms together,
2,210 ms one by one, same GPU). Their experts take the grouped kernels there (each expert once for
all its tokens, `ExpertRuntime.experts_on(prompt=True)`), as a lone prompt's do, so a prompt's
tokens do not depend on who shares its pass: 16 users 343 tok/s against 80 one at a time, median
first token 0.26 s against 3.2 s (data/results/serve-h200-qwen3-q4_0-grouped-prefill.json). One live sequence
alone takes the engine's single-sequence path instead, the one `Engine.stream` takes (`fast_lone`,
on by default): the segmented/CUDA-graph decoder of `compute/graphs.py` where the engine has one
(`engine.decode_path` "graphs" or "segments"), else transformers' own forward ("model", the CPU).
On a GPU that path is about twice as fast for one user (measured, OLMoE-1B-7B shapes, random
weights, float32, 5 GiB expert budget, one H200: one request alone in a batch 47.7 tok/s through
the graphs, engine.generate 49.1, the eager loop 22.6; scripts/lone_request_gpu.py), and a lone
request is the common case on a quiet server. The decoder holds one sequence's keys and values
in its own buffers, so the hand-over happens between two steps:

    one live -> decode alone: its keys and values (its prefill DynamicCache, or its batch row
                copied into one) go into the decoder's buffers (as after a prefill in
                Engine.stream), or stay in the DynamicCache for the "model" path; its row is freed
    a second one joins -> at the next step the lone one's keys and values (positions
                0..length-1, exact copies) are copied out of the decoder (or its DynamicCache)
                into a batch row, and both decode in the batched loop; the newcomer waits one
                step at most
    back to one -> at the next step, out of its row again

Its sampler (and so the seeded random generator) stays the sequence's own through every
hand-over, so greedy and seeded tokens are those of `engine.generate` as before.
`step_counts` says how many steps took each path ("single", "batched"); `last_path` the last.
While a sequence decodes alone on the decoder, the engine must not generate anything else
(`engine.generate`, another batch): they would share the decoder's buffers (its next step raises
RuntimeError then). Prefill runs through transformers exactly as in `Engine.stream`, one request
at a time.

Each sequence's tokens equal `engine.generate` of its prompt alone (greedy float32 on the CPU;
seeded sampling too): the tests in tests/test_engine_batch.py check it. The engine is not
thread-safe, and neither is a batch: one caller drives `add`, `step` and `remove`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from lazymoe.engine.batch_kv import BatchKV
from lazymoe.engine.compute.split import tensors_to
from lazymoe.engine.config import GenerationConfig
from lazymoe.engine.sampler import Sampler
from lazymoe.models.params import attention_head_dim

if TYPE_CHECKING:
    from lazymoe.engine.compute.graphs import SegmentedDecoder
    from lazymoe.engine.engine import Engine

log = logging.getLogger("lazymoe.engine")

_LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
PREFILL_TOKENS = 2048  # padded tokens of prompts prefilled in one pass at most (`add_many`)


@dataclass
class _StepGraph:
    """A batched step recorded for one batch size: token ids and positions go in `inputs`
    (through the pinned `inputs_host`), the logits come out in `logits`."""

    inputs_host: torch.Tensor  # (2, B): last tokens, positions
    inputs: torch.Tensor
    logits: torch.Tensor | None = None
    graph: torch.cuda.CUDAGraph | None = None

    def feed(self, tokens: list[int], positions: list[int]) -> None:
        """This step's last tokens and positions into `inputs` (through the pinned buffer)."""
        self.inputs_host[0], self.inputs_host[1] = torch.tensor(tokens), torch.tensor(positions)
        self.inputs.copy_(self.inputs_host, non_blocking=True)


@dataclass
class _Sequence:
    """One request in the batch: its settings, its tokens so far, and where its keys and values
    are: a DynamicCache (`cache`), the engine's decoder (`decoder`) or a row of the batch KV
    (both None then, or once finished or removed)."""

    gen: GenerationConfig
    stop_ids: set[int]
    sampler: Sampler
    cache: DynamicCache | None  # after prefill, and while alone on the "model" path
    length: int  # positions in the cache: the prompt plus every token fed back
    prompt_len: int
    new: list[int] = field(default_factory=list)
    done: bool = False
    # the engine's segmented decoder while this sequence decodes alone on it: its buffers hold
    # this sequence's keys and values then (and `cache` is None)
    decoder: SegmentedDecoder | None = None
    decoder_tokens: int = 0  # the decoder's token count after this sequence's last step on it

    def free(self) -> None:
        if self.decoder is not None:
            self.decoder.end()  # a device-cache decoder's tables back into the host's book
        self.cache = self.decoder = None

    @property
    def max_len(self) -> int:
        """The most positions it can need: prompt + max_new_tokens."""
        return self.prompt_len + self.gen.max_new_tokens


class EngineBatch:
    """Requests that join, decode together one step at a time, and leave (`Engine.batch()`)."""

    def __init__(self, engine: Engine, fast_lone: bool = True, device_experts: bool = True) -> None:
        self.engine = engine
        # one live sequence decodes through the engine's single-sequence path (module doc)
        self.fast_lone = fast_lone
        # decode="device-cache": the batched steps' experts on the GPU's own tables (module doc)
        self.device_experts = device_experts
        self.device_steps = 0  # batched steps whose experts ran that way
        # and on a GPU, those steps as CUDA graphs, one per batch size (`_graph_step`)
        self.graphs = True
        self.graph_steps = 0  # steps that replayed a graph
        self._graphs: dict[int, _StepGraph] = {}
        # what the graphs read: (decoder, first key buffer, rows, positions); compared by
        # identity (a freed decoder's id can come back for its successor)
        self._graphs_on: tuple | None = None
        self._burst = (0, 0)  # the most rows and positions needed since the batch was last empty
        self.device_prefills = 0  # prefill passes (one prompt, or several together) too
        self.step_counts = {"single": 0, "batched": 0}  # steps decoded by each path
        self.last_path: str | None = None  # "single" or "batched": the last step's
        self._layers = list(engine.model.model.layers)
        # a split engine (compute/split.py) keeps its layers on several devices
        self._devices = [next(layer.parameters()).device for layer in self._layers]
        for i, layer in enumerate(self._layers):
            missing = [name for name in _LAYER_PARTS if not hasattr(layer, name)]
            if missing:
                raise ValueError(
                    f"decoder layer {i} ({type(layer).__name__}) has no {', '.join(missing)}: the "
                    "batch's layer loop expects norm -> attention -> norm -> MLP layers; generate "
                    "one request at a time with engine.generate"
                )
        # a sliding-window model hides positions older than the window; one query token with no
        # mask sees them all, so a batch takes only sequences that fit the window (0/None: none)
        self._window = getattr(engine.model.config, "sliding_window", None) or None
        cfg = engine.model.config
        # the batched sequences' keys and values, a row each (batch_kv.py)
        self._kv = BatchKV(self._devices, cfg.num_key_value_heads, attention_head_dim(cfg),
                           engine.dtype)  # fmt: skip
        self._seqs: dict[int, _Sequence] = {}
        self._next_handle = 0

    # -- joining and leaving -----------------------------------------------------------------
    @torch.inference_mode()
    def add(self, prompt_ids: list[int], gen: GenerationConfig | None = None) -> tuple[int, int]:
        """Prefill `prompt_ids` alone now and join the batch: (handle, the first new token id).

        The sequence may be finished already (a stop id, or max_new_tokens=1): see `finished`.
        ValueError for an empty prompt, ids outside the vocabulary or max_new_tokens=0, TypeError
        for text or values that are not ints; the batch is unchanged then.
        """
        prompt_ids, gen = self._checked(prompt_ids, gen)
        return self._prefill([(prompt_ids, gen)])[0]

    @torch.inference_mode()
    def add_many(
        self, prompts: list[list[int]], gens: list[GenerationConfig | None]
    ) -> list[tuple[int, int] | Exception]:
        """Several requests join at once, their prompts prefilled together: one pass through
        the model for up to PREFILL_TOKENS padded tokens (the server admits everyone waiting
        this way, so the last of 16 users does not wait for 15 prefills before its first token).

        Per prompt, in order: (handle, first new token id), or the exception that kept it out
        (`add`'s ValueErrors; a failed pass fails each prompt in it, the batch stays usable).
        Each prompt's tokens are those it would get alone: the prompts are padded on the right
        to the longest of their group, and causal attention never lets a real position see the
        padding after it; their experts are computed token by token as in a prompt alone.
        """
        out: list[tuple[int, int] | Exception | None] = [None] * len(prompts)
        ready = []
        for i, (prompt_ids, gen) in enumerate(zip(prompts, gens, strict=True)):
            try:
                ready.append((i, *self._checked(prompt_ids, gen)))
            except (ValueError, TypeError) as exc:
                out[i] = exc
        for group in prefill_groups(ready):
            try:
                joined = self._prefill([(ids, gen) for _, ids, gen in group])
            except Exception as exc:  # each prompt of the pass gets it
                joined = [exc] * len(group)
            for (i, _, _), result in zip(group, joined, strict=True):
                out[i] = result
        return out

    def _checked(self, prompt_ids: list[int], gen: GenerationConfig | None):
        """(prompt ids, settings) of a request a batch can take, or ValueError saying why not."""
        engine, gen = self.engine, gen or GenerationConfig()
        prompt_ids = engine._checked_ids(prompt_ids)
        if not prompt_ids:
            raise ValueError("prompt_ids is empty: give at least one token (e.g. the EOS id)")
        if gen.max_new_tokens < 1:
            raise ValueError(
                f"max_new_tokens={gen.max_new_tokens}: a sequence in a batch makes at least one "
                "token; give 1 or more"
            )
        if self._window is not None and len(prompt_ids) + gen.max_new_tokens > self._window:
            raise ValueError(
                f"{len(prompt_ids)} prompt tokens + max_new_tokens={gen.max_new_tokens} exceed this "
                f"model's sliding attention window of {self._window} positions, which a batch does "
                "not apply: shorten the request, or generate it alone with engine.generate"
            )
        return prompt_ids, gen

    def _prefill(self, group: list[tuple[list[int], GenerationConfig]]) -> list[tuple[int, int]]:
        """One pass of the model over the group's prompts (one alone: as `Engine.stream` runs
        it; several: right-padded to the longest), each prompt's keys and values into its own
        cache, its first token sampled: per prompt (handle, token). Nothing joins if it fails."""
        engine = self.engine
        if engine.runtime.prefetcher is not None:
            engine.runtime.prefetcher.reset_pending()  # guesses of the last step are stale now
        config = engine.model.config
        seqs = [_Sequence(gen, engine._stop_ids(gen), Sampler(gen, engine.device),
                          DynamicCache(config=config), len(ids), len(ids))
                for ids, gen in group]  # fmt: skip
        start = time.perf_counter()
        longest = max(len(ids) for ids, _ in group)
        ids = torch.tensor([ids + ids[-1:] * (longest - len(ids)) for ids, _ in group],
                           device=engine.device)  # fmt: skip
        tables = self._device_cache(ids.numel())  # the prompts' experts there, where it can
        self.device_prefills += tables is not None
        with engine.runtime.experts_on(tables, prompt=True):
            if len(group) == 1:
                cache = seqs[0].cache
                logits = engine.model(input_ids=ids, cache=cache, use_cache=True,
                                      logits_to_keep=1).logits[:, -1]  # fmt: skip
            else:
                cache = DynamicCache(config=config)
                hidden = engine.model.model(input_ids=ids, cache=cache, use_cache=True)
                last = torch.tensor([seq.length - 1 for seq in seqs], device=engine.device)
                rows = torch.arange(len(seqs), device=engine.device)
                logits = engine.model.lm_head(hidden.last_hidden_state[rows, last])  # (B, V)
        if len(group) > 1:  # each prompt's own positions, copied out of the padded pass
            for b, seq in enumerate(seqs):
                for i, layer in enumerate(cache.layers):
                    seq.cache.update(layer.keys[b : b + 1, :, : seq.length].clone(),
                                     layer.values[b : b + 1, :, : seq.length].clone(), i)  # fmt: skip
        tokens = [seq.sampler(logits[b]) for b, seq in enumerate(seqs)]
        totals = engine._totals
        totals["prefill_seconds"] += time.perf_counter() - start
        totals["prompt_tokens"] += sum(seq.length for seq in seqs)
        out = []
        for seq, token in zip(seqs, tokens, strict=True):
            handle, self._next_handle = self._next_handle, self._next_handle + 1
            self._seqs[handle] = seq
            self._accept(handle, seq, token)
            out.append((handle, token))
        return out

    def remove(self, handle: int) -> None:
        """Drop a sequence now and free its keys and values; an unknown handle is not an error."""
        seq = self._seqs.pop(handle, None)
        if seq is not None:
            self._free(handle, seq)

    def finished(self, handle: int) -> bool:
        """True once the sequence hit a stop id, a stop string or max_new_tokens."""
        return self._get(handle).done

    def tokens(self, handle: int) -> list[int]:
        """The sequence's new tokens so far (without the prompt)."""
        return list(self._get(handle).new)

    def __len__(self) -> int:
        return sum(not seq.done for seq in self._seqs.values())

    def __enter__(self) -> EngineBatch:
        return self

    def __exit__(self, *exc) -> None:
        for handle in list(self._seqs):
            self.remove(handle)

    def _get(self, handle: int) -> _Sequence:
        seq = self._seqs.get(handle)
        if seq is None:
            raise KeyError(f"no sequence {handle!r} in this batch (never added, or removed)")
        return seq

    def _free(self, handle: int, seq: _Sequence) -> None:
        seq.free()
        self._kv.release(handle)
        if len(self):
            return
        # nobody decodes: a cache lent for batched steps back to the host's book (best effort: a
        # failing GPU must not stop the removal of the others), and buffers kept for CUDA graphs
        # dropped with the graphs when they are more than 4x what the last burst needed
        try:
            self.engine.runtime.reclaim()
        except Exception:
            log.warning("handing the device's cache back to the host failed", exc_info=True)
        kv, (rows, length) = self._kv, self._burst
        if kv.keep and kv.n_rows * kv.max_len > 4 * rows * length:
            self._graphs, self._graphs_on = {}, None
            kv.keep = False
            kv.reserve(0, 0)
        self._burst = (0, 0)

    def _accept(self, handle: int, seq: _Sequence, token: int) -> None:
        """Record a new token; a sequence that stops frees its keys and values at once."""
        seq.new.append(token)
        self.engine._totals["tokens"] += 1
        if (
            token in seq.stop_ids
            or len(seq.new) >= seq.gen.max_new_tokens
            or self.engine._hit_stop_string(seq.new, seq.gen)
        ):
            seq.done = True
            self._free(handle, seq)

    # -- one step --------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> dict[int, int]:
        """One decode step for every live sequence: {handle: its new token}; {} when none is live.

        If the model fails midway, the live sequences' caches are half-updated: they are dropped
        (removed) before the error propagates, and the batch stays usable for new requests.
        """
        live = [(h, seq) for h, seq in self._seqs.items() if not seq.done]
        if not live:
            return {}
        start = time.perf_counter()
        path = "single" if self.fast_lone and len(live) == 1 else "batched"
        try:
            if path == "single":
                logits = self._forward_alone(*live[0])[None]  # (1, V)
            else:
                live = self._into_rows(live)  # in row order now
                logits = self._forward([seq for _, seq in live])  # (B, V)
        except BaseException:
            for handle, _ in live:
                self.remove(handle)
            raise
        self.step_counts[path] += 1
        self.last_path = path
        out = {}
        greedy = None  # every row greedy: one argmax and one host sync for all, not one per row
        if len(live) > 1 and all(seq.gen.temperature == 0 for _, seq in live):
            greedy = logits.argmax(dim=-1).tolist()  # the first largest, as Sampler's argmax
        for row, (handle, seq) in enumerate(live):
            token = greedy[row] if greedy is not None else seq.sampler(logits[row])
            seq.length += 1
            self._accept(handle, seq, token)
            out[handle] = token
        self.engine._totals["decode_seconds"] += time.perf_counter() - start
        return out

    def _forward_alone(self, handle: int, seq: _Sequence) -> torch.Tensor:
        """The engine's single-sequence path on the sequence's last token: logits (V,).

        The same calls as `Engine._stream`: the segmented/graph decoder (made for the prompt plus
        max_new_tokens positions, as there), or transformers' forward with the DynamicCache."""
        engine = self.engine
        if handle in self._kv:  # it was batched: its row into a DynamicCache (exact copies)
            seq.cache = DynamicCache(config=engine.model.config)
            for i, (keys, values) in enumerate(self._kv.read(handle, seq.length)):
                seq.cache.update(keys, values, i)  # concatenates: a copy
            self._kv.release(handle)
        if engine.decode_path == "model":
            ids = torch.tensor([[seq.new[-1]]], device=engine.device)
            return engine.model(
                input_ids=ids, cache=seq.cache, use_cache=True, logits_to_keep=1
            ).logits[0, -1]
        if seq.decoder is None:  # alone from now on: its keys and values move into the decoder
            decoder = engine._decoder_for(seq.max_len)
            decoder.load_prefill(seq.cache, seq.length)
            seq.decoder, seq.cache = decoder, None
        elif seq.decoder.timings["tokens"] != seq.decoder_tokens:  # someone else decoded on it
            raise RuntimeError(
                "the engine's decoder ran another generation (engine.generate, or another batch) "
                "while a sequence of this batch decoded alone on it, and overwrote its keys and "
                "values: let a batch's sequences finish (or remove them) before generating "
                "anything else with the same engine"
            )
        logits = seq.decoder.step(seq.new[-1], seq.length)
        seq.decoder_tokens = seq.decoder.timings["tokens"]
        return logits

    def _into_rows(self, live: list[tuple[int, _Sequence]]) -> list[tuple[int, _Sequence]]:
        """Give every live sequence without a row one, with its keys and values copied in (from
        its prefill DynamicCache, or from the decoder's buffers: positions 0..length-1), and size
        the batch KV for this step: the live sequences in row order."""
        kv = self._kv
        need = (len(live), max(seq.length for _, seq in live) + 1)
        self._burst = (max(self._burst[0], need[0]), max(self._burst[1], need[1]))
        kv.reserve(*need, cap=max(seq.max_len for _, seq in live))
        for handle, seq in live:
            if handle in kv:
                continue
            if seq.decoder is not None:
                keys, values = seq.decoder.kv.keys, seq.decoder.kv.values
            else:
                keys = [layer.keys for layer in seq.cache.layers]
                values = [layer.values for layer in seq.cache.layers]
            kv.write(kv.add(handle), keys, values, seq.length)
            # its keys and values live in the row now; a device-cache decoder keeps the cache
            # lent (the batched step reads the same tables; a host pass takes it back first)
            seq.cache = seq.decoder = None
        return [(handle, self._seqs[handle]) for handle in kv.owners]

    def _forward(self, seqs: list[_Sequence]) -> torch.Tensor:
        """The model on each sequence's last token, one attention call per layer for all rows of
        the batch KV (`seqs` in row order): logits (B, V). On a GPU whose experts run on the
        device's tables, a CUDA graph of the whole step (one per batch size)."""
        engine = self.engine
        decoder = self._device_cache(len(seqs))
        tokens = [seq.new[-1] for seq in seqs]
        positions = [seq.length for seq in seqs]  # each one's next position is its length
        self.device_steps += decoder is not None
        if decoder is not None and self.graphs and engine.device.type == "cuda":
            return self._graph_step(decoder, tokens, positions)
        self._kv.prepare(positions)
        device = engine.device
        return self._pass(torch.tensor(tokens, device=device),
                          torch.tensor(positions, device=device), decoder)  # fmt: skip

    def _pass(self, last: torch.Tensor, at: torch.Tensor, decoder) -> torch.Tensor:
        """The layer loop on the rows' last tokens (B,) at their positions (B,), the batch KV
        prepared for them; `decoder`: the device-cache decoder computing the experts, or None.
        No host values once the inputs are on the device: a CUDA graph can record it."""
        engine = self.engine
        base = engine.model.model
        h = base.embed_tokens(last[:, None])  # (B, 1, D)
        rope = base.rotary_emb(h, position_ids=at[:, None])  # each row's own rotary angles
        moved = {}  # the rotary cos/sin on each layer device, moved once per step
        with engine.runtime.experts_on(decoder):
            for layer, layer_device in zip(self._layers, self._devices, strict=True):
                h = h.to(layer_device)  # a no-op unless the layers are split across devices
                x = layer.input_layernorm(h)  # (B, 1, D)
                attn, _ = layer.self_attn(
                    hidden_states=x,
                    position_embeddings=tensors_to(rope, layer_device, moved),
                    attention_mask=self._kv.mask(layer_device),  # (B, 1, 1, L)
                    cache=self._kv,
                )
                h = h + attn
                h = h + _mlp_output(layer.mlp(layer.post_attention_layernorm(h)), h.shape)
        return engine.model.lm_head(base.norm(h))[:, -1]  # (B, V)

    # -- the batched step as CUDA graphs -----------------------------------------------------------
    def _graph_step(self, decoder, tokens: list[int], positions: list[int]) -> torch.Tensor:
        """The step by replaying the graph recorded for this batch size (its first step at a
        size runs eagerly and records it). Graphs read the batch KV's buffers and the decoder's
        tables where they were: new buffers (the KV grew or shrank) or a new decoder drop them."""
        kv = self._kv
        if max(positions) >= kv.max_len:
            raise ValueError(f"position {max(positions)} is past max_len={kv.max_len}")
        on = self._graphs_on
        if on is None or on[0] is not decoder or on[1] is not kv.keys[0] or on[2:] != (
                kv.n_rows, kv.max_len):  # fmt: skip
            self._graphs, self._graphs_on = {}, (decoder, kv.keys[0], kv.n_rows, kv.max_len)
        n = len(tokens)
        step = self._graphs.get(n)
        if step is None:
            return self._record(decoder, tokens, positions)
        step.feed(tokens, positions)
        step.graph.replay()
        self.graph_steps += 1
        return step.logits

    def _record(self, decoder, tokens: list[int], positions: list[int]) -> torch.Tensor:
        """This step eagerly on a side stream (which also compiles the kernels and sets up the
        libraries), then the same calls recorded as a graph for this batch size: this step's
        logits. If recording fails, the batch runs its steps eagerly from then on."""
        device, n = self.engine.device, len(tokens)
        step = _StepGraph(torch.zeros(2, n, dtype=torch.long, pin_memory=True),
                          torch.zeros(2, n, dtype=torch.long, device=device))  # fmt: skip
        step.feed(tokens, positions)  # (the side stream below waits for the copy)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            self._kv.prepare_static(step.inputs[1])
            logits = self._pass(step.inputs[0], step.inputs[1], decoder).clone()
        torch.cuda.current_stream(device).wait_stream(side)
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._kv.prepare_static(step.inputs[1])
                step.logits = self._pass(step.inputs[0], step.inputs[1], decoder)
        except Exception:  # the step above stands; later ones run eagerly
            log.warning("recording the batched step as a CUDA graph failed: batched steps run "
                        "eagerly from now on", exc_info=True)  # fmt: skip
            self.graphs = False
            return logits
        step.graph = graph
        self._graphs[n] = step
        self._kv.keep = True  # the buffers the graphs read stay (they only grow from now on)
        return logits

    def _device_cache(self, n_tokens: int):
        """The engine's device-cache decoder for a pass over `n_tokens` tokens (a batched step,
        a prefill), or None: `Engine._device_tables`, unless this batch's `device_experts` is off."""
        return self.engine._device_tables(n_tokens) if self.device_experts else None


def prefill_groups(ready: list[tuple]) -> list[list[tuple]]:
    """(index, prompt ids, settings) of requests in groups prefilled together: by length, so
    that a group's padding adds at most as many tokens as its prompts hold, and at most
    PREFILL_TOKENS padded tokens a group (one prompt longer than that goes alone)."""
    groups: list[list[tuple]] = []
    real = 0
    for item in sorted(ready, key=lambda item: len(item[1])):
        n = len(item[1])  # the longest so far: the group's padded length
        if groups and (len(groups[-1]) + 1) * n <= min(2 * (real + n), PREFILL_TOKENS):
            groups[-1].append(item)
            real += n
        else:
            groups.append([item])
            real = n
    return groups


def _mlp_output(out, shape: torch.Size) -> torch.Tensor:
    """A decoder layer's MLP output as (B, 1, D): MoE blocks of some transformers models return
    (hidden, router logits), and some flatten the tokens to (B, D)."""
    if isinstance(out, tuple):
        out = out[0]
    return out.view(shape)
