"""hark.net.link on loopback (own servers and hark_sim): keys, failures, rotation, replay."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import json
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import pydantic
import pytest
from hark import events as ev
from hark.history import History
from hark.net.keys import Backoff
from hark.net.link import MAX_FRAMES_PER_APPEND, WebSocketLink
from hark.testing import until
from hark_sim import SimConfig, SimHandle, start_sim
from openai.types.realtime import RealtimeClientEvent
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

# --------------------------------------------------------------------------- loopback servers


@dataclass
class KeyServer:
    """A stdlib HTTP key backend: counts requests, answers with planned statuses."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    plan: list[tuple[int, Any]] = field(default_factory=list)
    lifetime_s: float = 600.0
    issued: list[str] = field(default_factory=list)


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    state = KeyServer()
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                state.requests.append(
                    {"auth": self.headers.get("Authorization"), "body": json.loads(body)}
                )
                if state.plan:
                    status, payload = state.plan.pop(0)
                else:
                    value = f"ek_test_{len(state.issued)}"
                    state.issued.append(value)
                    status = 200
                    payload = {"value": value, "expires_at": int(time.time() + state.lifetime_s)}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1/realtime/client_secrets"
    yield state
    server.shutdown()
    server.server_close()


@dataclass
class Conn:
    """One WebSocket connection the fake server accepted."""

    ws: ServerConnection
    path: str
    headers: dict[str, str]
    received: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False


Behaviour = Callable[["FakeRealtime", Conn], Awaitable[None]]


class FakeRealtime:
    """A purpose-built Realtime server: each connection runs the next planned behaviour."""

    def __init__(self) -> None:
        self.url = ""
        self.conns: list[Conn] = []
        self.plan: list[Behaviour] = []
        self.session_s = 3600.0
        self.stopping = False

    async def handler(self, ws: ServerConnection) -> None:
        conn = Conn(ws, ws.request.path, dict(ws.request.headers.raw_items()))  # type: ignore[union-attr]
        self.conns.append(conn)
        behaviour = self.plan.pop(0) if self.plan else ok
        try:
            await behaviour(self, conn)
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True

    async def created(self, conn: Conn) -> None:
        await conn.ws.send(
            json.dumps(
                {
                    "type": "session.created",
                    "event_id": "event_c",
                    "session": {
                        "type": "realtime",
                        "object": "realtime.session",
                        "id": f"sess_{len(self.conns)}",
                        "expires_at": int(time.time() + self.session_s),
                    },
                }
            )
        )


async def ok(server: FakeRealtime, conn: Conn) -> None:
    """session.created, then record client events; confirm session.update and echo created
    items like OpenAI."""
    await server.created(conn)
    async for raw in conn.ws:
        event = json.loads(raw)
        conn.received.append(event)
        if event["type"] == "session.update":
            await conn.ws.send(json.dumps({"type": "session.updated", "session": event["session"]}))
        elif event["type"] == "conversation.item.create":
            item = {"status": "completed", **event["item"]}
            item.setdefault("id", f"item_{len(conn.received)}")
            for kind in ("added", "done"):
                await conn.ws.send(
                    json.dumps(
                        {
                            "type": f"conversation.item.{kind}",
                            "previous_item_id": None,
                            "item": item,
                        }
                    )
                )


def closer(code: int, error_code: str | None) -> Behaviour:
    async def behaviour(server: FakeRealtime, conn: Conn) -> None:
        if error_code:
            await conn.ws.send(
                json.dumps(
                    {
                        "type": "error",
                        "error": {
                            "type": "invalid_request_error",
                            "code": error_code,
                            "message": f"refused: {error_code}",
                        },
                    }
                )
            )
        await conn.ws.close(code, "refused")

    return behaviour


@pytest.fixture
async def realtime_server() -> AsyncIterator[FakeRealtime]:
    fake = FakeRealtime()
    async with serve(fake.handler, "127.0.0.1", 0, compression=None, close_timeout=0.5) as server:
        port = server.sockets[0].getsockname()[1]
        fake.url = f"ws://127.0.0.1:{port}/v1/realtime"
        yield fake
        fake.stopping = True


FAST = Backoff(initial_s=0.01, max_s=0.05, jitter=0.2, slow_s=0.1)


@contextlib.asynccontextmanager
async def running(
    link: WebSocketLink, history: History | None = None
) -> AsyncIterator[list[ev.Event]]:
    """Run the link, collecting what it posts (and feeding ``history``, as the app does)."""
    posted: list[ev.Event] = []

    def post(event: ev.Event) -> None:
        posted.append(event)
        if history is not None:
            history.observe(event)

    task = asyncio.create_task(link.run(post))
    try:
        yield posted
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_link(keys: KeyServer, rt: FakeRealtime | str, **kwargs: Any) -> WebSocketLink:
    options: dict[str, Any] = {
        "backend_url": keys.url,
        "device_token": "dev-token-1",
        "model": "gpt-realtime",
        "realtime_url": rt if isinstance(rt, str) else rt.url,
        "backoff": FAST,
        "ping_interval_s": 1.0,
        "ping_timeout_s": 1.0,
    }
    options.update(kwargs)
    return WebSocketLink(**options)


