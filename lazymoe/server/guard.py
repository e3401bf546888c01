"""What every request passes before any route sees it, in this order (ASGI middleware):

1. the key, from the headers alone: a client without a valid key never gets its body read
   (401), and wrong keys are throttled per address before any hashing (429);
2. the body, read here with a byte count and a deadline whatever the framing (Content-Length or
   chunked): over `max_body_bytes` -> 413, slower than `body_timeout_s` -> 408; it is then handed
   to the route from memory, so memory per request is bounded by the limit;
3. the route; an exception it does not handle becomes a 500 in OpenAI's shape *without* closing the
   keep-alive connection (Starlette's last-resort handler would close it);
4. every response is counted by path and status.

A refusal sent before the whole body was read says `Connection: close`, so the server stops
reading the rest instead of discarding megabytes. Header read timeouts live in `protocol.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lazymoe.server.auth import LOCAL, KeyRecord, KeyStore, bearer_key
from lazymoe.server.config import ServerConfig
from lazymoe.server.errors import APIError, rate_limited, unauthorized
from lazymoe.server.handlers import KNOWN_PATHS, error_response
from lazymoe.server.metrics import Metrics
from lazymoe.server.throttle import AuthThrottle

log = logging.getLogger("lazymoe.server")
OPEN_PATHS = {"/health"}  # no key needed
BODY_METHODS = {"POST", "PUT", "PATCH"}


class _ClientGone(Exception):
    """The client hung up while sending its body: nobody to answer."""


class Guard:
    def __init__(
        self,
        app: Any,
        metrics: Metrics,
        config: ServerConfig,
        keys: KeyStore | None,
        throttle: AuthThrottle,
        hasher: ThreadPoolExecutor,
    ) -> None:
        self.app, self.metrics, self.config = app, metrics, config
        self.keys, self.throttle, self.hasher = keys, throttle, hasher
        # Checks under way, by key: 30 requests arriving together with one new key hash it once.
        self._checking: dict[bytes, asyncio.Future] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, started = 500, False

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            try:
                scope.setdefault("state", {})["member"] = await self._member(scope)
                receive = await self._read_body(scope, receive)
            except _ClientGone:
                status = 499  # for the request count: the client closed the connection
                return
            except APIError as err:
                if scope["method"] in BODY_METHODS and _has_body(scope):
                    err.headers = {**err.headers, "Connection": "close"}
                await error_response(err)(scope, receive, send_and_note)
                return
            await self.app(scope, receive, send_and_note)
        except Exception:
            log.exception("unexpected error on %s", scope["path"])
            if not started:
                internal = APIError(
                    500, "internal error: the server's log has the details", code="internal_error"
                )
                await error_response(internal)(scope, receive, send_and_note)
        finally:
            path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
            self.metrics.count_request(path, status)

    # -- 1. the key ------------------------------------------------------------------------------
    async def _member(self, scope: Any) -> KeyRecord:
        if self.keys is None or scope["path"] in OPEN_PATHS:
            return LOCAL
        headers = dict(scope.get("headers") or [])
        key = bearer_key(headers.get(b"authorization", b"").decode("latin-1"))
        if key is None:
            raise unauthorized(
                "missing API key: send the header `Authorization: Bearer <your key>` "
                "(the openai client does this for you with api_key=...)"
            )
        record = self.keys.cached(key)  # a key seen before: no hashing, no waiting
        if record is not None:
            return record
        tag = self.keys.tag_of(key)
        if tag in self._checking:  # the same key is being checked right now: share the answer
            record = await asyncio.shield(self._checking[tag])
        else:
            record = await self._check(key, tag, (scope.get("client") or ("unknown", 0))[0])
        if record is None:
            raise unauthorized("invalid API key: check it, or ask the instructor for a new one")
        return record

    async def _check(self, key: str, tag: bytes, address: str) -> KeyRecord | None:
        """Hash `key` on the hasher threads, unless `address` is over its wrong-key budget."""
        assert self.keys is not None
        wait_s = self.throttle.retry_after_s(address)
        if wait_s:
            raise rate_limited(
                f"too many wrong API keys from your address ({self.throttle.failures_per_minute} "
                f"a minute): wait {wait_s:.0f} s, then check the key you were given",
                wait_s,
                code="too_many_wrong_keys",
            )
        if not self.throttle.begin(address):
            raise rate_limited(
                "too many API keys are being checked at once: retry in a moment", 1.0
            )
        loop = asyncio.get_running_loop()
        future = self._checking[tag] = loop.run_in_executor(self.hasher, self.keys.identify, key)

        def done(f: asyncio.Future) -> None:
            # Here, not after the await: a client that hangs up must not free its slot early.
            self._checking.pop(tag, None)
            self.throttle.end(address)
            if not f.cancelled() and f.exception() is None and f.result() is None:
                self.throttle.failed(address)

        future.add_done_callback(done)
        return await asyncio.shield(future)

    # -- 2. the body -----------------------------------------------------------------------------
    async def _read_body(self, scope: Any, receive: Any) -> Any:
        """Read the whole body (bounded in bytes and time); return a `receive` that replays it."""
        if scope["method"] not in BODY_METHODS:
            return receive
        limit = self.config.max_body_bytes
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise _too_large(limit)
        deadline_s = time.monotonic() + self.config.body_timeout_s
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline_s - time.monotonic(), 0))
            except asyncio.TimeoutError:  # python 3.10 raises its own class
                raise APIError(
                    408,
                    f"the request body did not arrive within {self.config.body_timeout_s:g} s",
                    code="request_timeout",
                ) from None
            if message["type"] == "http.disconnect":
                raise _ClientGone
            size += len(message.get("body", b""))
            if size > limit:
                raise _too_large(limit)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return _replay(b"".join(chunks), receive)


def _has_body(scope: Any) -> bool:
    headers = dict(scope.get("headers") or [])
    return headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"the request body is over {limit} bytes: send a shorter prompt",
        code="body_too_large",
    )


def _replay(body: bytes, receive: Any) -> Any:
    """A `receive` that gives the body once, then whatever the connection says (disconnects)."""
    given = False

    async def replay() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
