"""EngineStats: what one or more generations cost, in numbers a learner can check by hand.

    decode_tok_s = decode tokens / decode seconds      (after the first new token)
    prefill_tok_s = prompt tokens / prefill seconds    (the prompt's forward pass + first token)
    hit_rate = device-tier hits / (hits + misses)      (one lookup per layer per distinct expert)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class EngineStats:
    tokens: int = 0  # new tokens generated
    prompt_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    hits: int = 0
    misses: int = 0
    bytes_moved: int = 0  # bytes, over every link (disk->ram, ram->vram, ...)
    prefetch_accuracy: float = 0.0
    vram_in_use_bytes: int = 0  # torch's allocated bytes on the GPU (0 on a CPU-only engine)
    pool_bytes: int = 0  # bytes of the device tier's expert pool
    experts_on_device: int = 0  # expert computations on the device (GPU, or the CPU engine)
    experts_on_cpu: int = 0  # expert computations on the CPU of a GPU engine (placement cpu/auto)
    tiers: dict = field(default_factory=dict)  # per tier: hits, misses, per-layer detail
    links: dict = field(default_factory=dict)  # per link: bytes, seconds, per-layer bytes
    prefetch: dict = field(default_factory=dict)
    # per device (one entry unless the layers are split, EngineConfig.devices): its layers, hits,
    # misses, bytes moved, slots, pool and VRAM bytes; the fields above add these up
    devices: list = field(default_factory=list)

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tok_s(self) -> float:
        decode_tokens = max(self.tokens - 1, 0)
        return decode_tokens / self.decode_seconds if self.decode_seconds else 0.0

    @property
    def hit_rate(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "prefill_tok_s": self.prefill_tok_s,
            "decode_tok_s": self.decode_tok_s,
            "hit_rate": self.hit_rate,
        }

    def line(self) -> str:
        """One line for a terminal: speed, hit rate, bytes moved, VRAM."""
        vram = f" | VRAM {self.vram_in_use_bytes / 2**30:.2f} GiB" if self.vram_in_use_bytes else ""
        return (
            f"{self.decode_tok_s:6.1f} tok/s | hit rate {self.hit_rate:6.1%} | "
            f"moved {self.bytes_moved / 2**20:8.1f} MiB{vram}"
        )
