"""The HTTP/1.1 layer under the app: uvicorn's own protocols, with a cap on the request head
and OpenAI's error envelope for what they refuse before the app sees a request.

``uvicorn[standard]`` runs httptools, which has no limit on the request line and headers:
a 10 MB header was read (httptools joins a header's pieces chunk by chunk) and answered.
h11 has a limit (``h11_max_incomplete_event_size``); the httptools protocol here applies
the same setting, so the cap holds whichever protocol runs.  Malformed requests that the
parser refuses (a bad ``Content-Length``, a bad header character) were answered by uvicorn
in plain text; here they get the envelope like everything else.

uvicorn has no deadline for a request's head either: a connection that sends nothing, or
trickles its headers, was held forever.  The httptools protocol here closes it after
``HEAD_TIMEOUT_S`` (408 if part of a head arrived).

What is left: a body sent slowly (up to ``--max-body-bytes``) holds its connection and
task until it ends or the client goes; the h11 fallback has no head deadline; a connection
the event loop cannot accept (out of file descriptors) gets no answer at all.  The reverse
proxy in front bounds all three (nginx ``client_body_timeout``, ``client_header_timeout``).
"""

from __future__ import annotations

import asyncio
import functools
import http
import json
import logging
import sys
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from hark_backend import logsafe

log = logging.getLogger(__name__)

DEFAULT_MAX_HEADER_BYTES = 16 * 1024  # h11's own default; a device sends under 1 KiB
HEAD_TIMEOUT_S = 10.0  # from connecting (or a request's first byte) to the end of its headers


def head_size(target: bytes, headers: Any) -> int:
    """The size of a request's target and headers as sent (names, values, ': ', CRLF)."""
    return len(target) + sum(len(name) + len(value) + 4 for name, value in headers)


