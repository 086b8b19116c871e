"""The Realtime link: a fresh key per connect attempt, the WebSocket, retries, rotation and replay.

The pure parts live in ``hark.net.keys`` (``Backoff``, ``RetryPolicy``, ``classify_close``),
tested without I/O; ``WebSocketLink`` wires them to websockets. What to replay comes
from the conversation's one memory (``hark.history``) through the ``replay`` callable
the composition root hands in; when to rotate is the core's decision (``Rotate``).
Only this module and ``hark.net.keys`` do network I/O; foreign exceptions stop here and
become ``LinkFailed``/``LinkDown`` events. It must not import the conversation,
soundcard or gpio modules, and must never log a key or the device token.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from hark import events as ev
from hark import realtime
from hark.net.keys import (
    Backoff,
    Failure,
    KeyFetchError,
    KeySource,
    RetryPolicy,
    classify_close,
    classify_status,
    is_loopback_host,
    printable,
    retry_after_s,
    session_url,
    tls_context,
    tls_failure,
    where_to,
)
from hark.ports import Post

log = logging.getLogger(__name__)

DEFAULT_REALTIME_URL = "wss://api.openai.com/v1/realtime"
REPLAY_PREFIX = "hark_rp"
"""Ids of replayed items and their events, so their echoes are not posted again."""
CONFIG_PREFIX = "hark_su"
"""Event ids of our ``session.update``s, so the server's answer to one is recognised."""
MAX_FRAMES_PER_APPEND = 10
"""Audio frames merged into one append at most (200 ms: 12.8 KB of base64)."""

# --------------------------------------------------------------------------- the link


class _connect_without_redirects(connect):  # noqa: N801  (websockets' class is lower case)
    """``websockets``' ``connect`` that follows no redirect: the upgrade carries the ``ek_`` key.

    Its default follows up to ``WEBSOCKETS_MAX_REDIRECTS`` (10) of them, keeping the
    ``Authorization`` header when the new URL has the same origin; here a 3xx is raised
    as the ``InvalidStatus`` it is.
    """

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


class ChannelClosedError(Exception):
    """A ``Channel`` that is not a WebSocket was closed (websockets raises its own)."""


class Channel(Protocol):
    """One session's ordered text stream to the Realtime server: what a transport dials.

    A ``websockets`` connection is one as it is; ``hark.net.webrtc`` wraps the data channel.
    ``recv`` and iteration raise ``ConnectionClosed`` or ``ChannelClosedError`` once closed.
    """

    @property
    def close_code(self) -> int | None: ...

    @property
    def close_reason(self) -> str | None: ...

    async def send(self, message: str) -> None: ...

    async def recv(self) -> str | bytes: ...

    def __aiter__(self) -> AsyncIterator[str | bytes]: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


CLOSED: tuple[type[Exception], ...] = (ConnectionClosed, ChannelClosedError)