def of_type(posted: list[ev.Event], cls: type) -> list[Any]:
    return [e for e in posted if isinstance(e, cls)]


# --------------------------------------------------------------------------- connecting


async def test_connects_with_a_fresh_ephemeral_key(key_server, realtime_server):
    """The key request carries the device token; the socket carries the ek_ key and ?model."""
    link = make_link(
        key_server, realtime_server, key_request_body={"session": {"type": "realtime"}}
    )
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
    assert of_type(posted, ev.LinkUp) == [
        ev.LinkUp(
            "sess_1",
            pytest.approx(time.time() + 3600, abs=5),
            pytest.approx(3600, abs=5),
        )
    ]
    assert key_server.requests == [
        {"auth": "Bearer dev-token-1", "body": {"session": {"type": "realtime"}}}
    ]
    conn = realtime_server.conns[0]
    assert conn.path == "/v1/realtime?model=gpt-realtime"
    assert conn.headers["Authorization"] == "Bearer ek_test_0"
    assert not any(k.lower() == "openai-beta" for k in conn.headers)


async def test_every_attempt_fetches_a_new_key(key_server, realtime_server):
    """Each connect attempt gets its own key; none is used twice, even within its lifetime."""
    realtime_server.plan = [closer(1011, None)] * 3
    link = make_link(key_server, realtime_server)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
    used = [c.headers["Authorization"] for c in realtime_server.conns]
    assert len(used) == 4 == len(key_server.requests) == link.stats.key_fetches
    assert len(set(used)) == 4
    assert [f.kind for f in of_type(posted, ev.LinkFailed)] == ["server"] * 3


async def test_expired_key_is_never_reused(key_server, realtime_server):
    """Keys that expire at once are still fetched fresh for every attempt, never reused."""
    key_server.lifetime_s = -1.0
    realtime_server.plan = [closer(3000, "invalid_api_key")] * 2 + [closer(1011, None)]
    link = make_link(key_server, realtime_server)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
    used = [c.headers["Authorization"] for c in realtime_server.conns]
    assert used == [f"Bearer {k}" for k in key_server.issued]
    assert len(set(used)) == len(used) == 4


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, "unauthorised"),
        (403, "unauthorised"),
        (500, "server"),
        (503, "server"),
        (400, "config"),
    ],
)
async def test_backend_failures_are_classified(key_server, realtime_server, status, kind):
    """Backend 401/403 mean a revoked device; 5xx are server trouble; other 4xx a config error."""
    key_server.plan = [(status, {"error": {"message": "nope", "code": "x"}})]
    link = make_link(key_server, realtime_server)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
    failed = of_type(posted, ev.LinkFailed)
    assert [f.kind for f in failed] == [kind]
    assert str(status) in failed[0].message and "nope" in failed[0].message
    assert "dev-token-1" not in failed[0].message


async def test_backend_bad_body_is_a_server_failure(key_server, realtime_server):
    """A backend answer without value/expires_at is reported as a server failure."""
    key_server.plan = [(200, {"client_secret": {"value": "ek_beta"}})]
    link = make_link(key_server, realtime_server)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
    assert [f.kind for f in of_type(posted, ev.LinkFailed)] == ["server"]


async def test_unreachable_backend_is_a_network_failure(key_server, realtime_server):
    """No backend listening: "network", retried with backoff (several failures, no crash)."""
    dead = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = dead.server_address[1]
    dead.server_close()
    key_server.url = f"http://127.0.0.1:{port}/keys"
    link = make_link(key_server, realtime_server)
    async with running(link) as posted:
        link.connect()
        await until(lambda: len(of_type(posted, ev.LinkFailed)) >= 3)
    assert {f.kind for f in of_type(posted, ev.LinkFailed)} == {"network"}
    assert not realtime_server.conns


@pytest.mark.parametrize(
    ("status", "hurries"), [(503, True), (401, False), (400, False)], ids=["5xx", "401", "400"]
)
async def test_a_waiting_turn_cuts_a_network_backoff_short(
    key_server, realtime_server, status, hurries
):
    """Found by the soak: after an outage the user's press waited out a 20 s backoff.

    ``connect()`` again (the core does so for a turn while the link retries) ends the
    pause after a network or server failure, but never a refusal's or bad config's.
    """
    key_server.plan = [(status, {"error": {"message": "nope", "code": "x"}})]
    slow = Backoff(initial_s=60.0, max_s=60.0, jitter=0.0, slow_s=60.0)
    link = make_link(key_server, realtime_server, backoff=slow)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkFailed)))
        await asyncio.sleep(0.05)  # in the pause now
        link.connect()  # a press
        if hurries:
            await until(lambda: bool(of_type(posted, ev.LinkUp)))
        else:
            await asyncio.sleep(0.3)
    assert bool(of_type(posted, ev.LinkUp)) is hurries
    assert len(key_server.requests) == (2 if hurries else 1)


async def test_auth_close_retries_once_then_reports_refused(key_server, realtime_server):
    """Close 3000: one quick retry with a new key; a second 3000 is reported as "refused"."""
    realtime_server.plan = [closer(3000, "invalid_api_key")] * 2
    link = make_link(key_server, realtime_server)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
    assert [(f.kind, f.message) for f in of_type(posted, ev.LinkFailed)] == [
        ("refused", "refused: invalid_api_key")
    ]
    assert len(key_server.requests) == 3


