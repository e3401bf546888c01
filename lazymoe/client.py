"""Talk to a lazymoe (or any OpenAI-compatible) server from a lab: where it is, and which key.

    conn = lazymoe.client.connect()      # shared server if configured, else a local one
    conn.openai()                        # an openai.OpenAI client
    conn.http()                          # an httpx.Client with the key in its headers
    conn.close()                         # stops the local server, if this started one

It works against any OpenAI-compatible server (lazymoe, llama.cpp's llama-server,
llama-cpp-python's `python -m llama_cpp.server`, vLLM). What only lazymoe has (its JSON /metrics
with the queue and the expert cache's hit rate) is detected: `conn.has_metrics`, and
`conn.metrics_or_note(...)` prints one line and returns None elsewhere. Servers differ in how they
say no: `error_of(response)` reads each one's error body in OpenAI's shape.

Where the server is, first match wins:
  1. arguments: connect(base_url=..., api_key=...)
  2. environment: LAZYMOE_API_BASE (e.g. http://10.0.0.5:8000/v1) and LAZYMOE_API_KEY
  3. the file <home>/api.json, written by `save_config(...)` (home: lazymoe.paths.home_dir())
  4. none of these: an embedded server on the bundled tiny model, in this process, on 127.0.0.1
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lazymoe import atomic, paths
from lazymoe.i18n import _

CONFIG_NAME = "api.json"
HEALTH_TIMEOUT_S = 5.0


def config_path() -> Path:
    return paths.home_dir() / CONFIG_NAME


def save_config(api_base: str, api_key: str) -> Path:
    """Remember the shared server's address and your key (file readable only by you)."""
    path = config_path()
    atomic.write_json(path, {"api_base": api_base, "api_key": api_key}, mode=0o600)
    return path


def configured() -> tuple[str, str | None, str] | None:
    """(base_url, api_key, where it came from) from the environment or the config file, or None."""
    if os.environ.get("LAZYMOE_API_BASE"):
        return os.environ["LAZYMOE_API_BASE"], os.environ.get("LAZYMOE_API_KEY"), "environment"
    path = config_path()
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            return saved["api_base"], saved.get("api_key"), str(path)
        except (ValueError, KeyError) as exc:
            raise ValueError(
                f"{path} is not a lazymoe API config ({exc}): delete it or save_config() again"
            ) from exc
    return None


def root_of(base_url: str) -> str:
    """'http://host:8000/v1' -> 'http://host:8000' (where /health and /metrics live)."""
    base_url = base_url.rstrip("/")
    return base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url


@dataclass
class Connection:
    base_url: str  # OpenAI style, ending in /v1
    api_key: str | None = field(repr=False)  # printed nowhere by accident
    model: str
    source: str  # "arguments", "environment", a config file path, or "embedded"
    server: Any = field(default=None, repr=False)  # the EmbeddedServer this started, if any
    _tmp: str | None = field(default=None, repr=False)
    _has_metrics: bool | None = field(default=None, repr=False)  # probed once, on first use

    @property
    def root_url(self) -> str:
        return root_of(self.base_url)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def openai(self, **kwargs: Any) -> Any:
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key or "none", **kwargs)

    def http(self, timeout_s: float = 120.0) -> Any:
        import httpx

        return httpx.Client(base_url=self.root_url, headers=self.headers, timeout=timeout_s)

    @property
    def has_metrics(self) -> bool:
        """Does this server answer lazymoe's JSON /metrics? (llama-server and vLLM serve Prometheus
        text there, llama-cpp-python nothing: their figures are not the same.)"""
        if self._has_metrics is None:
            self._has_metrics = self._fetch_metrics() is not None
        return self._has_metrics

    def _fetch_metrics(self) -> dict[str, Any] | None:
        import httpx

        try:
            with self.http(timeout_s=10.0) as client:
                response = client.get("/metrics", params={"format": "json"})
        except httpx.TransportError:
            return None
        if response.status_code != 200:
            return None
        try:
            snap = response.json()
        except ValueError:  # Prometheus text: another engine's /metrics
            return None
        return snap if isinstance(snap, dict) and "queue_depth" in snap else None

    def metrics(self) -> dict[str, Any]:
        """The server's /metrics as a dict (lazymoe servers only: see `has_metrics`)."""
        snap = self._fetch_metrics()
        if snap is None:
            raise LookupError(
                f"the server at {self.base_url} has no lazymoe /metrics (it is another "
                "OpenAI-compatible server, or it refused the key): check `conn.has_metrics` first"
            )
        self._has_metrics = True
        return snap

    def metrics_or_note(self, what: str) -> dict[str, Any] | None:
        """metrics(), or None after printing one line: `what` is skipped on this server."""
        if self.has_metrics:
            return self.metrics()
        print(_("(skipped {what}: only a lazymoe server reports it, and {url} is another "
                "OpenAI-compatible server)").format(what=what, url=self.base_url))
        return None

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def error_of(response: Any) -> dict[str, Any] | None:
    """The error in an HTTP response, as OpenAI's {"message", "type", "code"}; None on success.

    Servers say no in different shapes: OpenAI, lazymoe, llama-server and vLLM send
    {"error": {...}}, older vLLM {"object": "error", "message": ...}, llama-cpp-python FastAPI's
    {"detail": ...}; a proxy in front may send plain text.
    """
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]
    if isinstance(body, dict) and body.get("object") == "error":
        return {k: body.get(k) for k in ("message", "type", "code")}
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        if isinstance(detail, list):  # FastAPI's validation errors: one dict per bad field
            detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
        return {"message": str(detail), "type": None, "code": response.status_code}
    text = body if isinstance(body, str) else response.text
    return {"message": text.strip()[:300] or f"HTTP {response.status_code}", "type": None,
            "code": response.status_code}


