"""What the server needs from a model: the small protocol it serves, and its adapter to the Engine.

The server only ever calls `encode`, `decode`, `render_chat`, `stream` and `stats`, and `batch`
where there is one (continuous batching: see `lazymoe.server.batching`). Anything with those
methods can be served: the real `lazymoe.engine.Engine` through `EngineBackend`, or the
deterministic stand-in in `lazymoe.server.fake` that the unit tests use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class SamplingParams:
    """One request's decoding settings, already checked against the server's limits."""

    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None


class Backend(Protocol):
    model_id: str
    eos_token_ids: frozenset[int]
    vocab_size: int  # token ids are 0..vocab_size - 1
    context_tokens: int | None  # prompt + new tokens the model can attend to; None: no limit
    max_chars_per_token: int  # the most characters one token stands for (bounds prompt checks)

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def render_chat(self, messages: list[dict[str, str]]) -> str: ...

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        """Yield new token ids one by one; closing the iterator must stop the work."""
        ...

    def stats(self) -> dict[str, Any]: ...

    # Optional: `batch() -> BackendBatch`. A backend without it is served one request at a time.


class BackendBatch(Protocol):
    """Sequences decoding together: each joins with its own prefill, then one `step` for all.

    handle, first = batch.add(prompt_ids, params)   # prefill alone; the first new token
    batch.add_many(prompts, params)                 # optional: prefilled together; per prompt
                                                    # (handle, first) or the exception
    new = batch.step()                              # {handle: next token} for every live one
    batch.finished(handle)                          # end of sequence or max_new_tokens reached
    batch.remove(handle)                            # leave now, free its KV cache
    """

    def add(self, prompt_ids: list[int], params: SamplingParams) -> tuple[int, int]: ...

    def step(self) -> dict[int, int]: ...

    def finished(self, handle: int) -> bool: ...

    def remove(self, handle: int) -> None: ...

    def __len__(self) -> int: ...


def can_batch(backend: Any) -> bool:
    """Whether `backend` has the optional `batch()` (continuous batching)."""
    return callable(getattr(backend, "batch", None))


def generation_config(params: SamplingParams) -> Any:
    """The engine's `GenerationConfig` for one request's settings."""
    from lazymoe.engine import GenerationConfig

    return GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        seed=params.seed,
    )


def plain_chat_prompt(messages: list[dict[str, str]]) -> str:
    """A chat template for models that have none (the bundled tiny model was trained on code)."""
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join([*lines, "assistant:"])


class EngineBackend:
    """`lazymoe.engine.Engine` seen through the server's protocol.

    The engine is not thread-safe: the server's scheduler calls `stream` and `batch` from one
    worker thread only.
    """

    def __init__(self, engine: Any, model_id: str) -> None:
        self.engine = engine
        self.model_id = model_id
        self.tokenizer = engine.tokenizer
        eos = getattr(self.tokenizer, "eos_token_id", None)
        self.eos_token_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        self.vocab_size = engine.model.get_input_embeddings().num_embeddings
        self.context_tokens = getattr(engine.model.config, "max_position_embeddings", None)
        # A vocabulary entry is spelled with at least one character per character it decodes
        # to (byte-level BPE: one per byte; SentencePiece: `▁` for a space, `<0x0A>` for one).
        self.max_chars_per_token = max(len(t) for t in self.tokenizer.get_vocab())
        # decode steps by path, for /health: "single" = one request alone on the engine's
        # single-sequence path (`stream`, or a batch with one live request: graphs/segments on a
        # GPU), "batched" = several requests in one step of the batched layer loop
        self.decode_steps = {"single": 0, "batched": 0}

    @classmethod
    def from_model_path(cls, model_path: str | Path, **engine_fields: Any) -> EngineBackend:
        """Load the engine on `model_path`; `engine_fields` go to EngineConfig (device, vram_budget...)."""
        from lazymoe.engine import Engine, EngineConfig

        engine = Engine(EngineConfig(model_path=model_path, **engine_fields))
        return cls(engine, model_id=Path(model_path).resolve().name)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        return plain_chat_prompt(messages)

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        # the engine checks the request now (ValueError), before the first token is asked for
        return self._counted(self.engine.stream(prompt_ids, generation_config(params)))

    def _counted(self, tokens: Iterator[int]) -> Iterator[int]:
        """`tokens`, counting each one after the first (a decode step) as a "single" step."""
        try:
            for i, token in enumerate(tokens):
                if i > 0:
                    self.decode_steps["single"] += 1
                yield token
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()  # closing this generator stops the engine's at once

    def batch(self) -> EngineBatchAdapter:
        """The engine's continuous batch (`lazymoe.engine.batch`), taking the server's params;
        one live request alone decodes on the engine's single-sequence path (its `fast_lone`)."""
        return EngineBatchAdapter(self.engine.batch(), self.decode_steps)

    def stats(self) -> dict[str, Any]:
        stats = self.engine.stats()
        return stats.as_dict() if hasattr(stats, "as_dict") else dict(stats)


class EngineBatchAdapter:
    """`engine.batch()` (an EngineBatch, taking GenerationConfig) seen as a `BackendBatch`."""

    def __init__(self, batch: Any, decode_steps: dict[str, int] | None = None) -> None:
        self._batch = batch
        self._decode_steps = decode_steps  # the backend's counts by path, added to per step

    def add(self, prompt_ids: list[int], params: SamplingParams) -> tuple[int, int]:
        return self._batch.add(prompt_ids, generation_config(params))

    def add_many(
        self, prompts: list[list[int]], params: list[SamplingParams]
    ) -> list[tuple[int, int] | Exception]:
        return self._batch.add_many(prompts, [generation_config(p) for p in params])

    def step(self) -> dict[int, int]:
        new = self._batch.step()
        path = getattr(self._batch, "last_path", None)
        if new and path is not None and self._decode_steps is not None:
            self._decode_steps[path] += 1
        return new

    def finished(self, handle: int) -> bool:
        return self._batch.finished(handle)

    def remove(self, handle: int) -> None:
        self._batch.remove(handle)

    def __len__(self) -> int:
        return len(self._batch)
