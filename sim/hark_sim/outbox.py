"""The server-to-client half of one connection: ordered writes, records and fault effects.

It must not decide what to say; it stamps event ids, applies the delay and drop faults,
keeps the public per-connection record, and reports audio actually written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.websockets import WebSocketDisconnect

from hark_sim.config import Faults
from hark_sim.protocol import JSON, error_event, new_id

log = logging.getLogger(__name__)

MALFORMED_FRAME = '{"type": "response.output_audio.delta", "delta": "AAAA'
UNKNOWN_EVENT_TYPE = "sim.unknown_event"


@dataclass
class SessionRecord:
    """What one WebSocket connection did; read by tests (``sim.sessions``)."""

    id: str = ""
    model: str | None = None
    key_kind: str | None = None  # "standard", "ephemeral" or None when refused
    received: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    raw_sent: list[str] = field(default_factory=list)  # malformed frames written by faults
    closed_code: int | None = None
    started_at: float = field(default_factory=time.time)
    ended: threading.Event = field(default_factory=threading.Event)

    def wait_closed(self, timeout_s: float = 10.0) -> bool:
        """Block until the connection has ended (any thread); False on timeout."""
        return self.ended.wait(timeout_s)


@dataclass
class _Entry:
    at: float
    event: JSON | None
    raw: str | None = None
    audio: bytes = b""


class Link:
    """The raw connection under the ASGI socket (uvicorn's protocol), for the faults."""

    def __init__(self, protocol: Any, record: SessionRecord) -> None:
        self.protocol = protocol
        self.record = record

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (the client sees 1006)."""
        self.record.closed_code = 1006
        transport = getattr(self.protocol, "transport", None)
        if transport is not None:
            transport.abort()

    def stall(self) -> None:
        """Stop reading and pinging, keeping the TCP connection open."""
        stop = getattr(self.protocol, "stop_keepalive", None)
        if callable(stop):
            stop()
        transport = getattr(self.protocol, "transport", None)
        if transport is not None:
            transport.pause_reading()


class Droppable(Protocol):
    """A connection the faults can drop or stall: ``Link`` (WebSocket) or a WebRTC call."""

    def abort(self) -> None: ...

    def stall(self) -> None: ...


class TextSocket(Protocol):
    """What the outbox writes to: starlette's ``WebSocket``, or the WebRTC data channel."""

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class ConnectionDroppedError(Exception):
    """The drop fault fired: the transport was aborted."""


class Outbox:
    """Queue and writer task for one socket; every server event goes through here."""

    def __init__(
        self,
        ws: TextSocket,
        record: SessionRecord,
        faults: Faults,
        link: Droppable,
        on_audio_written: Callable[[str, bytes], None],
    ) -> None:
        self.ws = ws
        self.record = record
        self.faults = faults
        self.link = link
        self._on_audio_written = on_audio_written
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue()
        self._deltas_this_response = 0
        self.dead = asyncio.Event()

    def put(self, event: JSON, audio: bytes = b"") -> JSON:
        """Stamp an event id and queue ``event``; ``audio``: the PCM a delta carries."""
        stamped = {"type": event["type"], "event_id": new_id("event")}
        stamped.update((k, v) for k, v in event.items() if k != "type")
        self._queue.put_nowait(_Entry(time.monotonic(), stamped, audio=audio))
        return stamped

    def put_raw(self, text: str) -> None:
        self._queue.put_nowait(_Entry(time.monotonic(), None, raw=text))

    def inject_faults(self) -> None:
        """The malformed-frame, unknown-event and server-error faults, where documented."""
        if self.faults.malformed_json:
            self.put_raw(MALFORMED_FRAME)
        if self.faults.unknown_events:
            self.put({"type": UNKNOWN_EVENT_TYPE, "note": "hark_sim fault injection"})
        if self.faults.server_errors:
            self.put(
                error_event(
                    "hark_sim fault injection: the server had an error",
                    "sim_fault",
                    error_type="server_error",
                )
            )

    async def flush(self) -> None:
        """Wait until everything queued so far has been written (or the socket died)."""
        if self.dead.is_set():
            return
        joined = asyncio.ensure_future(self._queue.join())
        died = asyncio.ensure_future(self.dead.wait())
        await asyncio.wait({joined, died}, return_when=asyncio.FIRST_COMPLETED)
        joined.cancel()
        died.cancel()

    async def run(self) -> None:
        """Write queued entries in order until cancelled or the socket fails."""
        try:
            while True:
                entry = await self._queue.get()
                delay_s = entry.at + self.faults.event_delay_s - time.monotonic()
                if delay_s > 0:
                    await asyncio.sleep(delay_s)
                await self._write(entry)
                self._queue.task_done()
        except (WebSocketDisconnect, RuntimeError, OSError, ConnectionDroppedError) as exc:
            log.debug("writer stopped: %r", exc)
        finally:
            self.dead.set()

    async def _write(self, entry: _Entry) -> None:
        if entry.event is None:
            assert entry.raw is not None
            await self.ws.send_text(entry.raw)
            self.record.raw_sent.append(entry.raw)
            return
        event = entry.event
        kind = event["type"]
        if kind == "response.output_audio.delta":
            await self.write_audio(event, entry.audio)
        else:
            await self.ws.send_text(json.dumps(event))
            self.record.sent.append(event)
        if kind == "response.created":
            self._deltas_this_response = 0
        elif kind == "response.output_audio.delta":
            self._on_audio_written(str(event["item_id"]), entry.audio)
            self._deltas_this_response += 1
            limit = self.faults.drop_after_audio_deltas
            if limit is not None and self._deltas_this_response >= limit:
                log.info("session %s: fault: dropping the connection", self.record.id)
                self.link.abort()
                raise ConnectionDroppedError
            limit = self.faults.stall_after_audio_deltas
            if limit is not None and self._deltas_this_response >= limit:
                log.info("session %s: fault: stalling the connection", self.record.id)
                self.link.stall()
                await asyncio.Event().wait()  # silent until the session ends

    async def write_audio(self, event: JSON, pcm: bytes) -> None:
        """An audio delta goes out as the event itself here; WebRTC puts ``pcm`` on a track."""
        await self.ws.send_text(json.dumps(event))
        self.record.sent.append(event)

    async def close(self, code: int, reason: str) -> None:
        """Flush, then send a close frame with ``code``."""
        await self.flush()
        if self.record.closed_code is None:
            self.record.closed_code = code
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
            await self.ws.close(code=code, reason=reason)
