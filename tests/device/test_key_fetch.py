"""hark.net.keys.KeySource against real loopback HTTP(S) servers: redirects, bad answers, bad URLs.

The device token is a secret: it goes to ``backend.url`` and nowhere else, whatever
the server answers. A key from the backend goes into a header, so it is checked first.
"""

from __future__ import annotations

import http.server
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hark.net import keys
from hark.net.keys import KeyFetchError, KeyGrant, KeySource, LinkConfigError

TOKEN = "hark_dt_secret_token_for_tests"
MINT = "/v1/realtime/client_secrets"

Answer = tuple[int, dict[str, str], bytes]


def key_answer(value: str = "ek_test_1", lifetime_s: float = 600.0) -> Answer:
    body = json.dumps({"value": value, "expires_at": int(time.time() + lifetime_s)}).encode()
    return 200, {"Content-Type": "application/json"}, body


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class ScriptedHttp:
    """A stdlib HTTP(S) server on 127.0.0.1 that records every request and answers by plan.

    ``answer`` is called per request; by default it mints a valid key.
    """

    answer: Callable[[Seen], Answer] = field(default=lambda seen: key_answer())
    tls: Any = None  # a tests.tls.TestPki: serve https with its certificate
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    def url(self, path: str = MINT, host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    def __enter__(self) -> ScriptedHttp:
        state = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                seen = Seen(self.command, self.path, dict(self.headers.items()))
                state.seen.append(seen)
                status, headers, body = state.answer(seen)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_HEAD = do_PUT = handle_one  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls.cert, self.tls.key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,))
        self._thread.daemon = True
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def trust(pki: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The device trusts the test CA (``SSL_CERT_FILE``), as a private-CA setup would."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    keys.tls_context.cache_clear()
    yield pki
    keys.tls_context.cache_clear()


def fetch(url: str, token: str = TOKEN) -> KeyGrant:
    return KeySource(url, token, {"session": {"type": "realtime"}}, 10.0).fetch_blocking()


def refusal(answer: Callable[[Seen], Answer]) -> KeyFetchError:
    """The KeyFetchError a fetch from a server answering ``answer`` raises."""
    with ScriptedHttp(answer) as backend, pytest.raises(KeyFetchError) as refused:
        fetch(backend.url())
    return refused.value


# --------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("elsewhere", ["port", "host", "scheme"])
def test_a_redirect_is_refused_and_the_token_stays_put(
    status: int, elsewhere: str, request: pytest.FixtureRequest
) -> None:
    """A 3xx to another port, host or scheme is a backend error naming the status and the
    Location's host; the server it points to never sees a request, let alone the token.

    (urllib follows 301/302/303 by default, re-sending ``Authorization`` to wherever the
    answer points, and reports 307/308 to a POST only as "answered 307: ".)
    """
    pki = request.getfixturevalue("trust") if elsewhere == "scheme" else None
    with ScriptedHttp() as target:
        location = target.url("/steal", host="localhost" if elsewhere == "host" else "127.0.0.1")

        def redirect(seen: Seen) -> Answer:
            return status, {"Location": location}, b""

        # https -> http for "scheme"
        with ScriptedHttp(redirect, tls=pki) as backend, pytest.raises(KeyFetchError) as refused:
            fetch(backend.url())
        assert target.seen == []
        assert len(backend.seen) == 1
    message = str(refused.value)
    host = "localhost" if elsewhere == "host" else "127.0.0.1"
    assert f"answered {status}, redirecting to http://{host}:{target.port}" in message
    assert "/steal" not in message and TOKEN not in message
    assert refused.value.status == status
    assert refused.value.cause == "redirect"
    assert refused.value.kind == "config"  # retried slowly: it will not fix itself


def test_a_redirect_without_location_is_refused_too() -> None:
    """A 302 with no Location is a named redirect refusal, not a crash."""
    refused = refusal(lambda seen: (302, {}, b""))
    assert "302, redirecting to nowhere" in str(refused)


# --------------------------------------------------------------------------- the answer


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("ek_x\r\nX-Injected: 1", "CR/LF: a second header"),
        ("ek_x\nX-Injected: 1", "LF alone"),
        ("ek_ x", "space"),
        ("ek_\tx", "tab"),
        ("ek_\x00x", "NUL"),
        ("ek_é", "non-ASCII"),
        ("", "empty"),
        ("ek_" + "x" * 2000, "too long"),
        (12345, "not a string"),
        (None, "null"),
    ],
)
def test_a_key_that_cannot_go_in_a_header_is_refused(value: Any, why: str) -> None:
    """``value`` must be 1..MAX_KEY_CHARS visible ASCII characters; the error never repeats it."""
    body = json.dumps({"value": value, "expires_at": int(time.time() + 600)})
    refused = refusal(lambda seen: (200, {}, body.encode()))
    message = str(refused)
    assert message.startswith("the key backend answered 200 but not with a key (value: "), why
    assert "X-Injected" not in message and "\n" not in message
    assert refused.cause == "bad_answer" and refused.kind == "server"


