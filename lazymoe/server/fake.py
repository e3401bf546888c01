"""A deterministic stand-in for the engine: try the server (and test it) without loading a model.

Tokens are UTF-8 bytes (ids 0-255; 256 is end-of-sequence), and the "model" echoes the prompt
over and over: the reply to "abc" is "abcabc...". Each token can take `token_delay_s`, so tests
can hold a request in flight; `streams_open` and `streams_closed` show whether a cancelled
request really stopped generating.

`batch()` gives the same tokens through the continuous-batching protocol (`EchoBatch`): one step
makes a token for every live sequence in one `token_delay_s`, as a real batched step costs about
one token's time. `prefills` lists the prompts in the order they joined and `step_sizes` how many
sequences each step decoded, so tests can see who was batched with whom.
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
        bad_prompt: str | None = None,
    ) -> None:
        self.model_id = model_id
        self.eos_token_ids = frozenset([EOS])
        self.vocab_size = EOS + 1  # the 256 byte values and end-of-sequence
        self.context_tokens = context_tokens  # None: echoing has no context limit
        self.max_chars_per_token = 1  # one byte per token, and a character is 1-4 bytes
        self.token_delay_s = token_delay_s
        self.eos_after = eos_after  # emit end-of-sequence after this many tokens
        self.fail_after = fail_after  # raise after this many tokens (an engine bug)
        self.bad_prompt = bad_prompt  # this prompt's prefill raises ValueError (one bad request)
        self.streams_open = 0
        self.streams_closed = 0
        self.tokens_generated = 0
        self.prefills: list[list[int]] = []  # prompts in the order they started
        self.step_sizes: list[int] = []  # sequences decoded by each batched step
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

    def check_prompt(self, prompt_ids: list[int]) -> None:
        if not prompt_ids:
            raise ValueError("prompt_ids is empty: give at least one token")
        if self.bad_prompt is not None and self.decode(prompt_ids) == self.bad_prompt:
            raise ValueError(f"the fake engine refuses the prompt {self.bad_prompt!r} on purpose")

    def opened(self, prompt_ids: list[int]) -> None:
        with self._lock:
            self.streams_open += 1
            self.prefills.append(list(prompt_ids))

    def closed(self) -> None:
        with self._lock:
            self.streams_open -= 1
            self.streams_closed += 1

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        self.check_prompt(prompt_ids)
        return self._stream(prompt_ids, params)

    def _stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        self.opened(prompt_ids)
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
            self.closed()

    def batch(self) -> EchoBatch:
        return EchoBatch(self)

    def stats(self) -> dict[str, Any]:
        return {"tokens": self.tokens_generated, "hit_rate": None}


class EchoBatch:
    """EchoBackend's tokens, continuously batched: `add` prefills one, `step` decodes all live."""

    def __init__(self, backend: EchoBackend) -> None:
        self.backend = backend
        self._replies: dict[int, list[int]] = {}  # handle -> every token it will make
        self._made: dict[int, int] = {}  # handle -> tokens made so far
        self._next_handle = 0

    def add(self, prompt_ids: list[int], params: SamplingParams) -> tuple[int, int]:
        b = self.backend
        b.check_prompt(prompt_ids)
        reply = b.reply(prompt_ids, params.max_new_tokens)
        if b.eos_after is not None and b.eos_after < params.max_new_tokens:
            reply.append(EOS)
        handle, self._next_handle = self._next_handle, self._next_handle + 1
        b.opened(prompt_ids)
        self._replies[handle], self._made[handle] = reply, 0
        if b.token_delay_s:
            time.sleep(b.token_delay_s)  # the prefill
        try:
            return handle, self._next_token(handle)
        except Exception:
            self.remove(handle)
            raise

    def step(self) -> dict[int, int]:
        live = [h for h in self._replies if not self.finished(h)]
        with self.backend._lock:
            self.backend.step_sizes.append(len(live))
        if self.backend.token_delay_s:
            time.sleep(self.backend.token_delay_s)  # one step: one token's time for all of them
        return {h: self._next_token(h) for h in live}

    def _next_token(self, handle: int) -> int:
        b, i = self.backend, self._made[handle]
        if b.fail_after is not None and i >= b.fail_after:
            raise RuntimeError("the fake engine failed on purpose")
        token_id = self._replies[handle][i]
        self._made[handle] = i + 1
        if token_id != EOS:
            with b._lock:
                b.tokens_generated += 1
        return token_id

    def finished(self, handle: int) -> bool:
        return self._made[handle] >= len(self._replies[handle])

    def tokens(self, handle: int) -> list[int]:
        return self._replies[handle][: self._made[handle]]

    def remove(self, handle: int) -> None:
        if self._replies.pop(handle, None) is not None:
            del self._made[handle]
            self.backend.closed()

    def __len__(self) -> int:
        return len(self._replies)
