"""The device registry: device tokens (only as hashes), revocation and per-device rate windows.

It must not keep a plaintext token anywhere but in the value ``add``/``rotate`` return, and it
must not keep per-process state that two backend replicas would disagree on: the rate-limit
window is a pair of columns on the device's row, updated in the same statement that
authenticates the request, so any number of replicas sharing one database agree.

Why SHA-256 and not a password hash: a device token carries 256 random bits, so guessing a
preimage is hopeless however fast the hash is; slow salted hashes (bcrypt, argon2) exist to
protect low-entropy passwords, and they would make the lookup by hash impossible.  The
lookup is by hash (an index), and the stored hash is then compared with
``hmac.compare_digest`` so no byte-by-byte timing of the comparison leaks either.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import select
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

TOKEN_PREFIX = "hark_dt_"  # noqa: S105  (a public prefix, not a secret)
TOKEN_BYTES = 32  # 256 bits of entropy from secrets.token_urlsafe
# Used with fullmatch: ``$`` would also match before a trailing newline ("kitchen\n").
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hark_devices (
    name TEXT PRIMARY KEY,
    group_name TEXT,
    token_hash TEXT NOT NULL UNIQUE,
    created_at_s DOUBLE PRECISION NOT NULL,
    rotated_at_s DOUBLE PRECISION,
    last_seen_at_s DOUBLE PRECISION,
    revoked_at_s DOUBLE PRECISION,
    request_count BIGINT NOT NULL DEFAULT 0,
    window_start_s DOUBLE PRECISION NOT NULL DEFAULT 0,
    window_count BIGINT NOT NULL DEFAULT 0
)
"""

# One statement authenticates, stamps last_seen and advances the fixed rate window, so it
# is atomic on both engines without an explicit transaction (SET expressions all read the
# row's old values, in SQLite and in PostgreSQL alike).
_ADMIT = """
UPDATE hark_devices SET
    last_seen_at_s = ?,
    request_count = request_count + 1,
    window_count = CASE WHEN window_start_s + ? <= ? THEN 1 ELSE window_count + 1 END,
    window_start_s = CASE WHEN window_start_s + ? <= ? THEN ? ELSE window_start_s END
WHERE token_hash = ? AND revoked_at_s IS NULL
RETURNING name, group_name, token_hash, window_start_s, window_count
"""


class RegistryError(Exception):
    """An operator-facing registry failure (bad name, unknown or duplicate device)."""


class DeviceNotFoundError(RegistryError):
    """No device has that name."""


class DeviceExistsError(RegistryError):
    """A device with that name is already registered."""


class RegistryUnavailableError(Exception):
    """The database could not answer (locked too long, server down); retryable."""


@dataclass(frozen=True, slots=True)
class Device:
    """One registered device as ``device list`` shows it (never its token)."""

    name: str
    group: str | None
    created_at_s: float
    rotated_at_s: float | None
    last_seen_at_s: float | None
    revoked_at_s: float | None
    request_count: int
    window_start_s: float
    window_count: int


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``count`` key requests per device per fixed window of ``window_s`` seconds."""

    count: int
    window_s: float

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """Parse ``N/S`` (N requests per S seconds), e.g. ``20/60``."""
        try:
            count_text, window_text = text.split("/", 1)
            limit = cls(int(count_text), float(window_text))
        except ValueError:
            raise ValueError(f"rate limit must look like N/S (e.g. 20/60), not {text!r}") from None
        if limit.count < 1 or not (math.isfinite(limit.window_s) and limit.window_s > 0):
            raise ValueError(f"rate limit needs N >= 1 and a finite S > 0, not {text!r}")
        return limit


Outcome = Literal["ok", "rate_limited", "revoked", "unknown_token"]


@dataclass(frozen=True, slots=True)
class Admission:
    """The registry's answer to a key request: who it is and whether it may proceed."""

    outcome: Outcome
    device: str | None = None
    group: str | None = None
    retry_after_s: float = 0.0


def new_token() -> str:
    """A fresh device token: prefix plus 256 random bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """The stored form of a token (hex SHA-256; see the module docstring for why)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    """Device and group names: 1-64 of letters, digits, ``.``, ``_``, ``-``."""
    if not NAME_RE.fullmatch(name):
        raise RegistryError(
            f"invalid name {name!r}: use 1-64 letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit)"
        )
    return name


def _sqlite_path(url: str) -> str:
    """``sqlite:///rel.db`` is relative, ``sqlite:////abs.db`` absolute; a bare path works too."""
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        if not rest.startswith("/"):
            raise RegistryError(f"bad SQLite URL {url!r}: use sqlite:///relative or sqlite:////abs")
        path = rest[1:]
        if not path:
            raise RegistryError("SQLite URL names no file")
        return path
    return url


