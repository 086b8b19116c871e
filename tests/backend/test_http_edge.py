"""What the HTTP layer refuses before the app: oversized heads and malformed requests, over
real loopback sockets, with the protocol ``serve`` runs (httptools) and the h11 fallback."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from hark_backend.httpserver import EnvelopeH11Protocol, protocol_class

from tests.backend.servers import ServerThread, backend_settings, exchange, parse, run_backend

PROTOCOLS = {"httptools": protocol_class(), "h11": EnvelopeH11Protocol}
CAP = 4096


def test_serve_runs_httptools() -> None:
    """``uvicorn[standard]`` is installed, so the capped httptools protocol is the one used."""
    assert protocol_class().__name__ == "CappedHttpToolsProtocol"


@pytest.fixture(params=sorted(PROTOCOLS))
def server(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[ServerThread]:
    """A backend with a 4 KiB head cap (no upstream needed: nothing here mints)."""
    nowhere = SimpleNamespace(base_url="http://127.0.0.1:9/v1", api_key="sk-unused")
    settings = backend_settings(sqlite_url, nowhere)
    with run_backend(settings, max_header_bytes=CAP, http=PROTOCOLS[request.param]) as srv:
        yield srv


def error_of(answer: bytes, status: int) -> dict[str, Any]:
    got, headers, body = parse(answer)
    assert got == status, answer[:300]
    assert headers["content-type"] == "application/json"
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code", "param"}
    return body["error"]  # type: ignore[no-any-return]


def test_a_10_mb_header_is_refused_not_read(server: ServerThread) -> None:
    """The attack as reported: 10 MB in one header is cut off with 431, not read and answered."""
    request = b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * (10 << 20) + b"\r\n\r\n"
    answer, sent_error = exchange(server.port, request)
    assert error_of(answer, 431)["code"] == "request_header_too_large"
    assert isinstance(sent_error, BrokenPipeError | ConnectionResetError)  # not all read
    assert httpx.get(f"{server.url}/healthz").status_code == 200


@pytest.mark.parametrize("where", ["one header", "many headers", "the URL"])
def test_a_head_just_over_the_cap_is_431(server: ServerThread, where: str) -> None:
    """Whether it arrives in one read or several, a head over the cap gets 431 in the envelope."""
    big = {
        "one header": (b"/healthz", b"X-Big: " + b"a" * CAP + b"\r\n"),
        "many headers": (
            b"/healthz",
            b"".join(b"X-%d: %s\r\n" % (i, b"a" * 90) for i in range(50)),
        ),
        "the URL": (b"/healthz?" + b"a" * CAP, b""),
    }
    target, extra = big[where]
    request = b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n" + extra + b"\r\n"
    answer, _ = exchange(server.port, request)
    assert error_of(answer, 431)["code"] == "request_header_too_large"


def test_a_head_under_the_cap_is_served(server: ServerThread) -> None:
    """A large but allowed head (3 KiB) is answered normally, and so is the next request."""
    response = httpx.get(f"{server.url}/healthz", headers={"X-Pad": "a" * 3000})
    assert response.status_code == 200
    assert httpx.get(f"{server.url}/healthz").status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        b"Content-Length: abc",
        b"Content-Length: -1",
        b"Content-Length: 1, 2",
        b"Content-Length: 1e3",
    ],
)
def test_a_bad_content_length_gets_the_envelope(server: ServerThread, header: bytes) -> None:
    """A request uvicorn's parser refuses is a 400 in OpenAI's envelope, not plain text."""
    request = b"POST /v1/realtime/client_secrets HTTP/1.1\r\nHost: a\r\n" + header + b"\r\n\r\n"
    answer, _ = exchange(server.port, request)
    error = error_of(answer, 400)
    assert error["code"] == "invalid_request"
    assert error["message"].startswith("Malformed HTTP request")


def test_garbage_gets_the_envelope(server: ServerThread) -> None:
    """Not HTTP at all: still the envelope."""
    answer, _ = exchange(server.port, b"\x16\x03\x01 hello\r\n\r\n")
    assert error_of(answer, 400)["code"] == "invalid_request"


class QuickHeads(protocol_class()):  # type: ignore[misc,valid-type]
    """The served protocol with a short deadline for request heads."""

    head_timeout_s = 0.3


@pytest.fixture
def quick_server(sqlite_url: str) -> Iterator[ServerThread]:
    nowhere = SimpleNamespace(base_url="http://127.0.0.1:9/v1", api_key="sk-unused")
    with run_backend(backend_settings(sqlite_url, nowhere), http=QuickHeads) as srv:
        yield srv


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(20)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_a_silent_connection_is_closed(quick_server: ServerThread) -> None:
    """A client that connects and sends nothing does not hold the connection forever."""
    with socket.create_connection(("127.0.0.1", quick_server.port)) as sock:
        assert _read_all(sock) == b""


def test_a_trickled_head_gets_408(quick_server: ServerThread) -> None:
    """Headers that never finish (slowloris) get 408 in the envelope and the connection closed."""
    with socket.create_connection(("127.0.0.1", quick_server.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
        answer = _read_all(sock)
    assert error_of(answer, 408)["code"] == "request_timeout"


def test_keep_alive_between_requests_is_not_cut_by_the_deadline(
    quick_server: ServerThread,
) -> None:
    """An idle pause between two requests on one connection is the keep-alive timeout's
    business (5 s), not the head deadline's."""
    with socket.create_connection(("127.0.0.1", quick_server.port)) as sock:
        sock.settimeout(20)
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            answer = b""
            while not answer.endswith(b'{"status":"ok"}'):
                chunk = sock.recv(65536)
                assert chunk, answer
                answer += chunk
            time.sleep(1.0)  # over the 0.3 s head deadline, under the keep-alive timeout
