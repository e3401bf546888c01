"""lazymoe's engine behind the benchmark's runner interface: `stream(prompt_ids, n)`, `stats()`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from lazymoe.engine.config import EngineConfig


class LazyMoeRunner:
    """One lazymoe configuration (an `EngineConfig`, as `lazymoe run` would build it)."""

    temperature: float = 0.0  # 0: greedy
    seed: int = 0

    def __init__(self, config: EngineConfig) -> None:
        from lazymoe.engine import Engine

        self.config = config
        self.engine = Engine(config)

    def stream(self, prompt_ids: list[int], max_new_tokens: int) -> Iterator[int]:
        from lazymoe.engine import GenerationConfig

        # no stop token: every engine produces exactly max_new_tokens tokens; greedy unless the
        # harness asks for sampling (self.temperature > 0, seeded)
        gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=self.temperature,
                               seed=self.seed if self.temperature > 0 else None, stop_token_ids=(),
                               stop_strings=())
        stream = self.engine.stream(list(prompt_ids), gen)
        try:
            yield from stream
        finally:
            close = getattr(stream, "close", None)
            if close:
                close()

    def reset_stats(self) -> None:
        self.engine.reset_stats()
        decoder = getattr(self.engine, "_decoder", None)  # the segmented/graph decoder, once made
        if decoder is not None:
            decoder.reset_timings()

    def stats(self) -> dict:
        """The engine's counters since the last reset: hit rate, bytes moved, VRAM in use..."""
        stats = self.engine.stats()
        as_dict = stats.as_dict() if hasattr(stats, "as_dict") else dict(vars(stats))
        keep = ("hit_rate", "hits", "misses", "bytes_moved", "prefetch_accuracy", "vram_in_use_bytes",
                "tokens", "prefill_tok_s", "decode_tok_s",
                "experts_on_device", "experts_on_cpu")  # the roofline's split of the misses
        out = {f"engine_{k}" if k.endswith("tok_s") else k: as_dict.get(k) for k in keep if k in as_dict}
        out["decode_path"] = self.engine.decode_path
        out["kernel"] = self.engine.runtime.kernel
        # a GGUF file: whether the cache holds the stored (quantized) bytes, and one slot's size
        out["experts_quantized"] = bool(getattr(self.engine, "quantized_experts", False))
        out["expert_slot_bytes"] = int(self.engine.expert_nbytes)
        # where a decoded token's host time goes per layer (graphs/segments decoder): waiting for
        # the GPU to reach the router, planning (cache lookups, fetches issued), launching
        decoder = getattr(self.engine, "_decoder", None)
        if decoder is not None and decoder.timings["tokens"]:
            out["decode_host_us_per_layer"] = decoder.timing_per_layer_us()
        if decoder is not None and "cpu_experts" in decoder.timings:  # device-cache: decode's own
            out["decode_experts_on_cpu"] = decoder.timings["cpu_experts"]  # split (the prompt's
            out["decode_experts_on_device"] = decoder.timings["device_experts"]  # is in the above)
        cost = getattr(getattr(self.engine, "runtime", None), "cost_model", None)
        if cost is not None:  # placement auto's speeds, measured at load in this row's process
            out["cost_model"] = dataclasses.asdict(cost)
        if getattr(decoder, "mailbox", None) is not None:  # device-cache, some misses on the CPU
            from lazymoe.engine.compute import cpu_misses

            tuner, split = decoder.tuner, decoder.split
            if tuner is None and split.share == cpu_misses.SHARE_ONE:  # a count: fetch_per_layer
                out["fetch_per_layer"] = split.limit  # the rest of a layer's misses: the CPU's
            else:  # a share of each layer's misses, rounded up; tuned: where it ended, how it went
                share = tuner.share if tuner is not None else split.share
                out["fetch_share"] = dataclasses.replace(split, share=share).fraction
            if tuner is not None:  # (share, ms per token) per window
                out["fetch_share_windows"] = [[dataclasses.replace(split, share=s).fraction, round(c * 1e3, 3)]
                                              for s, c in tuner.history]  # fmt: skip
        return out

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close:
            close()
        self.engine = None
