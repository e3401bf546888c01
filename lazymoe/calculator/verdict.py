"""A plan's verdict in plain words: comfortable, usable, slow, or does not fit."""

from __future__ import annotations

from dataclasses import dataclass

# Thresholds are choices, not facts: people read roughly 4-8 tokens per second, so 10 tok/s
# keeps ahead of a reader, and below 3 tok/s you wait for every line.
COMFORTABLE_TOK_S = 10.0
USABLE_TOK_S = 3.0
SLOW_TOK_S = 1.0


@dataclass(frozen=True)
class Verdict:
    label: str      # "comfortable", "usable", "runs with offload, slow", "does not fit", ...
    sentence: str   # one plain sentence saying why


def verdict(fits: bool, offloaded: bool, tok_s: float, overflow: list[str] | None = None) -> Verdict:
    """Words for a plan: does it fit, and how fast is it against a reader's pace."""
    if not fits:
        where = "; ".join(overflow or [])
        return Verdict("does not fit", f"Not enough memory ({where}). Try a smaller format, "
                       "a shorter context, or a strategy that offloads.")
    how = " with offload" if offloaded else ""
    if tok_s >= COMFORTABLE_TOK_S:
        return Verdict(f"comfortable{how}", f"At most {tok_s:.0f} tok/s: faster than you read, "
                       "even if the real speed is half of it.")
    if tok_s >= USABLE_TOK_S:
        return Verdict(f"usable{how}", f"At most {tok_s:.1f} tok/s: about reading pace at best; "
                       "expect half of that in practice.")
    if tok_s >= SLOW_TOK_S:
        return Verdict(f"runs{how}, slow", f"At most {tok_s:.1f} tok/s: it runs, but you wait "
                       "for every line.")
    return Verdict(f"runs{how}, very slow", f"At most {tok_s:.2g} tok/s: fine for a batch job "
                   "overnight, not for a conversation.")
