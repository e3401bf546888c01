"""What `lazymoe serve` promises its users: where it listens, and every limit it enforces."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from lazymoe.i18n import _


@dataclass
class ServerConfig:
    """Limits and addresses of one server. Every number carries its unit in its name.

    A request is refused before it costs anything when it breaks a limit:
    prompt longer than `max_prompt_tokens` -> 413, `max_tokens` above `max_tokens_cap` -> 400,
    more than `requests_per_minute` or `tokens_per_minute` for one key -> 429,
    more than `max_queue` requests waiting -> 503.
    Up to `max_batch` requests decode together (continuous batching, when the backend can
    batch); 1 serves one request at a time.
    """

    host: str = "127.0.0.1"  # loopback: nobody else on the network can reach it
    port: int = 8000
    keys_file: Path | None = None  # None: no keys, no auth (only for a server on loopback)
    max_queue: int = 64  # requests waiting for the engine, all keys together
    max_batch: int = 8  # requests decoding together, one engine step for all; 1: one at a time
    max_prompt_tokens: int = 2048  # never above the model's context: see `fitted_to`
    max_body_bytes: int = 4 * 2**20  # a request body larger than this is refused (413) unread
    max_tokens_cap: int = 512  # the most new tokens one request may ask for
    default_max_tokens: int = 64  # when a request does not say (never above the cap)
    request_timeout_s: float = 120.0  # from arrival to the last token
    requests_per_minute: int = 120  # per key
    tokens_per_minute: int = 60_000  # per key: prompt + completion tokens
    tokens_per_day: int | None = None  # per key, over the last 24 hours; None: no daily limit
    shutdown_grace_s: float = 30.0  # how long the request in flight may finish on shutdown
    header_timeout_s: float = 10.0  # a connection must send a request's headers within this
    body_timeout_s: float = 30.0  # and then its whole body within this
    auth_failures_per_minute: int = 10  # wrong keys per client address before 429 (no hashing)

    def __post_init__(self) -> None:
        if self.keys_file is not None:
            self.keys_file = Path(self.keys_file)
        if not 0 <= self.port <= 65535:
            raise ValueError(
                f"port={self.port} is not a TCP port: use 1..65535 (or 0 for any free one)"
            )
        positive = {
            "max_queue": self.max_queue,
            "max_batch": self.max_batch,
            "max_prompt_tokens": self.max_prompt_tokens,
            "max_body_bytes": self.max_body_bytes,
            "max_tokens_cap": self.max_tokens_cap,
            "default_max_tokens": self.default_max_tokens,
            "request_timeout_s": self.request_timeout_s,
            "requests_per_minute": self.requests_per_minute,
            "tokens_per_minute": self.tokens_per_minute,
            "header_timeout_s": self.header_timeout_s,
            "body_timeout_s": self.body_timeout_s,
            "auth_failures_per_minute": self.auth_failures_per_minute,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name}={value} must be positive: raise it or leave the default")
        if self.tokens_per_day is not None and self.tokens_per_day <= 0:
            raise ValueError(f"tokens_per_day={self.tokens_per_day} must be positive (or None)")
        if self.shutdown_grace_s < 0:
            raise ValueError("shutdown_grace_s must be >= 0 seconds")
        if self.keys_file is None and not is_loopback(self.host):
            raise ValueError(
                f"host={self.host!r} is reachable from other machines but no keys file is set: "
                "create keys with `lazymoe serve --add-key NAME --keys FILE` and pass --keys FILE"
            )

    def fitted_to(self, context_tokens: int | None) -> tuple[ServerConfig, list[str]]:
        """This config with `max_prompt_tokens` no larger than the model's context, and what
        was changed, in words (the server says it at startup)."""
        if context_tokens is None or self.max_prompt_tokens <= context_tokens:
            return self, []
        note = _(
            "max_prompt_tokens={asked} is more than the model's context of {context} tokens: "
            "prompts are capped at {context} tokens instead"
        ).format(asked=self.max_prompt_tokens, context=context_tokens)
        return dataclasses.replace(self, max_prompt_tokens=context_tokens), [note]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it is reachable from elsewhere
        return False
