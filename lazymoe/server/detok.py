"""Token ids -> text pieces, for streaming: never emit half a UTF-8 character or half a stop string.

A byte-level BPE token can hold part of a multi-byte character, so the text of a prefix of the
tokens may end in U+FFFD; such a piece is held back until the next token completes it. Text that
could be the start of a stop string is held back too, so the client never sees a stop string.
Both the streaming and the non-streaming paths use this class, so they return the same text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"


class TextStream:
    """`push(token_id) -> text to send now`; `finish() -> the rest`; `stopped` once a stop string is seen."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = [s for s in stop if s]
        self._ids: list[int] = []
        self._prefix_offset = 0  # ids before this are already text
        self._read_offset = 0  # text of ids[prefix:read] was already taken
        self._pending = ""  # decoded but held back (maybe the start of a stop string)
        self.stopped = False
        self.text = ""  # everything emitted so far

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self._ids.append(token_id)
        seen = self._decode(self._ids[self._prefix_offset : self._read_offset])
        now = self._decode(self._ids[self._prefix_offset :])
        if len(now) <= len(seen) or now.endswith(REPLACEMENT):
            return ""  # an incomplete character: wait for the next token
        self._pending += now[len(seen) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return self._release(final=False)

    def finish(self) -> str:
        if not self.stopped and self._read_offset < len(self._ids):
            seen = self._decode(self._ids[self._prefix_offset : self._read_offset])
            self._pending += self._decode(self._ids[self._prefix_offset :])[len(seen) :]
            self._read_offset = len(self._ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        cut = min((i for i in (self._pending.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            out, self._pending, self.stopped = self._pending[:cut], "", True
        elif final:
            out, self._pending = self._pending, ""
        else:
            hold = max((_overlap(self._pending, s) for s in self._stop), default=0)
            out = self._pending[: len(self._pending) - hold]
            self._pending = self._pending[len(out) :]
        self.text += out
        return out


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of `text` that is a start of `stop` (shorter than `stop`)."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
