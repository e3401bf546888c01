"""The measurement protocol every engine goes through, so their numbers mean the same thing.

One timed generation = the prompt, then `n_new` greedy tokens (no stop on EOS):

    prefill_tok_s = prompt tokens / time to the first new token
    decode_tok_s  = (n_new - 1) / (time of the last token - time of the first)

The protocol: `warmup` generations, then `repeats` timed ones; the result reports the median
and every run (the steady state), and separately the first warm-up run ("cold": an engine with a
cache starts it empty): its prefill and its first `COLD_TOKENS` new tokens. Peak RSS and peak VRAM come from a sampler thread (every 20 ms) that reads
this process's resident memory (psutil) and its GPU memory (NVML, else torch's allocator).
"""

from __future__ import annotations

import importlib.metadata
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import psutil


@dataclass
class TimedRun:
    prompt_tokens: int
    new_tokens: int
    prefill_s: float  # seconds to the first new token
    decode_s: float  # seconds from the first to the last new token
    token_times_s: list[float] = field(default_factory=list)  # seconds from the start to each token

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else float("nan")

    @property
    def decode_tok_s(self) -> float:
        steps = self.new_tokens - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else float("nan")


def time_stream(prompt_tokens: int, tokens: Iterable[int]) -> tuple[TimedRun, list[int]]:
    """Time a token stream: the first token closes prefill, the rest are decode."""
    start = time.perf_counter()
    first = last = None
    out: list[int] = []
    times: list[float] = []
    for token in tokens:
        now = time.perf_counter()
        times.append(now - start)
        if first is None:
            first = now
        last = now
        out.append(int(token))
    if first is None:
        raise RuntimeError("the engine produced no token: check max_new_tokens and stop tokens")
    return TimedRun(prompt_tokens, len(out), first - start, last - first, times), out


class ResourceSampler:
    """Peak resident memory (bytes) and peak GPU memory (bytes) of this process, sampled."""

    def __init__(self, interval_s: float = 0.02, thread: bool = True) -> None:
        self.interval_s = interval_s
        self.use_thread = thread  # False: peaks from the samples at start, end and sample() calls
        self.peak_rss_bytes = 0
        self.peak_vram_bytes = 0
        self.vram_source = "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()
        self._nvml = self._nvml_reader()

    def _nvml_reader(self) -> Callable[[], int | None] | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:
            return None
        pid = os.getpid()

        def read() -> int | None:
            total, seen = 0, False
            for handle in handles:
                try:
                    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                except Exception:
                    return None
                for proc in procs:
                    if proc.pid == pid and proc.usedGpuMemory is not None:
                        total, seen = total + int(proc.usedGpuMemory), True
            return total if seen else None

        return read if handles else None

    def sample(self) -> None:
        self.peak_rss_bytes = max(self.peak_rss_bytes, self._process.memory_info().rss)
        used = self._nvml() if self._nvml else None
        if used is not None:
            self.vram_source = "nvml-process"
        else:
            used = _torch_reserved_bytes()
            if used is not None and self.vram_source == "none":
                self.vram_source = "torch-reserved"
        if used is not None:
            self.peak_vram_bytes = max(self.peak_vram_bytes, used)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> ResourceSampler:
        self.sample()
        if self.use_thread:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.sample()


def _torch_reserved_bytes() -> int | None:
    import sys

    torch = sys.modules.get("torch")  # only if the engine already imported it
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.max_memory_reserved())


COLD_TOKENS = 16  # new tokens of the cold run whose speed is reported


def cold_summary(run: TimedRun, n_tokens: int = COLD_TOKENS) -> dict:
    """The first run from an empty cache: time to the first token and decode speed over the first
    `n_tokens` new tokens (tokens/s = (n - 1) / seconds from the first of them to the n-th)."""
    n = min(n_tokens, len(run.token_times_s))
    span_s = run.token_times_s[n - 1] - run.token_times_s[0] if n > 1 else 0.0
    return {"first_token_s": run.prefill_s, "prefill_tok_s": run.prefill_tok_s, "tokens": n,
            "decode_tok_s": (n - 1) / span_s if span_s > 0 else float("nan"),
            "whole_run_decode_tok_s": run.decode_tok_s}


@dataclass
class ProtocolResult:
    runs: list[TimedRun] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # the last run's new tokens (greedy: all equal)
    cold: TimedRun | None = None  # the first warm-up run (None without a warm-up)

    def as_dict(self) -> dict:
        prefill = [r.prefill_tok_s for r in self.runs]
        decode = [r.decode_tok_s for r in self.runs]
        return {
            "prefill_tok_s": statistics.median(prefill),
            "decode_tok_s": statistics.median(decode),
            "runs": [{"prefill_tok_s": p, "decode_tok_s": d, "prefill_s": r.prefill_s,
                      "decode_s": r.decode_s, "new_tokens": r.new_tokens}
                     for p, d, r in zip(prefill, decode, self.runs, strict=True)],
            "first_tokens": self.tokens[:16],
            "cold": cold_summary(self.cold) if self.cold else None,
        }


def run_protocol(generate: Callable[[list[int], int], Iterator[int]], prompt_ids: list[int],
                 new_tokens: int, repeats: int = 3, warmup: int = 1,
                 before_timed: Callable[[], None] | None = None) -> ProtocolResult:
    """Warm up, then time `repeats` greedy generations of `new_tokens` tokens after `prompt_ids`.

    `generate(prompt_ids, n)` yields token ids as they are produced. `before_timed` runs once
    between warm-up and the timed runs (e.g. reset the engine's counters).
    """
    if repeats < 1 or new_tokens < 2:
        raise ValueError("need repeats >= 1 and new_tokens >= 2 (decode speed needs two tokens)")
    result = ProtocolResult()
    for i in range(warmup):
        run, _ = time_stream(len(prompt_ids), generate(prompt_ids, new_tokens))
        if i == 0:
            result.cold = run
    if before_timed:
        before_timed()
    for _ in range(repeats):
        run, tokens = time_stream(len(prompt_ids), generate(prompt_ids, new_tokens))
        result.runs.append(run)
        result.tokens = tokens
    return result


LIBRARIES = ("lazymoe", "torch", "transformers", "accelerate", "llama-cpp-python", "safetensors",
             "gguf", "numpy")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions
