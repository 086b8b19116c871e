"""The device registry on SQLite and PostgreSQL: tokens, revocation, rotation, rate windows."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hark_backend.registry import (
    TOKEN_PREFIX,
    DeviceExistsError,
    DeviceNotFoundError,
    RateLimit,
    Registry,
    RegistryError,
    RegistryUnavailableError,
    hash_token,
)

LIMIT = RateLimit(3, 60.0)


@pytest.fixture
def registry(db_url: str) -> Iterator[Registry]:
    reg = Registry(db_url)
    reg.init_schema()
    yield reg
    reg.close()


def test_add_returns_a_long_prefixed_token(registry: Registry) -> None:
    """A token is the prefix plus at least 256 bits, URL-safe, different every time."""
    first = registry.add("kitchen", group=None, now_s=1000.0)
    second = registry.add("hall", group="house", now_s=1000.0)
    assert first.startswith(TOKEN_PREFIX) and second.startswith(TOKEN_PREFIX)
    assert len(first) - len(TOKEN_PREFIX) >= 43  # 32 bytes of token_urlsafe
    assert first != second


def test_only_hashes_are_stored(registry: Registry) -> None:
    """The table holds the SHA-256 of the token, never the token."""
    token = registry.add("kitchen", group=None, now_s=1000.0)
    rows = registry._execute("SELECT * FROM hark_devices").fetchall()
    flat = " ".join(str(cell) for row in rows for cell in row)
    assert token not in flat
    assert token[len(TOKEN_PREFIX) :] not in flat
    assert hash_token(token) in flat


def test_list_shows_name_group_created_last_seen_revoked(registry: Registry) -> None:
    """``devices()`` reports what ``device list`` prints, last seen after a request."""
    token = registry.add("kitchen", group="house", now_s=1000.0)
    registry.add("hall", group=None, now_s=1001.0)
    assert registry.admit(token, now_s=1005.0, limit=LIMIT).outcome == "ok"
    registry.revoke("hall", now_s=1006.0)
    by_name = {d.name: d for d in registry.devices()}
    assert [d.name for d in registry.devices()] == ["hall", "kitchen"]
    assert by_name["kitchen"].group == "house"
    assert by_name["kitchen"].created_at_s == 1000.0
    assert by_name["kitchen"].last_seen_at_s == 1005.0
    assert by_name["kitchen"].revoked_at_s is None
    assert by_name["hall"].last_seen_at_s is None
    assert by_name["hall"].revoked_at_s == 1006.0


def test_duplicate_and_bad_names_are_refused(registry: Registry) -> None:
    """Names are unique and restricted to a safe alphabet."""
    registry.add("kitchen", group=None, now_s=1.0)
    with pytest.raises(DeviceExistsError):
        registry.add("kitchen", group=None, now_s=2.0)
    for bad in ("", "-x", "a b", "x" * 65, "ä", "kitchen\n", "kitchen\r", "\nkitchen"):
        with pytest.raises(RegistryError):
            registry.add(bad, group=None, now_s=1.0)


def test_a_trailing_newline_is_not_a_second_name(registry: Registry) -> None:
    """``$`` matches before a final newline: 'kitchen\\n' must not become a second kitchen,
    nor 'kids\\n' a group that silently gets none of the kids' policy."""
    registry.add("kitchen", group="kids", now_s=1.0)
    with pytest.raises(RegistryError, match=r"invalid name 'kitchen\\n'"):
        registry.add("kitchen\n", group=None, now_s=2.0)
    with pytest.raises(RegistryError, match=r"invalid name 'kids\\n'"):
        registry.add("hall", group="kids\n", now_s=2.0)
    assert [(d.name, d.group) for d in registry.devices()] == [("kitchen", "kids")]


def test_admit_identifies_the_device(registry: Registry) -> None:
    """A valid token admits its device and names its group; others are unknown."""
    token = registry.add("kitchen", group="house", now_s=1.0)
    admission = registry.admit(token, now_s=2.0, limit=LIMIT)
    assert (admission.outcome, admission.device, admission.group) == ("ok", "kitchen", "house")
    assert registry.admit(token + "x", now_s=2.0, limit=LIMIT).outcome == "unknown_token"
    assert registry.admit(TOKEN_PREFIX, now_s=2.0, limit=LIMIT).outcome == "unknown_token"


def test_revocation_takes_effect_on_the_next_request(registry: Registry) -> None:
    """After revoke the same token is refused as revoked; revoking twice is harmless."""
    token = registry.add("kitchen", group=None, now_s=1.0)
    assert registry.admit(token, now_s=2.0, limit=LIMIT).outcome == "ok"
    assert registry.revoke("kitchen", now_s=3.0) is True
    admission = registry.admit(token, now_s=4.0, limit=LIMIT)
    assert (admission.outcome, admission.device) == ("revoked", "kitchen")
    assert registry.revoke("kitchen", now_s=5.0) is False
    with pytest.raises(DeviceNotFoundError):
        registry.revoke("nobody", now_s=5.0)


def test_rotation_invalidates_the_old_token(registry: Registry) -> None:
    """Rotate: the old token is unknown, the new one works, a revoked device is reinstated."""
    old = registry.add("kitchen", group=None, now_s=1.0)
    registry.revoke("kitchen", now_s=2.0)
    new = registry.rotate("kitchen", now_s=3.0)
    assert new != old
    assert registry.admit(old, now_s=4.0, limit=LIMIT).outcome == "unknown_token"
    assert registry.admit(new, now_s=4.0, limit=LIMIT).outcome == "ok"
    with pytest.raises(DeviceNotFoundError):
        registry.rotate("nobody", now_s=5.0)


