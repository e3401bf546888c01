"""HTTP plumbing around the routes: every error as OpenAI error JSON, and request counting.

FastAPI's own errors (validation, unknown route, a bug) are turned into the same
{"error": {"message", "type", "param", "code"}} shape as ours, so clients see one format.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lazymoe.server.errors import APIError
from lazymoe.server.metrics import Metrics

log = logging.getLogger("lazymoe.server")
KNOWN_PATHS = {"/health", "/v1/models", "/v1/chat/completions", "/v1/completions", "/metrics"}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") in ("json_invalid", "model_attributes_type") or first.get("loc") == (
            "body",
        ):
            return error_response(
                APIError(400, "the body must be a JSON object (OpenAI request format)")
            )
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        message = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in errors[:5]
        )
        return error_response(
            APIError(422, f"invalid request: {message}", code="invalid_value", param=where)
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(APIError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(
            APIError(500, f"internal error: {type(exc).__name__}", code="internal_error")
        )


class CountRequests:
    """ASGI middleware: count every HTTP response by path and status (works with streaming), and
    refuse a body whose Content-Length is over the limit before reading it."""

    def __init__(self, app: Any, metrics: Metrics, max_body_bytes: int) -> None:
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            length = dict(scope.get("headers") or []).get(b"content-length", b"0")
            if int(length or 0) > self.max_body_bytes:
                too_big = APIError(
                    413,
                    f"the request body is over {self.max_body_bytes} bytes",
                    code="body_too_large",
                )
                await error_response(too_big)(scope, receive, send_and_note)
            else:
                await self.app(scope, receive, send_and_note)
        finally:
            path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
            self.metrics.count_request(path, status)
