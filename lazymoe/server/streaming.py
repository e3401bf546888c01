"""From a job's token events to what the client receives: text pieces, then SSE or one JSON.

`text_pieces` turns the worker's token ids into text, one piece per token (empty while it holds
back half characters and stop strings), notices a client that went away and cancels the job so
the engine stops. `sse_events` wraps the pieces in OpenAI's chunk format, ending with
`data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request

from lazymoe.server import schemas
from lazymoe.server.detok import TextStream
from lazymoe.server.errors import APIError
from lazymoe.server.metrics import Metrics
from lazymoe.server.scheduler import Job

log = logging.getLogger("lazymoe.server")
DISCONNECT_POLL_S = 0.5  # how often a waiting non-streaming request checks for its client


async def text_pieces(
    job: Job,
    text: TextStream,
    request: Request,
    metrics: Metrics,
    settle: Callable[[APIError | None], None],
    poll_disconnect: bool,
) -> AsyncIterator[tuple[str, str]]:
    """("text", piece)... then ("done", finish_reason); raises the job's APIError.

    `settle(error or None)` is called once at the end, whatever happened.
    If the consumer goes away (the SSE response is cancelled when its client disconnects) or the
    client of a non-streaming request disconnects, the job is cancelled so the engine stops.
    """
    completed, failure = False, None
    try:
        last_poll_s = time.monotonic()
        while True:
            try:
                kind, value = await asyncio.wait_for(job.events.get(), timeout=DISCONNECT_POLL_S)
            except asyncio.TimeoutError:  # python 3.10 raises its own class, not TimeoutError
                kind, value = "", None
                if job.started_s is None and time.monotonic() > job.deadline_s:
                    job.cancel()  # still queued behind long requests: give up now
                    completed = True
                    failure = APIError(
                        504, "the request timed out while waiting in the queue", code="timeout"
                    )
                    raise failure from None
            if poll_disconnect and time.monotonic() - last_poll_s >= DISCONNECT_POLL_S:
                last_poll_s = time.monotonic()
                if await request.is_disconnected():
                    yield ("done", "disconnected")
                    return
            if kind == "token":
                # one piece per token, even an empty one (half a character, text held back at a
                # stop string's start, or a token with no text at all, as most of a random
                # model's): the client sees each token arrive, so time to first token and
                # tokens/s can be measured whatever the text (OpenAI streams allow empty text)
                piece = text.push(value)
                if piece or not text.stopped:
                    yield ("text", piece)
                if text.stopped:  # a stop string: no need for more tokens
                    job.cancel()
                    completed = True
                    yield ("done", "stop")
                    return
            elif kind == "done":
                rest = text.finish()
                if rest:
                    yield ("text", rest)
                completed = True
                yield ("done", value)
                return
            elif kind == "error":
                completed, failure = True, value
                raise value
    finally:
        if not completed:
            job.cancel()
            metrics.count_cancelled()
            log.info("request %s cancelled: its client went away", job.job_id)
        settle(failure)


async def sse_events(
    pieces: AsyncIterator[tuple[str, str]],
    rid: str,
    model: str,
    chat: bool,
    n_prompt: int,
    job: Job,
    include_usage: bool,
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""

    def event(payload: dict[str, Any]) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    if chat:
        yield event(schemas.chat_chunk(rid, model, {"role": "assistant", "content": ""}, None))
    try:
        async for kind, value in pieces:
            if kind == "text":
                chunk = (
                    schemas.chat_chunk(rid, model, {"content": value}, None)
                    if chat
                    else schemas.completion_chunk(rid, model, value, None)
                )
            else:
                chunk = (
                    schemas.chat_chunk(rid, model, {}, value)
                    if chat
                    else schemas.completion_chunk(rid, model, "", value)
                )
            yield event(chunk)
        if include_usage:
            kind = "chat.completion.chunk" if chat else "text_completion"
            yield event(
                schemas.usage_chunk(rid, model, kind, schemas.usage(n_prompt, job.n_tokens))
            )
    except APIError as err:  # the status line has gone already: the error travels as an event
        yield event(err.body())
    yield "data: [DONE]\n\n"
