"""THE llama.cpp runner: llama-cpp-python's C bindings, with `--cpu-moe` and `--n-cpu-moe N`.

The benchmark's llama.cpp rows come from here (llama-bench's JSON is only imported as a cross-check:
`lazymoe.bench.llamabench`). Every choice is an explicit `LlamaCppConfig` field, not an environment
variable, so a results file's `options` say exactly how llama.cpp ran.

`--cpu-moe` keeps every layer on the GPU except the expert tensors, which stay in CPU memory and
are multiplied there (how a report on GPT-OSS-120B with llama.cpp --cpu-moe ran it on an 8 GB GPU);
`--n-cpu-moe N` does that for the first N layers only, so the other layers' experts use the VRAM
that is left. llama.cpp does both with buffer-type overrides: tensors whose name matches a regex
get the CPU buffer type; one regex for `--cpu-moe`, one per layer (`blk\\.i\\.ffn_...`) for
`--n-cpu-moe`, as llama.cpp's common/arg.cpp builds them with `llm_ffn_exps_block_regex(i)`.
The high-level `llama_cpp.Llama` class does not expose `tensor_buft_overrides`, so this module fills
`llama_model_params` itself: an array of {pattern, buffer type} ending in {NULL, NULL}, with the CPU
buffer type taken from ggml's backend device API
(`ggml_backend_dev_buffer_type(ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU))`).

Decoding is plain greedy argmax over the last logits, one token per `llama_decode`, so it measures
the same work as lazymoe's greedy loop.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# LLM_FFN_EXPS_REGEX in llama.cpp's common/common.h: expert tensors, fused gate_up and "chexps" too
CPU_MOE_PATTERN = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
GGML_BACKEND_DEVICE_TYPE_CPU = 0  # enum ggml_backend_dev_type in ggml-backend.h
LOAD_MODES = {"auto": -1, "none": 0, "mmap": 1, "mlock": 2}  # enum llama_load_mode in llama.h


class LlamaCppUnavailable(RuntimeError):
    """llama-cpp-python is not installed or cannot load its library."""


class _BuftOverride(ctypes.Structure):
    # struct llama_model_tensor_buft_override { const char * pattern; ggml_backend_buffer_type_t buft; }
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


class _LogSink:
    """One process-wide llama.cpp log callback. It lives as long as the module: llama.cpp keeps the
    pointer after a model is freed (and logs while the process exits), so it must never be freed."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.verbose = False
        self._cb = None

    def callback(self, ll):
        if self._cb is None:
            self._cb = ll.llama_log_callback(self._on_log)
        return self._cb

    def _on_log(self, level: int, text: bytes | None, data: int) -> None:
        line = text.decode(errors="replace") if text else ""
        self.lines.append(line)
        if self.verbose:
            print(line, end="")

    def start(self) -> list[str]:
        self.lines = []
        return self.lines


_LOG = _LogSink()


def load_bindings(check_libstdcxx: bool = True):
    """Import llama_cpp (the ctypes module), or raise LlamaCppUnavailable saying how to get it.

    check_libstdcxx: first make sure its libraries do not bring a second C++ runtime into a process
    that has the system one (`lazymoe.bench.libstdcxx`): that crashes, this raises LibStdCxxClash."""
    if check_libstdcxx and "llama_cpp" not in sys.modules:  # importing loads the libraries
        from lazymoe.bench.libstdcxx import check_no_clash

        check_no_clash()
    try:
        import llama_cpp
    except Exception as exc:  # ImportError, or OSError from a broken shared library
        raise LlamaCppUnavailable(
            f"llama-cpp-python is not usable here ({exc}). Install it with "
            "`pip install -e '.[llama]'` (needs a C++ compiler and CMake); for a GPU build set "
            "CMAKE_ARGS='-DGGML_CUDA=on' first."
        ) from exc
    return llama_cpp


def cpu_buffer_type() -> int:
    """The CPU buffer type (a ggml_backend_buffer_type_t pointer) from the backend device API."""
    from llama_cpp import _ggml

    lib = _ggml.libggml
    lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    lib.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    lib.ggml_backend_dev_buffer_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_buffer_type.restype = ctypes.c_void_p
    device = lib.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
    if not device:
        raise LlamaCppUnavailable("ggml has no CPU backend device registered")
    buft = lib.ggml_backend_dev_buffer_type(device)
    if not buft:
        raise LlamaCppUnavailable("ggml's CPU device returned no buffer type")
    return int(buft)


def buft_overrides(patterns: list[str], buft: int) -> ctypes.Array:
    """A NULL-terminated `llama_model_tensor_buft_override` array: every pattern -> buft."""
    array = (_BuftOverride * (len(patterns) + 1))()
    for i, pattern in enumerate(patterns):
        array[i].pattern = pattern.encode()
        array[i].buft = buft
    array[len(patterns)].pattern = None
    array[len(patterns)].buft = None
    return array


