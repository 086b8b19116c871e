"""The PyAudio microphone and speaker: device selection, streams, reopen on loss.

``SoundcardMicrophone`` and ``SoundcardSpeaker`` implement ``hark.ports.Microphone``
and ``hark.ports.Speaker``.  Both run PortAudio in callback mode: the callback does
the cheap per-chunk work (``hark.audio.capture`` / ``hark.audio.playback``) on PortAudio's thread
and hands results to the loop with one ``call_soon_threadsafe`` per chunk.  Opening,
closing and PortAudio initialisation run on a daemon thread, so a wedged driver
cannot block the loop or the interpreter's exit.

This module must not import the conversation, the link or gpio, and no exception from
PortAudio may escape ``run()``: device loss becomes ``DeviceLost``, a reopen with
backoff, then ``DeviceRestored``.

Echo: pass the same ``hark.audio.echo.EchoReference`` to the speaker and (through an
``EchoGate``) to the microphone, or point both at a system echo-cancelled source
(PulseAudio ``module-echo-cancel`` / PipeWire ``libpipewire-module-echo-cancel``, see
docs/audio.md) and leave the gate out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pyaudio

from hark import ports
from hark.audio.capture import CaptureChain, CaptureEvent, EchoJudge
from hark.audio.cues import load_cues
from hark.audio.echo import EchoReference, StreamClock
from hark.audio.pcm import MODEL_RATE_HZ, Resampler, Samples, as_samples
from hark.audio.playback import PlaybackBuffer, Volume
from hark.audio.portaudio import (
    DeviceInfo,
    Direction,
    _keep_thread_state,
    _off_loop,
    _open_portaudio,
    _release_alsa_probes,
    _serialised,
    choose_format,
    find_device,
)
from hark.backoff import Backoff
from hark.events import (
    Cue,
    DeviceLost,
    DeviceRestored,
    Event,
    FinishPlayback,
    MicDemand,
    Play,
    PlaybackStopped,
    PlayCue,
)
from hark.ports import Post

log = logging.getLogger(__name__)


T = TypeVar("T")

WATCH_INTERVAL_S = 0.5
"""How often a stream's health (alive, callbacks arriving) is checked."""
REOPEN_BACKOFF = Backoff(initial_s=0.5, max_s=10.0, jitter=0.0)
"""How long to wait before reopening a lost or missing device (USB cards come and go)."""


# --------------------------------------------------------------------------- stream base


@dataclass
class _Opened:
    pa: pyaudio.PyAudio
    stream: pyaudio.Stream
    device: DeviceInfo
    rate_hz: int
    channels: int
    latency_s: float


