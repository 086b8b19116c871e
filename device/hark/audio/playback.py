"""The playback engine: jitter buffer, volume, fades and per-item played-audio accounting.

The loop thread queues audio (``enqueue``, ``finish``, ``stop``) and sets the
speaker's ``Volume``; the device thread pulls fixed-size chunks (``render``) and gets back the
``PlaybackStopped`` events to post.  Shared by the PyAudio speaker and the WAV fake so
their accounting is identical: an item has been played when its frames were handed to
the device, and it is reported finished only after the device's latency has elapsed.
It must not block (one short lock), must not import asyncio or PyAudio and must not
post anything itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from hark.audio.echo import ECHO_RATE_HZ, EchoReference
from hark.audio.pcm import Samples, apply_gain, frames_to_ms, ramp, upmix
from hark.events import PlaybackStopped

log = logging.getLogger(__name__)


class Volume:
    """A speaker's software gain: set on the loop, read by its buffers once per chunk.

    0 is silent, 1.0 plays as received, above 1 amplifies (with clipping).  The speaker
    owns one for its whole life and hands it to every buffer it makes, so a buffer made
    when the device (re)opens plays at the level last set, whenever that was.
    """

    __slots__ = ("_level",)

    def __init__(self, level: float = 1.0) -> None:
        self.set(level)

    @property
    def level(self) -> float:
        return self._level

    def set(self, level: float) -> None:
        if level < 0:
            raise ValueError(f"volume must be >= 0, got {level}")
        self._level = float(level)  # a render ramps to it over one chunk


@dataclass
class _Segment:
    item_id: str | None  # None: a cue (never reported, never truncated)
    samples: Samples
    offset: int = 0


@dataclass
class _ItemState:
    handed_frames: int = 0
    finished: bool = False


class PlaybackBuffer:
    """Device-rate mono audio waiting to be played, and what happened to it.

    ``volume`` is the speaker's (a level change ramps over one chunk).  ``fade_ms`` is
    the ramp at every start and end of audio (after silence, an underrun, or the end of
    an item); ``stop()`` ramps to silence over the same ``fade_ms`` at the start of the
    next render chunk.  ``latency_frames`` is the
    device's reported output latency: a finished item is reported only once that much
    more has been rendered, and ``played_ms_now`` subtracts it.
    """

    def __init__(
        self,
        rate_hz: int,
        channels: int = 1,
        *,
        volume: Volume | None = None,
        fade_ms: float = 5.0,
        latency_frames: int = 0,
        echo_reference: EchoReference | None = None,
    ) -> None:
        self.rate_hz = rate_hz
        self.channels = channels
        self.latency_frames = latency_frames
        self.echo_reference = echo_reference
        self._fade_frames = max(1, int(rate_hz * fade_ms / 1000))
        self._lock = threading.Lock()
        self._segments: deque[_Segment] = deque()
        self._items: dict[str, _ItemState] = {}
        self._current: str | None = None  # the item being heard, until reported
        self._reports: list[tuple[str, int, int]] = []  # (item, played_frames, frames_to_wait)
        self._stop_requested = False
        self._fading: _Segment | None = None  # what was audible when stop() was called
        self._dead: deque[str] = deque(maxlen=64)  # stopped items: late audio is dropped
        self._volume = volume if volume is not None else Volume()
        self._applied_volume = self._volume.level
        self._tail_was_audio = False
        self._silence = b""  # the idle chunk, reused
        self.rendered_frames = 0
        self.started_s: dict[str, float] = {}
        """perf_counter when each item's first frame was rendered (for latency figures)."""

    # ------------------------------------------------------------------ loop side

    def enqueue(self, item_id: str | None, samples: Samples) -> None:
        """Queue device-rate mono samples for ``item_id`` (None for a cue)."""
        if len(samples) == 0 and item_id is None:
            return
        with self._lock:
            if item_id is not None:
                if item_id in self._dead:
                    return  # a late delta after a stop is normal
                state = self._items.setdefault(item_id, _ItemState())
                if state.finished:
                    log.debug("audio for finished item %s dropped", item_id)
                    return
            self._segments.append(_Segment(item_id, samples))

    def finish(self, item_id: str) -> None:
        """No more audio for ``item_id``; it is reported once played out."""
        with self._lock:
            if item_id in self._dead:
                return
            state = self._items.setdefault(item_id, _ItemState())
            if state.finished:
                return
            state.finished = True
            if not any(s.item_id == item_id for s in self._segments):
                self._report_drained(item_id)

    def stop(self) -> None:
        """Drop everything queued so far; the next ``render`` fades out and reports the item.

        Audio queued after this call (a cue, the next reply) plays normally.
        """
        with self._lock:
            head = self._segments[0] if self._segments and self._tail_was_audio else None
            self._fading = head
            self._segments.clear()
            self._stop_requested = True
            self._mark_stopped()

    def played_ms_now(self, item_id: str) -> int:
        """What the listener has heard of ``item_id`` so far (handed minus latency)."""
        with self._lock:
            state = self._items.get(item_id)
            handed = state.handed_frames if state else 0
        return round(frames_to_ms(max(0, handed - self.latency_frames), self.rate_hz))

    @property
    def busy(self) -> bool:
        """Audio queued or an item not yet reported."""
        return bool(self._segments or self._reports or self._current)

    def queued_ms(self) -> float:
        with self._lock:
            frames = sum(len(s.samples) - s.offset for s in self._segments)
        return frames_to_ms(frames, self.rate_hz)

    def drop_all(self) -> list[PlaybackStopped]:
        """The device went away: forget the queue, report the current item as interrupted."""
        with self._lock:
            self._segments.clear()
            self._stop_requested = False
            self._fading = None
            self._tail_was_audio = False
            self._mark_stopped()
            return self._interrupt_current()

    # ------------------------------------------------------------------ device side

    def render(self, frames: int, dac_start_s: float) -> tuple[bytes, list[PlaybackStopped]]:
        """The next ``frames`` frames for the device (interleaved bytes) and events to post.

        ``dac_start_s`` is when the first of them will be heard (monotonic), for the
        echo reference.
        """
        if not (self._segments or self._reports or self._stop_requested):
            return self._render_idle(frames, dac_start_s), []
        events: list[PlaybackStopped] = []
        with self._lock:
            if self._stop_requested:
                out, audio = self._render_stop(frames)
                events += self._interrupt_current()
            else:
                out, audio = self._pull(frames)
            volume = self._volume.level
            start_volume = self._applied_volume
            self._applied_volume = volume
            events += self._advance_reports(frames)
        if audio:
            out = (
                ramp(out, start_volume, volume)
                if start_volume != volume
                else apply_gain(out, volume)
            )
        self.rendered_frames += frames
        if self.echo_reference is not None:
            self._record_echo(out, audio, dac_start_s)
        data = upmix(out, self.channels).tobytes()
        return data, events

    def _render_idle(self, frames: int, dac_start_s: float) -> bytes:
        """Nothing queued, nothing to report: a cached silent buffer, no numpy work.

        The unlocked check in ``render`` may miss an ``enqueue`` racing with it; that
        audio then starts one chunk later, as if it had arrived a moment later.
        """
        silence = self._silence
        if len(silence) != frames * self.channels * 2:
            silence = self._silence = bytes(frames * self.channels * 2)
        self._tail_was_audio = False
        self._applied_volume = self._volume.level
        self.rendered_frames += frames
        if self.echo_reference is not None:
            self.echo_reference.record_silence(frames * ECHO_RATE_HZ // self.rate_hz, dac_start_s)
        return silence

    def _pull(self, frames: int) -> tuple[Samples, bool]:
        out = np.zeros(frames, dtype=np.int16)
        pos = 0
        while pos < frames and self._segments:
            seg = self._segments[0]
            if seg.item_id is not None and seg.item_id not in self._items:
                self._segments.popleft()  # cannot happen (stop() marks); never crash here
                continue
            take = min(frames - pos, len(seg.samples) - seg.offset)
            out[pos : pos + take] = seg.samples[seg.offset : seg.offset + take]
            seg.offset += take
            pos += take
            if seg.item_id is not None:
                self._current = seg.item_id
                state = self._items[seg.item_id]
                if state.handed_frames == 0 and take:
                    if len(self.started_s) > 64:
                        self.started_s.clear()
                    self.started_s[seg.item_id] = time.perf_counter()
                state.handed_frames += take
            if seg.offset >= len(seg.samples):
                self._segments.popleft()
                item = seg.item_id
                if (
                    item is not None
                    and self._items[item].finished
                    and not any(s.item_id == item for s in self._segments)
                ):
                    self._report_drained(item)
        if pos == 0:
            self._tail_was_audio = False
            return out, False
        fade = self._fade_frames
        if not self._tail_was_audio:  # audio starts after silence: fade in
            n = min(fade, pos)
            out[:n] = ramp(out[:n], 0.0, 1.0)
        if pos < frames or not self._segments:
            # audio runs out in (or exactly at the end of) this chunk: fade out its tail,
            # so an underrun dips instead of clicking; what comes next fades in
            n = min(fade, pos)
            out[pos - n : pos] = ramp(out[pos - n : pos], 1.0, 0.0)
            self._tail_was_audio = False
        else:
            self._tail_was_audio = True
        return out, True

    def _render_stop(self, frames: int) -> tuple[Samples, bool]:
        """One chunk: whatever was audible, ramped to silence over ``fade_ms``, then silence.

        The ramp is the same length as every other fade (no click), not the whole chunk,
        so the speaker is quiet ``fade_ms`` into the next chunk rather than at its end.
        """
        self._stop_requested = False
        seg, self._fading = self._fading, None
        self._tail_was_audio = False
        out = np.zeros(frames, dtype=np.int16)
        if seg is None:
            return out, False
        take = min(frames, self._fade_frames, len(seg.samples) - seg.offset)
        out[:take] = ramp(seg.samples[seg.offset : seg.offset + take], 1.0, 0.0)
        if seg.item_id is not None and seg.item_id in self._items:
            self._current = seg.item_id
            self._items[seg.item_id].handed_frames += take
        return out, take > 0

    def _mark_stopped(self) -> None:
        """Items not yet drained are over: from now on their late deltas and finish() are
        dropped, while audio for items first seen after this (the next reply) plays."""
        for item in self._items:
            if item not in self._dead and not self._reported(item):
                self._dead.append(item)

    def _interrupt_current(self) -> list[PlaybackStopped]:
        item = self._current
        self._current = None
        if item is None and self._reports:
            item = self._reports[-1][0]  # drained, latency not yet out: still audible
        if item is not None:
            self._reports = [r for r in self._reports if r[0] != item]
        # The other stopped items go quietly; those queued since the stop stay.
        for other in [i for i in self._items if i != item and i in self._dead]:
            del self._items[other]
        if item is None:
            return [PlaybackStopped(None, 0, interrupted=True)]
        if item not in self._dead:
            self._dead.append(item)
        played = self._items.pop(item).handed_frames
        return [PlaybackStopped(item, round(frames_to_ms(played, self.rate_hz)), True)]

    def _reported(self, item_id: str) -> bool:
        """Drained and waiting out the latency: it will be reported as finished."""
        return any(r[0] == item_id for r in self._reports)

    def _report_drained(self, item_id: str) -> None:
        played = self._items[item_id].handed_frames
        self._reports.append((item_id, played, self.latency_frames))
        if self._current == item_id:
            self._current = None

    def _advance_reports(self, frames: int) -> list[PlaybackStopped]:
        if not self._reports:
            return []
        events: list[PlaybackStopped] = []
        pending: list[tuple[str, int, int]] = []
        for item, played, wait in self._reports:
            if wait <= 0:
                events.append(
                    PlaybackStopped(item, round(frames_to_ms(played, self.rate_hz)), False)
                )
                self._items.pop(item, None)
            else:
                pending.append((item, played, wait - frames))
        self._reports = pending
        return events

    def _record_echo(self, out: Samples, audio: bool, dac_start_s: float) -> None:
        ref = self.echo_reference
        assert ref is not None
        if audio:
            ref.record_played(out, self.rate_hz, dac_start_s)  # converted when the gate reads
        else:
            ref.record_silence(len(out) * ECHO_RATE_HZ // self.rate_hz, dac_start_s)
