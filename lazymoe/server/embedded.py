"""Run the server inside this Python process, on a free loopback port, and stop it cleanly.

Used by notebooks (the lab talks to a local server when no shared one is configured) and by the
tests. uvicorn runs on its own thread with its own event loop; the engine runs on the scheduler's
worker thread.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from typing import Any

import httpx
import uvicorn

from lazymoe.server.app import create_app
from lazymoe.server.auth import KeyStore
from lazymoe.server.backend import Backend
from lazymoe.server.config import ServerConfig
from lazymoe.server.protocol import protocol_with_header_timeout

START_TIMEOUT_S = 30.0


class GracefulServer(uvicorn.Server):
    """uvicorn, plus: on shutdown first refuse the queue (503) and let the running request finish."""

    def __init__(self, config: uvicorn.Config, app: Any) -> None:
        super().__init__(config)
        self.lazymoe_app = app  # the FastAPI app from create_app, holding the scheduler

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = self.lazymoe_app.state
        if state.scheduler.accepting:
            state.scheduler.begin_shutdown(state.config.shutdown_grace_s)
        await super().shutdown(sockets)


def build_server(app: Any, config: ServerConfig, log_level: str = "warning") -> GracefulServer:
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level,
        timeout_graceful_shutdown=int(config.shutdown_grace_s) + 5,
        access_log=False,  # request lines carry no keys, but they are noise in a notebook
        http=protocol_with_header_timeout(config.header_timeout_s),
    )
    return GracefulServer(uv_config, app)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedServer:
    """A server on 127.0.0.1 in a background thread.

    server = EmbeddedServer(backend, keys_file=tmp / "keys.json").start()
    server.base_url   # "http://127.0.0.1:PORT/v1"
    server.api_key    # a fresh admin key for the member "you" (when auth is on)
    server.stop()
    """

    def __init__(
        self,
        backend: Backend,
        config: ServerConfig | None = None,
        *,
        keys_file: str | None = None,
        member: str = "you",
        log_level: str = "warning",
    ) -> None:
        config = config or ServerConfig(port=0)  # port 0: the OS picks a free one when binding
        self.keys: KeyStore | None = None
        self.api_key: str | None = None
        if keys_file is not None:
            self.keys = KeyStore(keys_file, create=True)
            self.api_key = self.keys.add(member, role="admin")  # whoever runs it sees /metrics
        self.config = config
        self.backend = backend
        self.app = create_app(backend, config, self.keys)
        self.server = build_server(self.app, config, log_level)
        self._thread: threading.Thread | None = None

    @property
    def root_url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    @property
    def base_url(self) -> str:
        """What the openai client calls `base_url`."""
        return f"{self.root_url}/v1"

    def start(self) -> EmbeddedServer:
        self._thread = threading.Thread(target=self.server.run, name="lazymoe-server", daemon=True)
        self._thread.start()
        deadline_s = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline_s:
            if not self._thread.is_alive():
                raise RuntimeError(
                    f"the server did not start on {self.root_url}: is the port taken? "
                    "Look at the log above for uvicorn's reason."
                )
            if not self.server.started:
                time.sleep(0.02)
                continue
            if self.config.port == 0:  # learn which port the OS gave us
                port = self.server.servers[0].sockets[0].getsockname()[1]
                self.config = dataclasses.replace(self.config, port=port)
            try:
                if httpx.get(f"{self.root_url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"the server did not answer on {self.root_url} within {START_TIMEOUT_S:.0f} s"
        )

    def stop(self, timeout_s: float | None = None) -> None:
        """Refuse what is queued, finish what is running, close the port. Safe to call twice."""
        if self._thread is None:
            return
        self.server.should_exit = True
        self._thread.join(
            timeout=timeout_s if timeout_s is not None else self.config.shutdown_grace_s + 10
        )
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
