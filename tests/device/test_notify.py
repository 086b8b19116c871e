"""hark.service.notify: sd_notify datagrams on a real socket, watchdog interval, log routing."""

from __future__ import annotations

import io
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hark.service.notify import (
    HEADER_LOGGERS,
    SystemdNotifier,
    priority_of,
    setup_logging,
    under_systemd,
    watchdog_interval_s,
)


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound in the test's temp dir, named by NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


@pytest.mark.parametrize("use_library", [True, False])
def test_messages_reach_the_socket(notify_socket: socket.socket, use_library: bool) -> None:
    """READY, STATUS, WATCHDOG, RELOADING and STOPPING arrive as sd_notify datagrams.

    RELOADING=1 carries MONOTONIC_USEC (CLOCK_MONOTONIC in µs), which systemd >= 253
    needs to tell this reload from an earlier one.
    """
    notifier = SystemdNotifier(use_library=use_library)
    assert notifier.enabled
    notifier.ready()
    notifier.status("listening;\n last error: none")
    notifier.watchdog()
    before_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.stopping()
    got = [notify_socket.recv(4096).decode() for _ in range(5)]
    reloading = got.pop(3).split("\n")
    assert got == ["READY=1", "STATUS=listening; last error: none", "WATCHDOG=1", "STOPPING=1"]
    assert reloading[0] == "RELOADING=1"
    field, _, usec = reloading[1].partition("=")
    assert field == "MONOTONIC_USEC"
    assert before_us <= int(usec) <= after_us


def test_abstract_socket_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """An '@name' NOTIFY_SOCKET is the abstract namespace, as sd_notify reads it."""
    name = f"hark-test-{os.getpid()}-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        SystemdNotifier(use_library=False).ready()
        assert sock.recv(64) == b"READY=1"


def test_long_status_is_one_short_line(notify_socket: socket.socket) -> None:
    """STATUS= is one line of bounded length, whatever the error text."""
    SystemdNotifier().status("x" * 1000 + "\n" + "y")
    message = notify_socket.recv(4096).decode()
    assert message.startswith("STATUS=")
    assert "\n" not in message
    assert len(message) <= 220


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside systemd every call is silent and harmless."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    for use_library in (True, False):
        notifier = SystemdNotifier(use_library=use_library)
        assert not notifier.enabled
        notifier.ready()
        notifier.watchdog()
        notifier.stopping()


def test_vanished_socket_does_not_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NOTIFY_SOCKET path nobody listens on is logged at debug, not raised."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    SystemdNotifier(use_library=False).watchdog()


def test_watchdog_interval() -> None:
    """WATCHDOG_USEC gives the interval; WATCHDOG_PID must be ours; absent means None."""
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "20000000"}) == 20.0
    own = {"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval_s(own) == 5.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None


def test_priorities() -> None:
    """Logging levels map onto syslog priorities as journald expects."""
    assert priority_of(logging.DEBUG) == 7
    assert priority_of(logging.INFO) == 6
    assert priority_of(logging.WARNING) == 4
    assert priority_of(logging.ERROR) == 3
    assert priority_of(logging.CRITICAL) == 2
    assert priority_of(logging.INFO + 5) == 6


def test_logging_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under systemd the journal handler is used; elsewhere stderr; calling again replaces."""
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        monkeypatch.delenv("INVOCATION_ID", raising=False)
        assert not under_systemd()
        handler = setup_logging("debug")
        assert type(handler) is logging.StreamHandler
        assert root.level == logging.DEBUG
        monkeypatch.setenv("INVOCATION_ID", "0123")
        handler = setup_logging("warning")
        assert type(handler).__name__ == "JournalHandler"
        assert sum(1 for h in root.handlers if getattr(h, "_hark", False)) == 1
        logging.getLogger("hark.test").warning("journal without journald is dropped")
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)


# --------------------------------------------------------------------------- secrets


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """Put the root logger and the pinned third-party loggers back as they were."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    pinned = {name: logging.getLogger(name).level for name in HEADER_LOGGERS}
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for name, level in pinned.items():
        logging.getLogger(name).setLevel(level)


def test_debug_logging_never_carries_the_token_or_a_key(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], logging_restored: None
) -> None:
    """At ``[log] level = "debug"``, through the daemon's own log set-up and a real turn
    against hark_sim, no log record and no line the handler writes holds the device token
    or an ``ek_`` key (websockets used to log ``> Authorization: Bearer ek_…``)."""
    from hark.demo import say
    from hark.service.wiring import load_config
    from hark_sim import SimConfig, start_sim

    token = "hark_dt_" + secrets.token_hex(16)  # the sim, as the key backend, takes it
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    with start_sim(SimConfig(api_key=token, brain="parrot", realtime_factor=0)) as sim:
        (tmp_path / "token").write_text(token + "\n")
        (tmp_path / "token").chmod(0o600)
        (tmp_path / "hark.toml").write_text(
            f'[backend]\nurl = "{sim.base_url}/realtime/client_secrets"\ntoken_file = "token"\n'
            f'[realtime]\nurl = "{sim.ws_url}"\n[history]\nenabled = false\n'
            '[log]\nlevel = "debug"\n'
        )
        config, device_token = load_config(str(tmp_path / "hark.toml"), with_token=True)
        assert device_token == token
        setup_logging(config.log.level)
        logging.getLogger().addHandler(Keep(logging.DEBUG))
        assert say(config, device_token, "hi", fake_audio=True) is None
        minted = list(sim.state.keys)
    written = capfd.readouterr().err
    logged = "\n".join(f"{r.name}: {r.getMessage()}" for r in records)
    assert minted and any(r.levelno == logging.DEBUG for r in records)
    assert "hark.net.link" in logged  # the link did log, at debug level
    for text in (logged, written):
        assert token not in text
        assert not any(key in text for key in minted)
        assert not re.search(r"\bek_[A-Za-z0-9]", text)
        assert "Bearer " not in text


def test_secret_filter_redacts_what_slips_through(logging_restored: None) -> None:
    """A bearer credential or an ek_/hark_dt_ token in any message is redacted on output."""
    stream = io.StringIO()
    handler = setup_logging("debug")
    handler.setStream(stream)  # type: ignore[attr-defined]
    log = logging.getLogger("hark.test_secrets")
    log.warning("sending Authorization: Bearer %s", "sk-abc.def")
    log.warning("key %s and token %s", "ek_68af2b_x-Y", "hark_dt_q9Z")
    log.warning("seek_time stays, and so does a week_2 plan")
    out = stream.getvalue()
    assert "sk-abc" not in out and "ek_68af" not in out and "hark_dt_q9Z" not in out
    assert out.count("[secret]") == 3
    assert "seek_time stays, and so does a week_2 plan" in out
    for name in HEADER_LOGGERS:
        assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name


def test_a_manager_that_does_not_read_never_blocks_the_sender(notify_socket: socket.socket) -> None:
    """A full notify queue drops the message (debug log) instead of blocking the loop."""
    import threading

    notifier = SystemdNotifier(use_library=False)
    done = threading.Event()

    def flood() -> None:
        for _ in range(5000):  # far beyond any datagram queue: nobody reads
            notifier.watchdog()
        done.set()

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    thread.join(60)  # a hang guard: a blocking send would never return
    assert done.is_set()
    assert notify_socket.recv(64) == b"WATCHDOG=1"  # the queue did fill
