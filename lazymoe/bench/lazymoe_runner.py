"""lazymoe's engine behind the benchmark's runner interface: `stream(prompt_ids, n)`, `stats()`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class LazyMoeRunSpec:
    """One lazymoe configuration: where its experts are computed and how much VRAM it may use."""

    model_path: str
    placement: str = "auto"  # gpu (fetch experts to VRAM) | cpu (compute misses on the CPU) | auto
    vram_budget: str | int | None = None  # None: every expert resident
    ram_budget: str | int | None = None
    device: str = "auto"
    dtype: str = "bfloat16"
    policy: str = "lru"
    prefetch: bool = True
    decode: str = "auto"  # auto | model | segments | graphs (lazymoe.engine.compute.graphs)
    kernel: str | None = None  # None: the engine's default (lazymoe.engine.compute.kernels)
    pin_checkpoint: bool = False  # EngineConfig.pin_checkpoint

    def __post_init__(self) -> None:
        if self.placement not in ("gpu", "cpu", "auto"):
            raise ValueError(f"placement={self.placement!r}: use 'gpu', 'cpu' or 'auto'")


class LazyMoeRunner:
    temperature: float = 0.0  # 0: greedy
    seed: int = 0

    def __init__(self, spec: LazyMoeRunSpec) -> None:
        from lazymoe.engine import Engine, EngineConfig

        self.spec = spec
        self.engine = Engine(EngineConfig(
            model_path=spec.model_path, device=spec.device, dtype=spec.dtype,
            vram_budget=spec.vram_budget, ram_budget=spec.ram_budget, placement=spec.placement,
            policy=spec.policy, prefetch=spec.prefetch, decode=spec.decode, kernel=spec.kernel,
            pin_checkpoint=spec.pin_checkpoint,
        ))

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

    def stats(self) -> dict:
        """The engine's counters since the last reset: hit rate, bytes moved, VRAM in use..."""
        stats = self.engine.stats()
        as_dict = stats.as_dict() if hasattr(stats, "as_dict") else dict(vars(stats))
        keep = ("hit_rate", "hits", "misses", "bytes_moved", "prefetch_accuracy", "vram_in_use_bytes",
                "tokens", "prefill_tok_s", "decode_tok_s")
        out = {f"engine_{k}" if k.endswith("tok_s") else k: as_dict.get(k) for k in keep if k in as_dict}
        out["decode_path"] = self.engine.decode_path
        out["kernel"] = self.engine.runtime.kernel
        return out

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close:
            close()
        self.engine = None
