"""From a request body to checked prompt token ids, at a bounded cost to the server.

    text that is not valid Unicode (a lone surrogate)    -> 400, before anything else
    more characters than `max_prompt_tokens` tokens can hold -> 413, without tokenizing
    token ids outside the vocabulary                    -> 400, naming the valid range
    tokenizing                                           -> on one worker thread, never on the
                                                            event loop (so /health and every
                                                            stream keep going meanwhile)

The character bound: no token of the model stands for more than `max_chars_per_token` characters,
so a text longer than `max_prompt_tokens * max_chars_per_token` characters (twice that, for text
that Unicode normalisation might shorten) certainly has too many tokens.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lazymoe.server.backend import Backend
from lazymoe.server.errors import APIError

NORMALISATION_SLACK = 2  # a normaliser may merge two characters into one (e + accent -> é)


class PromptChecker:
    def __init__(self, backend: Backend, max_prompt_tokens: int, pool: ThreadPoolExecutor) -> None:
        self.backend = backend
        self.max_prompt_tokens = max_prompt_tokens
        self.pool = pool  # one thread: tokenizers need not be thread-safe
        chars_per_token = getattr(backend, "max_chars_per_token", None) or 64
        self.max_chars = max_prompt_tokens * chars_per_token * NORMALISATION_SLACK
        self.vocab_size: int | None = getattr(backend, "vocab_size", None)

    def too_long(self, n_tokens: int, param: str) -> APIError:
        return APIError(
            413,
            f"the prompt has {n_tokens} tokens; this server takes at most "
            f"{self.max_prompt_tokens}: shorten it",
            code="context_length_exceeded",
            param=param,
        )

    def check_text(self, texts: list[str], param: str) -> None:
        """Valid Unicode, and not obviously over the token limit (cheap: no tokenizing)."""
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = text[exc.start : exc.end].encode("utf-8", "backslashreplace").decode()
                raise APIError(
                    400,
                    f"the text holds a lone surrogate ({bad}), which is not valid Unicode: "
                    "send real characters (the JSON escape of an emoji takes two \\u halves)",
                    code="invalid_text",
                    param=param,
                ) from None
        n_chars = sum(len(t) for t in texts)
        if n_chars > self.max_chars:
            raise APIError(
                413,
                f"the prompt has {n_chars} characters, more than the {self.max_prompt_tokens} "
                f"tokens this server takes could hold: shorten it",
                code="context_length_exceeded",
                param=param,
            )

    def check_ids(self, ids: list[int], param: str) -> list[int]:
        if self.vocab_size is not None:
            for token_id in ids:
                if not 0 <= token_id < self.vocab_size:
                    raise APIError(
                        400,
                        f"token id {token_id} is not in this model's vocabulary: "
                        f"ids must be 0..{self.vocab_size - 1}",
                        code="invalid_token_id",
                        param=param,
                    )
        if len(ids) > self.max_prompt_tokens:
            raise self.too_long(len(ids), param)
        return ids

    async def run(self, work: Any, *args: Any) -> Any:
        """`work(*args)` on the tokenizer thread (it renders templates and tokenizes)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, work, *args)

    async def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        self.check_text([m["content"] for m in messages], "messages")

        def render_and_encode() -> list[int]:
            return self.backend.encode(self.backend.render_chat(messages))

        return self.check_ids(await self.run(render_and_encode), "messages")

    async def text_ids(self, text: str) -> list[int]:
        self.check_text([text], "prompt")
        return self.check_ids(await self.run(self.backend.encode, text), "prompt")
