"""Misses computed on the CPU while others cross the link, inside the device-cache decoder's graph.

The device-cache decoder (device_cache.py) fetches every miss over PCIe: on an H200 with
Qwen3-30B-A3B in BF16 and `independent` routing, ~7 of a layer's 8 experts miss and the link
alone bounds decode at ~17 tok/s. llama.cpp with some layers' experts on the CPU computes them
where they lie, at the CPU's memory bandwidth. Both resources can work at once: the GPU fetches
a share of a layer's misses (`FetchSplit`: the first ones in ascending id order) and the CPU
computes the rest, at the same time, from RAM.

The token stays one CUDA graph the host launches once. Per layer, inside it:

    _assign_kernel   (device_cache.py) misses past the split take no slot: their index points at
                     the zero slot (an expert of zeros: adds nothing) and they are listed in
                     `cpu` (ids, then top-k positions, -1 padded)
    _post_kernel     writes that list, the layer's MoE input and its top-k weights to page-locked
                     host memory, then the token's sequence number to the layer's `posted` flag
    fills, experts   the GPU's share, as before (hits and fetched misses)
    _wait_add_kernel when the list is not empty: spins on the layer's `done` flag (host memory,
                     read over PCIe) until the host has written the CPU's sum, then adds it

and on the host, after the launch (`MissMailbox.serve`): for each layer, wait for its `posted`
flag, compute the listed experts with the runtime's CPU path (ExpertCompute._compute_cpu, the one
`placement="cpu"` uses on the eager path), write the sum and the `done` flag. The CPU's sum is
added after the GPU's, as the eager path adds its CPU partial.

A stalled host cannot hang the GPU: the spin gives up after ~`WAIT_SPINS` reads, sets `failed`
and later layers stop waiting; the host raises with that token. The flags rely on the host's stores
reaching the GPU in program order, as they do on x86 over PCIe (the machines this was built on); an
ARM host (GH200) would want acquire and release on both sides. On the CPU (tests) the same kernels run under
Triton's interpreter and the host serves each layer in line, before the wait kernel.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from lazymoe.engine.compute.triton_kernels import triton

if triton is not None:
    import triton.language as tl

# reads of the done flag over PCIe (~1 us each) before the GPU gives up on the host: ~2 minutes,
# room for a first token whose CPU share compiles numba's kernels (seconds each); a host that
# fails releases the GPU at once (`serve`), so this bounds only a host that hangs
WAIT_SPINS = 100_000_000
HOST_WAIT_S = 60.0  # how long the host waits for a layer's post before it says the GPU stalled
MAPPED = 1 | 2  # cudaHostRegister: portable, mapped (kernels read and write it in place)
PAGE = 4096  # what cudaHostRegister locks: whole pages


if triton is not None:

    @triton.jit
    def _post_kernel(
        x_ptr, w_ptr, cpu_ptr, seq_ptr, xs_ptr, ws_ptr, req_ptr, posted_ptr, D,
        K: tl.constexpr, KP: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        kk = tl.arange(0, KP)
        km = kk < K
        tl.store(req_ptr + kk, tl.load(cpu_ptr + kk, mask=km), mask=km)
        tl.store(req_ptr + K + kk, tl.load(cpu_ptr + K + kk, mask=km), mask=km)
        tl.store(ws_ptr + kk, tl.load(w_ptr + kk, mask=km), mask=km)
        for c in range(0, D, BLOCK_D):
            d = c + tl.arange(0, BLOCK_D)
            tl.store(xs_ptr + d, tl.load(x_ptr + d, mask=d < D), mask=d < D)
        tl.debug_barrier()  # every store above is issued before the flag says so
        tl.atomic_xchg(posted_ptr, tl.load(seq_ptr), sem="release", scope="sys")

    @triton.jit
    def _wait_add_kernel(
        cpu_ptr, done_ptr, seq_ptr, failed_ptr, part_ptr, out_ptr, D, MAX_SPINS,
        BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        if tl.load(cpu_ptr) >= 0:  # some expert of this layer is the CPU's
            seq = tl.load(seq_ptr)
            flag = tl.load(done_ptr, volatile=True)
            spins = tl.load(failed_ptr, volatile=True) * MAX_SPINS  # failed before: no wait
            while (flag < seq) & (spins < MAX_SPINS):
                flag = tl.load(done_ptr, volatile=True)
                spins += 1
            if flag < seq:
                tl.store(failed_ptr, 1)
            else:
                for c in range(0, D, BLOCK_D):
                    d = c + tl.arange(0, BLOCK_D)
                    m = d < D
                    part = tl.load(part_ptr + d, mask=m, volatile=True).to(tl.float32)
                    o = tl.load(out_ptr + d, mask=m).to(tl.float32)
                    tl.store(out_ptr + d, (o + part).to(out_ptr.dtype.element_ty), mask=m)


SHARE_ONE = 256  # FetchSplit.share's fixed point: 256/256 of a layer's misses


@dataclass(frozen=True)
class FetchSplit:
    """How a decode token splits one layer's misses between the link and the CPU: the GPU fetches
    `share`/256 of them, rounded up (the CPU's share pays a round trip through host memory, so
    one lone miss is fetched), and at most `limit`; the CPU computes the others."""

    limit: int
    share: int = SHARE_ONE

    def fetched(self, misses: int) -> int:
        """How many of `misses` the GPU fetches (what `_assign_kernel` computes per layer)."""
        return min(self.limit, -(-misses * self.share // SHARE_ONE))

    def splits(self, top_k: int) -> bool:
        """Whether any token can leave misses to the CPU (the most: a layer missing all top_k)."""
        return self.fetched(top_k) < top_k

    @property
    def percent(self) -> int:
        return round(100 * self.share / SHARE_ONE)

    @property
    def fraction(self) -> float:
        """The share as a fraction of the misses, to 3 places (what bench results record)."""
        return round(self.share / SHARE_ONE, 3)


def tunes_share(engine) -> bool:
    """Whether decode tokens tune auto's share as they run (`ShareTuner`): placement auto with
    no fetch_per_layer, on a GPU (a cost model measured), with misses to split (not every
    expert resident) and a slot to spare for the CPU's zero slot."""
    cfg = engine.config
    if cfg.placement != "auto" or cfg.fetch_per_layer is not None or engine.runtime.cost_model is None:
        return False
    return engine.top_k < engine.tiers.device.book.n_slots < engine.total_experts


