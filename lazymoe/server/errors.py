"""Errors in the shape OpenAI's API uses, so every OpenAI client shows them properly.

{"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": "..."}}
"""

from __future__ import annotations

from typing import Any

# status -> OpenAI error type
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class APIError(Exception):
    """A request the server refuses; `status` is the HTTP status, `message` says what to change."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": ERROR_TYPES.get(
                    self.status, "invalid_request_error" if self.status < 500 else "server_error"
                ),
                "param": self.param,
                "code": self.code,
            }
        }


def unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def rate_limited(message: str, retry_after_s: float, code: str = "rate_limit_exceeded") -> APIError:
    seconds = max(1, int(retry_after_s + 0.999))
    return APIError(429, message, code=code, headers={"Retry-After": str(seconds)})


def overloaded(message: str, code: str = "queue_full") -> APIError:
    return APIError(503, message, code=code, headers={"Retry-After": "1"})
