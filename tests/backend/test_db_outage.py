"""PostgreSQL going away under the backend: 503s in the envelope while it is gone, none after.

Found by ``bench/soak_backend.py``: after a database restart each registry worker thread
kept its dead connection and failed its next request with a 503, however long after the
database was back; and each refused request logged an ERROR spanning two lines.  Not
found by it but next to it: a host that accepts and never answers blocked a worker thread
for ever (libpq's default connect timeout).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hark_backend.registry import RateLimit, Registry

from tests.backend.servers import PgServer, backend_settings, pg_database, run_backend

pytestmark = pytest.mark.postgres

MINT = "/v1/realtime/client_secrets"
LIMIT = RateLimit(1000, 60.0)


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    with pg_database(pg_server) as url:
        yield url


def _admin(pg_server: PgServer, sql: str, *params: Any) -> list[Any]:
    import psycopg

    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _end_sessions(pg_server: PgServer, dbname: str) -> None:
    """End every session on ``dbname`` as a server restart would, and wait until they are gone
    (the server has then written its FATAL message to each and closed it)."""
    _admin(
        pg_server,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
        dbname,
    )
    for _ in range(500):
        if not _admin(pg_server, "SELECT 1 FROM pg_stat_activity WHERE datname = %s", dbname):
            return
        time.sleep(0.02)
    raise AssertionError(f"sessions on {dbname} did not end")


def _dbname(url: str) -> str:
    return url.split("///", 1)[1].split("?", 1)[0]


def test_a_connection_the_server_ended_is_replaced(pg_server: PgServer, pg_url: str) -> None:
    """A connection PostgreSQL closed while it sat idle is replaced before use, not failed on."""
    registry = Registry(pg_url)
    try:
        registry.init_schema()
        token = registry.add("kitchen", group=None, now_s=1000.0)
        _end_sessions(pg_server, _dbname(pg_url))
        assert registry.admit(token, now_s=1001.0, limit=LIMIT).outcome == "ok"
        registry.ping()
    finally:
        registry.close()


async def _mints(base_url: str, token: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        headers = {"Authorization": f"Bearer {token}"}
        return list(await asyncio.gather(*(http.post(MINT, headers=headers) for _ in range(n))))


def test_an_outage_is_503_in_the_envelope_and_recovery_is_immediate(
    pg_server: PgServer, pg_url: str, upstream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Sessions ended: every worker thread's next request still mints.  Database refusing
    connections: 503 ``registry_unavailable`` with Retry-After in the envelope (never a 500),
    said in one ERROR line; back: the very next requests mint and the log says so."""
    dbname = _dbname(pg_url)
    registry = Registry(pg_url)
    registry.init_schema()
    token = registry.add("kitchen", group=None, now_s=time.time())
    registry.close()
    settings = backend_settings(pg_url, upstream, rate_limit=LIMIT)
    with run_backend(settings) as server:
        # Every registry worker thread gets a connection, then the server ends them all.
        for _ in range(3):
            assert {r.status_code for r in asyncio.run(_mints(server.url, token, 16))} == {200}
        _end_sessions(pg_server, dbname)
        assert [r.status_code for r in asyncio.run(_mints(server.url, token, 16))] == [200] * 16

        _admin(pg_server, f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS false")
        try:
            _end_sessions(pg_server, dbname)
            with caplog.at_level(logging.INFO, logger="hark_backend.app"):
                refused = asyncio.run(_mints(server.url, token, 12))
                health = httpx.get(f"{server.url}/healthz", timeout=30)
        finally:
            _admin(pg_server, f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true")
        for response in [*refused, health]:
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            assert response.json() == {
                "error": {
                    "message": "The device registry is unavailable; retry later.",
                    "type": "server_error",
                    "code": "registry_unavailable",
                    "param": None,
                }
            }
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        assert "device registry unavailable" in errors[0].getMessage()
        assert all("\n" not in r.getMessage() for r in caplog.records)

        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hark_backend.app"):
            back = asyncio.run(_mints(server.url, token, 16))
        assert [r.status_code for r in back] == [200] * 16
        assert "device registry available again after" in caplog.text
        assert "(13 requests refused with 503)" in caplog.text


def test_a_server_that_never_answers_is_unavailable_not_a_hang() -> None:
    """A PostgreSQL host that accepts connections and never answers (hung, black-holed):
    the registry gives up after its connect timeout with RegistryUnavailableError (a 503),
    instead of blocking its worker thread for ever (libpq's default)."""
    pytest.importorskip("psycopg")
    from hark_backend.registry import RegistryUnavailableError

    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nobody reads
        port = silent.getsockname()[1]
        registry = Registry(f"postgresql://postgres@127.0.0.1:{port}/x", pg_connect_timeout_s=2)
        outcome: list[BaseException | None] = []

        def ping() -> None:
            try:
                registry.ping()
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=ping, daemon=True)
        worker.start()
        worker.join(60)  # a guard against hanging the suite, not a timing assertion
        assert not worker.is_alive(), "the registry is still waiting for a silent server"
        registry.close()
    assert len(outcome) == 1 and isinstance(outcome[0], RegistryUnavailableError), outcome
