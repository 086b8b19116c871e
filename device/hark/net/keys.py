"""One connect attempt's policy: the ephemeral key, the allowed URLs, failure classes, backoff.

``Backoff`` lives in ``hark.backoff`` (shared with the app and the sound card) and is
importable from here, where the link takes it.

The backend answers like OpenAI's ``POST /v1/realtime/client_secrets`` (top-level
``value`` and ``expires_at``). This module must not import websockets, must not keep
keys (one key per connect attempt) and must never log a key or the device token.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import ipaddress
import json
import logging
import math
import random
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any, Literal, NoReturn

import pydantic

from hark import events as ev
from hark.backoff import Backoff as Backoff  # re-exported: the link takes it from here

log = logging.getLogger(__name__)

FailureKind = Literal["network", "server", "auth", "config", "unauthorised"]
"""Why an attempt failed; "auth" (close 3000) becomes "refused" once a fresh key fails too."""

MAX_RESPONSE_BYTES = 1 << 20
"""A key response is a few KiB; refuse to buffer anything absurd."""
MAX_KEY_CHARS = 1024
"""An ``ek_`` key is a few dozen characters; it goes into a header, so bound it."""
MAX_RETRY_AFTER_S = 600.0
"""The longest ``Retry-After`` the link honours (a broken backend must not park it for days)."""


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


_URL_BAD_CHAR = re.compile(r"[^\x21-\x7e]")
"""Whitespace, control characters and non-ASCII: http.client and websockets refuse them."""


def printable(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` with control characters escaped: what a peer sent, safe to log."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])


def check_url(url: str, secure: str, plain: str, what: str) -> urllib.parse.SplitResult:
    """Allow ``secure://`` anywhere and ``plain://`` only to loopback (the simulator).

    The URL must also be one the HTTP and WebSocket clients can send as it is: no
    whitespace, control or non-ASCII characters, and a numeric port in range.
    """
    bad = _URL_BAD_CHAR.search(url)
    if bad is not None:
        raise LinkConfigError(
            f"{what} {url!r} contains {bad.group()!r} at position {bad.start()}; "
            "a URL has no spaces, control or non-ASCII characters (percent-encode them)"
        )
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as exc:
        raise LinkConfigError(f"{what} {url!r} is not a valid URL: {exc}") from None
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


_KEY_VALUE = re.compile(r"[\x21-\x7e]+")

EXPIRES_AT_RANGE = (1e9, 1e11)
"""Plausible epoch seconds (2001 to the year 5138): anything else is not a time."""


class KeyGrant(pydantic.BaseModel):
    """The part of a ``client_secrets`` response the device needs, checked before use.

    ``value`` goes into the ``Authorization`` header of the upgrade request: a CR/LF
    or space in it would let the backend's answer add headers, so only visible ASCII
    is accepted. Error messages never repeat the value.
    """

    model_config = pydantic.ConfigDict(extra="ignore", frozen=True)

    value: str = pydantic.Field(strict=True, repr=False)
    expires_at: float = pydantic.Field(strict=True, allow_inf_nan=False)
    """Epoch seconds after which the key can no longer open a session."""

    @pydantic.field_validator("value")
    @classmethod
    def _header_safe(cls, value: str) -> str:
        if not 0 < len(value) <= MAX_KEY_CHARS or not _KEY_VALUE.fullmatch(value):
            raise ValueError(
                f"must be 1 to {MAX_KEY_CHARS} visible ASCII characters, "
                "without spaces or control characters"
            )
        return value

    @pydantic.field_validator("expires_at")
    @classmethod
    def _plausible(cls, value: float) -> float:
        low, high = EXPIRES_AT_RANGE
        if not (math.isfinite(value) and low <= value < high):
            raise ValueError(f"{value!r} is not a plausible time in epoch seconds")
        return value


KeyFetchCause = Literal[
    "unreachable", "tls", "status", "redirect", "rate_limited", "bad_answer", "bad_url"
]
"""What went wrong, for ``hark doctor``'s fix: finer than ``FailureKind``."""


class KeyFetchError(Exception):
    """The backend did not give us a key; ``status`` is the HTTP status, None if unreachable.

    ``cause`` says what went wrong (a refused certificate is retried like any network
    failure, since the clock may yet sync, but ``hark doctor`` gives it its own fix);
    ``retry_after_s`` is the backend's ``Retry-After`` on a 429.
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        *,
        cause: KeyFetchCause | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.cause: KeyFetchCause = cause or ("unreachable" if status is None else "status")
        self.retry_after_s = retry_after_s

    @property
    def tls(self) -> bool:
        """The backend's certificate was refused."""
        return self.cause == "tls"

    @property
    def kind(self) -> FailureKind:
        """401/403: a revoked device; 3xx, other 4xx, a bad URL: ours is wrong; else transient."""
        if self.cause == "bad_url":
            return "config"
        if self.cause == "bad_answer":
            return "server"
        if self.status is None:
            return "network"
        if self.status in (401, 403):
            return "unauthorised"
        if 300 <= self.status < 500 and self.status not in (408, 429):
            return "config"
        return "server"


def _error_text(body: bytes) -> str:
    """The OpenAI-style ``error.message`` if there is one, else a short prefix of the body."""
    try:
        data = json.loads(body)
        message = data["error"]["message"]
        if isinstance(message, str):
            return printable(message)
    except (ValueError, KeyError, TypeError, RecursionError):
        pass
    return printable(body[:200].decode("utf-8", "replace"))


def retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the delta form; an HTTP date is ignored), capped."""
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value.strip()), MAX_RETRY_AFTER_S)


def where_to(base_url: str, location: str | None) -> str:
    """Where a redirect points, as ``scheme://host[:port]`` (never the path or query)."""
    if not location:
        return "nowhere (no Location header)"
    try:
        parts = urllib.parse.urlsplit(urllib.parse.urljoin(base_url, location.strip()))
        port = f":{parts.port}" if parts.port else ""
        host = parts.hostname or "?"
    except ValueError:
        return "an unreadable Location"
    return printable(f"{parts.scheme}://{host}{port}", 120)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Replaces urllib's redirect handler: a 3xx comes back as the ``HTTPError`` it is.

    The request carries the device token; following a ``Location`` would send it to
    whatever host, port or scheme the answer names.
    """

    def http_error_302(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Any
    ) -> None:
        return None

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def strict_opener(url: str) -> urllib.request.OpenerDirector:
    """urllib for a request that carries a secret: no redirects, verified TLS, and no
    proxy for loopback (the simulator, tests; the environment's otherwise)."""
    parts = urllib.parse.urlsplit(url)
    handlers: list[urllib.request.BaseHandler] = [_RefuseRedirects()]
    if parts.scheme == "https":
        handlers.append(urllib.request.HTTPSHandler(context=tls_context()))
    if is_loopback_host(parts.hostname):
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


def _not_a_key(raw: bytes, exc: pydantic.ValidationError) -> NoReturn:
    """A 200 whose body is not a key: say which field and why, never the body itself."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(map(str, error["loc"])) or "body"
        if error["type"] == "json_invalid":
            problems.append(f"not JSON ({len(raw)} bytes)")
        else:
            problems.append(f"{where}: {error['msg']}")
    raise KeyFetchError(
        "the key backend answered 200 but not with a key (" + "; ".join(problems)[:300] + ")",
        502,
        cause="bad_answer",
    )


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
        opener = strict_opener(self.backend_url)
        try:
            with opener.open(request, timeout=self.timeout_s) as response:
                raw = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            with exc:
                raise self._refusal(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            said = tls_failure(reason) if isinstance(reason, BaseException) else None
            message = f"key backend unreachable: {said or reason}"
            raise KeyFetchError(message, cause="tls" if said else "unreachable") from None
        except (ValueError, http.client.InvalidURL) as exc:
            # What check_url let through and http.client refused.
            message = f"key backend URL {self.backend_url!r} cannot be used: {exc}"
            raise KeyFetchError(message, cause="bad_url") from None
        except http.client.HTTPException as exc:  # a broken answer: IncompleteRead, LineTooLong…
            message = f"the key backend's answer is broken ({type(exc).__name__})"
            raise KeyFetchError(message, 502, cause="bad_answer") from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise KeyFetchError("the key backend's answer is too large", 502, cause="bad_answer")
        try:
            return KeyGrant.model_validate_json(raw)
        except pydantic.ValidationError as exc:
            _not_a_key(raw, exc)

    def _refusal(self, exc: urllib.error.HTTPError) -> KeyFetchError:
        """An HTTP error status as a ``KeyFetchError`` that says what the status means."""
        code = exc.code
        if 300 <= code < 400:
            where = where_to(self.backend_url, exc.headers.get("Location"))
            return KeyFetchError(
                f"key backend answered {code}, redirecting to {where}; refused: the device "
                "token is only ever sent to backend.url itself",
                code,
                cause="redirect",
            )
        detail = _error_text(exc.read(4096))
        wait_s = retry_after_s(exc.headers.get("Retry-After"))
        after = f", retry after {wait_s:.0f} s" if wait_s is not None else ""
        if code == 429:
            return KeyFetchError(
                f"key backend is rate-limiting this device (429{after}): {detail}",
                code,
                cause="rate_limited",
                retry_after_s=wait_s,
            )
        message = f"key backend answered {code}{after}: {detail}"
        return KeyFetchError(message, code, retry_after_s=wait_s)

    async def fetch(self) -> KeyGrant:
        """A fresh key, fetched off the event loop (urllib blocks)."""
        return await asyncio.to_thread(self.fetch_blocking)


# --------------------------------------------------------------------------- attempt policy


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one connect attempt (or an open session) failed."""

    kind: FailureKind
    message: str
    retry_after_s: float | None = None
    """The server's ``Retry-After``: wait at least this long before the next attempt."""
    part: ev.LinkPart = "realtime"


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to post (None: nothing, retry quietly) and how long to wait before the next try."""

    report: ev.LinkFailed | None
    delay_s: float
    may_hurry: bool = False
    """A user waiting (a press) may cut the wait short: a network or server failure with
    no ``Retry-After``. Never a refusal or a bad config, which retrying now cannot fix."""


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
        if failure.retry_after_s is not None:
            delay = max(delay, min(failure.retry_after_s, MAX_RETRY_AFTER_S))
        may_hurry = kind in ("network", "server") and failure.retry_after_s is None
        return RetryDecision(ev.LinkFailed(kind, failure.message, failure.part), delay, may_hurry)

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
    """An HTTP status on the WebSocket upgrade (OpenAI upgrades first, but proxies may not).

    A redirect (3xx, never followed: the request carries the key) is a config error.
    """
    if status in (401, 403):
        return Failure("auth", message)
    if status >= 500 or status in (408, 429):
        return Failure("server", message)
    return Failure("config", message)
