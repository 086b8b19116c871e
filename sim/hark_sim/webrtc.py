"""``POST /v1/realtime/calls``: a Realtime session over WebRTC (aiortc), on the same brains.

The SDP offer comes in (``application/sdp``, ``Authorization: Bearer ek_…``), the
answer goes back ``201`` with ``Location: /v1/realtime/calls/<id>``. Then the session
is the WebSocket's one: the same ``RealtimeSession`` fed the JSON events of the
``oai-events`` data channel and the uplink Opus track decoded to 24 kHz PCM16, and
writing through an ``Outbox`` whose audio deltas go onto a paced Opus track instead
of the channel (WebRTC clients get no ``response.output_audio.delta``). The server
tracks playback: ``output_audio_buffer.started/stopped``, and ``.clear`` → ``.cleared``.

Imported only when an offer arrives (the ``webrtc`` extra). ICE servers are always an
explicit empty list; on loopback only 127.0.0.1 is offered as a candidate.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from starlette.requests import Request
from starlette.responses import Response

from hark_sim import audio, jsonin, protocol
from hark_sim.app import BAD_KEY, NO_KEY_REST, SimState, _bearer, _expire, _fail, _key_kind
from hark_sim.brains import make_brain
from hark_sim.config import SimConfig
from hark_sim.outbox import Outbox, SessionRecord, _Entry
from hark_sim.protocol import JSON, new_id
from hark_sim.schema import ProtocolError
from hark_sim.session import RealtimeSession

log = logging.getLogger(__name__)

FRAME_MS = 20
FRAME_BYTES = FRAME_MS * audio.BYTES_PER_MS
UPLINK_QUIET_S = 0.06
"""A commit waits until the uplink track has been quiet this long (RTP and the data
channel are not ordered together), at most ``UPLINK_WAIT_MAX_S``."""
UPLINK_WAIT_MAX_S = 0.5
MAX_OFFER_BYTES = 64 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def _loopback_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"]


def gather_loopback_only() -> None:
    """Offer 127.0.0.1 as the only host candidate (aioice leaves loopback out by itself)."""
    import aioice.ice

    aioice.ice.get_host_addresses = _loopback_addresses


def no_prefetch(pc: RTCPeerConnection) -> None:
    """aiortc's audio jitter buffer holds the last 80 ms until more packets come: the end
    of a turn would only arrive with the next one. Hand over each packet at once."""
    from aiortc.jitterbuffer import JitterBuffer

    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio" and hasattr(
            transceiver.receiver, "_RTCRtpReceiver__jitter_buffer"
        ):
            transceiver.receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(16, prefetch=0)


OPUS_BITRATE = 32_000
"""A voice at 24 kHz (aiortc's own encoder sends 96 kbit/s of 48 kHz stereo)."""


class OpusFrames:
    """20 ms of 24 kHz PCM16 mono to one Opus packet (a track handing aiortc packets skips
    its encoder, its resampler and its per-sample audio level)."""

    def __init__(self) -> None:
        codec = av.CodecContext.create("libopus", "w")
        assert isinstance(codec, av.AudioCodecContext)
        codec.bit_rate = OPUS_BITRATE
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = audio.RATE_HZ
        codec.time_base = Fraction(1, audio.RATE_HZ)
        codec.options = {"application": "voip"}
        self._codec = codec
        self._pts = 0

    def encode(self, pcm: bytes) -> av.Packet[Any]:
        samples = np.frombuffer(pcm, dtype=np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = audio.RATE_HZ
        frame.time_base = Fraction(1, audio.RATE_HZ)
        frame.pts = self._pts
        (packet,) = self._codec.encode(frame)  # libopus: one packet per 20 ms frame
        packet.pts = self._pts
        packet.time_base = Fraction(1, audio.RATE_HZ)
        self._pts += samples.shape[1]
        return packet


class ReplyTrack(MediaStreamTrack):
    """The assistant's audio as an Opus track, 20 ms frames paced in real time.

    Reports ``output_audio_buffer.started`` when a response's first frame goes out and
    ``.stopped`` when its last one has, once the response said its audio was done.
    """

    kind = "audio"

    def __init__(self, emit: Callable[[JSON], None]) -> None:
        super().__init__()
        self._emit = emit
        self._chunks: collections.deque[tuple[str, bytes]] = collections.deque()
        self._ready = asyncio.Event()
        self._started: set[str] = set()
        self._done: set[str] = set()
        self._next_s = 0.0
        self._opus = OpusFrames()
        self.paused = False
        self.sent_bytes = 0

    def push(self, response_id: str, pcm: bytes) -> None:
        for i in range(0, len(pcm), FRAME_BYTES):
            piece = pcm[i : i + FRAME_BYTES]
            self._chunks.append((response_id, piece.ljust(FRAME_BYTES, b"\0")))
        self._ready.set()

    def has(self, response_id: str | None) -> bool:
        return any(response_id in (None, rid) for rid, _ in self._chunks)

    def done(self, response_id: str) -> None:
        self._done.add(response_id)
        if response_id in self._started and not self.has(response_id):
            self._stopped(response_id)

    def clear(self) -> str | None:
        """Drop what has not been sent; the response it belonged to, if any."""
        rid = self._chunks[0][0] if self._chunks else None
        self._chunks.clear()
        if rid is not None:
            self._started.discard(rid)
            self._done.discard(rid)
        return rid

    def _stopped(self, rid: str) -> None:
        self._started.discard(rid)
        self._done.discard(rid)
        self._emit({"type": "output_audio_buffer.stopped", "response_id": rid})

    async def recv(self) -> av.Packet[Any]:
        loop = asyncio.get_running_loop()
        while True:
            while not self._chunks or self.paused:
                if self.readyState != "live":
                    raise MediaStreamError
                self._ready.clear()
                await self._ready.wait()
                self._next_s = 0.0
            now = loop.time()
            if self._next_s < now - 0.1:
                self._next_s = now
            elif self._next_s > now:
                await asyncio.sleep(self._next_s - now)
            self._next_s += FRAME_MS / 1000
            if self._chunks and not self.paused:
                break
        rid, pcm = self._chunks.popleft()
        if rid not in self._started:
            self._started.add(rid)
            self._emit({"type": "output_audio_buffer.started", "response_id": rid})
        if rid in self._done and not self.has(rid):
            self._stopped(rid)
        self.sent_bytes += len(pcm)
        return self._opus.encode(pcm)

    def stop(self) -> None:
        super().stop()
        self._ready.set()


class _ChannelSocket:
    """The data channel as the outbox's ``TextSocket``."""

    def __init__(self, call: Call) -> None:
        self._call = call

    async def send_text(self, data: str) -> None:
        dc = self._call.dc
        if dc is None or dc.readyState != "open":
            raise OSError("the data channel is closed")
        dc.send(data)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        await self._call.pc.close()


class RtcOutbox(Outbox):
    """Audio deltas go onto the reply track; the rest as on a WebSocket."""

    reply: ReplyTrack

    async def write_audio(self, event: JSON, pcm: bytes) -> None:
        self.reply.push(str(event["response_id"]), pcm)

    async def _write(self, entry: _Entry) -> None:
        await super()._write(entry)
        event = entry.event or {}
        kind = event.get("type")
        if kind == "response.output_audio.done":
            self.reply.done(str(event["response_id"]))
        elif kind == "response.done":
            response = event.get("response") or {}
            rid = response.get("id")
            if response.get("status") == "cancelled" and self.reply.has(rid):
                self.reply.clear()  # the server stops what the user interrupted
                self.put({"type": "output_audio_buffer.cleared", "response_id": rid})


class Call:
    """One WebRTC call: its peer connection, record and (once the channel opens) session."""

    def __init__(self, state: SimState, record: SessionRecord, config: JSON) -> None:
        self.state = state
        self.record = record
        self.config = config
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.dc: RTCDataChannel | None = None
        self.inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.session: RealtimeSession | None = None
        self.out: RtcOutbox | None = None
        self.reply = ReplyTrack(self._emit)
        self.last_uplink_s = 0.0
        self.uplink_bytes = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.pc.on("datachannel", self._datachannel)
        self.pc.on("track", self._track)
        self.pc.on("connectionstatechange", self._state)

    # -- the Link interface of the faults ---------------------------------------------------

    def abort(self) -> None:
        """Drop the call without a word (the client sees its connection fail)."""
        self.record.closed_code = 1006
        self._spawn(self.pc.close())

    def stall(self) -> None:
        """Go silent: nothing more on the channel or the track; the connection stays."""
        self.reply.paused = True

    # -- peer connection events -------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _emit(self, event: JSON) -> None:
        if self.out is not None:
            self.out.put(event)

    def _state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self.inbox.put_nowait(None)

    def _datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != "oai-events" or self.dc is not None:
            return
        self.dc = channel
        channel.on("message", lambda m: self.inbox.put_nowait(m if isinstance(m, str) else None))
        channel.on("close", lambda: self.inbox.put_nowait(None))
        self._spawn(self.run())

    def _track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._uplink(track))

    async def _uplink(self, track: MediaStreamTrack) -> None:
        """The mic: decoded Opus to 24 kHz PCM16 into the session's input buffer."""
        resampler = av.AudioResampler(format="s16", layout="mono", rate=audio.RATE_HZ)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.last_uplink_s = time.monotonic()
            pcm = b"".join(
                f.to_ndarray().tobytes()
                for f in resampler.resample(frame)  # type: ignore[arg-type]
            )
            self.uplink_bytes += len(pcm)
            session = self.session
            if session is not None and session.closing is None and pcm:
                await session.append_audio(pcm)

    async def _uplink_quiet(self) -> None:
        for _ in range(int(UPLINK_WAIT_MAX_S / 0.02)):
            if time.monotonic() - self.last_uplink_s >= UPLINK_QUIET_S:
                return
            await asyncio.sleep(0.02)

    # -- the session ------------------------------------------------------------------------

    async def run(self) -> None:
        cfg: SimConfig = self.state.config
        record = self.record
        self.out = RtcOutbox(_ChannelSocket(self), record, cfg.faults, self, self._audio_written)
        self.out.reply = self.reply
        out = self.out
        writer = asyncio.create_task(out.run())
        expiry: asyncio.Task[None] | None = None
        session = RealtimeSession(cfg, record, out, make_brain(cfg.brain, cfg.script), self.config)
        self.session = session
        try:
            log.info("session %s: WebRTC call open key=%s", record.id, record.key_kind)
            out.put({"type": "session.created", "session": dict(self.config)})
            out.inject_faults()
            expiry = asyncio.create_task(_expire(session, cfg.max_session_s))
            while True:
                text = await self.inbox.get()
                if text is None:
                    break
                try:
                    event = jsonin.parse(text, "Invalid JSON: the message could not be parsed.")
                except ProtocolError as err:
                    session.emit_error(err, err.event_id)
                    continue
                record.received.append(event)
                if isinstance(event, dict) and event.get("type") == "output_audio_buffer.clear":
                    rid = self.reply.clear()
                    out.put({"type": "output_audio_buffer.cleared", "response_id": rid})
                    continue
                if isinstance(event, dict) and str(event.get("type", "")).startswith(
                    "input_audio_buffer."
                ):
                    await self._uplink_quiet()
                await session.handle(event)
                if session.closing is not None:
                    await out.close(*session.closing)
                    break
        finally:
            self.state.live.pop(record.id, None)
            if expiry is not None:
                expiry.cancel()
            await session.shutdown()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            self.reply.stop()
            await self.pc.close()
            if record.closed_code is None:
                record.closed_code = 1000
            log.info("session %s: call closed", record.id)
            record.ended.set()

    def _audio_written(self, item_id: str, pcm: bytes) -> None:
        if self.session is not None:
            self.session.on_audio_written(item_id, pcm)


async def answer(request: Request) -> Response:
    """``POST /v1/realtime/calls``: take an SDP offer, answer it, start the session."""
    state: SimState = request.app.state.sim
    cfg = state.config
    key = _bearer(request.headers.get("authorization"))
    if key is None:
        return _fail(401, NO_KEY_REST, None)
    kind = _key_kind(state, key)
    if kind is None:
        return _fail(401, BAD_KEY, "invalid_api_key")
    if request.headers.get("openai-beta"):
        return _fail(400, protocol.BETA_MESSAGE, "beta_api_shape_disabled")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/sdp":
        message = "hark_sim takes the offer as an application/sdp body only."
        return _fail(400, message, "invalid_value", "content-type")
    raw = await request.body()
    if len(raw) > MAX_OFFER_BYTES or not raw.startswith(b"v=0"):
        return _fail(400, "Invalid SDP offer.", "invalid_offer")
    record = SessionRecord(id=new_id("sess"), key_kind=kind)
    minted = state.keys.get(key)
    model = str((minted.session if minted else {}).get("model", protocol.DEFAULT_MODEL_NAME))
    record.model = model
    config = protocol.default_session(model)
    config["id"] = record.id
    if minted is not None:
        config = protocol.deep_merge(config, minted.session)
        config["model"] = model
    config["expires_at"] = int(time.time() + cfg.max_session_s)
    if cfg.host in LOOPBACK_HOSTS:
        gather_loopback_only()
    call = Call(state, record, config)
    try:
        await call.pc.setRemoteDescription(RTCSessionDescription(raw.decode(), "offer"))
        call.pc.addTrack(call.reply)
        no_prefetch(call.pc)
        await call.pc.setLocalDescription(await call.pc.createAnswer())
    except (ValueError, UnicodeDecodeError) as exc:
        await call.pc.close()
        return _fail(400, f"Invalid SDP offer: {exc}", "invalid_offer")
    state.sessions.append(record)
    state.live[record.id] = call
    log.info("session %s: WebRTC offer answered model=%s", record.id, model)
    return Response(
        call.pc.localDescription.sdp,
        status_code=201,
        media_type="application/sdp",
        headers={"Location": f"/v1/realtime/calls/{record.id.replace('sess_', 'rtc_')}"},
    )