def test_remove_deletes_the_device(registry: Registry) -> None:
    """A removed device's token is unknown and its name is free again."""
    token = registry.add("kitchen", group=None, now_s=1.0)
    registry.remove("kitchen")
    assert registry.admit(token, now_s=2.0, limit=LIMIT).outcome == "unknown_token"
    registry.add("kitchen", group=None, now_s=3.0)
    with pytest.raises(DeviceNotFoundError):
        registry.remove("nobody")


def test_rate_window_limits_and_resets(registry: Registry) -> None:
    """N requests per window pass, the next is limited with the time left, a new window resets."""
    token = registry.add("kitchen", group=None, now_s=0.0)
    outcomes = [registry.admit(token, now_s=100.0 + i, limit=LIMIT).outcome for i in range(3)]
    assert outcomes == ["ok", "ok", "ok"]
    limited = registry.admit(token, now_s=110.0, limit=LIMIT)
    assert limited.outcome == "rate_limited"
    assert limited.retry_after_s == pytest.approx(50.0)
    assert registry.admit(token, now_s=160.0, limit=LIMIT).outcome == "ok"
    (device,) = registry.devices()
    assert device.request_count == 5
    assert device.window_start_s == 160.0 and device.window_count == 1


def test_rate_windows_are_per_device(registry: Registry) -> None:
    """One device's burst does not limit another."""
    a = registry.add("a", group=None, now_s=0.0)
    b = registry.add("b", group=None, now_s=0.0)
    for _ in range(4):
        registry.admit(a, now_s=1.0, limit=LIMIT)
    assert registry.admit(a, now_s=1.0, limit=LIMIT).outcome == "rate_limited"
    assert registry.admit(b, now_s=1.0, limit=LIMIT).outcome == "ok"


def test_two_registries_share_one_database(db_url: str) -> None:
    """Two replicas see each other's writes at once: revocation and the rate window."""
    one, two = Registry(db_url), Registry(db_url)
    try:
        one.init_schema()
        two.init_schema()
        token = one.add("kitchen", group=None, now_s=0.0)
        limit = RateLimit(2, 60.0)
        assert one.admit(token, now_s=1.0, limit=limit).outcome == "ok"
        assert two.admit(token, now_s=1.0, limit=limit).outcome == "ok"
        assert one.admit(token, now_s=1.0, limit=limit).outcome == "rate_limited"
        two.revoke("kitchen", now_s=2.0)
        assert one.admit(token, now_s=70.0, limit=limit).outcome == "revoked"
    finally:
        one.close()
        two.close()


def test_sqlite_uses_wal(sqlite_url: str) -> None:
    """SQLite runs in WAL mode so readers never block the writer."""
    reg = Registry(sqlite_url)
    try:
        reg.init_schema()
        assert reg._execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        reg.close()


def test_unreachable_database_is_unavailable() -> None:
    """A database that cannot be opened raises RegistryUnavailableError, not a driver error."""
    reg = Registry("sqlite:////proc/definitely/not/here.db")
    try:
        with pytest.raises(RegistryUnavailableError):
            reg.init_schema()
    finally:
        reg.close()


def test_sqlite_is_new_enough() -> None:
    """The admit statement needs UPDATE ... RETURNING (SQLite >= 3.35)."""
    assert sqlite3.sqlite_version_info >= (3, 35)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_sqlite_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """Run by hand (umask 022), the registry makes its folder 0700 and every file 0600:
    the database and SQLite's WAL side files (-wal, -shm) alike."""
    folder = tmp_path / "state"
    db = folder / "devices.db"
    old_umask = os.umask(0o022)
    try:
        reg = Registry(f"sqlite:///{db}")
        try:
            reg.init_schema()
            reg.add("kitchen", group=None, now_s=1.0)
            side_files = [Path(f"{db}-wal"), Path(f"{db}-shm")]
            assert all(p.exists() for p in side_files)  # the connection is still open
            assert _mode(folder) == 0o700
            for path in (db, *side_files):
                assert _mode(path) == 0o600, (path, oct(_mode(path)))
        finally:
            reg.close()
    finally:
        os.umask(old_umask)


def test_an_existing_folder_keeps_its_mode(tmp_path: Path) -> None:
    """Only a folder the registry creates is made 0700; the operator's own (or the current
    directory) is left alone. The database file is 0600 all the same."""
    os.chmod(tmp_path, 0o755)  # noqa: S103  (the operator's own folder, as found)
    old_umask = os.umask(0o022)
    try:
        reg = Registry(f"sqlite:///{tmp_path / 'devices.db'}")
        try:
            reg.init_schema()
        finally:
            reg.close()
    finally:
        os.umask(old_umask)
    assert _mode(tmp_path) == 0o755
    assert _mode(tmp_path / "devices.db") == 0o600


def test_an_old_world_readable_database_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A database made 0644 by an older version is named in a warning, with the fix."""
    db = tmp_path / "devices.db"
    sqlite3.connect(db).close()
    os.chmod(db, 0o644)  # as an older version left it
    reg = Registry(f"sqlite:///{db}")
    try:
        with caplog.at_level(logging.WARNING, logger="hark_backend.registry"):
            reg.init_schema()
    finally:
        reg.close()
    assert f"{db} is readable by other users (mode 0644); chmod 600" in caplog.text
