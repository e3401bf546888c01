"""The OpenAI-compatible HTTP API: routes, authentication, limits, and streaming (SSE).

    GET  /health                  no key needed: is it up, how long is the queue
    GET  /v1/models               the one model this server serves
    POST /v1/chat/completions     messages -> reply, `stream: true` for server-sent events
    POST /v1/completions          prompt -> continuation, same
    GET  /metrics                 Prometheus text; `?format=json` for a dict

A generation request goes: key -> body -> prompt tokens (413) -> max_tokens (400) ->
per-key budget (429) -> queue (503) -> tokens from the worker thread -> text -> client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from lazymoe.server import schemas
from lazymoe.server.auth import KeyStore, bearer_key
from lazymoe.server.backend import Backend, SamplingParams
from lazymoe.server.config import ServerConfig
from lazymoe.server.detok import TextStream
from lazymoe.server.errors import APIError, rate_limited, unauthorized
from lazymoe.server.handlers import CountRequests, add_error_handlers
from lazymoe.server.limits import LimitExceeded, RateLimiter
from lazymoe.server.metrics import Metrics
from lazymoe.server.scheduler import Job, Scheduler
from lazymoe.server.streaming import sse_events, text_pieces


def create_app(
    backend: Backend, config: ServerConfig | None = None, keys: KeyStore | None = None
) -> FastAPI:
    """An app serving `backend`; with `keys` None nobody needs a key (loopback only)."""
    config = config or ServerConfig()
    if keys is None and config.keys_file is not None:
        keys = KeyStore(config.keys_file)
    metrics = Metrics()
    scheduler = Scheduler(backend, config.max_queue, metrics)
    limiter = RateLimiter(config.requests_per_minute, config.tokens_per_minute)
    metrics.gauges = {
        "queue_depth": lambda: scheduler.queue_depth,
        "in_flight": lambda: scheduler.in_flight,
    }
    metrics.engine_stats = lambda: scheduler.engine_stats

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        yield
        await run_in_threadpool(scheduler.stop, config.shutdown_grace_s)

    app = FastAPI(
        title="lazymoe", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.scheduler, app.state.metrics, app.state.limiter = scheduler, metrics, limiter
    app.state.config, app.state.backend = config, backend
    app.add_middleware(CountRequests, metrics=metrics, max_body_bytes=config.max_body_bytes)
    add_error_handlers(app)

    async def member(request: Request) -> str:
        """The member whose key came with the request (401 otherwise); never logs the key."""
        if keys is None:
            return "local"
        key = bearer_key(request.headers.get("authorization"))
        if key is None:
            raise unauthorized(
                "missing API key: send the header `Authorization: Bearer <your key>` "
                "(the openai client does this for you with api_key=...)"
            )
        who = await run_in_threadpool(keys.verify, key)
        if who is None:
            raise unauthorized("invalid API key: check it, or ask the instructor for a new one")
        return who

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok" if scheduler.accepting else "shutting_down",
            "model": backend.model_id,
            "queue_depth": scheduler.queue_depth,
            "in_flight": scheduler.in_flight,
        }

    @app.get("/v1/models")
    async def models(who: str = Depends(member)) -> dict[str, Any]:
        card = {"id": backend.model_id, "object": "model", "created": 0, "owned_by": "lazymoe"}
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def metrics_route(format: str = "prometheus", who: str = Depends(member)) -> Response:
        if format == "json":
            return JSONResponse(metrics.snapshot())
        return PlainTextResponse(metrics.prometheus(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions")
    async def chat(
        request: Request, body: schemas.ChatCompletionRequest, who: str = Depends(member)
    ) -> Response:
        body.check_supported()
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt_ids = backend.encode(backend.render_chat(messages))
        return await generate(request, body, who, prompt_ids, chat=True)

    @app.post("/v1/completions")
    async def completions(
        request: Request, body: schemas.CompletionRequest, who: str = Depends(member)
    ) -> Response:
        body.check_supported()
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            prompt_ids = list(prompt)  # token ids, as OpenAI allows
        else:
            prompt_ids = backend.encode(prompt[0] if isinstance(prompt, list) else prompt)
        return await generate(request, body, who, prompt_ids, chat=False)

    async def generate(
        request: Request, body: Any, who: str, prompt_ids: list[int], chat: bool
    ) -> Response:
        if body.model != backend.model_id:
            raise APIError(
                404,
                f"model {body.model!r} is not served here: use {backend.model_id!r} (GET /v1/models)",
                code="model_not_found",
                param="model",
            )
        if not prompt_ids:
            raise APIError(400, "the prompt is empty", param="messages" if chat else "prompt")
        if len(prompt_ids) > config.max_prompt_tokens:
            raise APIError(
                413,
                f"the prompt has {len(prompt_ids)} tokens; this server takes at most "
                f"{config.max_prompt_tokens}: shorten it",
                code="context_length_exceeded",
                param="messages" if chat else "prompt",
            )
        max_tokens = body.requested_max_tokens() or min(
            config.default_max_tokens, config.max_tokens_cap
        )
        if max_tokens > config.max_tokens_cap:
            raise APIError(
                400,
                f"max_tokens={max_tokens} is above this server's cap of {config.max_tokens_cap}",
                param="max_tokens",
            )
        try:
            reservation = limiter.admit(who, len(prompt_ids) + max_tokens)
        except LimitExceeded as exc:
            raise rate_limited(str(exc), exc.retry_after_s) from None
        params = SamplingParams(max_tokens, body.temperature, body.top_p, body.seed)
        job = Job(
            key=who,
            prompt_ids=prompt_ids,
            params=params,
            deadline_s=time.monotonic() + config.request_timeout_s,
            loop=asyncio.get_running_loop(),
        )
        try:
            scheduler.submit(job)
        except APIError:
            limiter.settle(reservation, 0)
            raise
        metrics.count_prompt(len(prompt_ids))
        metrics.count_member(who)

        def settle() -> None:
            limiter.settle(reservation, len(prompt_ids) + job.n_tokens)

        pieces = text_pieces(
            job,
            TextStream(backend.decode, body.stop_list()),
            request,
            metrics,
            settle,
            poll_disconnect=not body.stream,
        )
        rid = schemas.new_id("chatcmpl" if chat else "cmpl")
        if body.stream:
            sse = sse_events(
                pieces, rid, backend.model_id, chat, len(prompt_ids), job, body.include_usage()
            )
            return StreamingResponse(
                sse,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        text, finish = [], "length"
        async for kind, value in pieces:
            if kind == "text":
                text.append(value)
            else:
                finish = value
        if finish == "disconnected":
            return Response(status_code=499)  # nobody is listening; the status is for the logs
        use = schemas.usage(len(prompt_ids), job.n_tokens)
        build = schemas.chat_response if chat else schemas.completion_response
        return JSONResponse(build(rid, backend.model_id, "".join(text), finish, use))

    return app
