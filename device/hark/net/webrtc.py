"""The Realtime link over WebRTC (aiortc): Opus both ways, events on the ``oai-events`` channel.

``WebRTCLink`` is ``WebSocketLink`` with another ``_dial`` and another audio path, so
keys (a fresh ``ek_`` per attempt), retries, rotation and replay are the same code.
The offer goes to ``POST <realtime url>/calls`` (``Content-Type: application/sdp``,
``Authorization: Bearer ek_…``, no redirects followed); the answer comes back as SDP.
The mic is an Opus send track fed by ``SendAudio``; the reply arrives on the receive
track and is posted as ``AudioDelta``s of the assistant item the data channel named
last, so the playback engine (played-ms, fades, echo reference) is the one it always was.

Only imported when ``realtime.transport = "webrtc"`` (the ``webrtc`` extra: aiortc, av).
ICE servers are always explicit (none by default): aiortc would otherwise ask a public
STUN server, and OpenAI's endpoint needs none from the client.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from fractions import Fraction
from typing import Any

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from hark import events as ev
from hark.net.keys import (
    Failure,
    check_url,
    classify_status,
    is_loopback_host,
    printable,
    retry_after_s,
    strict_opener,
    tls_failure,
    where_to,
)
from hark.net.link import Channel, ChannelClosedError, WebSocketLink, _AttemptFailedError

log = logging.getLogger(__name__)

MODEL_RATE_HZ = 24_000
BYTES_PER_MS = MODEL_RATE_HZ * 2 // 1000
POST_BYTES = 40 * BYTES_PER_MS
"""Received audio is posted in 40 ms pieces (two Opus frames): half the events of 20."""
DRAIN_QUIET_S = 0.08
"""The receive track is drained once no frame came for this long after the server said
the response's audio ended (``output_audio_buffer.stopped``)."""
DRAIN_GIVE_UP_S = 0.6
"""An ``AudioDone`` is let through after this long without frames even with no ``stopped``."""
MAX_ANSWER_BYTES = 64 * 1024
CLEAR_OUTPUT = json.dumps({"type": "output_audio_buffer.clear"})


def calls_url(realtime_url: str) -> str:
    """``wss://host/v1/realtime`` → ``https://host/v1/realtime/calls`` (ws → http on loopback)."""
    parts = check_url(realtime_url, "wss", "ws", "realtime URL")
    scheme = "https" if parts.scheme == "wss" else "http"
    path = parts.path.rstrip("/") + "/calls"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


def _loopback_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"]


def gather_loopback_only() -> None:
    """Make aioice offer 127.0.0.1 as its only host candidate, for a peer on this machine.

    aioice leaves loopback out of its host candidates (``aioice.ice.get_host_addresses``
    has no option), so two peers on one machine would otherwise pair over its real
    interface. Process-wide; used when the Realtime URL is loopback (the simulator).
    """
    import aioice.ice

    aioice.ice.get_host_addresses = _loopback_addresses


def no_prefetch(pc: RTCPeerConnection) -> None:
    """Have the audio receivers hand over each packet as soon as it is complete.

    aiortc's audio jitter buffer holds the last four packets (80 ms) until more arrive:
    the end of every reply would wait for the next one. The playback engine buffers
    anyway. aiortc has no option for it; if a release renames the attribute, its default
    stays (a reply's last 80 ms then come late) and this says so in the log.
    """
    from aiortc.jitterbuffer import JitterBuffer

    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if transceiver.kind != "audio":
            continue
        if not hasattr(receiver, "_RTCRtpReceiver__jitter_buffer"):
            log.debug("aiortc's receiver has no jitter buffer attribute; prefetch stays")
            continue
        receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=16, prefetch=0)


# --------------------------------------------------------------------------- tracks


OPUS_BITRATE = 32_000
"""Opus for a voice at 24 kHz: aiortc's own encoder would send 96 kbit/s of 48 kHz stereo."""
FRAME_BYTES = 20 * BYTES_PER_MS