class ShareTuner:
    """Moves auto's share of fetched misses (`FetchSplit.share`) to where decode tokens are
    fastest, as they run.

    The cost model's first estimate, from speeds measured alone in a second at load, does not
    see what the two sides cost together: the link's reads and the CPU's come from the same
    RAM, the host's per-layer round trip, and a miss the CPU computes does not enter the cache
    (so the share changes the hit rate too). So the tuner times what the user gets: each window
    of WINDOW decode tokens, in seconds per token. The share moves a step the same way while
    that improves (the step doubling after two gains in a row, until it turns back past a gain)
    and turns back with half the step when it gets worse (hill climbing). After a prompt the
    first window is not timed (it may hold compiles and the prompt's copies) and the next is not
    compared with the last generation's (another position, other experts)."""

    WINDOW = 8
    MAX_STEP = 64
    HISTORY = 512  # windows kept in `history` (a server runs for days: the newest only)

    def __init__(self, share: int, step: int = 32, min_step: int = 4) -> None:
        self.share, self.step, self.min_step = share, step, min_step
        self.direction = -1 if share > 0 else 1  # first: more of the misses to the CPU
        self.last: float | None = None  # the previous window's seconds per token
        self.gains = 0  # windows in a row that were faster than the one before
        self.gained = False  # some window was faster than the one before
        self.turned = False  # it turned back after a gain: the steps only shrink from then on
        # (share, seconds per token) per timed window, the newest HISTORY of them
        self.history: deque[tuple[int, float]] = deque(maxlen=self.HISTORY)
        self._seconds, self._tokens, self._skip = 0.0, 0, True

    def restart(self) -> None:
        """A new prompt: the window under way is dropped, the next one not timed."""
        self._seconds, self._tokens, self._skip, self.last = 0.0, 0, True, None

    def add(self, seconds: float) -> int | None:
        """One decode token's seconds; at a window's end, the share for the next window."""
        self._seconds += seconds
        self._tokens += 1
        if self._tokens < self.WINDOW:
            return None
        cost = self._seconds / self._tokens
        self._seconds, self._tokens = 0.0, 0
        if self._skip:  # warm-up: nothing to learn from
            self._skip = False
            return None
        self.history.append((self.share, cost))
        if self.last is not None and cost > self.last:  # worse: back the other way, smaller steps
            self.direction, self.gains = -self.direction, 0
            self.turned = self.turned or self.gained  # past a better share: the best is bracketed
            self.step = max(self.min_step, self.step // 2)
        elif self.last is not None and not self.turned:  # better, still searching: faster after
            self.gains, self.gained = self.gains + 1, True  # two gains in a row
            if self.gains == 2:
                self.step, self.gains = min(self.MAX_STEP, 2 * self.step), 0
        self.last = cost
        new = min(SHARE_ONE, max(0, self.share + self.direction * self.step))
        if new == self.share:  # at a bound: the other way
            self.direction = -self.direction
            new = min(SHARE_ONE, max(0, self.share + self.direction * self.step))
        self.share = new
        return new


def fetch_split(engine, top_k: int) -> FetchSplit:
    """How many of a layer's misses a decode token fetches; the CPU computes the others.

    Every expert resident, or placement "fetch": all; "cpu": none; "auto": at most `EngineConfig.fetch_per_layer` if given,
    else the share of each layer's misses that keeps both busy: the link takes t_fetch per
    expert, the CPU t_cpu, so the GPU fetches t_cpu / (t_fetch + t_cpu) of them. A share, not a
    count: a layer missing 3 experts splits them as one missing all 8 does."""
    placement = engine.config.placement
    if placement == "fetch" or engine.tiers.device.book.n_slots >= engine.total_experts:
        return FetchSplit(top_k)  # (every expert resident: no miss to split)
    if placement == "cpu":
        return FetchSplit(0)
    if engine.config.fetch_per_layer is not None:
        return FetchSplit(min(top_k, engine.config.fetch_per_layer))
    runtime = engine.runtime
    if runtime.cost_model is None:  # a CPU-only machine: nothing to balance, fetch them all
        return FetchSplit(top_k)
    layer = engine.moe_layers[0]
    nbytes, parts = runtime.miss_cost(layer)
    t_fetch = runtime.cost_model.gpu_seconds(nbytes)
    t_cpu = runtime.cost_model.cpu_seconds(nbytes, 1, runtime.expert_flops_per_token, parts)
    return FetchSplit(top_k, round(SHARE_ONE * t_cpu / (t_fetch + t_cpu)))


class MissMailbox:
    """The page-locked host memory the GPU and the host pass a layer's CPU experts through, and
    the host's half of the exchange. One slot per layer: (K ids, K positions), the MoE input (D),
    the top-k weights (K), the CPU's weighted sum (D), a `posted` and a `done` flag."""

    def __init__(self, n_layers: int, top_k: int, hidden: int, dtype: torch.dtype,
                 device: torch.device) -> None:  # fmt: skip
        self.n_layers, self.top_k, self.hidden = n_layers, top_k, hidden
        self.device = device
        shapes = {  # name -> (shape, dtype); the router's weights are in the model's dtype
            "req": ((n_layers, 2 * top_k), torch.int32), "xs": ((n_layers, hidden), dtype),
            "ws": ((n_layers, top_k), dtype), "part": ((n_layers, hidden), dtype),
            "posted": ((n_layers,), torch.int64), "done": ((n_layers,), torch.int64),
            "failed": ((1,), torch.int32),
        }  # fmt: skip
        self._block, self._registered = self._allocate(shapes)
        self.seq = torch.zeros(1, dtype=torch.int64, device=device)  # the token's number (GPU)
        self.host_seq = 0
        self.cpu_per_layer = np.zeros(n_layers, dtype=np.int64)  # experts the CPU computed
        self.wait_s = self.compute_s = 0.0  # host seconds: waiting for posts, computing
        self.reset()

    def _allocate(self, shapes: dict) -> tuple[np.ndarray, bool]:
        """Every buffer in one zeroed block of whole pages of its own, so that page-locking it
        (whole pages) touches nothing else; each buffer as (host view, device view): the same
        bytes, mapped for a GPU (its kernels read and write them in place over PCIe), one CPU
        tensor twice on the CPU. Returns (the block, whether it is page-locked)."""
        offsets, total = {}, 0
        for name, (shape, dtype) in shapes.items():
            offsets[name] = total
            total += -(-int(np.prod(shape)) * dtype.itemsize // 64) * 64  # 64-byte aligned each
        total = -(-total // PAGE) * PAGE
        raw = np.zeros(total + PAGE, dtype=np.uint8)
        first = -raw.ctypes.data % PAGE
        block = raw[first : first + total]
        device_block = None
        if self.device.type == "cuda":
            from lazymoe.engine.storage import pagelock

            err = int(torch.cuda.cudart().cudaHostRegister(block.ctypes.data, total, MAPPED))
            if err != 0:
                pagelock._clear_error()  # not reported again by an unrelated launch
                raise RuntimeError(f"CUDA could not page-lock {total} bytes for the CPU's misses "
                                   f"(CUDA error {err}): use placement='fetch'")  # fmt: skip
            device_block = pagelock.device_view(block.ctypes.data, total, torch.uint8, self.device)
        host_block = torch.from_numpy(block)
        for name, (shape, dtype) in shapes.items():
            start, n = offsets[name], int(np.prod(shape)) * dtype.itemsize
            host = host_block[start : start + n].view(dtype).view(shape)
            on_device = host if device_block is None else device_block[start : start + n].view(dtype).view(shape)
            setattr(self, name, (host, on_device))
        return block, device_block is not None

    def close(self) -> None:
        """Unlock the block (the decoder is gone); idempotent."""
        if self._registered:
            self._registered = False
            torch.cuda.cudart().cudaHostUnregister(self._block.ctypes.data)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # (at interpreter exit CUDA may be gone already)
            self.close()

    def reset(self) -> None:
        """Every flag and count back to zero, with the token number (the tables were loaded)."""
        for host, _ in (self.posted, self.done, self.failed):
            host.zero_()
        self.seq.zero_()
        self.host_seq = 0
        self.cpu_per_layer[:] = 0

    # -- the GPU's side: two launches per layer, inside the token's graph --------------------------
    def post(self, i: int, cpu: torch.Tensor, x: torch.Tensor, weights: torch.Tensor) -> None:
        k, d = self.top_k, self.hidden
        _post_kernel[(1,)](
            x, weights, cpu, self.seq, self.xs[1][i], self.ws[1][i], self.req[1][i],
            self.posted[1][i:], d, K=k, KP=triton.next_power_of_2(k), BLOCK_D=1024,
        )  # fmt: skip

    def wait_add(self, i: int, cpu: torch.Tensor, out: torch.Tensor) -> None:
        _wait_add_kernel[(1,)](
            cpu, self.done[1][i:], self.seq, self.failed[1], self.part[1][i], out, self.hidden,
            WAIT_SPINS, BLOCK_D=1024,
        )  # fmt: skip

    # -- the host's side -------------------------------------------------------------------------
    def next_token(self) -> None:
        """Count the token about to run (the graph adds one to `seq` at its start)."""
        self.check()
        self.host_seq += 1

    def check(self) -> None:
        """Raise, once, if the GPU gave up waiting for the host since the last check."""
        if self.failed[0][0]:
            self.failed[0].zero_()  # said once: the next generation starts clean
            raise RuntimeError("the GPU stopped waiting for the CPU's experts (the host did not "
                               "answer in time); this generation's tokens are not reliable. "
                               "Use placement='fetch' if it happens again")  # fmt: skip

    def serve(self, runtime, layers: range | list[int]) -> None:
        """The CPU's share of the token now running: each layer in turn, as the GPU posts it.
        A failure releases every layer still waiting (the GPU runs on), then raises."""
        try:
            for i in layers:
                self.serve_layer(runtime, i, wait=True)
        except BaseException:
            self.done[0][:] = self.host_seq
            raise

    def serve_layer(self, runtime, i: int, wait: bool = False) -> None:
        posted = self.posted[0].numpy()
        start = time.perf_counter()
        if wait and posted[i] < self.host_seq:
            deadline = start + HOST_WAIT_S
            while posted[i] < self.host_seq:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"the GPU did not reach layer {i}'s experts in "
                                       f"{HOST_WAIT_S:.0f} s")  # fmt: skip
        posted_at = time.perf_counter()
        self.wait_s += posted_at - start
        try:
            self._compute(runtime, i)
        finally:
            self.compute_s += time.perf_counter() - posted_at

    def _compute(self, runtime, i: int) -> None:
        req = self.req[0][i].tolist()
        k = self.top_k
        ids = [e for e in req[:k] if e >= 0]
        if not ids:
            return
        rows = {e: [(0, p)] for e, p in zip(ids, req[k : k + len(ids)], strict=True)}
        part = self.part[0][i : i + 1]
        part.zero_()
        runtime._compute_cpu(part, i, self.xs[0][i : i + 1], self.ws[0][i : i + 1], rows, ids)
        self.cpu_per_layer[i] += len(ids)
        self.done[0][i] = self.host_seq