async def test_shape_close_is_a_config_error(key_server, realtime_server):
    """Close 4000 (request shape) is a configuration error, retried slowly."""
    realtime_server.plan = [closer(4000, "beta_api_shape_disabled")]
    link = make_link(key_server, realtime_server)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
    assert [f.kind for f in of_type(posted, ev.LinkFailed)] == ["config"]


async def test_upgrade_refused_with_http_status(key_server):
    """An HTTP 503 instead of the WebSocket upgrade is a server failure."""

    def refuse(conn: ServerConnection, request: Any) -> Any:
        return conn.respond(503, "busy\n")

    async def never(ws: ServerConnection) -> None:
        raise AssertionError("upgrade should have been refused")

    async with serve(never, "127.0.0.1", 0, process_request=refuse) as server:
        port = server.sockets[0].getsockname()[1]
        link = make_link(key_server, f"ws://127.0.0.1:{port}/v1/realtime")
        async with running(link) as posted:
            link.connect()
            await until(lambda: len(of_type(posted, ev.LinkFailed)) >= 2)
    assert {f.kind for f in of_type(posted, ev.LinkFailed)} == {"server"}


async def test_dead_peer_is_noticed_by_keepalive(key_server, realtime_server):
    """A peer that stops answering pings is declared lost, and the link reconnects."""

    async def freeze(server: FakeRealtime, conn: Conn) -> None:
        await server.created(conn)
        conn.ws.transport.pause_reading()  # no pongs from now on
        while not server.stopping:
            await asyncio.sleep(0.05)

    realtime_server.plan = [freeze]
    link = make_link(key_server, realtime_server, ping_interval_s=0.1, ping_timeout_s=0.2)
    async with running(link) as posted:
        link.connect()
        await until(lambda: len(of_type(posted, ev.LinkUp)) >= 2)
    assert of_type(posted, ev.LinkDown)[0].retrying


def test_plain_text_urls_only_to_loopback():
    """ws:// and http:// are refused for remote hosts, with the URL in the message."""
    from hark.net.keys import LinkConfigError

    good = {"backend_url": "https://keys.example/v1", "device_token": "t"}
    WebSocketLink(**good)
    WebSocketLink(**good, realtime_url="ws://localhost:8765/v1/realtime")
    WebSocketLink(**good, realtime_url="ws://[::1]:8765/v1/realtime")
    WebSocketLink(**good, realtime_url="ws://127.0.0.2/v1/realtime")
    WebSocketLink(backend_url="http://127.0.0.1:9/keys", device_token="t")
    for bad in ("ws://api.example/v1/realtime", "http://api.example/", "ftp://x/"):
        with pytest.raises(LinkConfigError, match=re.escape(bad)):
            WebSocketLink(**good, realtime_url=bad)
    with pytest.raises(LinkConfigError, match=re.escape("http://keys.example")):
        WebSocketLink(backend_url="http://keys.example/v1", device_token="t")


@pytest.mark.parametrize(
    "bad",
    [
        "http://127.0.0.1:9/v1/realtime/client secrets",
        "http://127.0.0.1:9/keys\r\nX-Injected: 1",
        "http://127.0.0.1:99999/keys",
    ],
)
def test_a_url_no_client_can_send_is_refused_at_construction(bad: str) -> None:
    """A backend or realtime URL with a space, CR/LF or a bad port is a named LinkConfigError
    when the link is built (it used to raise InvalidURL inside the link's task, which
    ended the daemon with exit 70 and systemd restarted it every few seconds); the CLI
    turns it into exit 78, which the unit does not restart."""
    from hark.cli import EX_CONFIG, _start_failure
    from hark.net.keys import LinkConfigError

    with pytest.raises(LinkConfigError, match="key backend URL") as refused:
        WebSocketLink(backend_url=bad, device_token="t")
    assert _start_failure(refused.value) == (EX_CONFIG, str(refused.value))
    realtime = bad.replace("http://", "ws://")
    with pytest.raises(LinkConfigError, match="realtime URL"):
        WebSocketLink(backend_url="http://127.0.0.1:9/k", device_token="t", realtime_url=realtime)


# --------------------------------------------------------------------------- secrets stay put