class OpusFrames:
    """24 kHz PCM16 mono to Opus packets, one per 20 ms, for a track that sends packets.

    A track that hands aiortc ``av.Packet``s skips its encoder: no resampling to 48 kHz
    stereo in a worker thread, and no audio level computed sample by sample in Python
    on the event loop (aiortc does that for every frame it encodes itself).
    """

    def __init__(self, bitrate: int = OPUS_BITRATE) -> None:
        codec = av.CodecContext.create("libopus", "w")
        assert isinstance(codec, av.AudioCodecContext)
        codec.bit_rate = bitrate
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = MODEL_RATE_HZ
        codec.time_base = Fraction(1, MODEL_RATE_HZ)
        codec.options = {"application": "voip"}
        self._codec = codec
        self._pts = 0

    def encode(self, pcm: bytes) -> list[av.Packet[Any]]:
        """One 20 ms frame (``FRAME_BYTES``) in, its packet(s) out, stamped in 1/24000 s."""
        samples = np.frombuffer(pcm, dtype=np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = MODEL_RATE_HZ
        frame.time_base = Fraction(1, MODEL_RATE_HZ)
        frame.pts = self._pts
        packets = self._codec.encode(frame)
        for packet in packets:
            packet.pts = self._pts  # libopus starts at minus its pre-skip
            packet.time_base = Fraction(1, MODEL_RATE_HZ)
        self._pts += samples.shape[1]
        return packets


class MicTrack(MediaStreamTrack):
    """The Opus send track: ``SendAudio``'s 24 kHz PCM16, cut into 20 ms Opus packets.

    ``recv`` waits while nothing is queued (no packets go out between turns);
    ``drained`` lets a commit wait until the audio before it has gone out, the last
    part of a frame padded with silence.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pcm = bytearray()
        self._packets: collections.deque[av.Packet[Any]] = collections.deque()
        self._opus = OpusFrames()
        self._ready = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self.sent_bytes = 0

    def push(self, pcm: bytes) -> None:
        self._pcm += pcm
        if len(self._pcm) >= FRAME_BYTES:
            self._empty.clear()
            self._ready.set()

    async def recv(self) -> av.Packet[Any]:
        while not self._packets:
            if len(self._pcm) >= FRAME_BYTES:
                frame = bytes(self._pcm[:FRAME_BYTES])
                del self._pcm[:FRAME_BYTES]
                self.sent_bytes += len(frame)
                self._packets.extend(self._opus.encode(frame))
                continue
            if self.readyState != "live":
                raise MediaStreamError
            self._empty.set()
            self._ready.clear()
            await self._ready.wait()
        return self._packets.popleft()

    async def drained(self) -> None:
        """Return once everything pushed has been handed to the sender, plus one frame."""
        if self._pcm and len(self._pcm) < FRAME_BYTES:
            self.push(bytes(FRAME_BYTES - len(self._pcm)))  # the tail, padded
        while not self._empty.is_set() and self.readyState == "live":
            await self._empty.wait()
        await asyncio.sleep(0.03)

    def stop(self) -> None:
        super().stop()
        self._ready.set()
        self._empty.set()


class RtcChannel:
    """One peer connection seen as a ``Channel``: the data channel's messages, in order.

    ``on_audio(channel, pcm)`` receives the reply track as 24 kHz PCM16 mono.
    """

    close_code: int | None = None

    def __init__(
        self,
        pc: RTCPeerConnection,
        dc: RTCDataChannel,
        mic: MicTrack,
        on_audio: Callable[[RtcChannel, bytes], None],
    ) -> None:
        self.pc = pc
        self.mic = mic
        self.close_reason: str | None = None
        self.last_frame_s = 0.0
        self.received_bytes = 0
        self._dc = dc
        self._on_audio = on_audio
        self._inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._open = asyncio.Event()
        self._player: asyncio.Task[None] | None = None
        dc.on("open", self._open.set)
        dc.on("message", self._inbox.put_nowait)
        dc.on("close", lambda: self._ended("the data channel closed"))
        pc.on("track", self._track)
        pc.on("connectionstatechange", self._state)

    def _state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self._ended(f"the WebRTC connection {self.pc.connectionState}")

    def _ended(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
            self._inbox.put_nowait(None)
            self._open.set()

    def _track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._player is None:
            self._player = asyncio.create_task(self._play(track), name="webrtc-reply")

    async def _play(self, track: MediaStreamTrack) -> None:
        """Decoded Opus (48 kHz) to 24 kHz mono, handed over in ``POST_BYTES`` pieces."""
        resampler = av.AudioResampler(format="s16", layout="mono", rate=MODEL_RATE_HZ)
        pending = bytearray()
        while True:
            try:
                if pending:  # a piece shorter than POST_BYTES goes once the track pauses
                    frame = await asyncio.wait_for(track.recv(), timeout=DRAIN_QUIET_S / 2)
                else:
                    frame = await track.recv()
            except TimeoutError:
                self.received_bytes += len(pending)
                self._on_audio(self, bytes(pending))
                pending.clear()
                continue
            except MediaStreamError:
                return
            self.last_frame_s = time.monotonic()
            for out in resampler.resample(frame):  # type: ignore[arg-type]
                pending += out.to_ndarray().tobytes()
            if len(pending) >= POST_BYTES:
                self.received_bytes += len(pending)
                self._on_audio(self, bytes(pending))
                pending.clear()

    async def opened(self) -> None:
        await self._open.wait()
        if self.close_reason is not None:
            raise ChannelClosedError(self.close_reason)

    async def send(self, message: str) -> None:
        if self.close_reason is not None:
            raise ChannelClosedError(self.close_reason)
        try:
            self._dc.send(message)
        except Exception as exc:  # aiortc raises InvalidStateError once closing
            self._ended(f"send failed: {exc!r}")
            raise ChannelClosedError(str(exc)) from None

    async def recv(self) -> str | bytes:
        message = await self._inbox.get()
        if message is None:
            self._inbox.put_nowait(None)
            raise ChannelClosedError(self.close_reason or "closed")
        return message

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[str | bytes]:
        while True:
            try:
                yield await self.recv()
            except ChannelClosedError:
                return

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._ended(reason or "closed")
        self.mic.stop()
        if self._player is not None:
            self._player.cancel()
        await self.pc.close()


# --------------------------------------------------------------------------- the link


class WebRTCLink(WebSocketLink):
    """The ``ports.Link`` over WebRTC; built like ``WebSocketLink``, plus ``ice_servers``.

    Reply audio is attributed to the assistant message items announced on the data
    channel (``response.output_item.added``), in order; an ``AudioDone`` is held until
    the track has drained (the server finishes generating long before playback ends).
    A ``CancelResponse`` of a response still playing goes out behind an
    ``output_audio_buffer.clear``, and its audio still arriving is dropped.
    """

    def __init__(self, *, ice_servers: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._calls_url = calls_url(kwargs.get("realtime_url", "wss://api.openai.com/v1/realtime"))
        self._calls_loopback = is_loopback_host(urllib.parse.urlsplit(self._calls_url).hostname)
        self._ice_servers = tuple(ice_servers)
        # (response id, item id) of the assistant audio items, oldest first
        self._targets: collections.deque[tuple[str, str]] = collections.deque()
        self._stopped: set[str] = set()  # responses whose output buffer the server finished
        self._held: dict[str, ev.AudioDone] = {}
        self._held_at: dict[str, float] = {}
        self._releaser: asyncio.Task[None] | None = None
        self.dropped_audio_ms = 0.0

    # -- dialling --------------------------------------------------------------------------

    async def _dial(self, key: str) -> Channel:
        if self._calls_loopback:
            gather_loopback_only()
        servers = [RTCIceServer(urls=url) for url in self._ice_servers]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        mic = MicTrack()
        pc.addTrack(mic)  # sendrecv: the reply comes back on the same transceiver
        no_prefetch(pc)
        dc = pc.createDataChannel("oai-events")
        channel = RtcChannel(pc, dc, mic, self._on_audio)
        try:
            async with asyncio.timeout(self._open_timeout_s):
                await pc.setLocalDescription(await pc.createOffer())
                answer = await asyncio.to_thread(self._post_offer, key, pc.localDescription.sdp)
                try:
                    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
                except ValueError as exc:
                    message = f"the Realtime server's SDP answer is unusable: {printable(str(exc))}"
                    raise _AttemptFailedError(Failure("server", message)) from None
                await channel.opened()
        except TimeoutError:
            await channel.close()
            raise _AttemptFailedError(
                Failure("network", "the WebRTC connection did not open in time")
            ) from None
        except ChannelClosedError as exc:
            await channel.close()
            raise _AttemptFailedError(Failure("network", f"cannot connect: {exc}")) from None
        except BaseException:
            await channel.close()
            raise
        return channel

    def _post_offer(self, key: str, offer: str) -> str:
        """POST the offer with the ``ek_`` key; the SDP answer, or ``_AttemptFailedError``."""
        request = urllib.request.Request(  # noqa: S310  (scheme checked by calls_url)
            self._calls_url,
            data=offer.encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/sdp",
                "Accept": "application/sdp",
                "User-Agent": "hark",
            },
        )
        try:
            with strict_opener(self._calls_url).open(request, timeout=self._open_timeout_s) as r:
                raw: bytes = r.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as exc:
            with exc:
                raise _AttemptFailedError(self._refused_offer(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            said = tls_failure(reason) if isinstance(reason, BaseException) else None
            raise _AttemptFailedError(
                Failure("network", f"cannot connect: {said or reason}")
            ) from None
        if len(raw) > MAX_ANSWER_BYTES or not raw.startswith(b"v=0"):
            message = "the Realtime server did not answer the offer with SDP"
            raise _AttemptFailedError(Failure("server", message))
        return raw.decode("utf-8", "replace")

    def _refused_offer(self, exc: urllib.error.HTTPError) -> Failure:
        status = exc.code
        if 300 <= status < 400:
            where = where_to(self._calls_url, exc.headers.get("Location"))
            message = (
                f"the Realtime server answered the offer with {status}, redirecting to "
                f"{where}; refused: the key is only ever sent to realtime.url itself"
            )
            return classify_status(status, message)
        detail = _error_message(exc.read(4096))
        failure = classify_status(
            status, f"the Realtime server refused the offer: HTTP {status}{detail}"
        )
        if status == 429:
            return Failure(
                failure.kind, failure.message, retry_after_s(exc.headers.get("Retry-After"))
            )
        return failure

    # -- audio -------------------------------------------------------------------------------

    def _channel(self) -> RtcChannel | None:
        session = self._current
        channel = session.ws if session is not None else None
        return channel if isinstance(channel, RtcChannel) else None

    async def _outgoing(self, commands: list[ev.WireCommand], text: str | None) -> list[str]:
        command = commands[0]
        channel = self._channel()
        if isinstance(command, ev.SendAudio):
            if channel is None:
                self._count_drop(command)
            else:
                channel.mic.push(command.pcm)
            return []
        assert text is not None
        if isinstance(command, ev.CommitAudio | ev.ClearAudio) and channel is not None:
            await channel.mic.drained()  # RTP and the data channel are not ordered together
        if isinstance(command, ev.CancelResponse):
            rid = command.response_id
            playing = any(rid in (None, t[0]) for t in self._targets)
            self._cancel_audio(rid)
            # Only while its audio is still coming: the server is not asked to clear
            # a buffer that has already played out (what it says to that is unknown).
            return [CLEAR_OUTPUT, text] if playing else [text]
        return [text]

    def _on_audio(self, channel: RtcChannel, pcm: bytes) -> None:
        if channel is not self._channel():
            return
        if not self._targets:
            self.dropped_audio_ms += len(pcm) / BYTES_PER_MS
            return
        response_id, item_id = self._targets[0]
        self._emit(ev.AudioDelta(response_id, item_id, 0, pcm))

    def _cancel_audio(self, response_id: str | None) -> None:
        """Forget a cancelled response's audio (all of it when the id is not yet known)."""
        keep = [t for t in self._targets if response_id is not None and t[0] != response_id]
        self._targets = collections.deque(keep)
        for rid in list(self._held):
            if response_id is None or rid == response_id:
                self._emit(self._held.pop(rid))

    def _observe(self, raw: str | bytes) -> None:
        """Follow what the core does not need: audio items and the server's output buffer."""
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        if '"response.output_item.added"' in text:
            data = _json(text)
            item = data.get("item")
            if isinstance(item, dict) and item.get("type") == "message":
                rid, iid = data.get("response_id"), item.get("id")
                if isinstance(rid, str) and isinstance(iid, str):
                    self._targets.append((rid, iid))
        elif '"output_audio_buffer.' in text:
            data = _json(text)
            rid = data.get("response_id")
            kind = data.get("type")
            if kind == "output_audio_buffer.stopped" and isinstance(rid, str):
                self._stopped.add(rid)
                self._release_soon()
            elif kind == "output_audio_buffer.cleared":
                self._cancel_audio(rid if isinstance(rid, str) else None)

    def _dispatch(self, session: Any, event: ev.ServerEvent) -> None:
        if isinstance(event, ev.AudioDone) and any(
            t[0] == event.response_id for t in self._targets
        ):
            self._held[event.response_id] = event
            self._held_at[event.response_id] = time.monotonic()
            self._release_soon()
            return
        super()._dispatch(session, event)

    def _release_soon(self) -> None:
        if self._releaser is None or self._releaser.done():
            self._releaser = asyncio.create_task(self._release(), name="webrtc-drain")

    async def _release(self) -> None:
        """Let held ``AudioDone``s through once their audio has come off the track."""
        while self._held:
            channel = self._channel()
            last_frame_s = channel.last_frame_s if channel else 0.0
            now = time.monotonic()
            for rid in list(self._held):
                quiet_s = now - max(last_frame_s, self._held_at.get(rid, 0.0))
                drained = rid in self._stopped and quiet_s >= DRAIN_QUIET_S
                if drained or quiet_s >= DRAIN_GIVE_UP_S:
                    self._held_at.pop(rid, None)
                    done = self._held.pop(rid)
                    self._stopped.discard(rid)
                    self._targets = collections.deque(t for t in self._targets if t[0] != rid)
                    self._emit(done)
            await asyncio.sleep(0.02)

    async def _activate(self, session: Any) -> None:
        self._forget_audio()  # a new session: nothing of the old one's reply is owed
        await super()._activate(session)

    def _forget_audio(self) -> None:
        self._targets.clear()
        self._stopped.clear()
        held, self._held = self._held, {}
        for done in held.values():
            self._emit(done)

    async def _close(self, session: Any, reason: str) -> None:
        if session is self._current or self._current is None:
            self._forget_audio()
        await super()._close(session, reason)


def _json(text: str) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        if isinstance(data, dict):
            return data
    return {}


def _error_message(body: bytes) -> str:
    data = _json(body.decode("utf-8", "replace"))
    error = data.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return ": " + printable(error["message"])
    return ""