def _private_sqlite_file(path: Path) -> None:
    """Create the database's folder 0700 and its file 0600 before SQLite opens it.

    Run by hand (``device add`` under umask 022) SQLite would make them 0755/0644; the
    unit's ``UMask=0077`` only covers the service.  SQLite gives its ``-wal`` and ``-shm``
    files the database file's mode, so they follow.  A folder that exists (the state
    directory, the current directory) is the operator's and keeps its mode; an existing
    database readable by others is reported, not silently changed.
    """
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning(
                "%s is readable by other users (mode %04o); chmod 600 it and its -wal and"
                " -shm files",
                path,
                mode,
            )
        return
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))


def _server_hung_up(conn: Any) -> bool:
    """True if PostgreSQL has ended this idle connection (a restart, ``pg_terminate_backend``).

    Without this check a worker thread learns it only by failing its next request with a
    503, after the database is back: one such 503 per worker thread per replica, at any time
    later, since an idle thread may wait long for its next request (the soak bench found it).
    An idle autocommit connection has nothing to read unless the server wrote on its own,
    which it does when it ends the session (a FATAL message, then end of file); a zero
    timeout poll of the socket sees that without a round trip.  A rare asynchronous message
    (a parameter change) costs a needless reconnect, nothing worse.
    """
    if conn.closed or conn.broken:
        return True
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except Exception:  # psycopg.OperationalError from fileno() on a closed socket, OSError
        return True


def is_postgres_url(url: str) -> bool:
    """A ``postgresql://`` (or ``postgres://``) URL selects PostgreSQL; anything else SQLite."""
    return urlsplit(url).scheme in ("postgresql", "postgres")


