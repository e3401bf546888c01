"""The OpenAI-compatible HTTP API: routes, authentication, limits, and streaming (SSE).

    GET  /health                  no key needed: is it up, how long is the queue
    GET  /v1/models               the one model this server serves (and /v1/models/{id})
    POST /v1/chat/completions     messages -> reply, `stream: true` for server-sent events
    POST /v1/completions          prompt -> continuation, same
    GET  /metrics                 Prometheus text; `?format=json` for a dict (members: their own)

A generation request goes: key (401/429, guard.py) -> body size and time (413/408, guard.py) ->
fields (400/422) -> model (404) -> text and prompt tokens (400/413, prompts.py) -> max_tokens and
the model's context (400) -> the member's budget (429) -> queue (503) -> tokens from the worker
thread -> text -> client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from lazymoe.server import schemas
from lazymoe.server.auth import KeyRecord, KeyStore
from lazymoe.server.backend import Backend, SamplingParams
from lazymoe.server.config import ServerConfig
from lazymoe.server.detok import TextStream
from lazymoe.server.errors import APIError, rate_limited
from lazymoe.server.guard import Guard
from lazymoe.server.handlers import add_error_handlers
from lazymoe.server.limits import Budget, LimitExceeded, RateLimiter
from lazymoe.server.metrics import Metrics
from lazymoe.server.prompts import PromptChecker
from lazymoe.server.scheduler import Job, Scheduler
from lazymoe.server.streaming import sse_events, text_pieces
from lazymoe.server.throttle import AuthThrottle

log = logging.getLogger("lazymoe.server")


def member(request: Request) -> KeyRecord:
    """Whose request this is: the Guard middleware checked the key before the body was read."""
    return request.state.member


Who = Annotated[KeyRecord, Depends(member)]


def create_app(
    backend: Backend, config: ServerConfig | None = None, keys: KeyStore | None = None
) -> FastAPI:
    """An app serving `backend`; with `keys` None nobody needs a key (loopback only)."""
    config, notes = (config or ServerConfig()).fitted_to(getattr(backend, "context_tokens", None))
    for note in notes:
        log.warning(note)
    context_tokens: int | None = getattr(backend, "context_tokens", None)
    if keys is None and config.keys_file is not None:
        keys = KeyStore(config.keys_file)
    metrics = Metrics()
    scheduler = Scheduler(backend, config.max_queue, metrics, config.max_batch)
    limiter = RateLimiter(
        config.requests_per_minute, config.tokens_per_minute, tokens_per_day=config.tokens_per_day
    )
    # Two threads hash keys: scrypt takes 16 MiB each, so few threads means little memory kept.
    hasher = ThreadPoolExecutor(2, thread_name_prefix="lazymoe-keys")
    prompts = PromptChecker(
        backend, config.max_prompt_tokens, ThreadPoolExecutor(1, thread_name_prefix="lazymoe-tok")
    )
    metrics.gauges = {
        "queue_depth": lambda: scheduler.queue_depth,
        "in_flight": lambda: scheduler.in_flight,
        "batch_size": lambda: scheduler.in_flight,  # requests decoding together now
        "max_batch": lambda: scheduler.max_batch,
    }
    # decode steps by path (an engine backend): "single", one request alone on the engine's
    # single-sequence path (its CUDA graphs on a GPU); "batched", several in one batched step
    decode_steps: dict[str, int] | None = getattr(backend, "decode_steps", None)
    if decode_steps is not None:
        metrics.gauges["decode_steps_single"] = lambda: decode_steps["single"]
        metrics.gauges["decode_steps_batched"] = lambda: decode_steps["batched"]
    metrics.engine_stats = lambda: scheduler.engine_stats

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        yield
        await run_in_threadpool(scheduler.stop, config.shutdown_grace_s)
        hasher.shutdown(wait=False, cancel_futures=True)
        prompts.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="lazymoe", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.scheduler, app.state.metrics, app.state.limiter = scheduler, metrics, limiter
    app.state.config, app.state.backend, app.state.notes = config, backend, notes
    app.add_middleware(
        Guard,
        metrics=metrics,
        config=config,
        keys=keys,
        throttle=AuthThrottle(config.auth_failures_per_minute),
        hasher=hasher,
    )
    add_error_handlers(app)

    def budget(who: KeyRecord) -> Budget:
        """The member's own limits from the keys file, the server's where they set none."""
        d = limiter.default
        return Budget(
            who.requests_per_minute or d.requests_per_minute,
            who.tokens_per_minute or d.tokens_per_minute,
            who.tokens_per_day or d.tokens_per_day,
        )

    def model_card() -> dict[str, Any]:
        return {"id": backend.model_id, "object": "model", "created": 0, "owned_by": "lazymoe"}

    def check_model(model: str) -> None:
        if model != backend.model_id:
            raise APIError(
                404,
                f"model {model!r} is not served here: use {backend.model_id!r} (GET /v1/models)",
                code="model_not_found",
                param="model",
            )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok" if scheduler.accepting else "shutting_down",
            "model": backend.model_id,
            "queue_depth": scheduler.queue_depth,
            "in_flight": scheduler.in_flight,
            "batch_size": scheduler.in_flight,
            "max_batch": scheduler.max_batch,
            **({"decode_steps": dict(decode_steps)} if decode_steps is not None else {}),
        }

    @app.get("/v1/models")
    async def models(who: Who) -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, who: Who) -> dict[str, Any]:
        check_model(model_id)
        return model_card()

    @app.get("/metrics")
    async def metrics_route(who: Who, format: str = "prometheus") -> Response:
        only = None if who.is_admin else who.member  # a member sees only their own figures
        if format != "json":
            text = metrics.prometheus(only)
            return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
        snap = metrics.snapshot(only)
        if only is not None:
            b = budget(who)
            snap["member"].update(
                tokens_last_minute=limiter.tokens_in_window(who.member),
                tokens_last_day=limiter.tokens_today(who.member),
                limits={
                    "requests_per_minute": b.requests_per_minute,
                    "tokens_per_minute": b.tokens_per_minute,
                    "tokens_per_day": b.tokens_per_day,
                },
            )
        return JSONResponse(snap)

    @app.post("/v1/chat/completions")
    async def chat(request: Request, body: schemas.ChatCompletionRequest, who: Who) -> Response:
        body.check_supported()
        check_model(body.model)
        prompts.check_text(body.stop_list(), "stop")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt_ids = await prompts.chat_ids(messages)
        return await generate(request, body, who, prompt_ids, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request, body: schemas.CompletionRequest, who: Who) -> Response:
        body.check_supported()
        check_model(body.model)
        prompts.check_text(body.stop_list(), "stop")
        prompt = body.prompt
        if isinstance(prompt, list) and not prompt:
            raise APIError(400, "the prompt is empty: send text or token ids", param="prompt")
        if isinstance(prompt, list) and isinstance(prompt[0], int):
            prompt_ids = prompts.check_ids(list(prompt), "prompt")  # token ids, as OpenAI allows
        else:
            prompt_ids = await prompts.text_ids(prompt[0] if isinstance(prompt, list) else prompt)
        return await generate(request, body, who, prompt_ids, chat=False)

    async def generate(
        request: Request, body: Any, who: KeyRecord, prompt_ids: list[int], chat: bool
    ) -> Response:
        param = "messages" if chat else "prompt"
        if not prompt_ids:
            raise APIError(400, "the prompt is empty", param=param)
        if len(prompt_ids) > config.max_prompt_tokens:
            raise prompts.too_long(len(prompt_ids), param)
        requested = body.requested_max_tokens()
        max_tokens = requested or min(config.default_max_tokens, config.max_tokens_cap)
        if requested is None and context_tokens is not None:  # the default shrinks to what fits
            max_tokens = max(1, min(max_tokens, context_tokens - len(prompt_ids)))
        if max_tokens > config.max_tokens_cap:
            raise APIError(
                400,
                f"max_tokens={max_tokens} is above this server's cap of {config.max_tokens_cap}",
                param="max_tokens",
            )
        if context_tokens is not None and len(prompt_ids) + max_tokens > context_tokens:
            raise APIError(
                400,
                f"the prompt's {len(prompt_ids)} tokens plus max_tokens={max_tokens} are over "
                f"the model's context of {context_tokens} tokens: ask for fewer tokens or "
                "shorten the prompt",
                code="context_length_exceeded",
                param="max_tokens",
            )
        try:
            reservation = limiter.admit(who.member, len(prompt_ids) + max_tokens, budget(who))
        except LimitExceeded as exc:
            raise rate_limited(str(exc), exc.retry_after_s) from None
        params = SamplingParams(max_tokens, body.temperature, body.top_p, body.seed)
        job = Job(
            key=who.member,
            prompt_ids=prompt_ids,
            params=params,
            deadline_s=time.monotonic() + config.request_timeout_s,
            loop=asyncio.get_running_loop(),
        )
        try:
            scheduler.submit(job)
        except APIError:
            limiter.release(reservation)  # refused (503): it does not count against the member
            raise
        metrics.count_prompt(len(prompt_ids), who.member)
        metrics.count_member(who.member)

        def settle(failure: APIError | None) -> None:
            if failure is not None and failure.status == 503 and job.started_s is None:
                limiter.release(reservation)  # refused from the queue at shutdown
            else:
                limiter.settle(reservation, len(prompt_ids) + job.n_tokens)
            metrics.count_member_completion(who.member, job.n_tokens)

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
