"""A strategy's result: where the bytes live, the speed bound, the options it used, a verdict."""

from __future__ import annotations

from dataclasses import dataclass, field

from lazymoe.calculator.bounds import Bound
from lazymoe.calculator.memory import MemoryStack
from lazymoe.calculator.verdict import Verdict, verdict


@dataclass(frozen=True)
class Plan:
    """One strategy on one machine for one workload: memory, speed bound, verdict."""

    strategy: str
    memory: MemoryStack
    decode: Bound
    offloaded: bool
    notes: tuple[str, ...] = ()
    prefill: Bound | None = None
    options: dict = field(default_factory=dict)   # the options it used, defaults resolved

    @property
    def fits(self) -> bool:
        return self.memory.fits

    @property
    def tok_s(self) -> float:
        return self.decode.tok_s

    @property
    def bottleneck(self) -> str:
        return self.decode.bottleneck

    @property
    def verdict(self) -> Verdict:
        return verdict(self.fits, self.offloaded, self.tok_s, self.memory.overflow())

    def as_dict(self) -> dict:
        return {"strategy": self.strategy, "decode_tok_s": self.tok_s,
                "bottleneck": self.bottleneck, "detail": self.decode.detail,
                "prefill_tok_s": self.prefill.tok_s if self.prefill else None,
                "fits": self.fits, "offloaded": self.offloaded,
                "verdict": self.verdict.label, "verdict_detail": self.verdict.sentence,
                "memory": self.memory.as_dict(), "notes": list(self.notes),
                "options": dict(self.options)}