async def test_backend_redirect_is_refused_and_the_token_stays(key_server, realtime_server):
    """A backend answering 302 to another server is a config failure of the key backend
    naming the status and host; the other server never sees the device token."""
    from tests.device.test_key_fetch import ScriptedHttp

    with ScriptedHttp() as elsewhere:
        location = elsewhere.url("/keys")
        with ScriptedHttp(lambda seen: (302, {"Location": location}, b"")) as redirector:
            link = make_link(key_server, realtime_server, backend_url=redirector.url())
            async with running(link) as posted:
                link.connect()
                await until(lambda: bool(of_type(posted, ev.LinkFailed)))
        assert elsewhere.seen == []
    failed = of_type(posted, ev.LinkFailed)[0]
    assert (failed.kind, failed.part) == ("config", "backend")
    assert f"answered 302, redirecting to http://127.0.0.1:{elsewhere.port}" in failed.message
    assert not realtime_server.conns


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("origin", ["same", "other"])
async def test_realtime_redirect_is_refused_and_the_key_stays(
    key_server, realtime_server, status, origin
):
    """An upgrade answered with a redirect is refused: no second request carries the ek_ key,
    to the same origin (where websockets keeps Authorization) or another (where it drops it
    but still follows)."""
    upgrades: list[tuple[str, str | None]] = []

    def redirect(conn: ServerConnection, request: Any) -> Any:
        upgrades.append((request.path, request.headers.get("Authorization")))
        if request.path.startswith("/v1/realtime"):
            response = conn.respond(status, "moved\n")
            target = "/v1/elsewhere" if origin == "same" else realtime_server.url
            response.headers["Location"] = target
            return response
        return None  # /v1/elsewhere: upgrade, as a lure

    async def lure(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with serve(lure, "127.0.0.1", 0, process_request=redirect) as server:
        port = server.sockets[0].getsockname()[1]
        link = make_link(key_server, f"ws://127.0.0.1:{port}/v1/realtime")
        async with running(link) as posted:
            link.connect()
            await until(lambda: bool(of_type(posted, ev.LinkFailed)))
    assert upgrades == [("/v1/realtime?model=gpt-realtime", "Bearer ek_test_0")]
    assert not realtime_server.conns
    failed = of_type(posted, ev.LinkFailed)[0]
    assert (failed.kind, failed.part) == ("config", "realtime")
    where = f"127.0.0.1:{port}" if origin == "same" else realtime_server.url.split("/")[2]
    assert f"upgrade with {status}, redirecting to ws://{where}" in failed.message
    assert "ek_" not in failed.message


async def test_a_key_with_a_line_break_never_reaches_a_header(key_server, realtime_server):
    """A backend answer whose value carries CR/LF (header injection) is a named key-backend
    failure; no upgrade request is sent, so no injected header is either."""
    key_server.plan = [
        (200, {"value": "ek_x\r\nX-Injected: 1", "expires_at": int(time.time() + 600)})
    ]
    link = make_link(key_server, realtime_server)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
    failed = of_type(posted, ev.LinkFailed)
    assert [(f.kind, f.part) for f in failed] == [("server", "backend")]
    assert "not with a key (value: " in failed[0].message
    assert "X-Injected" not in failed[0].message
    assert all("X-Injected" not in conn.headers for conn in realtime_server.conns)
    assert len(realtime_server.conns) == 1  # only the retry, with a good key


# --------------------------------------------------------------------------- receiving


async def test_bad_and_unknown_frames_do_not_stop_the_link(key_server, realtime_server):
    """Garbage and bad fields become ProtocolError events; unknown types are counted; it stays."""

    async def noisy(server: FakeRealtime, conn: Conn) -> None:
        await server.created(conn)
        for frame in (
            "{not json",
            json.dumps({"type": "input_audio_buffer.speech_started", "item_id": 5}),
            json.dumps({"type": "response.audio.delta", "delta": "AAAA"}),
            json.dumps({"type": "something.new"}),
            json.dumps({"type": "rate_limits.updated", "rate_limits": []}),
        ):
            await conn.ws.send(frame)
        await conn.ws.send(b"\x00binary")
        await conn.ws.send(
            json.dumps(
                {"type": "input_audio_buffer.speech_started", "audio_start_ms": 5, "item_id": "u"}
            )
        )
        await ok(server, conn)

    realtime_server.plan = [noisy]
    link = make_link(key_server, realtime_server)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.SpeechStarted)))
    assert len(of_type(posted, ev.ProtocolError)) == 3
    assert of_type(posted, ev.SpeechStarted) == [ev.SpeechStarted(5, "u")]
    assert not of_type(posted, ev.LinkDown)
    assert link.decoder.unknown_counts == {"response.audio.delta": 1, "something.new": 1}


async def test_only_completed_tool_calls_are_posted(key_server, realtime_server):
    """Over a real socket: calls cut off by an incomplete or a cancelled response are not
    posted as FunctionCallRequested (so no tool runs); the completed one is, once."""
    from tests.device.test_realtime import tool_call_frames

    async def tools(server: FakeRealtime, conn: Conn) -> None:
        await server.created(conn)
        frames = [
            *tool_call_frames(
                "resp_1",
                "call_1",
                '{"seconds": 3',
                item_status="incomplete",
                status="incomplete",
                reason="max_output_tokens",
            ),
            *tool_call_frames(
                "resp_2",
                "call_2",
                '{"sec',
                item_status="incomplete",
                status="cancelled",
                reason="turn_detected",
            ),
            *tool_call_frames("resp_3", "call_3", '{"seconds": 300}'),
        ]
        for frame in frames:
            await conn.ws.send(json.dumps(frame))
        await ok(server, conn)

    realtime_server.plan = [tools]
    link = make_link(key_server, realtime_server)
    async with running(link) as posted:
        link.connect()
        await until(lambda: len(of_type(posted, ev.ResponseDone)) == 3)
    assert of_type(posted, ev.FunctionCallRequested) == [
        ev.FunctionCallRequested("resp_3", "item_call_3", "call_3", "set_timer", '{"seconds": 300}')
    ]
    assert [d.status for d in of_type(posted, ev.ResponseDone)] == [
        "incomplete",
        "cancelled",
        "completed",
    ]
    assert not of_type(posted, ev.ProtocolError)


