"""Running the simulator: uvicorn in a background thread for tests, or in the foreground.

It must not know the protocol; it owns the server's lifetime, port and thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from types import TracebackType

import uvicorn
from uvicorn.config import WS_PROTOCOLS

from hark_sim.app import SimState, create_app
from hark_sim.config import Faults, SimConfig
from hark_sim.outbox import SessionRecord

log = logging.getLogger(__name__)

# uvicorn's sans-I/O websockets (>= 0.35) sends 4-byte pings like OpenAI and can stop them
# for the stall fault; older uvicorn falls back to its default implementation.
WS_IMPL = "websockets-sansio" if "websockets-sansio" in WS_PROTOCOLS else "auto"


def uvicorn_config(cfg: SimConfig, state: SimState, log_level: str = "warning") -> uvicorn.Config:
    """The uvicorn settings the simulator needs (sans-I/O websockets, its ping interval)."""
    return uvicorn.Config(
        create_app(state),
        host=cfg.host,
        port=cfg.port,
        ws=WS_IMPL,
        ws_ping_interval=cfg.ping_interval_s if cfg.ping_interval_s > 0 else None,
        ws_ping_timeout=max(20.0, cfg.ping_interval_s),
        ws_max_size=64 * 1024 * 1024,
        lifespan="off",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=2,
        ssl_certfile=cfg.tls_certfile,
        ssl_keyfile=cfg.tls_keyfile,
    )


class SimHandle:
    """A simulator running in a background thread with its own event loop."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.state = SimState(config)
        self._server = uvicorn.Server(uvicorn_config(config, self.state))
        self._thread = threading.Thread(target=self._serve, name="hark-sim", daemon=True)
        self._error: BaseException | None = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._server.serve()

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc

    def start(self, timeout_s: float = 10.0) -> SimHandle:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"hark_sim failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("hark_sim did not start in time")
            time.sleep(0.01)
        sockets = self._server.servers[0].sockets
        self.port = int(sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=5)

    def drop_connections(self) -> int:
        """Abort every open WebSocket (no close frame) and WebRTC call now; returns how many."""
        if self._loop is None:
            return 0

        async def drop() -> int:
            links = list(self.state.live.values())
            for link in links:
                link.abort()
            return len(links)

        return asyncio.run_coroutine_threadsafe(drop(), self._loop).result(timeout=10)

    def __enter__(self) -> SimHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def http_url(self) -> str:
        scheme = "https" if self.config.tls_certfile else "http"
        return f"{scheme}://{self.config.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.http_url + "/v1"

    @property
    def ws_url(self) -> str:
        scheme = "wss" if self.config.tls_certfile else "ws"
        return f"{scheme}://{self.config.host}:{self.port}/v1/realtime"

    @property
    def api_key(self) -> str:
        return self.config.api_key

    @property
    def faults(self) -> Faults:
        return self.config.faults

    @property
    def sessions(self) -> list[SessionRecord]:
        return self.state.sessions


def start_sim(config: SimConfig | None = None) -> SimHandle:
    """Start a simulator on ``config.host`` (port 0 = ephemeral); use as a context manager."""
    return SimHandle(config or SimConfig()).start()