@pytest.mark.parametrize(
    "expires_at",
    ["NaN", "Infinity", "-Infinity", "0", "-1", "1e300", '"1893456000"', "true", "12345"],
)
def test_an_implausible_expiry_is_refused(expires_at: str) -> None:
    """``expires_at`` must be a finite epoch time between 2001 and the year 5138."""
    body = '{"value": "ek_fine", "expires_at": ' + expires_at + "}"
    refused = refusal(lambda seen: (200, {}, body.encode()))
    assert "not with a key (expires_at: " in str(refused)


def test_a_good_key_is_accepted() -> None:
    """Visible ASCII up to the limit and a plausible expiry pass."""
    value = "ek_" + "A-z0~!" * 20
    with ScriptedHttp(lambda seen: key_answer(value)) as backend:
        grant = fetch(backend.url())
    assert grant.value == value
    assert grant.expires_at == pytest.approx(time.time() + 600, abs=5)
    assert backend.seen[0].headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"<html>gateway</html>", "not JSON (20 bytes)"),
        (b'{"client_secret": {"value": "ek_beta"}}', "value: Field required"),
        (b"[1, 2]", "body: Input should be an object"),
    ],
)
def test_garbage_from_the_backend_names_the_backend_and_the_problem(body: bytes, said: str) -> None:
    """A 200 that is not a key says so, naming the key backend and what was wrong."""
    refused = refusal(lambda seen: (200, {}, body))
    assert str(refused).startswith("the key backend answered 200 but not with a key")
    assert said in str(refused)


def test_rate_limited_says_so_with_retry_after() -> None:
    """A 429 is "rate-limiting this device", with the Retry-After the backend gave."""
    error = json.dumps({"error": {"message": "slow down\nFORGED line", "code": "rate_limited"}})
    refused = refusal(lambda seen: (429, {"Retry-After": "30"}, error.encode()))
    assert str(refused) == (
        "key backend is rate-limiting this device (429, retry after 30 s): slow down\\nFORGED line"
    )
    assert refused.retry_after_s == 30.0
    assert refused.cause == "rate_limited"


# --------------------------------------------------------------------------- bad URLs


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://127.0.0.1:9/v1/realtime/client secrets", "contains ' ' at position"),
        ("http://127.0.0.1:9/v1\r\nX-Injected: 1", "contains '\\r' at position"),
        ("http://127.0.0.1:9/v1\t", "contains '\\t'"),
        ("https://keys.exämple/v1", "contains 'ä'"),
        ("http://127.0.0.1:99999/v1", "is not a valid URL"),
        ("http://127.0.0.1:port/v1", "is not a valid URL"),
        ("http://[::1/v1", "is not a valid URL"),
    ],
)
def test_a_url_no_client_can_send_is_a_config_error(url: str, said: str) -> None:
    """Whitespace, control or non-ASCII characters and bad ports are refused up front,
    by name (``hark doctor`` used to print http.client's InvalidURL traceback)."""
    with pytest.raises(LinkConfigError, match="key backend URL") as refused:
        KeySource(url, TOKEN)
    assert said in str(refused.value)


def test_a_url_the_http_client_refuses_late_is_still_a_config_error() -> None:
    """Whatever gets past check_url and is refused by http.client is a named config error."""
    source = KeySource("http://127.0.0.1:9/v1", TOKEN)
    object.__setattr__(source, "backend_url", "http://127.0.0.1:9/a b")  # past the check
    with pytest.raises(KeyFetchError, match="cannot be used") as refused:
        source.fetch_blocking()
    assert refused.value.kind == "config" and refused.value.cause == "bad_url"


def test_a_broken_answer_is_a_backend_failure_not_a_crash() -> None:
    """Something that is not HTTP on the backend's port is the key backend failing, named;
    not a traceback (http.client raises its own exceptions, not OSError)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_once() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    try:
        with pytest.raises(KeyFetchError) as refused:
            fetch(f"http://127.0.0.1:{port}{MINT}")
    finally:
        thread.join(5)
        listener.close()
    assert str(refused.value) == "the key backend's answer is broken (BadStatusLine)"
    assert refused.value.kind == "server"