class _StreamAdapter:
    """Shared by mic and speaker: open, watch, and reopen with backoff after a loss."""

    direction: Direction = "input"

    def __init__(
        self,
        device: str | int | None,
        rate_hz: int | None,
        buffer_ms: int,
        reopen_backoff: Backoff,
        stall_timeout_s: float,
        open_timeout_s: float = 10.0,
    ) -> None:
        self.device = device
        self.rate_hz = rate_hz
        self.buffer_ms = buffer_ms
        self.reopen_backoff = reopen_backoff
        self.stall_timeout_s = stall_timeout_s
        self.open_timeout_s = open_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._post: Post | None = None
        self._opened: _Opened | None = None
        self._last_callback_s = 0.0
        self._frames_seen = 0
        self._clock = StreamClock(48_000, self.direction)
        self._callback_error: str | None = None
        self._callback_thread = 0
        self.opened_device: DeviceInfo | None = None
        self.opened_rate_hz: int | None = None
        self.opened_channels: int | None = None
        self.reopens = 0
        self._started = asyncio.Event()  # the first open attempt is over (either way)

    async def wait_started(self) -> None:
        """Return once the first open has succeeded, or failed and posted ``DeviceLost``
        (``ports.Opening``: the app sends READY=1 only then)."""
        await self._started.wait()

    @property
    def frames_seen(self) -> int:
        """Frames the device has handed over or taken since the stream last opened."""
        return self._frames_seen

    @property
    def label(self) -> str:
        kind = "microphone" if self.direction == "input" else "speaker"
        return f"{kind} {self.device if self.device not in (None, '') else 'default'}"

    # subclasses
    def _prepare(self, rate_hz: int, channels: int) -> None:
        raise NotImplementedError

    def _callback(
        self, in_data: bytes | None, frame_count: int, time_info: Mapping[str, float], status: int
    ) -> tuple[bytes | None, int]:
        raise NotImplementedError

    def _configure(self, latency_s: float) -> None:
        """Runs on the opening thread once the stream exists, before it starts."""

    def _on_opened(self) -> None:
        """Runs on the loop once the stream is running."""

    def _on_lost(self) -> None:
        """Runs on the loop when the device is unusable (died, or failed to open)."""

    # plumbing
    def _send(self, events: Sequence[Event]) -> None:
        """Hand events to the loop from the PortAudio thread (one wake-up per chunk)."""
        loop, post = self._loop, self._post
        if loop is None or post is None:
            return
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            loop.call_soon_threadsafe(_post_all, post, events)

    def _open_blocking(self) -> _Opened:
        return _serialised(self._open_locked)

    def _open_locked(self) -> _Opened:
        pa = _open_portaudio()
        try:
            dev = find_device(pa, self.device, self.direction)
            rate, channels = choose_format(pa, dev, self.direction, self.rate_hz)
            self._prepare(rate, channels)
            frames = max(1, rate * self.buffer_ms // 1000)
            self._last_callback_s = time.monotonic()
            self._frames_seen = 0
            self._callback_error = None
            _release_alsa_probes()
            stream = pa.open(
                rate=rate,
                channels=channels,
                format=pyaudio.paInt16,
                input=self.direction == "input",
                output=self.direction == "output",
                input_device_index=dev.index if self.direction == "input" else None,
                output_device_index=dev.index if self.direction == "output" else None,
                frames_per_buffer=frames,
                stream_callback=self._guarded_callback,
                start=False,
            )
            latency_s = (
                stream.get_input_latency()
                if self.direction == "input"
                else stream.get_output_latency()
            )
            self._opened = _Opened(pa, stream, dev, rate, channels, float(latency_s))
            self._configure(float(latency_s))
            stream.start_stream()
            return self._opened
        except BaseException:
            pa.terminate()
            raise

    def _guarded_callback(
        self, in_data: bytes | None, frame_count: int, time_info: Mapping[str, float], status: int
    ) -> tuple[bytes | None, int]:
        self._last_callback_s = time.monotonic()
        self._frames_seen += frame_count
        if self._callback_thread != threading.get_ident():
            self._callback_thread = threading.get_ident()
            _keep_thread_state()
        try:
            return self._callback(in_data, frame_count, time_info, status)
        except Exception as exc:  # a bug here must not kill PortAudio's thread silently
            log.exception("%s: audio callback failed", self.label)
            self._callback_error = f"callback failed: {exc!r}"
            return (None, pyaudio.paAbort)

    @staticmethod
    def _close_blocking(opened: _Opened) -> None:
        _serialised(lambda: _StreamAdapter._close_locked(opened))

    @staticmethod
    def _close_locked(opened: _Opened) -> None:
        with contextlib.suppress(OSError):
            opened.stream.stop_stream()
        with contextlib.suppress(OSError):
            opened.stream.close()
        opened.pa.terminate()

    def _abandoned(self, opened: _Opened) -> None:
        """A stream whose open finished after ``run`` gave up on it: close it off the loop."""
        if self._opened is not opened:
            return  # ``_close`` took it already
        self._opened = None
        threading.Thread(
            target=self._close_blocking, args=(opened,), name="hark-audio-io", daemon=True
        ).start()

    async def _close(self) -> None:
        opened, self._opened = self._opened, None
        if opened is None:
            return
        try:
            await _off_loop(lambda: self._close_blocking(opened), self.open_timeout_s)
        except TimeoutError:
            log.warning("%s: closing the stream hangs; abandoned it", self.label)
        except Exception as exc:  # closing a dead device may fail in any way; it is gone anyway
            log.warning("%s: closing the stream failed: %s", self.label, exc)

    async def _watch(self, opened: _Opened) -> str:
        """Return (with the reason) when the stream has died or stalled.

        Polled twice a second: losing a device is noticed within half a second, and the
        two streams' watchers cost the loop 4 wake-ups a second, not 20.
        """
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if self._callback_error:
                return self._callback_error
            try:
                active = opened.stream.is_active()
            except OSError as exc:
                return f"stream error: {exc}"
            if not active:
                return "stream stopped"
            stalled_s = time.monotonic() - self._last_callback_s
            # A stream's first callback may come late (a PulseAudio null sink's monitor
            # delivers after ~1.8 s; docs/audio.md): be patient until a second has flowed.
            flowing = self._frames_seen >= opened.rate_hz
            limit_s = self.stall_timeout_s if flowing else max(self.stall_timeout_s, 5.0)
            if stalled_s > limit_s:
                return f"no audio callback for {stalled_s:.1f} s"

    async def run(self, post: Post) -> None:
        """Open, serve, and on any failure post ``DeviceLost`` and reopen with backoff."""
        self._loop = asyncio.get_running_loop()
        self._post = post
        attempt = 0  # failed opens since the device was last open
        lost = False
        try:
            while True:
                try:
                    opened = await _off_loop(
                        self._open_blocking, self.open_timeout_s, self._abandoned
                    )
                except (OSError, LookupError, TimeoutError, ValueError) as exc:
                    message = str(exc) or type(exc).__name__
                    if not lost:
                        log.warning("%s unavailable: %s", self.label, message)
                        post(DeviceLost(self.label, message))
                        lost = True
                        self._on_lost()
                    self._started.set()
                    await self._close()
                    await asyncio.sleep(self.reopen_backoff.delay_s(attempt))
                    attempt += 1
                    continue
                self.opened_device = opened.device
                self.opened_rate_hz = opened.rate_hz
                self.opened_channels = opened.channels
                log.info(
                    "%s: [%d] %s at %d Hz, %d ch, latency %.0f ms",
                    self.label,
                    opened.device.index,
                    opened.device.name,
                    opened.rate_hz,
                    opened.channels,
                    opened.latency_s * 1000,
                )
                self._on_opened()
                if lost:
                    post(DeviceRestored(self.label))
                    lost = False
                    self.reopens += 1
                self._started.set()
                attempt = 0
                reason = await self._watch(opened)
                log.warning("%s lost: %s", self.label, reason)
                post(DeviceLost(self.label, reason))
                lost = True
                self._on_lost()
                await self._close()
                await asyncio.sleep(self.reopen_backoff.delay_s(attempt))
        finally:
            self._started.set()  # nobody waits for an adapter that is gone
            # Cancelled (or a bug): close before returning, so no PortAudio thread calls
            # into Python while the interpreter shuts down; a wedged close is abandoned.
            await self._close()


def _post_all(post: Post, events: Sequence[Event]) -> None:
    for event in events:
        post(event)


# --------------------------------------------------------------------------- microphone


class SoundcardMicrophone(_StreamAdapter):
    """Captures from a PortAudio input and posts a ``MicFrame`` (24 kHz, 20 ms) per frame.

    ``device``: index, name substring, or None for the default.  ``rate_hz``: force
    a capture rate (None: the device's default if a multiple of 8 kHz, else the first of
    ``MIC_RATES_HZ`` it takes).
    ``vad_aggressiveness``: webrtcvad 0–3.  ``gain``: software gain.  ``echo_gate``:
    share the speaker's ``EchoReference`` through one (see ``hark.audio.echo``).
    ``set_demand("off")`` (push to talk, no turn open) leaves the stream running (a
    press must not wait for a device to start) but skips all processing.
    ``buffer_ms``: PortAudio buffer (one callback per buffer; each wake-up of the
    capture thread costs far more than the samples it carries, so 40 ms by default:
    half the CPU of 20 ms, voice noticed ≤ 20 ms later).  ``hold_ms``: where the demand
    allows (see ``set_demand``), audio is resampled and posted in batches of up to this
    much: idle, the loop wakes 10 times a second instead of 25 and soxr runs once per
    batch (see ``CaptureChain``).  ``spotter``: the wake/stop word spotter, run in the
    callback on the same audio (``hark.audio.wake``).
    """

    direction: Direction = "input"

    def __init__(
        self,
        device: str | int | None = None,
        *,
        rate_hz: int | None = None,
        vad_aggressiveness: int = 2,
        gain: float = 1.0,
        echo_gate: EchoJudge | None = None,
        buffer_ms: int = 40,
        hold_ms: int = 100,
        front_end: FrontEnd | None = None,
        reopen_backoff: Backoff = REOPEN_BACKOFF,
        stall_timeout_s: float = 2.0,
        spotter: ports.WordSpotter | None = None,
    ) -> None:
        super().__init__(device, rate_hz, buffer_ms, reopen_backoff, stall_timeout_s)
        self.spotter = spotter
        self.vad_aggressiveness = vad_aggressiveness
        self.gain = gain
        self.echo_gate = echo_gate
        self.front_end = front_end
        self.chain: CaptureChain | None = None
        self._latency_s = 0.0
        self.overflows = 0
        self.hold_ms = hold_ms
        self._demand: MicDemand = "batched"
        self._resume = False  # audio was skipped: the chain's filter state is stale
        self.posts = 0  # loop wake-ups asked for (one per batch)

    def set_demand(self, demand: MicDemand) -> None:
        self._demand = demand

    @property
    def dropouts(self) -> int:
        """Input overflows PortAudio reported (``ports.DropoutCounter``)."""
        return self.overflows

    def _prepare(self, rate_hz: int, channels: int) -> None:
        self._clock = StreamClock(rate_hz, "input")
        self.chain = CaptureChain(
            rate_hz,
            channels,
            vad_aggressiveness=self.vad_aggressiveness,
            gain=self.gain,
            echo_gate=self.echo_gate,
            hold_ms=self.hold_ms,
            front_end=self.front_end,
            spotter=self.spotter,
        )

    def _configure(self, latency_s: float) -> None:
        self._latency_s = latency_s

    def _callback(
        self, in_data: bytes | None, frame_count: int, time_info: Mapping[str, float], status: int
    ) -> tuple[bytes | None, int]:
        if status & pyaudio.paInputOverflow:
            self.overflows += 1
        chain = self.chain
        if in_data and chain is not None:
            adc_start_s = self._clock.stamp(frame_count, time.monotonic())  # every chunk
            demand = self._demand
            if demand == "off":  # push to talk, no turn: the stream runs, nothing is done
                self._resume = True
                return (None, pyaudio.paContinue)
            if self._resume:
                self._resume = False
                chain.reset()
            adc_end_s = adc_start_s + frame_count / chain.in_rate_hz
            frames: list[CaptureEvent] = chain.process(in_data, adc_end_s, demand)
            if frames:
                self.posts += 1
                self._send(frames)
        return (None, pyaudio.paContinue)


# --------------------------------------------------------------------------- speaker


def _items_in(backlog: Sequence[Play | FinishPlayback | PlayCue]) -> list[str]:
    """The reply items a backlog names, in order (cues are no item)."""
    return [c.item_id for c in backlog if not isinstance(c, PlayCue)]


class SoundcardSpeaker(_StreamAdapter):
    """Plays 24 kHz reply audio and cues through a PortAudio output, pulled by its callback.

    ``device``/``rate_hz`` as for the microphone (the rate is resampled to with soxr
    when the device cannot take 24 kHz).  ``volume``: software gain, 0.0–1.0 (above 1
    amplifies, with clipping), settable at run time.  ``buffer_ms``: the callback chunk,
    which is also the longest a ``stop()`` takes.  ``fade_ms``: ramps at every start
    and end of audio.  ``cue_files``: owner WAVs per cue (defaults are generated).
    ``echo_reference``: where played audio is recorded for the mic's ``EchoGate``.
    """

    direction: Direction = "output"

    def __init__(
        self,
        device: str | int | None = None,
        *,
        rate_hz: int | None = None,
        volume: float = 1.0,
        buffer_ms: int = 20,
        fade_ms: float = 5.0,
        cue_files: Mapping[str, Path | str] | None = None,
        echo_reference: EchoReference | None = None,
        reopen_backoff: Backoff = REOPEN_BACKOFF,
        stall_timeout_s: float = 2.0,
    ) -> None:
        super().__init__(device, rate_hz, buffer_ms, reopen_backoff, stall_timeout_s)
        self._volume = Volume(volume)
        self.fade_ms = fade_ms
        self.cue_files = dict(cue_files or {})
        self.echo_reference = echo_reference
        self._buffer: PlaybackBuffer | None = None
        self._pending: PlaybackBuffer | None = None
        self._cues: dict[Cue, Samples] = {}
        self._cue_rate_hz = 0
        self._resampler: Resampler | None = None
        self._resampling_item: str | None = None
        self._latency_s = 0.0
        self.underflows = 0
        # Commands that arrive while the first open is under way are kept and replayed;
        # None once the device is known to be unavailable (they are answered at once).
        self._backlog: list[Play | FinishPlayback | PlayCue] | None = []

    # ---------------------------------------------------------------- ports.Speaker

    @property
    def dropouts(self) -> int:
        """Output underflows PortAudio reported (``ports.DropoutCounter``)."""
        return self.underflows

    @property
    def volume(self) -> float:
        return self._volume.level

    @volume.setter
    def volume(self, value: float) -> None:
        self._volume.set(value)

    def play(self, item_id: str, pcm: bytes) -> None:
        """Queue 24 kHz PCM16 for ``item_id``; resampled here, on the loop, once per delta."""
        buf = self._buffer
        if buf is None:
            if self._backlog is not None:
                self._backlog.append(Play(item_id, pcm))
            return  # no device: finish()/stop() answer with played_ms=0
        if self._resampler is None or self._resampling_item != item_id:
            self._resampler = Resampler(MODEL_RATE_HZ, buf.rate_hz)
            self._resampling_item = item_id
        buf.enqueue(item_id, self._resampler.process(as_samples(pcm)))

    def finish(self, item_id: str) -> None:
        buf = self._buffer
        if buf is None:
            if self._backlog is not None:
                self._backlog.append(FinishPlayback(item_id))
            else:
                self._post_now(PlaybackStopped(item_id, 0, interrupted=True))
            return
        if self._resampler is not None and self._resampling_item == item_id:
            buf.enqueue(item_id, self._resampler.flush())
            self._resampler, self._resampling_item = None, None
        buf.finish(item_id)

    def stop(self) -> None:
        self._resampler, self._resampling_item = None, None
        buf = self._buffer
        if buf is None:
            items = _items_in(self._backlog or [])
            if self._backlog is not None:
                self._backlog.clear()
            self._post_now(PlaybackStopped(items[-1] if items else None, 0, interrupted=True))
            return
        buf.stop()

    def cue(self, cue: Cue) -> None:
        buf = self._buffer
        if buf is None:
            if self._backlog is not None:
                self._backlog.append(PlayCue(cue))
            return
        if cue in self._cues:
            buf.enqueue(None, self._cues[cue])

    @property
    def frames_rendered(self) -> int:
        """Frames handed to the current stream (silence included); 0 before it opens."""
        buf = self._pending
        return 0 if buf is None else buf.rendered_frames

    def played_ms_now(self, item_id: str) -> int:
        """Heard so far of ``item_id``: frames the device consumed minus its latency."""
        buf = self._buffer
        return 0 if buf is None else buf.played_ms_now(item_id)

    # ---------------------------------------------------------------- stream hooks

    def _post_now(self, event: Event) -> None:
        if self._post is not None:
            self._post(event)

    def _prepare(self, rate_hz: int, channels: int) -> None:
        self._clock = StreamClock(rate_hz, "output")
        self._pending = PlaybackBuffer(
            rate_hz,
            channels,
            volume=self._volume,
            fade_ms=self.fade_ms,
            echo_reference=self.echo_reference,
        )
        if self._cue_rate_hz != rate_hz:
            self._cues = load_cues(rate_hz, self.cue_files)
            self._cue_rate_hz = rate_hz

    def _configure(self, latency_s: float) -> None:
        self._latency_s = latency_s
        buf = self._pending
        assert buf is not None
        buf.latency_frames = round(latency_s * buf.rate_hz)

    def _on_opened(self) -> None:
        self._resampler, self._resampling_item = None, None
        self._buffer = self._pending
        backlog, self._backlog = self._backlog, None
        for command in backlog or []:
            if isinstance(command, Play):
                self.play(command.item_id, command.pcm)
            elif isinstance(command, FinishPlayback):
                self.finish(command.item_id)
            else:
                self.cue(command.cue)

    def _on_lost(self) -> None:
        buf, self._buffer = self._buffer, None
        self._pending = None
        if buf is not None:
            for event in buf.drop_all():
                if event.item_id is not None:
                    self._post_now(event)
        backlog, self._backlog = self._backlog, None
        for item_id in dict.fromkeys(_items_in(backlog or [])):
            # queued before the device ever opened: nothing was heard
            self._post_now(PlaybackStopped(item_id, 0, interrupted=True))

    def _callback(
        self, in_data: bytes | None, frame_count: int, time_info: Mapping[str, float], status: int
    ) -> tuple[bytes | None, int]:
        if status & pyaudio.paOutputUnderflow:
            self.underflows += 1
        buf = self._pending
        if buf is None:
            return (bytes(frame_count * 2), pyaudio.paContinue)
        dac_start_s = self._clock.stamp(frame_count, time.monotonic()) + self._latency_s
        data, events = buf.render(frame_count, dac_start_s)
        if events:
            self._send(list(events))
        return (data, pyaudio.paContinue)


if TYPE_CHECKING:
    from hark.audio.frontend import FrontEnd

if TYPE_CHECKING:  # both adapters satisfy the ports the app drives them through
    _mic: ports.Microphone = SoundcardMicrophone()
    _speaker: ports.Speaker = SoundcardSpeaker()
    _opening: ports.Opening = SoundcardMicrophone()
    _counting: ports.DropoutCounter = SoundcardSpeaker()
