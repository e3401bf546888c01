"""Engine: a MoE model with its non-expert weights resident and its experts in a tiered cache.

    engine = Engine(EngineConfig(model_path=..., vram_budget="6GiB", placement="fetch"))
    new_ids = engine.generate(engine.tokenizer.encode("def "), GenerationConfig(max_new_tokens=32))
    print(engine.stats().line())

One token's path: embedding -> for each layer: attention (resident) -> router (resident) -> the
chosen experts from the cache (`moe.ExpertRuntime`) -> ... -> lm_head -> sampler.
The engine is not thread-safe: callers (the server) serialize requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from transformers import DynamicCache

from lazymoe.engine.batch import EngineBatch
from lazymoe.engine.compute import cpu_misses, device_cache, placement, triton_quant
from lazymoe.engine.compute.graphs import SegmentedDecoder, unsupported_reason
from lazymoe.engine.config import EngineConfig, GenerationConfig, format_bytes
from lazymoe.engine.devices import build_shares, describe_lines, engine_stats
from lazymoe.engine.errors import BudgetTooSmallError
from lazymoe.engine.loading import load_resident, load_tokenizer
from lazymoe.engine.parts.cache import CacheBook
from lazymoe.engine.parts.policies import EvictionPolicy, make_policy
from lazymoe.engine.parts.router import LearnerRouter
from lazymoe.engine.sampler import Sampler
from lazymoe.engine.stats import EngineStats
from lazymoe.engine.storage.pool import ExpertPool, expert_nbytes
from lazymoe.engine.storage.qpool import QuantizedPool
from lazymoe.engine.storage.reader import ReaderStore
from lazymoe.engine.storage.store import ExpertStore
from lazymoe.engine.storage.tiers import Tier, TierStack
from lazymoe.i18n import _


class Engine:
    """Generate with a MoE model whose experts live on disk, hot ones in VRAM / RAM."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device = torch.device(config.resolved_device())
        self.dtype = getattr(torch, config.dtype)
        load_on = "cpu" if config.devices else self.device  # a split: moved part by part (devices.py)
        self.model, self.spec, blocks = load_resident(config.model_path, load_on, self.dtype)
        self.store = ExpertStore.open(config.experts_path or config.model_path)
        if config.expert_reader is not None:  # the learner's reader (lab08) does every read
            self.store = ReaderStore(self.store, config.expert_reader)
        self.tokenizer = load_tokenizer(config.model_path)  # a folder's, or a GGUF file's metadata
        self.blocks = dict(blocks)  # layer -> MoE block
        self.moe_layers = sorted(self.blocks)
        hf = self.model.config
        self.top_k = int(hf.num_experts_per_tok)
        self.num_experts = self.spec.num_experts(hf)
        self.intermediate = self.spec.expert_width(hf)
        self.hidden = int(hf.hidden_size)
        self.expert_nbytes = expert_nbytes(self.intermediate, self.hidden, self.dtype)  # bytes
        # a GGUF file: slots hold the stored (quantized) bytes, so a budget holds more; on a GPU
        # where the quantized Triton kernels run, for the eager and the segmented / CUDA-graph
        # decoders alike (else a float pool, dequantized on the way in)
        self.quantized_experts = getattr(self.store, "quantized", False) and (
            self.device.type == "cpu"
            or (config.kernel in (None, "fused")
                and triton_quant.unavailable_reason(self.device, self.dtype) is None)
        )  # fmt: skip
        if self.quantized_experts:
            self.expert_nbytes = self.store.max_expert_qbytes  # bytes as stored
        self.pinned_bytes = 0  # of the checkpoint, page-locked for direct copies (pin_checkpoint)
        if config.pin_checkpoint and self.device.type == "cuda":
            self.pinned_bytes = self.store.pin_for_cuda()
        try:
            self._build_runtime(config)
        except BaseException:
            self.store.close()  # unlock a pinned checkpoint: nothing stays locked after a failure
            raise

    def _build_runtime(self, config: EngineConfig) -> None:
        # one share per device (one unless config.devices splits the layers): its layers, tiers
        # and ExpertRuntime; self.tiers / self.runtime are the first device's
        self.shares = build_shares(self)
        self.tiers, self.runtime = self.shares[0].tiers, self.shares[0].runtime
        self._decoder: SegmentedDecoder | None = None  # made at the first decode that uses it
        self.decode_path = self._resolve_decode_path()
        self.reset_stats()

    @classmethod
    def from_pretrained(cls, model_path, **config_fields) -> Engine:
        """`Engine(EngineConfig(model_path, **config_fields))`."""
        return cls(EngineConfig(model_path=model_path, **config_fields))

    @property
    def total_experts(self) -> int:
        return len(self.moe_layers) * self.num_experts

    # -- building --------------------------------------------------------------------------------
    def _slots_for(self, budget_bytes: int | None, what: str, n_experts: int) -> int:
        if budget_bytes is None:
            return n_experts
        n_slots = min(budget_bytes // self.expert_nbytes, n_experts)
        if n_slots < self.top_k:
            need = self.top_k * self.expert_nbytes
            raise BudgetTooSmallError(
                f"{what}={format_bytes(budget_bytes)} holds {n_slots} experts of "
                f"{format_bytes(self.expert_nbytes)} each, but one layer uses {self.top_k} at once: "
                f"give at least {format_bytes(need)} ({need} bytes)"
            )
        return int(n_slots)

    def _make_policy(self, base) -> EvictionPolicy:
        """A fresh policy for a second tier: the same kind as the first."""
        if not isinstance(base, EvictionPolicy):
            return make_policy(base)
        try:
            return type(base)()
        except TypeError:
            return make_policy("lru")

    def _build_tiers(self, where: torch.device, n_experts: int, fresh_policy: bool = False) -> TierStack:
        """The tiers of one device that caches `n_experts` experts (devices.py: one per device;
        `fresh_policy`: a policy object of the config's kind for it, not the config's own)."""
        cfg = self.config
        shape = (self.intermediate, self.hidden, self.dtype)
        policy = self._make_policy(cfg.policy) if fresh_policy else make_policy(cfg.policy)
        if where.type == "cpu":  # the device tier is RAM
            budget = cfg.ram_budget_bytes if cfg.ram_budget_bytes is not None else cfg.vram_budget_bytes
            n_slots = self._slots_for(budget, "ram_budget" if cfg.ram_budget is not None else "vram_budget",
                                      n_experts)  # fmt: skip
            if self.quantized_experts:
                pool = QuantizedPool(n_slots, self.expert_nbytes, name="ram")
            else:
                pool = ExpertPool(n_slots, *shape, device="cpu", name="ram")
            book = CacheBook(n_slots, policy, tier="ram")
            return TierStack(self.store, Tier("ram", pool, book))
        n_slots = self._slots_for(cfg.vram_budget_bytes, "vram_budget", n_experts)
        if self.quantized_experts and cfg.ram_budget_bytes:
            raise ValueError(
                f"ram_budget={cfg.ram_budget}: with a GGUF file's experts kept quantized in VRAM, a "
                "miss is copied straight from the file (the page cache is the RAM tier), so there is "
                "no pinned RAM tier to size: leave ram_budget out"
            )
        if self.quantized_experts:  # stored bytes in VRAM, misses copied from the file's map
            pool = QuantizedPool(n_slots, self.expert_nbytes, name="vram", device=where)
        else:
            pool = ExpertPool(n_slots, *shape, device=where, name="vram")
        device = Tier("vram", pool, CacheBook(n_slots, policy, tier="vram"))
        ram = None
        if cfg.ram_budget_bytes and n_slots < n_experts and not self.quantized_experts:
            n_ram = self._slots_for(cfg.ram_budget_bytes, "ram_budget", n_experts)
            ram = Tier(
                "ram",
                ExpertPool(n_ram, *shape, device="cpu", pin_memory=True, name="ram"),
                CacheBook(n_ram, self._make_policy(cfg.policy), tier="ram"),
            )
        return TierStack(self.store, device, ram)

    def set_router(self, route: Callable | None) -> None:
        """Route with `route(router_logits (T, E), top_k, norm_topk_prob) -> (weights, indices)`,
        both (T, top_k); None restores each model's own router."""
        if route is not None and self.config.decode in ("segments", "graphs", "device-cache"):
            raise ValueError(
                f"decode={self.config.decode!r} cannot run a learner router (its code may not be "
                "graph-safe): make the engine with decode='model' or 'auto'"
            )
        for block in self.blocks.values():
            original = getattr(block.gate, "original", block.gate)
            block.gate = original if route is None else LearnerRouter(original, route)
        self._decoder = None  # a captured graph holds the old router's kernels
        self.decode_path = self._resolve_decode_path()

    def _resolve_decode_path(self) -> str:
        """config.decode, with "auto" made concrete; an explicit choice that cannot run fails."""
        wanted = self.config.decode
        reason = unsupported_reason(self)  # the graph decoder's (placement fetch only)
        loop_reason = unsupported_reason(self, any_placement=True)  # the device-cache decoder's
        cache_reason = loop_reason or device_cache.unsupported_reason(self)
        if wanted == "auto":
            if self.device.type != "cuda" or loop_reason is not None:
                return "model"
            if cache_reason is None:
                return "device-cache"
            return "graphs" if reason is None else "model"
        if wanted == "device-cache":
            reason = loop_reason
        if wanted in ("segments", "graphs", "device-cache") and reason is not None:
            raise ValueError(f"decode={wanted!r} cannot run this engine: {reason}; use 'model'")
        if wanted == "graphs" and self.device.type != "cuda":
            raise ValueError("decode='graphs' needs a CUDA device: use 'segments' or 'model'")
        if wanted == "device-cache" and (why := device_cache.unsupported_reason(self)) is not None:
            raise ValueError(f"decode='device-cache' cannot run this engine: {why}")
        return wanted

    def _decoder_for(self, length: int) -> SegmentedDecoder | None:
        """The segmented decoder with room for `length` positions (made or grown on demand)."""
        if self.decode_path == "model":
            return None
        if self._decoder is None or self._decoder.max_len < length:
            max_len = max(256, 1 << (length - 1).bit_length())  # grow by powers of two
            if self._decoder is not None:
                self._decoder.end()  # its cache back into the host's book
            self._decoder = None  # free the old buffers and graphs first
            if self.decode_path == "device-cache":  # graphs on a GPU, eager on the CPU (tests)
                graphs = self.device.type == "cuda"
                self._decoder = device_cache.DeviceCacheDecoder(self, max_len, graphs=graphs)
            else:
                graphs = self.decode_path == "graphs"
                self._decoder = SegmentedDecoder(self, max_len, graphs=graphs)
        return self._decoder

    # -- generating ------------------------------------------------------------------------------
    def generate(self, prompt_ids: list[int], gen: GenerationConfig | None = None) -> list[int]:
        """The new token ids (without the prompt)."""
        return list(self.stream(prompt_ids, gen))

    def stream(self, prompt_ids: list[int], gen: GenerationConfig | None = None) -> Iterator[int]:
        """Yield new token ids as they are made. `.close()` on the iterator stops it cleanly."""
        gen = gen or GenerationConfig()
        prompt_ids = self._checked_ids(prompt_ids)
        if not prompt_ids:
            raise ValueError("prompt_ids is empty: give at least one token (e.g. the EOS id)")
        return self._stream(prompt_ids, gen)

    def batch(self) -> EngineBatch:
        """Requests that decode together, one model pass per step (`lazymoe.engine.batch`)."""
        return EngineBatch(self)

    def _checked_ids(self, prompt_ids: list[int]) -> list[int]:
        """The ids as a list, or ValueError naming the first one outside the vocabulary (torch
        would only say IndexError, from deep inside the embedding), or TypeError for text or
        anything else that is not token ids."""
        if isinstance(prompt_ids, (str, bytes)):
            raise TypeError(
                f"prompt_ids is text ({prompt_ids[:40]!r}...), not token ids: encode it first, e.g. "
                "engine.generate(engine.tokenizer.encode(text)), or use `lazymoe run` for text"
            )
        if isinstance(prompt_ids, (torch.Tensor, np.ndarray)) and prompt_ids.ndim == 1:
            prompt_ids = prompt_ids.tolist()  # a tensor or array of ids: as their ints
        vocab_size = self.model.get_input_embeddings().num_embeddings
        for i, token_id in enumerate(prompt_ids):
            if isinstance(token_id, bool) or not isinstance(token_id, (int, np.integer)):
                raise TypeError(
                    f"prompt_ids[{i}] = {token_id!r} is a {type(token_id).__name__}, not a token id: "
                    "give a list of ints (encode text with engine.tokenizer)"
                )
            if not 0 <= token_id < vocab_size:
                raise ValueError(
                    f"prompt_ids[{i}] = {token_id} is not a token of this model: ids must be "
                    f"0..{vocab_size - 1} (encode text with engine.tokenizer)"
                )
        return list(prompt_ids)

    @torch.inference_mode()
    def forward_logits(self, prompt_ids: list[int]) -> torch.Tensor:
        """The model's logits for every position of `prompt_ids`: (T, V), float32, on the CPU."""
        ids = torch.tensor([self._checked_ids(prompt_ids)], device=self.device)
        return self.model(input_ids=ids, use_cache=False).logits[0].float().cpu()

    def _stop_ids(self, gen: GenerationConfig) -> set[int]:
        if gen.stop_token_ids is not None:
            return set(gen.stop_token_ids)
        eos = self.tokenizer.eos_token_id
        return set() if eos is None else {eos}

    @torch.inference_mode()
    def _stream(self, prompt_ids: list[int], gen: GenerationConfig) -> Iterator[int]:
        stop_ids, sampler = self._stop_ids(gen), Sampler(gen, self.device)
        if self.runtime.prefetcher is not None:
            self.runtime.prefetcher.reset_pending()
        decoder = None  # one token needs no decode step (and no graphs captured for it)
        if gen.max_new_tokens > 1:
            decoder = self._decoder_for(len(prompt_ids) + gen.max_new_tokens)
        cache = DynamicCache(config=self.model.config)
        ids = torch.tensor([prompt_ids], device=self.device)
        new: list[int] = []
        start = time.perf_counter()
        prefill = True
        try:
            while len(new) < gen.max_new_tokens:
                if decoder is not None and not prefill:
                    logits = decoder.step(new[-1], len(prompt_ids) + len(new) - 1)
                else:  # (the prompt's experts on a device-cache decoder's tables, where it can)
                    tables = self._device_tables(len(prompt_ids)) if decoder is not None else None
                    with self.runtime.experts_on(tables, prompt=prefill):
                        logits = self.model(input_ids=ids, cache=cache, use_cache=True,
                                            logits_to_keep=1).logits[0, -1]  # fmt: skip
                    if decoder is not None:
                        decoder.load_prefill(cache, len(prompt_ids))
                        cache = None  # the decoder's buffers hold the keys and values now
                token = sampler(logits)
                now = time.perf_counter()
                if prefill:
                    self._totals["prefill_seconds"] += now - start
                    self._totals["prompt_tokens"] += len(prompt_ids)
                    prefill = False
                else:
                    self._totals["decode_seconds"] += now - start
                start = now
                new.append(token)
                self._totals["tokens"] += 1
                yield token
                if token in stop_ids or self._hit_stop_string(new, gen):
                    break
                ids = torch.tensor([[token]], device=self.device)
        finally:
            if decoder is not None:
                decoder.end()  # the device-cache decoder's tables back into the host's book
            del cache

    def _device_tables(self, n_tokens: int):
        """The device-cache decoder, its tables holding the cache, when the experts of a pass
        over `n_tokens` tokens (a prompt, a batched step) can run on them
        (`DeviceCacheDecoder.batch_experts`: no host sync, the host book's decisions); else None
        (another decoder, a replayed trace, a count of computed experts, a pass whose experts
        the slots might not hold at once)."""
        runtime = self.runtime
        if self.decode_path != "device-cache" or runtime.replay is not None:
            return None
        if runtime.computed_experts is not None:
            return None
        decoder = self._decoder_for(1)  # the one it has (made on first use)
        if not decoder.can_batch(n_tokens):
            return None
        decoder.lend()
        return decoder

    def _hit_stop_string(self, new: list[int], gen: GenerationConfig) -> bool:
        if not gen.stop_strings:
            return False
        text = self.tokenizer.decode(new)
        return any(s in text for s in gen.stop_strings)

    # -- numbers ---------------------------------------------------------------------------------
    def reset_stats(self) -> None:
        self._totals = {"tokens": 0, "prompt_tokens": 0, "prefill_seconds": 0.0, "decode_seconds": 0.0}
        for share in self.shares:
            share.runtime.settle_counts()  # counts the GPU holds belong to the period that ends
            share.tiers.reset_stats()
            share.runtime.computed_on.clear()
        if self.runtime.prefetcher is not None:
            self.runtime.prefetcher.reset()

    def stats(self) -> EngineStats:
        """Counts since the last reset_stats, added up over the devices (each one's: `.devices`)."""
        for share in self.shares:
            share.runtime.settle_counts()  # the device-cache decoder's counts so far
        return engine_stats(self.shares, self._totals, self.runtime.prefetcher)

    def close(self) -> None:
        """Free the pools and the resident weights now (GPU memory too), not at garbage collection."""
        import gc

        if getattr(self, "model", None) is None:
            return
        self.store.close()
        self.model = self.runtime = self.tiers = self._decoder = None
        self.blocks, self.shares = {}, []
        gc.collect()  # modules and the runtime refer to each other
        if self.device.type == "cuda" or "cuda" in str(self.config.devices):
            torch.cuda.empty_cache()  # every GPU's cached blocks

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _placement_words(self) -> str:
        """What the placement does on this device, in words (a CPU-only machine has one place)."""
        if not self.tiers.on_gpu:
            return _("the model runs on the CPU, so a missed expert is read into the RAM cache")
        return {
            "fetch": _("a missed expert is copied to the GPU and computed there"),
            "cpu": _("a missed expert is computed on the CPU, where it lives"),
            "auto": _("each missed expert is copied to the GPU or computed on the CPU, "
                      "whichever the measured bandwidths say is faster"),
        }[self.config.placement]

    def describe(self) -> str:
        """A few lines: what lives where."""
        lines = [
            _("model {path} ({type}, {layers} MoE layers x {experts} experts, top-{top_k}, expert "
              "{size})").format(path=self.config.model_path, type=self.spec.model_type,
                                layers=len(self.moe_layers), experts=self.num_experts,
                                top_k=self.top_k, size=format_bytes(self.expert_nbytes)),
            _("device {device}, dtype {dtype}, prefetch {prefetch}, kernel {kernel}, decode "
              "{decode}").format(device=self._device_words(), dtype=self.config.dtype,
                                 prefetch=_("on") if self.runtime.prefetcher else _("off"),
                                 kernel=self.runtime.kernel, decode=self.decode_path),
            _("placement {placement}: {words}").format(placement=self.config.placement,
                                                       words=self._placement_words()),
        ]  # fmt: skip
        if self.pinned_bytes:
            lines.append(_("checkpoint page-locked for direct copies: {size}").format(
                size=format_bytes(self.pinned_bytes)))  # fmt: skip
        if self.decode_path == "device-cache":
            lines.append(_("the GPU keeps the expert cache itself: it reads a missed expert straight "
                           "from the page-locked file, and each token is one CUDA graph"))  # fmt: skip
            split = cpu_misses.fetch_split(self, self.top_k)
            if cpu_misses.tunes_share(self):  # decode tokens split their misses (cpu_misses.py)
                lines.append(_("a decode token fetches a share of a layer's missed experts ({percent}% "
                               "at first, then the share that gives the fastest tokens); the CPU "
                               "computes the others while those cross the link").format(percent=split.percent))  # fmt: skip
            elif split.share < cpu_misses.SHARE_ONE:
                lines.append(_("a decode token fetches {percent}% of a layer's missed experts (rounded "
                               "up); the CPU computes the others while those cross the link"
                               ).format(percent=split.percent))  # fmt: skip
            elif split.splits(self.top_k):
                lines.append(_("a decode token fetches at most {n} of a layer's missed experts; the "
                               "CPU computes the others while those cross the link").format(n=split.limit))  # fmt: skip
        elif self.decode_path == "graphs" and device_cache.unsupported_reason(self, True) is None:
            lines.append(_("tip: with --pin-checkpoint the GPU keeps the expert cache itself and reads "
                           "missed experts straight from the file (it locks the file in RAM: {size})"
                           ).format(size=format_bytes(self.store.file_nbytes)))  # fmt: skip
        lines += placement.describe_lines(self.runtime)  # auto: the measured rates, the choices
        return "\n".join(lines + describe_lines(self.shares, self.total_experts))

    def _device_words(self) -> str:
        if len(self.shares) == 1:
            return str(self.device)
        names = ", ".join(str(share.device) for share in self.shares)
        return _("{names} (layers split, each with its own expert cache)").format(names=names)