async def test_audio_is_dropped_and_counted_while_down(key_server, realtime_server):
    """send() never blocks: while down, audio is dropped and counted."""
    link = make_link(key_server, realtime_server)
    link.send(ev.SendAudio(b"\0\0"))
    link.send(ev.CommitAudio())
    assert (link.stats.dropped_audio, link.stats.dropped_commands) == (1, 1)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
        link.send(ev.SendAudio(b"\1\0"))
        await until(lambda: bool(realtime_server.conns[0].received))
    assert realtime_server.conns[0].received == [
        {"type": "input_audio_buffer.append", "audio": "AQA="}
    ]


async def test_disconnect_closes_and_stops_retrying(key_server, realtime_server):
    """disconnect() closes the session, posts LinkDown(retrying=False) and connects no more."""
    link = make_link(key_server, realtime_server)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
        link.disconnect("user asked")
        await until(lambda: realtime_server.conns[0].closed)
        await asyncio.sleep(0.1)
    assert of_type(posted, ev.LinkDown) == [ev.LinkDown("user asked", retrying=False)]
    assert len(realtime_server.conns) == 1


# --------------------------------------------------------------------------- rotation and replay

CONFIG = ev.SessionConfig(instructions="Be brief.", turn_detection=None)


async def talk(link: WebSocketLink, conn: Conn, user: str, assistant: str, n: int) -> None:
    """One text turn as the server would report it (user item, assistant transcript)."""
    link.send(ev.CreateItem(ev.Item("", "message", "user", text=user)))
    await until(lambda: sum(e["type"] == "conversation.item.create" for e in conn.received) >= n)
    for frame in (
        {"type": "response.created", "response": {"id": f"resp_{n}", "status": "in_progress"}},
        {
            "type": "response.output_audio_transcript.done",
            "response_id": f"resp_{n}",
            "item_id": f"item_a{n}",
            "content_index": 0,
            "transcript": assistant,
        },
        {"type": "response.done", "response": {"id": f"resp_{n}", "status": "completed"}},
    ):
        await conn.ws.send(json.dumps(frame))


def replayed(conn: Conn) -> list[tuple[str, str, str]]:
    return [
        (e["item"]["role"], e["item"]["content"][0]["type"], e["item"]["content"][0]["text"])
        for e in conn.received
        if e["type"] == "conversation.item.create"
    ]


def remembered(*texts: tuple[str, str]) -> History:
    """A history holding these (role, text) messages, as a restart loads it from disk."""
    history = History()
    for n, (role, text) in enumerate(texts):
        item = ev.Item(f"old{n}", "message", role, "completed", text)  # type: ignore[arg-type]
        history.observe(ev.ItemDone(item, None))
    return history


async def test_rotate_carries_the_conversation_over(key_server, realtime_server):
    """rotate(): a new session gets the last config, then the transcripts as text items."""
    history = remembered(("assistant", "Welcome back."))
    link = make_link(key_server, realtime_server, replay=history.replay, replay_budget_chars=1000)
    async with running(link, history) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
        first = realtime_server.conns[0]
        link.send(ev.UpdateSession(CONFIG))
        await talk(link, first, "What is two plus two?", "Four.", 2)
        await talk(link, first, "And three?", "Six.", 3)
        await until(lambda: len(of_type(posted, ev.ResponseDone)) == 2)
        link.rotate()
        await until(lambda: len(of_type(posted, ev.LinkUp)) == 2)
        second = realtime_server.conns[1]
        await until(lambda: first.closed and len(second.received) >= 6)
        await asyncio.sleep(0.1)  # let the echoes of the replayed items arrive
    assert [e["type"] for e in first.received][:2] == [
        "conversation.item.create",  # the seeded item, replayed into the first session
        "session.update",
    ]
    assert second.received[0]["type"] == "session.update"
    assert second.received[0]["session"]["instructions"] == "Be brief."
    assert replayed(second) == [
        ("assistant", "output_text", "Welcome back."),
        ("user", "input_text", "What is two plus two?"),
        ("assistant", "output_text", "Four."),
        ("user", "input_text", "And three?"),
        ("assistant", "output_text", "Six."),
    ]
    # The echoes of replayed items are not news for the core.
    echoed = {e.item.id for e in of_type(posted, ev.ItemAdded)}
    assert not any(i.startswith("hark_rp") for i in echoed)
    assert not of_type(posted, ev.LinkDown)
    assert link.stats.rotations == 1


async def test_replay_respects_the_budget(key_server, realtime_server):
    """Only the newest transcripts that fit replay_budget_chars are replayed."""
    history = remembered(
        ("user", "first long question"), ("assistant", "answer"), ("user", "thanks")
    )
    link = make_link(key_server, realtime_server, replay=history.replay, replay_budget_chars=12)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
        await until(lambda: len(realtime_server.conns[0].received) >= 2)
    assert replayed(realtime_server.conns[0]) == [
        ("assistant", "output_text", "answer"),
        ("user", "input_text", "thanks"),
    ]


