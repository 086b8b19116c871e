"""One connect attempt's policy: the ephemeral key, the allowed URLs, failure classes, backoff.

The backend answers like OpenAI's ``POST /v1/realtime/client_secrets`` (top-level
``value`` and ``expires_at``). This module must not import websockets, must not keep
keys (one key per connect attempt) and must never log a key or the device token.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import random
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pydantic

from hark import events as ev

log = logging.getLogger(__name__)

FailureKind = Literal["network", "server", "auth", "config", "unauthorised"]
"""Why an attempt failed; "auth" (close 3000) becomes "refused" once a fresh key fails too."""

MAX_RESPONSE_BYTES = 1 << 20
"""A key response is a few KiB; refuse to buffer anything absurd."""


class LinkConfigError(ValueError):
    """A link setting that can never work (e.g. a plain-text URL to a remote host)."""


def is_loopback_host(host: str | None) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: the only hosts plain text may reach."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, secure: str, plain: str, what: str) -> urllib.parse.SplitResult:
    """Allow ``secure://`` anywhere and ``plain://`` only to loopback (the simulator)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        raise LinkConfigError(f"{what} {url!r} has no host")
    if parts.scheme == secure:
        return parts
    if parts.scheme == plain:
        if is_loopback_host(parts.hostname):
            return parts
        raise LinkConfigError(
            f"{what} {url!r} uses {plain}:// to a non-loopback host; use {secure}://"
        )
    raise LinkConfigError(
        f"{what} {url!r} must start with {secure}:// ({plain}:// only to loopback)"
    )


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The verifying TLS context for the key backend and the Realtime socket, made once.

    Loading the system's CA store costs tens of milliseconds of CPU on a Pi Zero and
    about a megabyte: it happens on the first https/wss connection (callers run it in
    a worker thread, never on the event loop), and a device that only talks to loopback
    never pays it. ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` are honoured, as OpenSSL does.
    """
    return ssl.create_default_context()


def tls_failure(exc: BaseException) -> str | None:
    """A certificate check failure said for an owner, or None if ``exc`` is not one.

    A Pi has no clock battery: until NTP has synced, every certificate can look
    expired or not yet valid, and that is the first thing to check.
    """
    if not isinstance(exc, ssl.SSLCertVerificationError):
        return None
    reason = exc.verify_message or exc.reason or str(exc)
    return f"TLS certificate check failed ({reason}); is the clock right (timedatectl)?"


def session_url(realtime_url: str, model: str) -> str:
    """``<realtime url>?model=<model>``, keeping any query the URL already has."""
    parts = check_url(realtime_url, "wss", "ws", "realtime URL")
    query = urllib.parse.parse_qsl(parts.query)
    query = [(k, v) for k, v in query if k != "model"] + [("model", model)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


class KeyGrant(pydantic.BaseModel):
    """The part of a ``client_secrets`` response the device needs."""

    model_config = pydantic.ConfigDict(extra="ignore", frozen=True)

    value: str = pydantic.Field(min_length=1, repr=False)
    expires_at: float
    """Epoch seconds after which the key can no longer open a session."""


class KeyFetchError(Exception):
    """The backend did not give us a key; ``status`` is the HTTP status, None if unreachable.

    ``tls`` marks a refused certificate: retried like any network failure (the clock
    may yet sync), but ``hark doctor`` gives it its own fix.
    """

    def __init__(self, message: str, status: int | None = None, *, tls: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.tls = tls

    @property
    def kind(self) -> FailureKind:
        """401/403: the device is revoked; other 4xx: our request is wrong; else transient."""
        if self.status is None:
            return "network"
        if self.status in (401, 403):
            return "unauthorised"
        if 400 <= self.status < 500 and self.status not in (408, 429):
            return "config"
        return "server"


def _error_text(body: bytes) -> str:
    """The OpenAI-style ``error.message`` if there is one, else a short prefix of the body."""
    try:
        data = json.loads(body)
        message = data["error"]["message"]
        if isinstance(message, str):
            return message[:200]
    except (ValueError, KeyError, TypeError):
        pass
    return body[:200].decode("utf-8", "replace")


@dataclass(frozen=True)
class KeySource:
    """POSTs to the backend for one fresh key per call."""

    backend_url: str
    device_token: str
    request_body: Mapping[str, Any] | None = None
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        check_url(self.backend_url, "https", "http", "key backend URL")

    def fetch_blocking(self) -> KeyGrant:
        """One POST; raises ``KeyFetchError``. Runs in a worker thread (see ``fetch``)."""
        body = json.dumps(dict(self.request_body or {})).encode()
        request = urllib.request.Request(  # noqa: S310  (scheme checked in __post_init__)
            self.backend_url,
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {self.device_token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        parts = urllib.parse.urlsplit(self.backend_url)
        handlers: list[urllib.request.BaseHandler] = []
        if parts.scheme == "https":
            handlers.append(urllib.request.HTTPSHandler(context=tls_context()))
        # No proxies for loopback (the simulator, tests); honour the environment otherwise.
        if is_loopback_host(parts.hostname):
            handlers.append(urllib.request.ProxyHandler({}))
        opener = urllib.request.build_opener(*handlers)
        try:
            with opener.open(request, timeout=self.timeout_s) as response:
                raw = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            detail = _error_text(exc.read(4096))
            raise KeyFetchError(f"key backend answered {exc.code}: {detail}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            said = tls_failure(reason) if isinstance(reason, BaseException) else None
            message = f"key backend unreachable: {said or reason}"
            raise KeyFetchError(message, tls=said is not None) from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise KeyFetchError("key backend response too large", 502)
        try:
            return KeyGrant.model_validate_json(raw)
        except pydantic.ValidationError as exc:
            fields = ", ".join(".".join(map(str, e["loc"])) or "body" for e in exc.errors())
            raise KeyFetchError(f"key backend response is not a key (bad: {fields})", 502) from None

    async def fetch(self) -> KeyGrant:
        """A fresh key, fetched off the event loop (urllib blocks)."""
        return await asyncio.to_thread(self.fetch_blocking)


# --------------------------------------------------------------------------- attempt policy


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one connect attempt (or an open session) failed."""

    kind: FailureKind
    message: str


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential backoff: ``initial_s * factor**attempt`` capped at ``max_s``.

    ``jitter`` is a ± fraction; ``slow_s`` is the floor for failures retrying cannot
    fix soon (revoked device, refused key, bad request shape) so they never hammer.
    """

    initial_s: float = 0.5
    max_s: float = 30.0
    jitter: float = 0.25
    factor: float = 2.0
    slow_s: float = 60.0

    def delay_s(self, attempt: int, rand: float) -> float:
        """The wait before retry number ``attempt`` (0-based); ``rand`` is uniform in [0, 1)."""
        base = min(self.max_s, self.initial_s * self.factor ** min(max(attempt, 0), 64))
        return max(0.0, base * (1.0 + self.jitter * (2.0 * rand - 1.0)))


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to post (None: nothing, retry quietly) and how long to wait before the next try."""

    report: ev.LinkFailed | None
    delay_s: float


class RetryPolicy:
    """Turns a ``Failure`` into what to tell the core and how long to wait."""

    def __init__(self, backoff: Backoff, rand: Callable[[], float] = random.random) -> None:
        self.backoff = backoff
        self._rand = rand
        self.attempt = 0
        self._auth_retried = False

    def failed(self, failure: Failure) -> RetryDecision:
        """Auth refused once: fetch a new key at once; again: report "refused" and go slow."""
        if failure.kind == "auth" and not self._auth_retried:
            self._auth_retried = True
            return RetryDecision(None, 0.0)
        delay = self.backoff.delay_s(self.attempt, self._rand())
        self.attempt += 1
        kind: ev.LinkFailure = "refused" if failure.kind == "auth" else failure.kind
        if kind in ("refused", "config", "unauthorised"):
            delay = max(delay, self.backoff.slow_s * (1.0 + self.backoff.jitter * self._rand()))
        return RetryDecision(ev.LinkFailed(kind, failure.message), delay)

    def authorised(self) -> None:
        """A session opened: the key worked, so a later 3000 again earns one quick retry."""
        self._auth_retried = False

    def reset(self) -> None:
        """A session stayed up long enough: start the backoff from the beginning."""
        self.attempt = 0
        self._auth_retried = False


def classify_close(code: int | None, reason: str, error: ev.ServerError | None) -> Failure:
    """3000 is auth, 4000 a request-shape (config) error, 1011-1014 the server, else network."""
    message = error.message if error and error.message else (reason or f"closed ({code})")
    if code == 3000:
        return Failure("auth", message)
    if code == 4000:
        return Failure("config", message)
    if code in (1011, 1012, 1013, 1014):
        return Failure("server", message)
    return Failure("network", message)


def classify_status(status: int, message: str) -> Failure:
    """An HTTP status on the WebSocket upgrade (OpenAI upgrades first, but proxies may not)."""
    if status in (401, 403):
        return Failure("auth", message)
    if status >= 500 or status in (408, 429):
        return Failure("server", message)
    return Failure("config", message)