class Registry:
    """The device table behind a synchronous API; run it off the event loop via ``call``.

    SQLite: one dedicated worker thread with one connection (writes are serialised by
    SQLite anyway; one writer per process avoids busy-waiting), WAL mode and a busy
    timeout so the CLI or a second process can write at the same time.  PostgreSQL: a few
    worker threads, one autocommit connection each.
    """

    def __init__(
        self,
        url: str,
        *,
        busy_timeout_ms: int = 5000,
        pg_threads: int = 4,
        pg_connect_timeout_s: int = 5,
    ) -> None:
        self.url = url
        self._pg_connect_timeout_s = pg_connect_timeout_s
        self.postgres = is_postgres_url(url)
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[Any] = []
        if self.postgres:
            import psycopg  # only fleets need it

            self._db_errors: tuple[type[BaseException], ...] = (psycopg.Error,)
            self._integrity_errors: tuple[type[BaseException], ...] = (psycopg.IntegrityError,)
        else:
            self._path = _sqlite_path(url)
            self._db_errors = (sqlite3.Error,)
            self._integrity_errors = (sqlite3.IntegrityError,)
        self._unavailable_errors = (*self._db_errors, OSError)  # OSError: e.g. no directory
        self.executor = ThreadPoolExecutor(
            max_workers=pg_threads if self.postgres else 1, thread_name_prefix="hark-registry"
        )

    # -- connections -------------------------------------------------------------------

    def _connect(self) -> Any:
        if self.postgres:
            import psycopg

            # libpq waits forever by default for a server that accepts and never answers
            # (a black-holed or hung host): every worker thread would block and requests
            # queue up behind them instead of getting a 503.  A timeout the operator set in
            # the URL or in PGCONNECT_TIMEOUT wins.
            timeout: dict[str, Any] = {}
            if "connect_timeout" not in self.url and "PGCONNECT_TIMEOUT" not in os.environ:
                timeout["connect_timeout"] = self._pg_connect_timeout_s
            conn: Any = psycopg.connect(self.url, autocommit=True, **timeout)
        else:
            if self._path != ":memory:":
                _private_sqlite_file(Path(self._path))
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout_ms / 1000,
                isolation_level=None,  # autocommit: each statement is its own transaction
                check_same_thread=False,  # close() may run on another thread
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # durable across app crashes in WAL
        with self._lock:
            self._connections.append(conn)
        return conn

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self.postgres and _server_hung_up(conn):
            self._drop_conn()
            conn = None
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _drop_conn(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._lock:
                if conn in self._connections:
                    self._connections.remove(conn)
            try:
                conn.close()
            except Exception:  # already broken; nothing to save
                log.debug("closing a broken registry connection failed", exc_info=True)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn driver errors into ``RegistryUnavailableError``; reconnect next time."""
        try:
            yield
        except self._integrity_errors:
            raise
        except self._unavailable_errors as exc:
            if self.postgres:
                self._drop_conn()
            raise RegistryUnavailableError(f"{type(exc).__name__}: {exc}") from exc

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn().execute(self._sql(sql), tuple(params))

    def close(self) -> None:
        """Close every connection and stop the worker threads."""
        self.executor.shutdown(wait=True)
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except Exception:
                log.debug("closing a registry connection failed", exc_info=True)

    # -- operations ----------------------------------------------------------------------

    def init_schema(self) -> None:
        """Create the table if missing (idempotent; safe for several replicas at start)."""
        with self._guard():
            try:
                self._execute(_SCHEMA)
            except self._integrity_errors:
                # Two PostgreSQL replicas racing on CREATE TABLE IF NOT EXISTS: one wins.
                self._execute(_SCHEMA)

    def ping(self) -> None:
        """Raise ``RegistryUnavailableError`` unless the database answers a trivial query."""
        with self._guard():
            self._execute("SELECT 1").fetchone()

    def add(self, name: str, *, group: str | None, now_s: float) -> str:
        """Register a device; return its token (the only time it exists in plaintext)."""
        check_name(name)
        if group is not None:
            check_name(group)
        token = new_token()
        with self._guard():
            try:
                self._execute(
                    "INSERT INTO hark_devices (name, group_name, token_hash, created_at_s)"
                    " VALUES (?, ?, ?, ?)",
                    (name, group, hash_token(token), now_s),
                )
            except self._integrity_errors:
                raise DeviceExistsError(f"device {name!r} already exists") from None
        return token

    def devices(self) -> list[Device]:
        """Every device, by name."""
        with self._guard():
            rows = self._execute(
                "SELECT name, group_name, created_at_s, rotated_at_s, last_seen_at_s,"
                " revoked_at_s, request_count, window_start_s, window_count"
                " FROM hark_devices ORDER BY name"
            ).fetchall()
        return [
            Device(
                name=r[0],
                group=r[1],
                created_at_s=float(r[2]),
                rotated_at_s=None if r[3] is None else float(r[3]),
                last_seen_at_s=None if r[4] is None else float(r[4]),
                revoked_at_s=None if r[5] is None else float(r[5]),
                request_count=int(r[6]),
                window_start_s=float(r[7]),
                window_count=int(r[8]),
            )
            for r in rows
        ]

    def revoke(self, name: str, *, now_s: float) -> bool:
        """Revoke a device; its next request is refused. False if it was already revoked."""
        with self._guard():
            cur = self._execute(
                "UPDATE hark_devices SET revoked_at_s = ? WHERE name = ? AND revoked_at_s IS NULL",
                (now_s, name),
            )
            if cur.rowcount:
                return True
            if self._execute("SELECT 1 FROM hark_devices WHERE name = ?", (name,)).fetchone():
                return False
        raise DeviceNotFoundError(f"no device named {name!r}")

    def rotate(self, name: str, *, now_s: float) -> str:
        """Give a device a new token (the old one stops working) and reinstate it if revoked."""
        token = new_token()
        with self._guard():
            cur = self._execute(
                "UPDATE hark_devices SET token_hash = ?, rotated_at_s = ?, revoked_at_s = NULL,"
                " window_start_s = 0, window_count = 0 WHERE name = ?",
                (hash_token(token), now_s, name),
            )
            if not cur.rowcount:
                raise DeviceNotFoundError(f"no device named {name!r}")
        return token

    def remove(self, name: str) -> None:
        """Delete a device and its history."""
        with self._guard():
            cur = self._execute("DELETE FROM hark_devices WHERE name = ?", (name,))
            if not cur.rowcount:
                raise DeviceNotFoundError(f"no device named {name!r}")

    def admit(self, token: str, *, now_s: float, limit: RateLimit) -> Admission:
        """Authenticate a key request and count it against the device's rate window."""
        digest = hash_token(token)
        window_s = limit.window_s
        with self._guard():
            row = self._execute(
                _ADMIT, (now_s, window_s, now_s, window_s, now_s, now_s, digest)
            ).fetchone()
            revoked = None
            if row is None:
                revoked = self._execute(
                    "SELECT name, group_name, token_hash FROM hark_devices WHERE token_hash = ?",
                    (digest,),
                ).fetchone()
        if row is None:
            if revoked is not None and hmac.compare_digest(str(revoked[2]), digest):
                return Admission("revoked", device=revoked[0], group=revoked[1])
            return Admission("unknown_token")
        name, group, stored_hash, window_start_s, window_count = row
        if not hmac.compare_digest(str(stored_hash), digest):  # defence in depth
            return Admission("unknown_token")
        if int(window_count) > limit.count:
            retry_after_s = max(float(window_start_s) + window_s - now_s, 0.0)
            return Admission("rate_limited", device=name, group=group, retry_after_s=retry_after_s)
        return Admission("ok", device=name, group=group)

    async def call(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """Run a registry method on the registry's worker thread(s), off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))