def refusal(
    status: int, code: str, message: str, default_headers: list[tuple[bytes, bytes]]
) -> bytes:
    """A complete HTTP/1.1 error response in OpenAI's envelope that closes the connection."""
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "code": code,
                "param": None,
            }
        },
        separators=(",", ":"),
    ).encode()
    phrase = http.HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {phrase}".encode()]
    lines += [name + b": " + value for name, value in default_headers]
    lines += [
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"cache-control: no-store",
        b"connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class HeadTooLargeError(Exception):
    """Raised from a parser callback to stop parsing a request whose head is over the cap."""


def _parser_refusal(exc: BaseException | None) -> tuple[int, str, str]:
    """Status, code and message for a request the HTTP parser refused."""
    hint = getattr(exc, "error_status_hint", 400)  # h11 says 431 for an oversized head
    if hint == 431 or isinstance(getattr(exc, "__context__", None), HeadTooLargeError):
        return 431, "request_header_too_large", "Request line and headers too large."
    # httptools' messages are fixed texts ("Invalid character in Content-Length"); h11's may
    # quote the offending line, which only goes back to the client that sent it (the log
    # line names the status and outcome, not this message).
    detail = str(exc).strip().rstrip(".") if exc is not None else ""
    message = "Malformed HTTP request" + (f": {detail}." if detail else ".")
    return 400, "invalid_request", message


class _Refusals:
    """What both protocols share: answer a refused request with the envelope, and say so."""

    transport: asyncio.Transport
    server_state: Any
    client: tuple[str, int] | None

    def _refuse(self, status: int, code: str, message: str) -> None:
        log.info(
            "request refused before the app: status=%d outcome=%s client=%s",
            status,
            code,
            logsafe.field(self.client[0]) if self.client else "-",
        )
        if not self.transport.is_closing():
            self.transport.write(refusal(status, code, message, self.server_state.default_headers))
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's hook for a request its parser refused (called inside the ``except``)."""
        self._refuse(*_parser_refusal(sys.exception()))


@functools.cache
def _httptools_protocol() -> type[asyncio.Protocol] | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class CappedHttpToolsProtocol(_Refusals, HttpToolsProtocol):
        """httptools with a cap on the request head (``config.h11_max_incomplete_event_size``)
        and a deadline for it (``head_timeout_s``).

        Two size checks: a complete head is measured exactly (its URL and headers) before
        the app sees it; a head still arriving is measured by the bytes read since it began,
        so the parser never holds much more than the cap (a chunk that also ends the
        previous, pipelined request is not counted: at most one read more).

        The deadline runs from the connection's start, and from each request's first byte,
        to the end of its headers: a client that sends nothing gets the connection closed,
        one that trickles its headers a 408.  (Between requests uvicorn's keep-alive timeout
        applies.)  One timer per connection, re-armed only when it fires.
        """

        head_timeout_s = HEAD_TIMEOUT_S

        def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
            super().__init__(config, *args, **kwargs)
            self.max_head_bytes = config.h11_max_incomplete_event_size or DEFAULT_MAX_HEADER_BYTES
            self.head_bytes = -1  # -1: not inside a request's head
            self.began_in_chunk = False
            self.ended_in_chunk = False
            self.head_since: float | None = None  # waiting for a head since (loop time)
            self.head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._head_started()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None
            super().connection_lost(exc)

        def _head_started(self) -> None:
            self.head_since = self.loop.time()
            if self.head_timer is None:
                self.head_timer = self.loop.call_later(self.head_timeout_s, self._head_deadline)

        def _head_deadline(self) -> None:
            self.head_timer = None
            if self.head_since is None or self.transport.is_closing():
                return  # no head awaited: the timer lapses until the next one begins
            left_s = self.head_since + self.head_timeout_s - self.loop.time()
            if left_s > 0:
                self.head_timer = self.loop.call_later(left_s, self._head_deadline)
            elif self.head_bytes < 0:  # not a byte yet: just close
                self.transport.close()
            else:
                self._refuse(408, "request_timeout", "Request line and headers took too long.")

        def data_received(self, data: bytes) -> None:
            self.began_in_chunk = self.ended_in_chunk = False
            super().data_received(data)
            if self.head_bytes < 0 or self.transport.is_closing():
                return
            if not (self.began_in_chunk and self.ended_in_chunk):
                self.head_bytes += len(data)
            if self.head_bytes > self.max_head_bytes:
                self.head_bytes = -1
                self._refuse(431, "request_header_too_large", "Request line and headers too large.")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.head_bytes = 0
            self.began_in_chunk = True
            self._head_started()

        def on_headers_complete(self) -> None:
            self.head_bytes = -1
            self.head_since = None
            if head_size(self.url, self.headers) > self.max_head_bytes:
                # Stops the parser; uvicorn then calls send_400_response, which answers 431.
                raise HeadTooLargeError
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.ended_in_chunk = True
            super().on_message_complete()

    return CappedHttpToolsProtocol


class _CappedConnection:
    """An ``h11.Connection`` that also refuses a complete head over the cap.

    h11 caps only a head still incomplete (``max_incomplete_event_size``); one that arrives
    in a single read would pass.
    """

    def __init__(self, conn: h11.Connection, max_head_bytes: int) -> None:
        self._conn = conn
        self._max_head_bytes = max_head_bytes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def next_event(self) -> Any:
        event = self._conn.next_event()
        if (
            isinstance(event, h11.Request)
            and head_size(event.target, event.headers) > self._max_head_bytes
        ):
            raise h11.RemoteProtocolError("head too large", error_status_hint=431)
        return event


class EnvelopeH11Protocol(_Refusals, H11Protocol):
    """h11 (when httptools is missing), with the same cap; refusals get the envelope."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        cap = config.h11_max_incomplete_event_size or DEFAULT_MAX_HEADER_BYTES
        self.conn = _CappedConnection(self.conn, cap)  # type: ignore[assignment]


def protocol_class() -> type[asyncio.Protocol]:
    """httptools (what ``uvicorn[standard]`` runs: a third less CPU per key) else h11."""
    return _httptools_protocol() or EnvelopeH11Protocol


def server_config(
    app: Any,
    *,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    forwarded_allow_ips: str = "127.0.0.1",
    **options: Any,
) -> uvicorn.Config:
    """The uvicorn configuration ``serve`` runs (and the tests, so they test the same)."""
    options.setdefault("http", protocol_class())
    return uvicorn.Config(
        app,
        h11_max_incomplete_event_size=max_header_bytes,
        log_config=None,  # the CLI's, or the test's
        access_log=False,  # RequestLog writes one line per request instead
        lifespan="on",
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
        server_header=False,
        **options,
    )