async def test_a_failed_rotation_keeps_the_old_session(key_server, realtime_server):
    """The next session cannot be opened: the old one goes on, and LinkUp names it again
    (the core then tries later); nothing is torn down."""
    link = make_link(key_server, realtime_server)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
        key_server.plan = [(503, {"error": {"message": "busy"}})]
        link.rotate()
        await until(lambda: len(of_type(posted, ev.LinkUp)) == 2)
        first, again = of_type(posted, ev.LinkUp)
        assert again.session_id == first.session_id
        assert not realtime_server.conns[0].closed
        link.send(ev.CreateItem(ev.Item("", "message", "user", text="still there?")))
        await until(lambda: bool(realtime_server.conns[0].received))
    assert not of_type(posted, ev.LinkDown) and not of_type(posted, ev.LinkFailed)


async def test_unplanned_loss_reconnects_and_replays(key_server, realtime_server):
    """A dropped session posts LinkDown(retrying), reconnects and replays the history."""
    history = History()
    link = make_link(key_server, realtime_server, replay=history.replay)
    async with running(link, history) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
        first = realtime_server.conns[0]
        await talk(link, first, "Hello?", "Hi!", 1)
        await until(lambda: bool(of_type(posted, ev.ResponseDone)))
        await first.ws.close(1011, "internal error")
        await until(lambda: len(of_type(posted, ev.LinkUp)) == 2)
        second = realtime_server.conns[1]
        await until(lambda: len(second.received) >= 2)
    assert of_type(posted, ev.LinkDown)[0].retrying
    assert replayed(second) == [
        ("user", "input_text", "Hello?"),
        ("assistant", "output_text", "Hi!"),
    ]


async def test_session_expired_reconnects_at_once(key_server, realtime_server):
    """session_expired is not an error for the core: LinkDown("session expired") and reconnect."""

    async def expire(server: FakeRealtime, conn: Conn) -> None:
        await server.created(conn)
        await conn.ws.send(
            json.dumps(
                {
                    "type": "error",
                    "error": {
                        "type": "invalid_request_error",
                        "code": "session_expired",
                        "message": "Your session hit the maximum duration of 60 minutes.",
                    },
                }
            )
        )
        await conn.ws.close(1001, "expired")

    realtime_server.plan = [expire]
    link = make_link(key_server, realtime_server, backoff=Backoff(initial_s=60.0, max_s=60.0))
    async with running(link) as posted:
        link.connect()
        await until(lambda: len(of_type(posted, ev.LinkUp)) == 2)
    assert of_type(posted, ev.LinkDown) == [ev.LinkDown("session expired", retrying=True)]
    assert not of_type(posted, ev.ServerError)
    assert not of_type(posted, ev.LinkFailed)


# --------------------------------------------------------------------------- against hark_sim

CLIENT_EVENT = pydantic.TypeAdapter(
    Annotated[RealtimeClientEvent, pydantic.Field(discriminator="type")]
)
MANUAL = ev.SessionConfig(instructions="Repeat after me.", turn_detection=None)
FRAME_BYTES = 960  # 20 ms of 24 kHz PCM16


@pytest.fixture
def sim() -> Iterator[SimHandle]:
    config = SimConfig(
        api_key="sk-sim-test", brain="parrot", realtime_factor=0.0, max_session_s=3600.0
    )
    with start_sim(config) as handle:
        yield handle


def sim_link(sim: SimHandle, transport: type[WebSocketLink] = WebSocketLink, **kwargs: Any) -> Any:
    """A link of ``transport`` (``WebRTCLink`` subclasses it) to ``sim``, fast retries."""
    options: dict[str, Any] = {
        "backend_url": sim.base_url + "/realtime/client_secrets",
        "device_token": sim.api_key,
        "realtime_url": sim.ws_url,
        "backoff": Backoff(initial_s=0.02, max_s=0.1, slow_s=0.1),
    }
    options.update(kwargs)
    return transport(**options)


def speech(seconds: float, seed: int) -> bytes:
    """Deterministic pseudo-random PCM16 (the parrot does not care what it sounds like)."""
    return random.Random(seed).randbytes(int(seconds * 24000) * 2)


async def spoken_turn(link: WebSocketLink, posted: list[ev.Event], pcm: bytes) -> bytes:
    """Append in 20 ms frames, commit, ask for a response; return the reply audio."""
    done_before = len(of_type(posted, ev.ResponseDone))
    start = len(posted)
    for offset in range(0, len(pcm), FRAME_BYTES):
        link.send(ev.SendAudio(pcm[offset : offset + FRAME_BYTES]))
    link.send(ev.CommitAudio())
    link.send(ev.CreateResponse())
    await until(lambda: len(of_type(posted, ev.ResponseDone)) > done_before)
    return b"".join(e.pcm for e in of_type(posted[start:], ev.AudioDelta))


async def text_turn(link: WebSocketLink, posted: list[ev.Event], text: str) -> None:
    done_before = len(of_type(posted, ev.ResponseDone))
    link.send(ev.CreateItem(ev.Item("", "message", "user", text=text)))
    link.send(ev.CreateResponse())
    await until(lambda: len(of_type(posted, ev.ResponseDone)) > done_before)
    await until(lambda: len(of_type(posted, ev.TranscriptDone)) > done_before)