def fill_token_counts(*timings: Any) -> bool:
    """Give each `lazymoe.server.loadtest.StreamTiming` a token count where the server sent none.

    lazymoe and llama-server report `usage` at the end of a stream; llama-cpp-python's server does
    not, so there the count is one token per piece of text (what it sends). True if any was filled.
    """
    filled = False
    for timing in timings:
        if not timing.n_tokens and timing.arrivals_s:
            timing.n_tokens = len(timing.arrivals_s)
            filled = True
    return filled


def connect(
    base_url: str | None = None,
    api_key: str | None = None,
    *,
    model_path: str | Path | None = None,
    server_config: Any = None,
    **engine_fields: Any,
) -> Connection:
    """A connection to the shared server, or to a local one started now (see the module doc).

    `model_path`, `server_config` and `engine_fields` (device, vram_budget...) only matter for
    the local server; it uses the bundled tiny model unless told otherwise.
    """
    import httpx

    found = (base_url, api_key, "arguments") if base_url else configured()
    if found is None:
        return _start_embedded(model_path, server_config, engine_fields)
    base_url, api_key, source = found
    try:
        with httpx.Client(base_url=root_of(base_url), timeout=HEALTH_TIMEOUT_S) as client:
            listing = client.get(
                "/v1/models", headers={"Authorization": f"Bearer {api_key}"} if api_key else {}
            )
    except httpx.TransportError as exc:
        raise ConnectionError(
            f"no server answers at {base_url} (from {source}): is it running, and is the address "
            "right? To use a local server instead, unset LAZYMOE_API_BASE or delete "
            f"{config_path()}."
        ) from exc
    if listing.status_code == 401:
        raise PermissionError(
            f"the server at {base_url} refused the key from {source}: check LAZYMOE_API_KEY"
        )
    listing.raise_for_status()
    return Connection(base_url.rstrip("/"), api_key, listing.json()["data"][0]["id"], source)


def _start_embedded(
    model_path: str | Path | None, server_config: Any, engine_fields: dict[str, Any]
) -> Connection:
    from lazymoe.server.backend import EngineBackend
    from lazymoe.server.embedded import EmbeddedServer

    model_path = Path(model_path) if model_path else paths.bundled_model_dir()
    if not (model_path / "config.json").exists():
        raise FileNotFoundError(
            f"no model at {model_path}: build the bundled one with `python -m lazymoe.models.prepare` "
            "(or `make data`), or set LAZYMOE_API_BASE to use a shared server"
        )
    backend = EngineBackend.from_model_path(model_path, **engine_fields)
    tmp = tempfile.mkdtemp(prefix="lazymoe-keys-")
    server = EmbeddedServer(backend, server_config, keys_file=str(Path(tmp) / "keys.json")).start()
    return Connection(server.base_url, server.api_key, backend.model_id, "embedded", server, tmp)
