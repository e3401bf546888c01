"""A plan's verdict in plain words: comfortable, usable, slow, or does not fit."""

from __future__ import annotations

from dataclasses import dataclass

from lazymoe.i18n import _

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
    """Words for a plan (in the learner's language): does it fit, and how fast is it against a reader's pace."""
    if not fits:
        where = "; ".join(overflow or [])
        return Verdict(_("does not fit"), _("Not enough memory ({where}). Try a smaller format, "
                                            "a shorter context, or a strategy that offloads.").format(where=where))
    if tok_s >= COMFORTABLE_TOK_S:
        label = _("comfortable with offload") if offloaded else _("comfortable")
        return Verdict(label, _("At most {tok_s:.0f} tok/s: faster than you read, "
                                "even if the real speed is half of it.").format(tok_s=tok_s))
    if tok_s >= USABLE_TOK_S:
        label = _("usable with offload") if offloaded else _("usable")
        return Verdict(label, _("At most {tok_s:.1f} tok/s: about reading pace at best; "
                                "expect half of that in practice.").format(tok_s=tok_s))
    if tok_s >= SLOW_TOK_S:
        label = _("runs with offload, slow") if offloaded else _("runs, slow")
        return Verdict(label, _("At most {tok_s:.1f} tok/s: it runs, but you wait "
                                "for every line.").format(tok_s=tok_s))
    label = _("runs with offload, very slow") if offloaded else _("runs, very slow")
    return Verdict(label, _("At most {tok_s:.2g} tok/s: fine for a batch job "
                            "overnight, not for a conversation.").format(tok_s=tok_s))