def created_texts(received: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (e["item"]["role"], e["item"]["content"][0]["text"])
        for e in received
        if e["type"] == "conversation.item.create"
    ]


async def test_parrot_round_trip_is_byte_exact(sim):
    """Audio sent through the link comes back from the parrot sample for sample."""
    link = sim_link(sim)
    pcm = speech(1.5, seed=1)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
        link.send(ev.UpdateSession(MANUAL))
        reply = await spoken_turn(link, posted, pcm)
    assert reply == pcm
    assert not of_type(posted, ev.ServerError)
    assert not of_type(posted, ev.ProtocolError)
    assert sim.sessions[0].key_kind == "ephemeral"
    for event in sim.sessions[0].received:
        CLIENT_EVENT.validate_python(event)
    # Frames queued back to back leave as one append (the mic hands over two or more at
    # a time), in order, never more than MAX_FRAMES_PER_APPEND in one.
    sizes = [
        len(base64.b64decode(e["audio"]))
        for e in sim.sessions[0].received
        if e["type"] == "input_audio_buffer.append"
    ]
    assert sum(sizes) == len(pcm)
    assert len(sizes) < len(pcm) // FRAME_BYTES
    assert max(sizes) <= MAX_FRAMES_PER_APPEND * FRAME_BYTES


async def test_rotation_carries_history_into_the_new_sim_session(sim):
    """rotate(): the next sim session gets the config and the transcripts of both turns."""
    history = History()
    link = sim_link(sim, replay=history.replay)
    async with running(link, history) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
        link.send(ev.UpdateSession(MANUAL))
        await text_turn(link, posted, "Hello, simulator.")
        transcripts = [e.transcript for e in of_type(posted, ev.TranscriptDone)]
        link.rotate()
        await until(lambda: len(of_type(posted, ev.LinkUp)) == 2)
        await until(lambda: len(sim.sessions) == 2 and len(sim.sessions[1].received) >= 3)
        await until(lambda: sim.sessions[0].wait_closed(0))
    second = sim.sessions[1].received
    assert second[0]["type"] == "session.update"
    assert second[0]["session"]["instructions"] == "Repeat after me."
    assert created_texts(second) == [("user", "Hello, simulator."), ("assistant", transcripts[0])]
    assert not of_type(posted, ev.LinkDown)


async def test_sim_session_cap_is_rotated_before_it_expires(sim):
    """With a short session cap, the core (told the cap by LinkUp) has the link rotate
    before the sim ends the session: never a session_expired, never a LinkDown."""
    from hark.conversation import Conversation, Settings
    from hark.service.loop import App
    from hark.testing import NullMicrophone, RecordingIndicator, WavSpeaker

    sim.config.max_session_s = 1.5
    link = sim_link(sim)
    posted: list[ev.Event] = []
    settings = Settings(rotate_before_expiry_s=1.0, rotate_quiet_s=0.0, rotate_retry_s=0.1)
    app = App(
        Conversation(settings),
        link,
        NullMicrophone(),
        WavSpeaker(None, speed=0.0),
        RecordingIndicator(),
    )
    app.add_listener(lambda event, commands: posted.append(event))
    await app.start()
    try:
        await until(lambda: len(of_type(posted, ev.LinkUp)) >= 3)
    finally:
        await app.shutdown()
    ups = of_type(posted, ev.LinkUp)
    assert len({u.session_id for u in ups}) == len(ups)  # each a new session
    assert not of_type(posted, ev.LinkDown)
    assert not of_type(posted, ev.ServerError)


async def test_sim_session_expiry_reconnects_and_replays(sim):
    """If the cap is hit anyway (session_expired), the link reconnects and replays at once."""
    sim.config.max_session_s = 2.0
    history = History()
    link = sim_link(sim, replay=history.replay)  # no core here: nothing rotates
    async with running(link, history) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
        link.send(ev.UpdateSession(MANUAL))
        await text_turn(link, posted, "Remember me.")
        await until(lambda: len(of_type(posted, ev.LinkUp)) >= 2)
        await until(lambda: len(sim.sessions) >= 2 and len(sim.sessions[1].received) >= 2)
    assert ev.LinkDown("session expired", retrying=True) in posted
    assert created_texts(sim.sessions[1].received)[0] == ("user", "Remember me.")


async def test_sim_drop_mid_response_reconnects(sim):
    """The sim cutting the connection mid-response: LinkDown(retrying), then a new session."""
    sim.faults.drop_after_audio_deltas = 2
    link = sim_link(sim)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
        link.send(ev.UpdateSession(MANUAL))
        for offset in range(0, 48000, FRAME_BYTES):
            link.send(ev.SendAudio(speech(1.0, 2)[offset : offset + FRAME_BYTES]))
        link.send(ev.CommitAudio())
        link.send(ev.CreateResponse())
        await until(lambda: len(of_type(posted, ev.LinkUp)) == 2)
        sim.faults.drop_after_audio_deltas = None
    assert of_type(posted, ev.LinkDown)[0].retrying
    assert len(of_type(posted, ev.AudioDelta)) == 2


