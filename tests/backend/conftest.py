"""Fixtures for the backend tests: an upstream OpenAI (hark_sim, else a stand-in), databases.

PostgreSQL runs as a throwaway server in a temp dir, on a private unix socket, started once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backend.servers import (
    HAVE_SIM,
    UPSTREAM_KEY,
    FakeUpstream,
    PgServer,
    ServerThread,
    pg_bindir,
    pg_database,
)


@pytest.fixture
def upstream() -> Iterator[Any]:
    """An OpenAI stand-in: ``hark_sim`` if importable, else ``FakeUpstream``."""
    if HAVE_SIM:
        from hark_sim import SimConfig, start_sim

        with start_sim(SimConfig(api_key=UPSTREAM_KEY, brain="parrot", realtime_factor=0.0)) as sim:
            yield sim
        return
    fake = FakeUpstream()
    with ServerThread(fake.app()) as server:
        fake.base_url = f"{server.url}/v1"
        yield fake


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """Start PostgreSQL once per session (as the postgres user when we are root)."""
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found; install Debian's postgresql")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed")
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="hark-pg-"))
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to run the server as")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        prefix = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]
    data = root / "data"
    env = {**os.environ, "LC_ALL": "C"}
    subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
         "--no-sync", "-E", "UTF8"],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    options = f"-k {root} -c listen_addresses='' -p 5432 -F -c max_connections=200"
    subprocess.run(
        [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-o", options,
         "-l", str(root / "server.log"), "-w", "-t", "60", "start"],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    try:
        yield PgServer(root)
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True, env=env, check=False,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty registry database: SQLite file, or a PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'devices.db'}"
        return
    server = request.getfixturevalue("pg_server")
    with pg_database(server) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite registry file."""
    return f"sqlite:///{tmp_path / 'devices.db'}"
