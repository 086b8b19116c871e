"""Loopback servers for the backend tests: uvicorn in a thread, a stand-in upstream, PostgreSQL.

Not fixtures (those live in conftest.py); plain helpers the tests and fixtures share.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from hark_backend.app import Settings, create_app
from hark_backend.cli import listen_socket
from hark_backend.httpserver import server_config
from hark_backend.policy import Policy
from hark_backend.registry import RateLimit, Registry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

UPSTREAM_KEY = "sk-sim-test"


class ServerThread:
    """A real uvicorn server on 127.0.0.1:<ephemeral> in a background thread."""

    def __init__(self, app: Any, config: uvicorn.Config | None = None) -> None:
        self.sock = listen_socket("127.0.0.1", 0)  # TCP_NODELAY-friendly (see its docstring)
        self.port = self.sock.getsockname()[1]
        if config is None:
            config = uvicorn.Config(
                app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=2
            )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


# -- upstream ----------------------------------------------------------------------------------


@dataclass
class FakeFaults:
    """The subset of ``hark_sim``'s faults the backend tests use."""

    refuse_keys: bool = False


@dataclass
class FakeUpstream:
    """A minimal OpenAI ``client_secrets`` endpoint (no WebSocket)."""

    api_key: str = UPSTREAM_KEY
    faults: FakeFaults = field(default_factory=FakeFaults)
    base_url: str = ""
    ws_url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> Starlette:
        async def client_secrets(request: Request) -> JSONResponse:
            if self.faults.refuse_keys or request.headers.get("authorization") != (
                f"Bearer {self.api_key}"
            ):
                return JSONResponse(
                    {
                        "error": {
                            "message": "Incorrect API key provided: sk-***.",
                            "type": "invalid_request_error",
                            "code": "invalid_api_key",
                            "param": None,
                        }
                    },
                    status_code=401,
                )
            body = await request.json()
            self.requests.append(body)
            session = dict(body.get("session") or {})
            seconds = int((body.get("expires_after") or {}).get("seconds", 600))
            session.update(
                id="sess_" + secrets.token_hex(8), object="realtime.session", expires_at=0
            )
            return JSONResponse(
                {
                    "value": "ek_" + secrets.token_hex(16),
                    "expires_at": int(time.time()) + seconds,
                    "session": session,
                }
            )

        return Starlette(
            routes=[Route("/v1/realtime/client_secrets", client_secrets, methods=["POST"])]
        )


def _real_sim_available() -> bool:
    try:
        from hark_sim import SimConfig, start_sim  # noqa: F401
    except ImportError:
        return False
    return True


HAVE_SIM = _real_sim_available()


# -- databases ---------------------------------------------------------------------------------


def pg_bindir() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@dataclass
class PgServer:
    """A throwaway PostgreSQL listening only on a unix socket in ``socket_dir``."""

    socket_dir: Path

    def url(self, dbname: str) -> str:
        return f"postgresql:///{dbname}?host={self.socket_dir}&user=postgres"


@contextlib.contextmanager
def pg_database(server: PgServer) -> Iterator[str]:
    """A fresh database on the throwaway server; dropped afterwards."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield server.url(name)
    finally:
        with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# -- the backend ---------------------------------------------------------------------------------


def backend_settings(
    db_url: str,
    upstream: Any,
    *,
    rate_limit: RateLimit | None = None,
    auth_fail_limit: RateLimit | None = None,
    policy: Policy | None = None,
    max_body_bytes: int = 16 * 1024,
    upstream_timeout_s: float = 5.0,
) -> Settings:
    """Settings pointing at ``upstream``, with test-friendly defaults (limits out of the way:
    the tests that want them set them)."""
    return Settings(
        db_url=db_url,
        openai_base_url=upstream.base_url,
        openai_api_key=upstream.api_key,
        policy=policy or Policy(),
        rate_limit=rate_limit or RateLimit(1000, 60.0),
        auth_fail_limit=auth_fail_limit or RateLimit(100_000, 60.0),
        max_body_bytes=max_body_bytes,
        upstream_timeout_s=upstream_timeout_s,
    )


@contextlib.contextmanager
def run_backend(
    settings: Settings, *, registry: Registry | None = None, **server_options: Any
) -> Iterator[ServerThread]:
    """The real app on a real uvicorn on loopback, configured as ``serve`` configures it."""
    app = create_app(settings, registry=registry)
    config = server_config(app, timeout_graceful_shutdown=2, **server_options)
    with ServerThread(app, config) as server:
        yield server


# -- raw HTTP ------------------------------------------------------------------------------------


def exchange(port: int, request: bytes) -> tuple[bytes, OSError | None]:
    """Send ``request`` (from a thread, so a server that stops reading cannot block us) and
    read the whole answer; also return the error the sender met, if any."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sent_error: list[OSError] = []

    def send() -> None:
        try:
            sock.sendall(request)
        except OSError as exc:
            sent_error.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass  # the server closed with our unread bytes still queued: its answer came first
    sender.join(30)
    sock.close()
    return answer, sent_error[0] if sent_error else None


def parse(answer: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return status, headers, json.loads(body)