async def test_sim_refused_keys_mean_unauthorised(sim):
    """The sim refusing keys (backend 401) is reported as a revoked device."""
    sim.faults.refuse_keys = True
    link = sim_link(sim)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkFailed)))
        sim.faults.refuse_keys = False
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
    assert of_type(posted, ev.LinkFailed)[0].kind == "unauthorised"


async def test_sim_malformed_and_unknown_events(sim):
    """Malformed JSON becomes ProtocolError; unknown events are counted; the turn still works."""
    sim.faults.malformed_json = True
    sim.faults.unknown_events = True
    link = sim_link(sim)
    pcm = speech(0.5, seed=3)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
        link.send(ev.UpdateSession(MANUAL))
        reply = await spoken_turn(link, posted, pcm)
    assert reply == pcm
    assert len(of_type(posted, ev.ProtocolError)) >= 1
    assert link.decoder.unknown_counts["sim.unknown_event"] >= 1
    assert not of_type(posted, ev.LinkDown)


async def test_sim_delayed_events_still_round_trip(sim):
    """Delayed server events change nothing but timing."""
    sim.faults.event_delay_s = 0.05
    link = sim_link(sim)
    pcm = speech(0.5, seed=4)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
        link.send(ev.UpdateSession(MANUAL))
        reply = await spoken_turn(link, posted, pcm)
    assert reply == pcm


# --------------------------------------------------------------------------- the session's settings


def refuses_settings(param: str) -> Behaviour:
    """session.created, then every session.update is refused as an unknown parameter (the
    socket stays open, as OpenAI's does)."""

    async def behaviour(server: FakeRealtime, conn: Conn) -> None:
        await server.created(conn)
        async for raw in conn.ws:
            event = json.loads(raw)
            conn.received.append(event)
            if event["type"] == "session.update":
                error = {
                    "type": "invalid_request_error",
                    "code": "unknown_parameter",
                    "message": f"Unknown parameter: '{param}'.",
                    "param": param,
                    "event_id": event.get("event_id"),
                }
                await conn.ws.send(json.dumps({"type": "error", "error": error}))

    return behaviour


async def silent_on_settings(server: FakeRealtime, conn: Conn) -> None:
    """session.created, then nothing: session.update is never confirmed."""
    await server.created(conn)
    async for raw in conn.ws:
        conn.received.append(json.loads(raw))


async def test_a_session_is_handed_over_only_with_hark_settings(key_server, realtime_server):
    """The latest config goes out before anything else, and LinkUp waits for session.updated."""
    link = make_link(key_server, realtime_server)
    link.send(ev.UpdateSession(CONFIG))  # while down: kept for the next session
    assert link.stats.dropped_commands == 0
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
    first = realtime_server.conns[0].received
    assert first[0]["type"] == "session.update"
    assert first[0]["session"]["instructions"] == "Be brief."
    assert sum(e["type"] == "session.update" for e in first) == 1  # not sent twice


async def test_refused_settings_fail_closed_as_a_config_failure(key_server, realtime_server):
    """A server that refuses the settings never gets a turn: the socket is closed, the core
    hears a config failure naming the field (retried slowly), and LinkUp is never posted."""
    realtime_server.plan = [refuses_settings("session.tool_choice")] * 3
    link = make_link(key_server, realtime_server)
    link.send(ev.UpdateSession(CONFIG))
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkFailed)))
        link.send(ev.CreateItem(ev.Item("", "message", "user", text="Hello?")))
        await until(lambda: realtime_server.conns[0].closed)
    failed = of_type(posted, ev.LinkFailed)[0]
    assert failed.kind == "config" and failed.part == "realtime"
    assert "session.tool_choice" in failed.message
    assert not of_type(posted, ev.LinkUp)
    sent = [e["type"] for c in realtime_server.conns for e in c.received]
    assert set(sent) == {"session.update"}  # nothing else ever reached that server


async def test_settings_never_confirmed_is_a_server_failure(key_server, realtime_server):
    """No session.updated within the open timeout: the attempt fails and is retried."""
    realtime_server.plan = [silent_on_settings]
    link = make_link(key_server, realtime_server, open_timeout_s=0.3)
    link.send(ev.UpdateSession(CONFIG))
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
    assert len(realtime_server.conns) >= 2
    assert realtime_server.conns[0].closed


async def test_a_connect_right_after_a_disconnect_keeps_the_session(key_server, realtime_server):
    """disconnect() then connect() before the link acted on the first: the session is kept,
    and LinkUp names it again (the core, told it was going, waits for one)."""
    link = make_link(key_server, realtime_server)
    async with running(link) as posted:
        link.connect()
        await until(lambda: bool(of_type(posted, ev.LinkUp)))
        link.disconnect("idle")
        link.connect()  # the same loop pass: a press right after the idle hang-up
        await until(lambda: len(of_type(posted, ev.LinkUp)) == 2)
        await asyncio.sleep(0.1)
    first, again = of_type(posted, ev.LinkUp)
    assert again.session_id == first.session_id
    assert not of_type(posted, ev.LinkDown)
    assert len(realtime_server.conns) == 1
