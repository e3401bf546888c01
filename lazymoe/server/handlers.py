"""Every error as OpenAI error JSON.

FastAPI's own errors (validation, unknown route, wrong method) are turned into the same
{"error": {"message", "type", "param", "code"}} shape as ours, so clients see one format. A bug
(any other exception) is answered by the Guard middleware (guard.py), which keeps the connection.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lazymoe.server.errors import APIError

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
        message = str(exc.detail)
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"{request.method} is not allowed on {request.url.path}: use {allowed}"
        return error_response(APIError(exc.status_code, message, headers=dict(exc.headers or {})))
