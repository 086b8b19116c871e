"""Telling systemd the truth: sd_notify messages (READY, STATUS, WATCHDOG…) and journal logging.

This module only talks to systemd's notify socket and sets up log handlers; it must
not decide *when* the daemon is ready or healthy (that is ``hark.service.loop``'s job), and
it must not import anything from the package but the standard library.

Decision: the datagram goes through systemd-python's ``systemd.daemon.notify``
(libsystemd's ``sd_notify``) when that module imports, and otherwise straight to
``$NOTIFY_SOCKET`` with the ``socket`` module, which is all ``sd_notify`` does for
a path or abstract (``@``) socket. The fallback keeps a wheel-only install without
libsystemd working under ``Type=notify``. Both are silent no-ops outside systemd.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

_STATUS_MAX_CHARS = 200  # systemctl status shows one line; keep it readable.


def _socket_sender(message: str) -> bool:
    """Send one datagram to ``$NOTIFY_SOCKET`` (path or ``@abstract``); False if unset."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    # Non-blocking: a manager that is not reading (its queue full) costs this message,
    # never the event loop, which sends STATUS and WATCHDOG from its own thread.
    kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    with socket.socket(socket.AF_UNIX, kind) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)
            return False
    return True


def _library_sender() -> Callable[[str], bool] | None:
    try:
        daemon = importlib.import_module("systemd.daemon")
    except ImportError:
        return None

    def send(message: str) -> bool:
        return bool(daemon.notify(message))

    return send


class SystemdNotifier:
    """The real notifier (``hark.ports.ServiceNotifier``): one sd_notify per call.

    ``use_library=False`` forces the plain-socket path (tests exercise both).
    """

    def __init__(self, use_library: bool = True) -> None:
        self._send: Callable[[str], bool] = (
            _library_sender() if use_library else None
        ) or _socket_sender

    @property
    def enabled(self) -> bool:
        """True when there is a notify socket to talk to (we run under Type=notify)."""
        return bool(os.environ.get("NOTIFY_SOCKET"))

    def ready(self) -> None:
        """Audio and GPIO are open: systemd may consider the service started."""
        self._send("READY=1")

    def reloading(self) -> None:
        """A SIGHUP reload began; ``ready()`` ends it (refused or not).

        ``MONOTONIC_USEC`` (CLOCK_MONOTONIC, as ``time.monotonic_ns`` reads it on Linux)
        is how systemd >= 253 tells this reload from an older one under
        ``Type=notify-reload``; older systemd ignores the field.
        """
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def status(self, text: str) -> None:
        """One line for ``systemctl status``: the phase and the last error."""
        line = " ".join(text.split())[:_STATUS_MAX_CHARS]
        self._send(f"STATUS={line}")

    def watchdog(self) -> None:
        """The event loop is healthy; sent every ``watchdog_interval_s() / 2`` or so."""
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        """Shutdown began (SIGTERM); systemd waits for the exit."""
        self._send("STOPPING=1")


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout from ``WATCHDOG_USEC``, or None when no watchdog watches us.

    ``WATCHDOG_PID``, when set, must be our pid (the variable may have been
    inherited by a child that is not the service's main process).
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


# --------------------------------------------------------------------------- logging

# syslog priorities, as journald and sd-daemon's "<N>" stderr prefixes use them.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def priority_of(levelno: int) -> int:
    """The syslog priority for a logging level (between levels, the more severe one)."""
    for level, prio in sorted(_PRIORITY.items(), reverse=True):
        if levelno >= level:
            return prio
    return 7


class _PrefixFormatter(logging.Formatter):
    """``<N>`` prefixes: journald reads them from a service's stderr stream as priorities."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{priority_of(record.levelno)}>{super().format(record)}"


HEADER_LOGGERS = (
    "websockets",
    "websockets.client",
    "websockets.server",
    "urllib3",
    "httpx",
    "httpcore",
    "hpack",
)
"""Third-party loggers that print request headers (``Authorization: Bearer ek_…``) at
DEBUG. They are pinned at INFO whatever ``[log] level`` says: a key never reaches a log."""

_SECRET = re.compile(r"(?i)(bearer\s+)\S+|\b(?:ek|hark_dt)_[A-Za-z0-9_-]+")


def _redact(text: str) -> str:
    return _SECRET.sub(lambda m: (m.group(1) or "") + "[secret]", text)


class SecretFilter(logging.Filter):
    """The second line of defence: a bearer credential or ``ek_``/``hark_dt_`` token in a
    message is replaced by ``[secret]`` before the handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # bad arguments: the handler reports that itself
            return True
        redacted = _redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def quiet_header_loggers() -> None:
    """Pin ``HEADER_LOGGERS`` at INFO (their DEBUG lines carry headers, keys included)."""
    for name in HEADER_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def under_systemd(environ: Mapping[str, str] | None = None) -> bool:
    """True when started by systemd (stderr is the journal, or an invocation id is set)."""
    env = os.environ if environ is None else environ
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


def setup_logging(level: str = "info", identifier: str = "hark") -> logging.Handler:
    """Route the root logger to the journal under systemd, else to stderr; return the handler.

    Under systemd the ``JournalHandler`` sends structured entries with priorities
    (it maps levels itself); if systemd-python is missing, stderr lines carry
    ``<N>`` priority prefixes instead. Calling again replaces the handler (SIGHUP
    may change the level). Secrets never reach it: see ``quiet_header_loggers`` and
    ``SecretFilter``.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_hark", False)]:
        root.removeHandler(old)
    handler: logging.Handler
    if under_systemd():
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER=identifier)
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(_PrefixFormatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    handler._hark = True  # type: ignore[attr-defined]
    handler.addFilter(SecretFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    quiet_header_loggers()
    return handler
