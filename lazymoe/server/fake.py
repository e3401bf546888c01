"""A deterministic stand-in for the engine: try the server (and test it) without loading a model.

Tokens are UTF-8 bytes (ids 0-255; 256 is end-of-sequence), and the "model" echoes the prompt
over and over: the reply to "abc" is "abcabc...". Each token can take `token_delay_s`, so tests
can hold a request in flight; `streams_open` and `streams_closed` show whether a cancelled
request really stopped generating.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from lazymoe.server.backend import SamplingParams, plain_chat_prompt

EOS = 256


class EchoBackend:
    def __init__(
        self,
        model_id: str = "echo",
        token_delay_s: float = 0.0,
        eos_after: int | None = None,
        fail_after: int | None = None,
        context_tokens: int | None = None,
    ) -> None:
        self.model_id = model_id
        self.eos_token_ids = frozenset([EOS])
        self.vocab_size = EOS + 1  # the 256 byte values and end-of-sequence
        self.context_tokens = context_tokens  # None: echoing has no context limit
        self.max_chars_per_token = 1  # one byte per token, and a character is 1-4 bytes
        self.token_delay_s = token_delay_s
        self.eos_after = eos_after  # emit end-of-sequence after this many tokens
        self.fail_after = fail_after  # raise after this many tokens (an engine bug)
        self.streams_open = 0
        self.streams_closed = 0
        self.tokens_generated = 0
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < EOS).decode("utf-8", errors="replace")

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return messages[-1]["content"] if len(messages) == 1 else plain_chat_prompt(messages)

    def reply(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """What `stream` yields for this prompt, all at once (the expected answer in tests)."""
        n = max_new_tokens if self.eos_after is None else min(max_new_tokens, self.eos_after)
        return [prompt_ids[i % len(prompt_ids)] for i in range(n)]

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        with self._lock:
            self.streams_open += 1
        try:
            for i, token_id in enumerate(self.reply(prompt_ids, params.max_new_tokens)):
                if self.fail_after is not None and i >= self.fail_after:
                    raise RuntimeError("the fake engine failed on purpose")
                if self.token_delay_s:
                    time.sleep(self.token_delay_s)
                with self._lock:
                    self.tokens_generated += 1
                yield token_id
            if self.eos_after is not None and self.eos_after < params.max_new_tokens:
                yield EOS
        finally:
            with self._lock:
                self.streams_open -= 1
                self.streams_closed += 1

    def stats(self) -> dict[str, Any]:
        return {"tokens": self.tokens_generated, "hit_rate": None}