def n_cpu_moe_patterns(n_layers: int) -> list[str]:
    """`--n-cpu-moe N`'s overrides: one regex per layer 0..N-1 (llama.cpp's llm_ffn_exps_block_regex).

    `blk\\.1\\.` cannot match layer 11 or 21: the dot after the number is part of the pattern."""
    if n_layers < 0:
        raise ValueError(f"n_cpu_moe={n_layers}: use 0 (no expert on the CPU) or more")
    return [rf"blk\.{i}{CPU_MOE_PATTERN}" for i in range(n_layers)]


def gpu_offload_supported() -> bool:
    try:
        return bool(load_bindings().llama_supports_gpu_offload())
    except LlamaCppUnavailable:
        return False


@dataclass
class LlamaCppConfig:
    """How to load a GGUF: every layer on the GPU (n_gpu_layers=-1); where the experts go:
    `n_cpu_moe=N` (`--n-cpu-moe N`: the first N layers' experts on the CPU) if set, else `cpu_moe`
    (`--cpu-moe`: every expert on the CPU) or none."""

    gguf_path: str
    cpu_moe: bool = True
    n_cpu_moe: int | None = None  # --n-cpu-moe N; None: cpu_moe decides
    n_gpu_layers: int = -1  # -1: all layers (ignored by a CPU-only build)
    n_ctx: int = 2048
    n_batch: int = 512
    n_threads: int | None = None  # -t; None: physical cores (llama.cpp's own default is similar)
    flash_attn: bool = False  # off by default: the same attention work as the reference
    load_mode: str = "auto"  # auto | none (read into RAM) | mmap | mlock
    api: str = "lowlevel"  # lowlevel: our own decode loop | highlevel: llama_cpp.Llama.generate
    llama_log: bool = False  # True: llama.cpp's own logger (stderr) instead of capturing its lines
    extra_bufts: bool = True  # False: no AMX / repacked CPU weight buffers (use_extra_bufts)
    check_libstdcxx: bool = True  # refuse to load a build that would clash with torch's libstdc++

    def __post_init__(self) -> None:
        if not Path(self.gguf_path).is_file():
            raise FileNotFoundError(f"GGUF not found: {self.gguf_path} (make one with "
                                    "lazymoe.models.gguf_export or lazymoe.bench.writer)")
        if self.n_ctx < 16 or self.n_batch < 1:
            raise ValueError(f"n_ctx={self.n_ctx} and n_batch={self.n_batch} are too small")
        if self.api not in ("lowlevel", "highlevel"):
            raise ValueError(f"api={self.api!r}: use 'lowlevel' or 'highlevel'")
        if self.load_mode not in LOAD_MODES:
            raise ValueError(f"load_mode={self.load_mode!r}: use one of {sorted(LOAD_MODES)}")
        if self.n_cpu_moe is not None and self.n_cpu_moe < 0:
            raise ValueError(f"n_cpu_moe={self.n_cpu_moe}: use 0 or more layers (None: see cpu_moe)")
        if self.n_threads is None:
            import psutil

            self.n_threads = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        if self.n_threads < 1:
            raise ValueError(f"n_threads={self.n_threads}: use 1 or more CPU threads")

    def override_patterns(self) -> list[str]:
        """The tensor-name regexes whose tensors stay in CPU memory."""
        if self.n_cpu_moe is not None:
            return n_cpu_moe_patterns(self.n_cpu_moe)
        return [CPU_MOE_PATTERN] if self.cpu_moe else []


class LlamaCppRunner:
    """One llama.cpp model + context; `stream(prompt_ids, n)` yields token ids (greedy unless
    `temperature` > 0: then sampled from softmax(logits / temperature) with a `seed`-ed generator)."""

    temperature: float = 0.0
    seed: int = 0

    def __init__(self, cfg: LlamaCppConfig, verbose: bool = False) -> None:
        self.cfg = cfg
        ll = self._ll = load_bindings(check_libstdcxx=cfg.check_libstdcxx)
        _LOG.verbose = verbose
        self.log = _LOG.start()  # llama.cpp's log lines from here on (they show the overrides)
        if not cfg.llama_log:
            ll.llama_log_set(_LOG.callback(ll), ctypes.c_void_p())
        ll.llama_backend_init()
        params = self._model_params()
        self._high_level = None
        if cfg.api == "highlevel":  # the Llama class, with our params injected (see _high_level_load)
            self._high_level_load(params)
            return
        self.model = ll.llama_model_load_from_file(cfg.gguf_path.encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {cfg.gguf_path} (run with verbose=True to see why)")
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = cfg.n_ctx
        cparams.n_batch = cparams.n_ubatch = cfg.n_batch
        cparams.n_threads = cparams.n_threads_batch = cfg.n_threads
        cparams.flash_attn_type = (ll.LLAMA_FLASH_ATTN_TYPE_ENABLED if cfg.flash_attn
                                   else ll.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            ll.llama_model_free(self.model)
            raise RuntimeError("llama.cpp could not create a context (n_ctx too large for memory?)")
        self.n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))
        self.model_size_bytes = int(ll.llama_model_size(self.model))
        self.gpu_offload = bool(ll.llama_supports_gpu_offload())

    def _model_params(self):
        """llama_model_params with every layer on the GPU and the expert overrides, if any."""
        params = self._ll.llama_model_default_params()
        params.n_gpu_layers = self.cfg.n_gpu_layers
        params.load_mode = LOAD_MODES[self.cfg.load_mode]
        params.use_extra_bufts = self.cfg.extra_bufts
        self._overrides = None  # kept alive as long as the model: llama.cpp keeps the pointers
        patterns = self.cfg.override_patterns()
        if patterns:
            self._overrides = buft_overrides(patterns, cpu_buffer_type())
            params.tensor_buft_overrides = ctypes.cast(self._overrides, ctypes.c_void_p)
        return params

    def _high_level_load(self, params) -> None:
        """Load through `llama_cpp.Llama`, handing it our params (overrides included) by wrapping
        llama_model_default_params for the duration of its constructor."""
        import llama_cpp.llama_cpp as bindings  # the module llama.py calls, not the package

        ll, cfg = self._ll, self.cfg
        original = bindings.llama_model_default_params
        bindings.llama_model_default_params = lambda: params
        try:
            self._high_level = ll.Llama(cfg.gguf_path, n_gpu_layers=cfg.n_gpu_layers, n_ctx=cfg.n_ctx,
                                        n_batch=cfg.n_batch, n_threads=cfg.n_threads, verbose=False)
        finally:
            bindings.llama_model_default_params = original
        self.model, self.ctx = self._high_level.model, self._high_level.ctx
        self.n_vocab = self._high_level.n_vocab()
        self.model_size_bytes = int(ll.llama_model_size(self.model))
        self.gpu_offload = bool(ll.llama_supports_gpu_offload())

    def _decode(self, ids: list[int]) -> np.ndarray:
        ll = self._ll
        for start in range(0, len(ids), self.cfg.n_batch):
            chunk = ids[start:start + self.cfg.n_batch]
            arr = (ll.llama_token * len(chunk))(*chunk)
            rc = ll.llama_decode(self.ctx, ll.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} (context of {self.cfg.n_ctx} full?)")
        logits = ll.llama_get_logits_ith(self.ctx, -1)  # waits for the GPU
        return np.ctypeslib.as_array(logits, shape=(self.n_vocab,))

    def _pick(self, logits: np.ndarray, rng: np.random.Generator) -> int:
        if self.temperature <= 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / self.temperature
        p = np.exp(z - z.max())
        return int(rng.choice(p.size, p=p / p.sum()))

    def reset(self) -> None:
        """Forget the KV cache: the next prompt starts at position 0."""
        self._ll.llama_memory_clear(self._ll.llama_get_memory(self.ctx), True)

    def stream(self, prompt_ids: list[int], max_new_tokens: int) -> Iterator[int]:
        if len(prompt_ids) + max_new_tokens > self.cfg.n_ctx:
            raise ValueError(f"prompt {len(prompt_ids)} + {max_new_tokens} new tokens exceed n_ctx={self.cfg.n_ctx}")
        if self._high_level is not None:
            self._high_level.set_seed(self.seed)
            sampled = self.temperature > 0
            tokens = self._high_level.generate(list(prompt_ids), top_k=0 if sampled else 1, top_p=1.0,
                                               min_p=0.0, temp=self.temperature, reset=True)
            for _ in range(max_new_tokens):
                yield int(next(tokens))
            tokens.close()
            return
        self.reset()
        rng = np.random.default_rng(self.seed)
        logits = self._decode(list(prompt_ids))
        for i in range(max_new_tokens):
            token = self._pick(logits, rng)
            yield token
            if i + 1 < max_new_tokens:
                logits = self._decode([token])

    def logits(self, prompt_ids: list[int]) -> np.ndarray:
        """Last-position logits after `prompt_ids` (a copy), for equivalence checks."""
        self.reset()
        return self._decode(list(prompt_ids)).copy()

    def close(self) -> None:
        if getattr(self, "_high_level", None) is not None:
            self._high_level.close()
            self._high_level = self.ctx = self.model = None
            return
        if getattr(self, "ctx", None):
            self._ll.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self._ll.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> LlamaCppRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
