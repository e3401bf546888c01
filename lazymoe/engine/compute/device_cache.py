"""The expert cache kept by the GPU itself: a decode token as one CUDA graph, no host round trip.

Why: the graph decoder (graphs.py) stops at every layer's router. The host reads the chosen ids
(one GPU sync), looks them up in the cache, starts the copies of the misses and launches the
next segment. On an H200 with Qwen3-30B-A3B in Q4_0 at an 8 GB expert budget that costs ~375 us
of host time and waiting a layer, 18 ms a token, while the GPU needs ~1.3 ms for the experts and
~4 ms for the ~77 misses' bytes over PCIe (data/results/bench-h200-qwen3-30b-a3b-q4_0-pinned.json).

Here the cache's bookkeeping lives on the GPU next to the experts, so a whole token (every layer,
hits and misses) is one graph the host launches once:

    per layer    router -> top-k ids (device)
                 _assign_kernel   one program: each id's slot from the device map; a miss takes
                                  the least recently used slot (LRU, as the host's CacheBook
                                  orders it); writes the slots (in ascending expert order, as
                                  the kernels read them) and the list of slots to fill. A
                                  layer whose experts all hit stamps them and skips the search
                 _fill_kernel     copies each missed expert's stored bytes from the page-locked
                                  file map into its slot: the GPU reads host memory over PCIe
                                  itself (mapped, unified addressing), no copy engine, no host
                 experts          the kernels of graphs.py on the slots (triton_quant's for a
                                  GGUF file's bytes, the float ones for a safetensors checkpoint)

What it needs: experts read in place from the checkpoint's own files (a GGUF file, or safetensors
in the engine's dtype: the bytes are copied as stored), on a GPU the files page-locked
(`pin_checkpoint=True`: the GPU can only read host memory that is), and the LRU policy (the one
the GPU keeps). The CPU runs the same loop eagerly, kernels under Triton's interpreter: the unit
tests check it token for token, and hit for hit against the host's book (tests/test_device_cache.py).

A batched step of several requests (engine/batch.py), and the prompts' prefill there, use the
same tables: `batch_experts` runs `_assign_batch_kernel` (the pass's T x K ids; the layer's
experts it uses looked up in ascending order, each once, as the host's batched path does),
`_fill_kernel` for its misses, and one launch of the experts' kernels for every token (a prompt's
pass: the grouped kernels, triton_grouped.py). No host sync there either: the eager layer loop
only launches.

The host's `CacheBook` stays the record between generations: after a prompt's prefill (which runs
through transformers and the host's cache) the decoder loads the book into its device tables
(`load_prefill`); when the generation ends (`end`) it writes the tables back into the book, with
the hits, misses and evictions counted on the GPU. Prefetch does not run (misses are fetched on
demand, inside the graph).

Device tables (S slots, L layers, E experts per layer; key = layer * E + expert):

    where  (L E,) int32   key -> slot, or -1
    owner  (S,)   int32   slot -> key, or -1 when free
    stamp  (S,)   int64   when the slot was last used: clock * 2^16 + rank (rank = the expert's place
                          in its layer's ascending order, as the host book meets them); free
                          slots below every used one, in the order the book hands them out
    counts (L, 3) int64   hits, misses (by layer), evictions (by the victim's layer)
"""

from __future__ import annotations

import time

import numpy as np
import torch

from lazymoe.engine.compute import cpu_misses, kernels, triton_grouped, triton_quant
from lazymoe.engine.compute.graphs import SegmentedDecoder
from lazymoe.engine.compute.triton_kernels import triton
from lazymoe.engine.parts.policies import LRU

if triton is not None:
    import triton.language as tl

    _NO_SLOT = tl.constexpr(1 << 62)  # the stamp of padding past the last slot: never a victim
    _RANKS = tl.constexpr(1 << 16)  # stamps are clock * _RANKS + rank: room for any step's experts

MAX_SLOTS = 16384  # the LRU search is one program's vector of stamps: registers bound it
# a float pool's experts take a launch per token (kernels.batched_decode_indexed): passes of at
# most this many tokens run on the device's tables (a long prompt's prefill takes the host's path)
FLOAT_BATCH_TOKENS = 32
# a quantized pool's experts: one launch computes every (token, expert) pair, with K (I floats +
# D activations) per token between the kernels (~50 KB a token at Qwen3-30B-A3B's shapes):
# passes of at most this many tokens, as many as EngineBatch prefills together (the host's path
# takes longer prompts in chunks)
QUANT_BATCH_TOKENS = 2048
BATCH_BLOCK = 256  # pairs a step of the batch assign kernel's loops takes
FREE_STAMP = -(1 << 40)  # free slots: older than any used one
ZERO_STAMP = 1 << 61  # the zero slot (cpu_misses.py): newer than any stamp a step gives, never a victim
FILL_WORDS = 1024  # words a program of the fill kernel copies (8 KB of int64)
_WORD_DTYPES = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


if triton is not None:

    @triton.jit
    def _evict(stamps, owners, ss, key, stamp, where_ptr, counts_ptr, LAYER, N_EXPERTS):
        """A miss of `key`: the least recently used slot is its (its old expert leaves the map,
        an eviction counted for that one's layer), stamped `stamp`. (victim, owners, stamps)."""
        victim = tl.argmin(stamps, axis=0).to(tl.int32)
        old = tl.sum(tl.where(ss == victim, owners, 0), axis=0)
        tl.store(where_ptr + old, -1, mask=old >= 0)
        tl.store(where_ptr + key, victim)
        old_layer = tl.where(old >= 0, old // N_EXPERTS, LAYER)  # counts are atomic: one
        # program's scalar store and a later load may run on different threads
        tl.atomic_add(counts_ptr + old_layer * 3 + 2, (old >= 0).to(tl.int64))
        owners = tl.where(ss == victim, key, owners)
        stamps = tl.where(ss == victim, stamp, stamps)
        return victim, owners, stamps

    @triton.jit
    def _assign_kernel(
        ids_ptr, where_ptr, owner_ptr, stamp_ptr, clock_ptr, index_ptr, fill_ptr, counts_ptr,
        cpu_ptr, share_ptr, LAYER, N_EXPERTS, N_SLOTS, FETCH_LIMIT, ZERO_SLOT, K: tl.constexpr,
        KP: tl.constexpr, SP: tl.constexpr,
    ):  # fmt: skip
        # the GPU fetches share/256 of the misses (rounded up; the share is read from memory,
        # which the host tunes between tokens: cpu_misses.ShareTuner), at most FETCH_LIMIT; the
        # others (ascending ids) are the CPU's (cpu_misses.FetchSplit): no slot, the index
        # points at ZERO_SLOT, and cpu lists their ids then top-k places
        # the K ids are distinct (a router's top-k; a replayed trace is checked when loaded)
        kk = tl.arange(0, KP)
        kmask = kk < K
        ids = tl.load(ids_ptr + kk, mask=kmask, other=0).to(tl.int32)
        key = LAYER * N_EXPERTS + ids
        slot = tl.load(where_ptr + key, mask=kmask, other=-1)
        # rank: place in ascending expert order (padding lanes rank past the real ones)
        lower = (ids[None, :] < ids[:, None]) & kmask[None, :]
        rank = tl.where(kmask, tl.sum(lower.to(tl.int32), axis=1), KP)
        clock = tl.load(clock_ptr)
        hit = kmask & (slot >= 0)
        hits = tl.sum(hit.to(tl.int64), axis=0)
        n_cpu = 0
        if hits == K:  # every expert resident: its stamp, nothing to fill, no search
            tl.store(stamp_ptr + slot, clock * _RANKS + rank, mask=kmask)
            tl.store(fill_ptr + rank, tl.full([KP], -1, tl.int32), mask=kmask)
            tl.store(fill_ptr + K + rank, key, mask=kmask)
        else:  # a miss: the search for victims needs every slot's stamp
            ss = tl.arange(0, SP)
            smask = ss < N_SLOTS
            stamps = tl.load(stamp_ptr + ss, mask=smask, other=_NO_SLOT)
            owners = tl.load(owner_ptr + ss, mask=smask, other=-1)
            for r in tl.static_range(K):  # the hits first: stamped now, none can be a victim below
                sel = (rank == r) & hit
                used = tl.sum(tl.where(sel, slot + 1, 0), axis=0) - 1  # its slot, or -1
                stamps = tl.where(ss == used, clock * _RANKS + r, stamps)
            fetched = 0
            share = tl.load(share_ptr).to(tl.int64)
            limit = tl.minimum((K - hits) * share + 255, FETCH_LIMIT * 256) // 256
            for r in tl.static_range(K):  # the misses, in the host book's order: ascending ids
                sel = rank == r
                key_r = tl.sum(tl.where(sel, key, 0), axis=0)
                slot_r = tl.sum(tl.where(sel, slot, 0), axis=0)
                if slot_r < 0:
                    if fetched < limit:  # the least recently used slot (not used this step)
                        victim, owners, stamps = _evict(
                            stamps, owners, ss, key_r, clock * _RANKS + r, where_ptr, counts_ptr,
                            LAYER, N_EXPERTS,
                        )  # fmt: skip
                        slot = tl.where(sel, victim, slot)
                        tl.store(fill_ptr + r, victim)
                        fetched += 1
                    else:  # the CPU's: the zero slot adds nothing on the GPU
                        slot = tl.where(sel, ZERO_SLOT, slot)
                        tl.store(fill_ptr + r, -1)
                        tl.store(cpu_ptr + n_cpu, key_r - LAYER * N_EXPERTS)
                        tl.store(cpu_ptr + K + n_cpu, tl.sum(tl.where(sel, kk, 0), axis=0))
                        n_cpu += 1
                else:
                    tl.store(fill_ptr + r, -1)
                tl.store(fill_ptr + K + r, key_r)
            tl.store(stamp_ptr + ss, stamps, mask=smask)
            tl.store(owner_ptr + ss, owners, mask=smask)
        tl.store(clock_ptr, clock + 1)
        pad = kmask & (kk >= n_cpu)  # the CPU's list ends with -1s
        tl.store(cpu_ptr + kk, tl.full([KP], -1, tl.int32), mask=pad)
        tl.store(cpu_ptr + K + kk, tl.full([KP], -1, tl.int32), mask=pad)
        # the slots in ascending expert order, and which top-k weight each takes
        tl.store(index_ptr + rank, slot.to(tl.int64), mask=kmask)
        tl.store(index_ptr + K + rank, kk.to(tl.int64), mask=kmask)
        tl.atomic_add(counts_ptr + LAYER * 3, hits)
        tl.atomic_add(counts_ptr + LAYER * 3 + 1, K - hits)

    @triton.jit(do_not_specialize=["LAYER", "N"])  # one compile, whatever the pass's size
    def _assign_batch_kernel(
        ids_ptr, where_ptr, owner_ptr, stamp_ptr, clock_ptr, index_ptr, fill_ptr, counts_ptr,
        seen_ptr, LAYER, N_EXPERTS, N_SLOTS, N, K: tl.constexpr, EP: tl.constexpr,
        SP: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        # a pass's N = T x K ids, token t's at t K .. t K + K - 1 (distinct within a token,
        # repeated across tokens), looked up as the host's path does: the layer's distinct
        # experts in ascending order, each once. seen: E int32 scratch, zeros between calls
        for c in range(0, N, BLOCK):  # which experts the pass uses
            a = c + tl.arange(0, BLOCK)
            ids = tl.load(ids_ptr + a, mask=a < N, other=0)
            tl.store(seen_ptr + ids, 1, mask=a < N)
        tl.debug_barrier()  # every thread of the program sees every store above
        e = tl.arange(0, EP)
        emask = e < N_EXPERTS
        used = tl.load(seen_ptr + e, mask=emask, other=0) > 0
        rank = tl.cumsum(used.to(tl.int32), axis=0) - 1  # place among the used ones, ascending
        distinct = tl.sum(used.to(tl.int32), axis=0)
        key = LAYER * N_EXPERTS + e
        slot = tl.load(where_ptr + key, mask=emask, other=-1)
        hit = used & (slot >= 0)
        hits = tl.sum(hit.to(tl.int64), axis=0)
        clock = tl.load(clock_ptr)
        # the hits first, stamped now (none can be a victim below), then read back by all
        tl.store(stamp_ptr + slot, clock * _RANKS + rank, mask=hit)
        tl.store(fill_ptr + e, -1, mask=emask)  # no fill unless a miss below says so
        tl.debug_barrier()  # (every thread has read `seen` by now: it can be cleared below)
        tl.store(seen_ptr + e, 0, mask=emask)  # zeros again for the next call
        ss = tl.arange(0, SP)
        smask = ss < N_SLOTS
        stamps = tl.load(stamp_ptr + ss, mask=smask, other=_NO_SLOT)
        owners = tl.load(owner_ptr + ss, mask=smask, other=-1)
        for r in range(0, distinct):  # the misses in the host book's order: ascending ids
            sel = used & (rank == r)
            key_r = tl.sum(tl.where(sel, key, 0), axis=0)
            slot_r = tl.sum(tl.where(sel, slot, 0), axis=0)
            if slot_r < 0:  # the least recently used slot (never one this pass uses)
                victim, owners, stamps = _evict(
                    stamps, owners, ss, key_r, clock * _RANKS + r, where_ptr, counts_ptr, LAYER,
                    N_EXPERTS,
                )  # fmt: skip
                tl.store(fill_ptr + r, victim)
            tl.store(fill_ptr + N_EXPERTS + r, key_r)
        tl.store(stamp_ptr + ss, stamps, mask=smask)
        tl.store(owner_ptr + ss, owners, mask=smask)
        tl.store(clock_ptr, clock + 1)
        tl.atomic_add(counts_ptr + LAYER * 3, hits)
        tl.atomic_add(counts_ptr + LAYER * 3 + 1, distinct - hits)
        tl.debug_barrier()  # the layer's row of `where` holds every used expert's slot now
        for c in range(0, N, BLOCK):  # per token, its slots in ascending expert order, and
            a = c + tl.arange(0, BLOCK)  # which top-k weight each takes
            ok = a < N
            ids = tl.load(ids_ptr + a, mask=ok, other=0)
            row = a // K
            place = row * K
            for j in tl.static_range(K):  # how many of its token's ids are smaller
                other = tl.load(ids_ptr + row * K + j, mask=ok, other=0)
                place += (other < ids).to(place.dtype)
            got = tl.load(where_ptr + LAYER * N_EXPERTS + ids, mask=ok, other=0)
            tl.store(index_ptr + place, got.to(tl.int64), mask=ok)
            tl.store(index_ptr + N + place, (a % K).to(tl.int64), mask=ok)

    @triton.jit
    def _fill_kernel(
        src_ptr, dst_ptr, down_ptr, fill_ptr, offsets_ptr, STRIDE, DOWN_STRIDE,
        SIZE0, SIZE1, SIZE2, START0, START1, START2, K, WORDS: tl.constexpr,
    ):  # fmt: skip
        r = tl.program_id(0)  # which of the layer's K experts (a batched step: of its K pairs)
        part = tl.program_id(1)  # gate, up, down
        slot = tl.load(fill_ptr + r).to(tl.int64)
        if slot >= 0:  # a miss: copy this part's words, WORDS of them per program
            key = tl.load(fill_ptr + K + r).to(tl.int64)
            size = tl.where(part == 0, SIZE0, tl.where(part == 1, SIZE1, SIZE2))
            start = tl.where(part == 0, START0, tl.where(part == 1, START1, START2))
            src = tl.load(offsets_ptr + key * 3 + part)
            w = tl.program_id(2) * WORDS + tl.arange(0, WORDS)
            ok = w < size
            words = tl.load(src_ptr + src + w, mask=ok)
            if part == 2:  # down: its own tensor in a float pool (the same one in a byte pool)
                tl.store(down_ptr + slot * DOWN_STRIDE + start + w, words, mask=ok)
            else:
                tl.store(dst_ptr + slot * STRIDE + start + w, words, mask=ok)


def unsupported_reason(engine, assume_pinned: bool = False) -> str | None:
    """Why decode="device-cache" cannot run this engine, or None when it can (beyond what the
    graph decoder itself needs: graphs.unsupported_reason). assume_pinned: as if the checkpoint
    were page-locked (would --pin-checkpoint be enough?)."""
    store = engine.store
    if triton is None:
        return "Triton is not installed"
    if getattr(store, "quantized", False) and not engine.quantized_experts:
        return ("the GGUF file's experts are dequantized into float slots here (kernel "
                f"{engine.config.kernel!r}): the GPU copies experts as stored, so leave kernel "
                "to auto (or 'fused'), or use decode='graphs'")  # fmt: skip
    if not hasattr(store, "part_offsets"):  # extracted experts, a learner's reader
        return ("it reads experts in place from the checkpoint's own files (safetensors or GGUF); "
                f"this engine reads them through {type(store).__name__}: use decode='graphs'")  # fmt: skip
    if not engine.quantized_experts and store.dtype != engine.dtype:
        return (f"the checkpoint's experts are {store.dtype} and the engine computes in "
                f"{engine.dtype}: misses are copied as stored, so give dtype="
                f"{str(store.dtype).removeprefix('torch.')!r} (or use decode='graphs')")  # fmt: skip
    if engine.device.type == "cuda" and not (assume_pinned or getattr(store, "pinned", False)):
        return ("the GPU reads missed experts straight from the file, which it can do only once "
                "the file is page-locked: add pin_checkpoint=True (--pin-checkpoint)")  # fmt: skip
    book = engine.tiers.device.book
    if type(book.policy) is not LRU:
        return (f"policy {book.policy.name!r}: the GPU keeps least-recently-used order only "
                "(policy='lru')")  # fmt: skip
    if book.n_slots > MAX_SLOTS:
        return f"{book.n_slots} slots: the GPU's LRU search holds at most {MAX_SLOTS}"
    splits = cpu_misses.fetch_split(engine, engine.top_k).splits(engine.top_k)  # (tuning: only with a slot to spare)
    if splits and book.n_slots <= engine.top_k and book.n_slots < engine.total_experts:
        return (f"placement={engine.config.placement!r} keeps one of the {book.n_slots} slots for "
                f"the CPU's misses; a layer's {engine.top_k} experts need the others: give a larger "
                "vram_budget")  # fmt: skip
    return None


def word_bytes(*values: int) -> int:
    """The widest word (8, 4, 2 or 1 bytes) that every offset and size in `values` is a multiple of."""
    for width in (8, 4, 2):
        if all(int(v) % width == 0 for v in values):
            return width
    return 1


class DeviceCacheDecoder(SegmentedDecoder):
    """The segmented decoder's layer loop with the cache's lookups, evictions and fills on the
    device: one CUDA graph a token (graphs=True), or the same calls eagerly (the CPU tests)."""

    def __init__(self, engine, max_len: int, graphs: bool) -> None:
        super().__init__(engine, max_len, graphs=False)  # no per-segment graphs: one per token
        self.graphs = graphs
        self.engine_store = engine.store
        self.book = self.runtime.tiers.device.book
        self.replay = self.runtime.replay
        device, n, k = engine.device, len(self.layers), self.top_k
        self.n_experts = engine.num_experts
        offsets, sizes = engine.store.part_offsets()  # bytes
        # where each part goes in a slot, in bytes: (pool tensor, stride, start) per part
        if self.quantized:  # gate | up | down back to back in one byte slot
            gate_up = down = self.pool.data
            strides = (self.pool.slot_nbytes,) * 2
            starts = [(0, int(sz[0]), int(sz[0] + sz[1])) for sz in sizes]
            for j, layout in enumerate(self.layouts):
                if layout.offsets != starts[j]:
                    raise ValueError(f"layer {j}: slot layout {layout.offsets} does not match the "
                                     f"file's part sizes {tuple(sizes[j])}")  # fmt: skip
        else:  # a float pool: gate_up (S, 2I, D), down (S, D, I)
            gate_up, down = self.pool.gate_up, self.pool.down
            strides = (gate_up[0].nbytes, down[0].nbytes)
            starts = [(0, gate_up[0].nbytes // 2, 0)] * n
            if (sizes != [gate_up[0].nbytes // 2, gate_up[0].nbytes // 2, down[0].nbytes]).any():
                raise ValueError(f"the checkpoint's expert parts {sizes[0].tolist()} bytes do not "
                                 "fit the pool's slots")  # fmt: skip
        width = word_bytes(*strides, *offsets.reshape(-1), *sizes.reshape(-1), *np.ravel(starts))
        dtype = _WORD_DTYPES[width]
        self.word_bytes = width
        self.src = engine.store.map_tensor(dtype, device)  # the files' bytes, read in place
        self.dst = (gate_up.view(-1).view(torch.uint8).view(dtype),
                    down.view(-1).view(torch.uint8).view(dtype))  # fmt: skip
        self.strides = tuple(x // width for x in strides)
        self.part_words = [tuple(int(x) // width for x in row) for row in sizes]
        self.expert_bytes = [int(row.sum()) for row in sizes]  # a miss reads this many
        self.starts = [tuple(x // width for x in row) for row in starts]
        self.offsets = torch.from_numpy(offsets.reshape(-1) // width).to(device)
        self.fill_grid = [(k, 3, triton.cdiv(max(words), FILL_WORDS)) for words in self.part_words]
        s = self.book.n_slots
        self.where = torch.full((n * self.n_experts,), -1, dtype=torch.int32, device=device)
        self.owner = torch.full((s,), -1, dtype=torch.int32, device=device)
        self.stamp = torch.zeros(s, dtype=torch.int64, device=device)
        self.clock = torch.zeros(1, dtype=torch.int64, device=device)
        self.counts = torch.zeros(n, 3, dtype=torch.int64, device=device)
        self.fill = torch.zeros(n, 2 * k, dtype=torch.int32, device=device)  # slot to fill, key
        self.seen = torch.zeros(self.n_experts, dtype=torch.int32, device=device)  # batch kernel's
        self.batch_layer_passes = 0  # layers whose experts `batch_experts` ran (prompts, batches)
        self.grouped_layer_passes = 0  # of those, prompts' computed in tiles of tokens
        self.search_width = triton.next_power_of_2(s)
        self.trace_host = torch.zeros(n, k, dtype=torch.long, pin_memory=device.type == "cuda")
        self._trace_np = self.trace_host.numpy()  # writes land in the pinned buffer
        self.trace_ids = torch.zeros(n, k, dtype=torch.long, device=device)
        # misses computed on the CPU (placement cpu/auto: cpu_misses.py): how many of a layer's
        # misses the GPU fetches, the list of the others per layer, the slot of zeros they take,
        # and the page-locked memory the host computes them through
        self.split = cpu_misses.fetch_split(engine, k)
        self.share = torch.tensor([self.split.share], dtype=torch.int32, device=device)
        # auto with no fetch_per_layer: the share tuned as tokens run (a mailbox even when the
        # first estimate leaves the CPU nothing: the tuner may find it faster to give it some),
        # given a slot to spare for the zero slot
        tune = cpu_misses.tunes_share(engine)
        self.tuner = None
        self.cpu = torch.full((n, 2 * k), -1, dtype=torch.int32, device=device)
        self.zero_slot, self.mailbox = 0, None
        if (self.split.splits(k) or tune) and s < n * self.n_experts:  # (every expert resident: no miss)
            self.zero_slot = s - 1
            self.mailbox = cpu_misses.MissMailbox(n, k, engine.hidden, self.dtype, device)
            self.tuner = cpu_misses.ShareTuner(self.split.share) if tune else None
        self.active = False  # the device tables hold the cache (between load_prefill and end)
        self._loaded_owner: np.ndarray | None = None
        self.token_graph: torch.cuda.CUDAGraph | None = None
        if graphs:
            self._capture_token()

    # -- one token ---------------------------------------------------------------------------------
    def _token(self) -> None:
        h = self._embed()
        mailbox = self.mailbox
        if mailbox is not None:
            mailbox.seq.add_(1)  # the token's number: what the host's and the GPU's flags say
        for i in range(len(self.layers)):
            x, residual, weights, ids = self._route(i, h)
            if self.replay is not None:  # the trace's experts take the router's weights by position
                ids = self.trace_ids[i]
            self._assign(i, ids.reshape(-1))
            if mailbox is not None:  # the CPU's misses, their input and weights to the host,
                mailbox.post(i, self.cpu[i], x, weights.contiguous())  # before the fills: the
                if not self.graphs:  # CPU computes while they cross the link. Eager (the CPU
                    if self.src.is_cuda:  # tests): the host answers in line, once the post is in
                        torch.cuda.current_stream().synchronize()
                    mailbox.serve_layer(self.runtime, i)
            self._fill(i)
            out = self._experts(i, x, weights)
            if mailbox is not None:  # the CPU's sum, once the host has written it
                mailbox.wait_add(i, self.cpu[i], out)
            h = residual + out.view(residual.shape)
        self.logits = self.lm_head(self.base.norm(h))[0, -1]

    def _assign(self, i: int, ids: torch.Tensor) -> None:
        k = self.top_k
        _assign_kernel[(1,)](
            ids, self.where, self.owner, self.stamp, self.clock, self.index[i], self.fill[i],
            self.counts, self.cpu[i], self.share, i, self.n_experts, self.book.n_slots,
            self.split.limit, self.zero_slot, K=k,
            KP=triton.next_power_of_2(k), SP=self.search_width,
            num_warps=8 if self.search_width >= 4096 else 4,
        )  # fmt: skip

    def _fill(self, i: int) -> None:
        """Copy layer i's fetched misses from the file into the slots `_assign` gave them."""
        k = self.top_k
        _fill_kernel[self.fill_grid[i]](
            self.src, *self.dst, self.fill[i], self.offsets, *self.strides, *self.part_words[i],
            *self.starts[i], K=k, WORDS=FILL_WORDS,
        )  # fmt: skip

    # -- a batched step's experts (EngineBatch) -----------------------------------------------------
    def can_batch(self, n_tokens: int) -> bool:
        """Whether a pass over `n_tokens` tokens (a batched step, a prefill) can look its experts
        up on the device: the slots hold every expert a layer might use in it at once (the
        host's path splits a larger union in chunks instead); a float pool, few tokens."""
        if n_tokens > (QUANT_BATCH_TOKENS if self.quantized else FLOAT_BATCH_TOKENS):
            return False
        if self.mailbox is not None and self.split.limit == 0:
            return False  # placement cpu: the host's path, which computes misses where they are
        reserved = 1 if self.mailbox is not None else 0  # the zero slot
        return min(n_tokens * self.top_k, self.n_experts) <= self.book.n_slots - reserved

    def lend(self) -> None:
        """The host's book into the device tables, unless they hold the cache already."""
        if not self.active:
            self._load_tables()

    def batch_experts(self, i: int, hidden: torch.Tensor, top_k_index: torch.Tensor,
                      top_k_weights: torch.Tensor, prompt: bool = False) -> torch.Tensor:  # fmt: skip
        """Layer i's experts for a batched step's T tokens (`ExpertRuntime.forward` sends them
        here while `EngineBatch` has lent it the step): the distinct experts of all T tokens
        looked up in the device tables, each miss filled once from the file, every token's
        experts computed from the slots in one launch. No host sync: the host only launches.
        hidden (T, D), top_k_index and top_k_weights (T, K) on the device; returns (T, D).

        The tables decide as the host's book would for the same step (the distinct experts in
        ascending order, one LRU), so the counts and slots are those of the host's batched path.

        prompt: a prompt's pass (one prompt or several) computes each expert once for all its
        tokens (triton_grouped.py) where the layer's formats allow, as the host's path does for
        a prompt; a decode step computes per pair, as one token's decode does, so a request's
        tokens are those it gets served alone."""
        self.batch_layer_passes += 1
        n_tokens, k = top_k_index.shape
        n, device, e = n_tokens * k, hidden.device, self.n_experts
        index = torch.empty(2, n, dtype=torch.int64, device=device)  # per pair: slot, top-k place
        fill = torch.empty(2 * e, dtype=torch.int32, device=device)  # by rank: slot to fill, key
        ids = top_k_index.reshape(-1).contiguous()
        _assign_batch_kernel[(1,)](
            ids, self.where, self.owner, self.stamp, self.clock, index, fill, self.counts,
            self.seen, i, e, self.book.n_slots, n, K=k, EP=triton.next_power_of_2(e),
            SP=self.search_width, BLOCK=BATCH_BLOCK, num_warps=8,
        )  # fmt: skip
        _fill_kernel[(e, *self.fill_grid[i][1:])](
            self.src, *self.dst, fill, self.offsets, *self.strides, *self.part_words[i],
            *self.starts[i], K=e, WORDS=FILL_WORDS,
        )  # fmt: skip
        out = torch.zeros_like(hidden)
        if self.quantized:  # every pair in one launch; token t's pairs are t K .. t K + K - 1
            token = torch.arange(n, dtype=torch.int32, device=device) // k
            starts = torch.arange(0, n + 1, k, dtype=torch.int32, device=device)
            args = (out, hidden, top_k_weights, index[0], index[1], self.pool.data,
                    self.layouts[i], token, starts)  # fmt: skip
            if prompt and triton_grouped.supports(self.layouts[i]):
                self.grouped_layer_passes += 1
                triton_grouped.grouped_experts(*args, n_experts=e)
            else:
                triton_quant.fused_decode_quantized(*args)
            return out
        for t in range(n_tokens):  # the float kernels take one token: a launch each
            kernels.batched_decode_indexed(
                out[t : t + 1], hidden[t : t + 1], top_k_weights[t : t + 1],
                index[0, t * k : t * k + k], index[1, t * k : t * k + k], self.pool.gate_up,
                self.pool.down, self.workspace, self.runtime.act,
            )  # fmt: skip
        return out

    def _capture_token(self) -> None:
        """Warm up on a side stream (compiles every kernel), then record the whole token. The
        warm-up's tables say every expert sits in slot 0, so it fills no slot (the pool may hold
        the prompt's experts); the cache's real tables are loaded at each prefill."""
        self._clear_tables()
        self.where.zero_()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with self._swapped_norms():
            with torch.cuda.stream(side):
                self._token()
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            self.token_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.token_graph):
                self._token()
        self._clear_tables()

    def _step(self, token: int, position: int) -> torch.Tensor:
        if not self.active:  # the host's path took the cache back mid-generation (`end`)
            self._load_tables()
        start = began = time.perf_counter()
        self.inputs_host[0], self.inputs_host[1] = token, position
        self.inputs.copy_(self.inputs_host, non_blocking=True)
        if self.replay is not None:  # this token's row of the trace, every layer at once
            self._trace_np[:] = self.replay.take_token()
            self.trace_ids.copy_(self.trace_host, non_blocking=True)
        if self.mailbox is not None:
            self.mailbox.next_token()
        if self.graphs:
            self.token_graph.replay()
            if self.mailbox is not None:  # the CPU's share, layer by layer as the GPU posts it:
                box = self.mailbox  # its seconds waiting for the GPU (wait) and computing (plan)
                waited, computed = box.wait_s, box.compute_s
                self.timings["launch_s"] += time.perf_counter() - start
                box.serve(self.runtime, range(len(self.layers)))
                self.timings["wait_s"] += box.wait_s - waited
                self.timings["plan_s"] += box.compute_s - computed
                start = time.perf_counter()
                torch.cuda.current_stream().synchronize()  # (the sampler would wait anyway)
                box.check()  # a GPU that gave up on the host: these logits lack a sum, say so now
        else:
            self._token()  # inside step's _swapped_norms()
        self.timings["launch_s"] += time.perf_counter() - start
        self.timings["tokens"] += 1
        if self.tuner is not None:  # (made with the mailbox only)
            self._tune(time.perf_counter() - began)
        return self.logits

    def _tune(self, seconds: float) -> None:
        """The token's seconds to the share's tuner; a new share takes effect from the next token."""
        share = self.tuner.add(seconds)
        if share is not None:
            self.share.fill_(share)  # in stream order: before the next token's graph

    def reset_timings(self) -> None:
        """As the graph decoder's, and the experts its steps computed on the CPU and on the GPU."""
        super().reset_timings()
        self.timings.update(cpu_experts=0, device_experts=0)

    # -- the host's book in and out --------------------------------------------------------------
    def _clear_tables(self) -> None:
        self.where.fill_(-1)
        self.owner.fill_(-1)
        self.stamp.fill_(FREE_STAMP)
        self.counts.zero_()
        self.clock.zero_()

    def load_prefill(self, cache, length: int) -> None:
        """The prompt's keys and values (as the graph decoder), and the host's cache book into
        the device tables: from here until `end` the GPU keeps the cache. Tables that hold it
        already (a batch's prefill ran its experts on them) stay as they are: they are the
        cache (a host pass in between would have taken it back)."""
        super().load_prefill(cache, length)
        self.lend()
        if self.tuner is not None:
            self.tuner.restart()

    @torch.inference_mode()  # its tables were made inside a generation's inference mode
    def _load_tables(self) -> None:
        """The host's book into the device tables (its contents, LRU order and free slots)."""
        tiers = self.runtime.tiers
        if tiers.copy_stream is not None:  # the prompt's copies have landed in their slots
            torch.cuda.current_stream().wait_stream(tiers.copy_stream)
        e, s = self.n_experts, self.book.n_slots
        owner = np.full(s, -1, dtype=np.int32)
        stamp = np.full(s, FREE_STAMP, dtype=np.int64)
        order = self.book.policy.oldest_first()
        for age, key in enumerate(order):  # older: smaller, all below the clock's 0
            slot = self.book.slot_of(key)
            owner[slot], stamp[slot] = key[0] * e + key[1], age - len(order)
        free = self.book.free_slots()
        for place, slot in enumerate(free):  # handed out first: smallest
            stamp[slot] = FREE_STAMP - len(free) + place
        if self.mailbox is not None:  # the zero slot: the CPU's misses point the GPU at it
            z = self.zero_slot
            owner[z], stamp[z] = -2, ZERO_STAMP  # (its expert, if any, leaves the cache)
            if self.quantized:
                self.pool.data[z].zero_()
            else:
                self.pool.gate_up[z].zero_()
                self.pool.down[z].zero_()
            self.mailbox.reset()
        where = np.full(len(self.layers) * e, -1, dtype=np.int32)
        used = np.flatnonzero(owner >= 0)
        where[owner[used]] = used
        self.owner.copy_(torch.from_numpy(owner))
        self.stamp.copy_(torch.from_numpy(stamp))
        self.where.copy_(torch.from_numpy(where))
        self.counts.zero_()
        self.clock.zero_()
        self._loaded_owner = owner
        self.active = True
        self.runtime.lent_to = self  # the host path calls end() before it touches the cache

    @torch.inference_mode()  # its tables were made inside a generation's inference mode
    def flush_counts(self) -> None:
        """Add the hits, misses and evictions counted on the device since the last flush to the
        host's book (`engine.stats()` calls it between tokens: the cache stays on the device)."""
        if not self.active:
            return
        counts = self.counts.tolist()  # a copy (on a CPU .numpy() would share the memory
        self.counts.zero_()  # that this clears); waits for the token in flight
        stats = self.book.stats
        for layer, row in enumerate(counts):  # (as the book counts: no zero entries)
            for per_layer, n in zip(
                (stats.hits_per_layer, stats.misses_per_layer, stats.evictions_per_layer), row,
                strict=True,
            ):
                if n:
                    per_layer[layer] += n
        on_cpu = np.zeros(len(counts), dtype=np.int64)  # misses the CPU computed (_compute_cpu
        if self.mailbox is not None:  # counted them): no slot, no fetch
            on_cpu = self.mailbox.cpu_per_layer.copy()
            self.mailbox.cpu_per_layer[:] = 0
        on_device = sum(hits + misses for hits, misses, _ in counts) - int(on_cpu.sum())
        self.runtime.computed_on["device"] += on_device
        self.timings["cpu_experts"] += int(on_cpu.sum())  # the GPU's steps' own split (a
        self.timings["device_experts"] += on_device  # prompt's host pass is not in it)
        tiers = self.runtime.tiers  # each fetched miss read its expert's bytes from the file
        link = tiers.links["pinned file->vram" if tiers.on_gpu else "disk->ram"]  # the host uses
        for layer, (_, misses, _) in enumerate(counts):
            fetched = misses - int(on_cpu[layer])
            if fetched:
                link.add(layer, fetched * self.expert_bytes[layer], 0.0, transfers=fetched)

    @torch.inference_mode()  # its tables were made inside a generation's inference mode
    def end(self) -> None:
        """Write the device tables back into the host's book (contents, LRU order, counts), so
        the next prefill, a batch or `engine.stats()` sees them. Idempotent."""
        if not self.active:
            return
        self.flush_counts()  # waits for the last token
        owner = self.owner.cpu().numpy().copy()  # copies: the next load writes the tables
        stamp = self.stamp.cpu().numpy().copy()
        e = self.n_experts
        used = np.flatnonzero(owner >= 0)
        used = used[np.argsort(stamp[used], kind="stable")]
        placed = [((int(owner[s]) // e, int(owner[s]) % e), int(s)) for s in used]
        free = np.flatnonzero(owner < 0)
        free = free[np.argsort(stamp[free], kind="stable")]
        self.book.reload(placed, [int(s) for s in free])
        self.active = False  # only now: a failure above leaves the cache with the device
        self.runtime.lent_to = None
        if not self.quantized:  # a float pool's slots are plain views: nothing to redo
            return
        changed = np.flatnonzero(owner != self._loaded_owner)
        for s in changed:  # the host pool's views of what each refilled slot now holds
            if owner[s] >= 0:
                self.pool.place(int(s), self.engine_store.read_quantized(*divmod(int(owner[s]), e)))