class _AttemptFailedError(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass(eq=False)
class _Session:
    ws: Channel
    session_id: str
    expires_at: float | None
    opened_s: float
    reader: asyncio.Task[None] | None = None
    expired: bool = False
    last_error: ev.ServerError | None = None
    replay_ids: set[str] = field(default_factory=set)
    applied: ev.SessionConfig | None = None
    """The configuration the server confirmed when the session opened."""


@dataclass
class LinkStats:
    """Counters for the status line and tests."""

    attempts: int = 0
    key_fetches: int = 0
    sessions: int = 0
    rotations: int = 0
    dropped_audio: int = 0
    dropped_commands: int = 0


class WebSocketLink:
    """The real ``ports.Link``, built from plain values (``hark.service.wiring`` maps the config).

    Posts ``LinkUp`` (once the server took the config and the conversation has been
    replayed), ``LinkDown``, ``LinkFailed`` and every decoded server event except
    ``session.created`` (it becomes ``LinkUp``), ``session_expired`` (it becomes
    ``LinkDown("session expired")``) and the echoes of replayed items. ``replay(budget)``
    gives the items to recreate the conversation with in each new session. Call its
    methods on the loop's thread only.
    """

    def __init__(
        self,
        *,
        backend_url: str,
        device_token: str,
        model: str = "gpt-realtime",
        realtime_url: str = DEFAULT_REALTIME_URL,
        backoff: Backoff | None = None,
        ping_interval_s: float = 5.0,
        ping_timeout_s: float = 5.0,
        open_timeout_s: float = 10.0,
        http_timeout_s: float = 10.0,
        stable_s: float = 30.0,
        replay: Callable[[int], Sequence[ev.Item]] = lambda budget_chars: (),
        replay_budget_chars: int = 4000,
        key_request_body: Mapping[str, Any] | None = None,
        send_queue_max: int = 256,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._url = session_url(realtime_url, model)
        self._keys = KeySource(backend_url, device_token, key_request_body, http_timeout_s)
        parts = urllib.parse.urlsplit(self._url)
        self._loopback = is_loopback_host(parts.hostname)
        self._plain = parts.scheme == "ws"
        self._policy = RetryPolicy(backoff or Backoff(), rand)
        self._ping_interval_s = ping_interval_s
        self._ping_timeout_s = ping_timeout_s
        self._open_timeout_s = open_timeout_s
        self._stable_s = stable_s
        self._replay = replay
        self._replay_budget_chars = replay_budget_chars
        self._send_queue_max = send_queue_max
        self.decoder = realtime.Decoder()
        self.stats = LinkStats()
        self._config: ev.SessionConfig | None = None
        self._post: Post | None = None
        self._want = False
        self._hurry = False
        self._disconnect_reason = ""
        self._rotate_requested = False
        self._current: _Session | None = None
        # (command, its JSON); audio is encoded by the sender, merged with the frames
        # queued right behind it
        self._queue: collections.deque[tuple[ev.WireCommand, str | None]] = collections.deque()
        self._queue_ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._replay_counter = 0
        self._config_counter = 0

    # -- the Link protocol (called on the loop) ------------------------------------------------

    def connect(self) -> None:
        if self._want:
            # Someone is waiting (the core asks again for a turn): a network or server
            # failure's backoff ends now, once per press (see ``RetryDecision.may_hurry``).
            self._hurry = True
            self._wake.set()
            return
        self._want = True
        self._wake.set()
        session = self._current
        if session is not None and session.reader is not None and not session.reader.done():
            # A disconnect not yet carried out: the session goes on, and the core, which
            # took it for gone, hears so (it waits for a LinkUp).
            self._link_up(session)

    def disconnect(self, reason: str) -> None:
        if not self._want:
            return
        self._want = False
        self._disconnect_reason = reason
        if self._current is None and self._post is not None:
            self._post(ev.LinkDown(reason, retrying=False))
        self._wake.set()

    def rotate(self) -> None:
        """Open the next session, replay into it, switch; ``LinkUp`` names the one serving.

        A failed attempt keeps the old session: ``LinkUp`` then names it again.
        """
        if self._current is not None:
            self._rotate_requested = True
            self._wake.set()

    def send(self, command: ev.WireCommand) -> None:
        if isinstance(command, ev.UpdateSession):
            # Kept while down too: every session is opened with it before LinkUp.
            self._config = command.config
        if self._current is None:
            if not isinstance(command, ev.UpdateSession):
                self._count_drop(command)
            return
        if len(self._queue) >= self._send_queue_max:
            log.warning(
                "send queue full (%d); dropping %s", len(self._queue), type(command).__name__
            )
            self._count_drop(command)
            return
        if isinstance(command, ev.SendAudio):
            encoded = None
        elif isinstance(command, ev.UpdateSession):
            encoded = realtime.encode(command, self._config_id())
        else:
            encoded = realtime.encode(command)
        self._queue.append((command, encoded))
        self._queue_ready.set()

    async def run(self, post: Post) -> None:
        self._post = post
        sender = asyncio.create_task(self._send_loop(), name="link-sender")
        try:
            while True:
                if not self._want:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self._attempt()
        finally:
            sender.cancel()
            session, self._current = self._current, None
            if session is not None:
                await self._close(session, "shutdown")

    # -- attempts ---------------------------------------------------------------------------

    def _count_drop(self, command: ev.WireCommand) -> None:
        if isinstance(command, ev.SendAudio):
            self.stats.dropped_audio += 1
        else:
            self.stats.dropped_commands += 1

    def _emit(self, event: ev.Event) -> None:
        if self._post is not None:
            self._post(event)

    async def _attempt(self) -> None:
        try:
            session = await self._open()
        except _AttemptFailedError as exc:
            decision = self._policy.failed(exc.failure)
            log.warning(
                "connect failed (%s): %s; retry in %.1f s",
                exc.failure.kind,
                exc.failure.message,
                decision.delay_s,
            )
            if decision.report is not None:
                self._emit(decision.report)
            await self._pause(decision.delay_s, decision.may_hurry)
            return
        if not self._want:  # disconnect() arrived while we were connecting
            await self._close(session, "disconnect")
            return
        self._policy.authorised()
        await self._serve(session)

    def _config_id(self) -> str:
        self._config_counter += 1
        return f"{CONFIG_PREFIX}{self._config_counter}"

    async def _open(self) -> _Session:
        """Fetch a fresh key, connect, wait for ``session.created``, apply the configuration.

        A session is only handed over once the server has taken hark's settings: one on
        the server's defaults has none of the agent's instructions, tools or voice, and
        talking through it would be worse than not talking (fail closed).
        """
        self.stats.attempts += 1
        try:
            self.stats.key_fetches += 1
            grant = await self._keys.fetch()
        except KeyFetchError as exc:
            failure = Failure(exc.kind, str(exc), exc.retry_after_s, part="backend")
            raise _AttemptFailedError(failure) from None
        ws = await self._dial(grant.value)
        error: ev.ServerError | None = None
        created: ev.SessionCreated | None = None
        try:
            async with asyncio.timeout(self._open_timeout_s):
                while created is None:
                    event = self.decoder.decode(await ws.recv())
                    if isinstance(event, ev.SessionCreated):
                        created = event
                    elif isinstance(event, ev.ServerError):
                        error = event
        except CLOSED:
            raise _AttemptFailedError(
                classify_close(ws.close_code, ws.close_reason or "", error)
            ) from None
        except TimeoutError:
            await ws.close()
            raise _AttemptFailedError(Failure("network", "no session.created in time")) from None
        except BaseException:
            await ws.close()
            raise
        applied = await self._configure(ws)
        self.stats.sessions += 1
        log.info("session %s open", created.session_id)
        session = _Session(ws, created.session_id, created.expires_at, time.monotonic())
        session.applied = applied
        return session

    async def _dial(self, key: str) -> Channel:
        """Open the transport with ``key``; failures raise ``_AttemptFailedError``.

        The WebSocket here; ``hark.net.webrtc.WebRTCLink`` overrides it (and the audio).
        """
        try:
            tls: dict[str, Any] = {}
            if not self._plain:  # the CA store loads once, in a worker thread
                tls["ssl"] = await asyncio.to_thread(tls_context)
            return await _connect_without_redirects(
                self._url,
                additional_headers={"Authorization": f"Bearer {key}"},
                user_agent_header="hark",
                compression=None,  # base64 audio barely compresses; spare the Pi's CPU
                proxy=None if self._loopback else True,
                open_timeout=self._open_timeout_s,
                ping_interval=self._ping_interval_s,
                ping_timeout=self._ping_timeout_s,
                close_timeout=2.0,
                max_size=16 * 1024 * 1024,
                **tls,
            )
        except InvalidStatus as exc:
            raise _AttemptFailedError(self._refused_upgrade(exc)) from None
        except (InvalidURI, ValueError) as exc:
            message = f"realtime URL {self._url!r} cannot be used: {printable(str(exc))}"
            raise _AttemptFailedError(Failure("config", message)) from None
        except (InvalidHandshake, OSError, TimeoutError) as exc:
            said = tls_failure(exc) or repr(exc)
            raise _AttemptFailedError(Failure("network", f"cannot connect: {said}")) from None

    async def _configure(self, ws: Channel) -> ev.SessionConfig | None:
        """Send the latest ``session.update`` and wait until the server confirms it.

        A refusal (an ``error`` answering it: a field this server does not know, a value
        it does not take) closes the socket and fails the attempt as a config failure,
        retried slowly; so does silence.
        """
        config = self._config
        if config is None:
            return None
        eid = self._config_id()
        refused: ev.ServerError | None = None
        try:
            await ws.send(realtime.encode(ev.UpdateSession(config), eid))
            async with asyncio.timeout(self._open_timeout_s):
                while True:
                    event = self.decoder.decode(await ws.recv())
                    if isinstance(event, ev.SessionUpdated):
                        return config
                    if isinstance(event, ev.ServerError) and event.event_id == eid:
                        refused = event
                        break
        except CLOSED:
            raise _AttemptFailedError(
                classify_close(ws.close_code, ws.close_reason or "", None)
            ) from None
        except TimeoutError:
            await ws.close()
            raise _AttemptFailedError(Failure("server", "no session.updated in time")) from None
        except BaseException:
            await ws.close()
            raise
        await ws.close(1000, "session settings refused")
        message = f"{refused.code}: {printable(refused.message)}"
        log.error("the Realtime server refused the session settings (%s)", message)
        failure = f"the Realtime server refused the session settings ({message})"
        raise _AttemptFailedError(Failure("config", failure))

    def _refused_upgrade(self, exc: InvalidStatus) -> Failure:
        """An HTTP answer instead of the upgrade; a redirect names where it pointed."""
        status = exc.response.status_code
        headers = exc.response.headers
        if 300 <= status < 400:
            where = where_to(self._url, headers.get("Location"))
            message = (
                f"the Realtime server answered the upgrade with {status}, redirecting to "
                f"{where}; refused: the key is only ever sent to realtime.url itself"
            )
            return classify_status(status, message)
        failure = classify_status(status, f"the Realtime server refused the upgrade: HTTP {status}")
        if status == 429:
            wait_s = retry_after_s(headers.get("Retry-After"))
            return Failure(failure.kind, failure.message, wait_s)
        return failure

    async def _pause(self, delay_s: float, may_hurry: bool = False) -> None:
        """Sleep before the next attempt; cut short by ``disconnect()``, and when
        ``may_hurry`` by a ``connect()`` during the pause (a user is waiting)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay_s
        self._hurry = False
        while self._want and (remaining := deadline - loop.time()) > 0:
            if self._hurry and may_hurry:
                log.info("a turn is waiting: retrying now, %.0f s early", remaining)
                break
            self._wake.clear()
            # Not wait_for: on 3.11 it swallows a cancel that comes with the wake-up
            # (shutdown does both at once), and the link would then never stop.
            waiter = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({waiter}, timeout=remaining)
            finally:
                waiter.cancel()

    # -- an open session --------------------------------------------------------------------

    async def _serve(self, session: _Session) -> None:
        await self._activate(session)
        while True:
            assert session.reader is not None
            waiter = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait({session.reader, waiter}, return_when="FIRST_COMPLETED")
            waiter.cancel()
            self._wake.clear()
            if not self._want:
                self._current = None
                self._queue.clear()
                await self._close(session, "disconnect")
                self._emit(ev.LinkDown(self._disconnect_reason, retrying=False))
                return
            if session.reader.done():
                await self._lost(session)
                return
            if self._rotate_requested:
                self._rotate_requested = False
                session = await self._rotate_from(session)

    async def _activate(self, session: _Session) -> None:
        """Make ``session`` current: resend the config, replay history, then post ``LinkUp``."""
        self._rotate_requested = False  # a fresh session answers any rotation asked before
        preamble: list[str] = []
        if self._config is not None and self._config != session.applied:
            # Changed while this session waited to take over (a rotation): send the latest.
            preamble.append(realtime.encode(ev.UpdateSession(self._config), self._config_id()))
        for item in self._replay(self._replay_budget_chars):
            self._replay_counter += 1
            ident = f"{REPLAY_PREFIX}{self._replay_counter}"
            session.replay_ids.add(ident)
            preamble.append(realtime.encode(ev.CreateItem(_with_id(item, ident)), ident))
        async with self._send_lock:
            self._current = session
            with contextlib.suppress(*CLOSED):
                for text in preamble:
                    await session.ws.send(text)
        log.info("session %s active (replayed %d items)", session.session_id, len(preamble))
        session.reader = asyncio.create_task(self._read(session), name="link-reader")
        self._link_up(session)

    def _link_up(self, session: _Session) -> None:
        """Tell the core which session serves it now, and for how long it may."""
        left_s = None if session.expires_at is None else session.expires_at - time.time()
        self._emit(ev.LinkUp(session.session_id, session.expires_at, left_s))

    async def _lost(self, session: _Session) -> None:
        self._current = None
        self._queue.clear()
        if time.monotonic() - session.opened_s >= self._stable_s:
            self._policy.reset()
        if session.expired:
            log.info("session %s expired; reconnecting", session.session_id)
            self._emit(ev.LinkDown("session expired", retrying=True))
            return
        failure = classify_close(session.ws.close_code, session.ws.close_reason or "", None)
        if session.last_error is not None and failure.kind in ("auth", "config"):
            failure = Failure(failure.kind, session.last_error.message)
        decision = self._policy.failed(failure)
        log.warning("session lost (%s): %s", failure.kind, failure.message)
        self._emit(ev.LinkDown(failure.message, retrying=True))
        if decision.report is not None and failure.kind not in ("network", "server"):
            self._emit(decision.report)
        await self._pause(decision.delay_s, decision.may_hurry)

    async def _rotate_from(self, old: _Session) -> _Session:
        """Open the next session while the old one still serves, then switch to it.

        The core asks only at a quiet moment and holds its commands until ``LinkUp``,
        so nothing of a turn is split between the two sessions.
        """
        log.info("rotating session %s", old.session_id)
        try:
            new = await self._open()
        except _AttemptFailedError as exc:
            log.warning("rotation failed (%s); session %s goes on", exc, old.session_id)
            self._link_up(old)  # the core retries later
            return old
        if not self._want:
            await self._close(new, "disconnect")
            return old
        self.stats.rotations += 1
        await self._activate(new)
        await self._close(old, "rotated")
        return new

    async def _read(self, session: _Session) -> None:
        """Decode and post every frame; bad frames become events, never exceptions."""
        with contextlib.suppress(*CLOSED):
            async for raw in session.ws:
                if session is self._current:
                    self._observe(raw)
                event = self.decoder.decode(raw)
                if event is None or session is not self._current:
                    continue
                try:
                    self._dispatch(session, event)
                except Exception:  # a bug in a post target must not end the session
                    log.exception("dispatching %s failed", type(event).__name__)

    def _observe(self, raw: str | bytes) -> None:
        """A hook for a transport that needs more of the server's events than the core."""

    def _dispatch(self, session: _Session, event: ev.ServerEvent) -> None:
        match event:
            case ev.SessionCreated():
                return
            case ev.ServerError(code="session_expired"):
                session.expired = True
                return
            case ev.ServerError(event_id=eid) if eid and eid.startswith(REPLAY_PREFIX):
                log.warning("replayed item refused: %s", event.message)
                return
            case ev.ServerError():
                session.last_error = event
            case ev.ItemAdded(item=item) | ev.ItemDone(item=item) if item.id in session.replay_ids:
                return
        self._emit(event)

    async def _send_loop(self) -> None:
        while True:
            if not self._queue:
                self._queue_ready.clear()
                await self._queue_ready.wait()
                continue
            command, text = self._queue.popleft()
            commands = [command]
            texts = await self._outgoing(commands, text)
            if not texts:
                continue
            async with self._send_lock:
                session = self._current
                if session is None:
                    for dropped in commands:
                        self._count_drop(dropped)
                    continue
                try:
                    for message in texts:
                        await session.ws.send(message)
                except CLOSED:
                    for dropped in commands:
                        self._count_drop(dropped)

    async def _outgoing(self, commands: list[ev.WireCommand], text: str | None) -> list[str]:
        """The messages that carry ``commands[0]`` (``text``: its JSON, None for audio).

        A transport with its own audio path (WebRTC) overrides this; here audio becomes
        one append with the frames queued right behind it.
        """
        return [text if text is not None else self._audio_append(commands)]

    def _audio_append(self, commands: list[ev.WireCommand]) -> str:
        """One ``input_audio_buffer.append`` for ``commands[0]`` and the audio queued behind it.

        The mic hands over two or more frames per wake-up; one message for them halves
        the encoding, framing and socket writes while a turn streams.
        """
        queue = self._queue
        while (
            queue
            and isinstance(queue[0][0], ev.SendAudio)
            and len(commands) < MAX_FRAMES_PER_APPEND
        ):
            commands.append(queue.popleft()[0])
        pcm = b"".join(c.pcm for c in commands if isinstance(c, ev.SendAudio))
        return realtime.encode(ev.SendAudio(pcm))

    async def _close(self, session: _Session, reason: str) -> None:
        try:
            await session.ws.close(1000, reason)
        except Exception as exc:  # closing a broken socket must not stop the loop
            log.debug("close failed: %r", exc)
        if session.reader is not None and session.reader is not asyncio.current_task():
            session.reader.cancel()


def _with_id(item: ev.Item, item_id: str) -> ev.Item:
    return ev.Item(id=item_id, type=item.type, role=item.role, text=item.text)
