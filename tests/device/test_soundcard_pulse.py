"""The sound card at real time: real PyAudio through a private PulseAudio server with null sinks.

The daemon's mic captures ``micfeed.monitor`` (what ``paplay -d micfeed`` plays), its
speaker plays into ``speaker`` (recorded from ``speaker.monitor``).  Assertions are on
audio (frames, samples, correlation), never on wall-clock durations.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hark.audio.pcm import resample
from hark.audio.soundcard import SoundcardMicrophone, SoundcardSpeaker
from hark.backoff import Backoff
from hark.events import DeviceLost, DeviceRestored, Event, MicFrame, PlaybackStopped
from hark.testing import read_pcm, speech_wav, until
from hark.vadgate import VadGate

from tests.audio_rig import (
    PulseRig,
    coverage,
    pieces,
    pulse_available,
    read_wav_samples,
)

QUICK_REOPEN = Backoff(initial_s=0.2, max_s=10.0, jitter=0.0)  # the default but for the start

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not pulse_available(), reason="pulseaudio / ALSA pulse plugin missing"),
]


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PulseRig]:
    """A private PulseAudio server; PortAudio in this process talks to it."""
    with PulseRig(tmp_path) as r:
        for key, value in r.env.items():
            monkeypatch.setenv(key, value)
        yield r


class Recorder:
    """Collects posted events; MicFrames are also kept in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.frames: list[MicFrame] = []

    def __call__(self, event: Event) -> None:
        if isinstance(event, MicFrame):
            self.frames.append(event)
        else:
            self.events.append(event)

    def of(self, kind: type) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


async def settle_speaker(speaker: SoundcardSpeaker) -> None:
    """The rig's null sink renders in 2 s blocks at first (docs/audio.md); wait until it flows."""
    await until(lambda: speaker.frames_rendered > 48_000 // 2)


async def test_speech_into_the_mic_yields_voiced_frames(rig: PulseRig, tmp_path: Path) -> None:
    """Speech played into the mic source arrives as 24 kHz MicFrames, voiced for its duration."""
    speech = speech_wav("hello, what is the weather like today", tmp_path / "q.wav", 48_000)
    speech_ms = len(read_pcm(speech, 48_000)) // 96
    rec = Recorder()
    mic = SoundcardMicrophone("pulse", rate_hz=48_000)
    task = asyncio.create_task(mic.run(rec))
    try:
        await until(lambda: len(rec.frames) >= 25)
        quiet = list(rec.frames)
        started = len(rec.frames)
        player = rig.play_into_mic(speech)
        await asyncio.to_thread(player.wait, 30)
        mark = len(rec.frames)
        await until(lambda: len(rec.frames) >= mark + 40)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert rec.events == []
    assert mic.posts < len(rec.frames) // 2, "idle frames were not batched"
    assert all(len(f.pcm) == 960 for f in rec.frames)
    assert not any(f.voiced for f in quiet)
    voiced = [i for i, f in enumerate(rec.frames) if f.voiced and i >= started]
    assert voiced, "no voiced frames"
    span_ms = (voiced[-1] - voiced[0] + 1) * 20
    assert abs(span_ms - speech_ms) < 400  # webrtcvad trims onsets and adds hangover
    gate = VadGate()
    assert [c for f in rec.frames if (c := gate.update(f.voiced))][:1] == ["opened"]


async def test_mic_posts_as_the_core_wants_its_frames(rig: PulseRig) -> None:
    """Frames come in batches when not urgent, each at once while a turn streams, none when off."""
    rec = Recorder()
    mic = SoundcardMicrophone("pulse", rate_hz=48_000, hold_ms=100)
    batches: list[tuple[str, int]] = []  # (demand, frames) per wake-up asked for
    send = mic._send

    def counted(events: list[Event]) -> None:
        batches.append((mic._demand, len(events)))
        send(events)

    mic._send = counted  # type: ignore[method-assign]
    task = asyncio.create_task(mic.run(rec))
    try:
        await until(lambda: len(rec.frames) >= 25)
        mic.set_demand("off")
        off_at = len(batches)
        callbacks = mic._frames_seen
        await until(lambda: mic._frames_seen > callbacks + 48_000 // 2)  # half a second
        off_posts = len(batches) - off_at
        mic.set_demand("every")
        mark = len(rec.frames)
        await until(lambda: len(rec.frames) >= mark + 25)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert off_posts <= 1  # one batch may have been on its way
    idle = [n for demand, n in batches if demand == "batched"]
    streamed = [n for demand, n in batches if demand == "every"]
    # 40 ms chunks complete two 20 ms frames each, give or take one (the resampler's
    # output varies around its average)
    assert len(idle) >= 3 and all(5 <= n <= 7 for n in idle)  # silence: ~100 ms a wake-up
    # streaming: what each chunk completed, after whatever was held when it switched
    assert len(streamed) >= 8 and max(streamed[1:]) <= 3


async def test_reply_played_matches_recording(rig: PulseRig, tmp_path: Path) -> None:
    """Reply audio recorded from the speaker matches what was played (correlation >= 0.9)."""
    reply = speech_wav("it is sunny and twenty degrees", tmp_path / "r.wav", 24_000)
    pcm = read_pcm(reply)
    rec = Recorder()
    speaker = SoundcardSpeaker("pulse", rate_hz=48_000)
    task = asyncio.create_task(speaker.run(rec))
    try:
        await settle_speaker(speaker)
        recording = rig.record_speaker(tmp_path / "out.wav")
        await asyncio.sleep(0.3)
        for i in range(0, len(pcm), 9600):  # 200 ms deltas, like the Realtime API's
            speaker.play("item_1", pcm[i : i + 9600])
        speaker.finish("item_1")
        await until(lambda: bool(rec.of(PlaybackStopped)))
        await asyncio.sleep(0.3)
        recording.stop()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    stopped = rec.of(PlaybackStopped)
    assert stopped == [PlaybackStopped("item_1", len(pcm) // 48, interrupted=False)]
    recorded, rate = read_wav_samples(recording.path)
    expected = np.frombuffer(resample(pcm, 24_000, rate), np.int16)
    # Piece by piece: a stream starved of CPU underruns and PulseAudio plays silence.
    assert coverage(recorded, expected, gap=48) >= 0.9


async def test_barge_in_played_ms_matches_the_recording(rig: PulseRig, tmp_path: Path) -> None:
    """stop() mid-reply: played_ms is within 40 ms of what the speaker's recording shows."""
    t = np.arange(24_000 * 3) / 24_000
    pcm = (8000 * np.sin(2 * np.pi * 330 * t)).astype(np.int16).tobytes()
    rec = Recorder()
    speaker = SoundcardSpeaker("pulse", rate_hz=48_000)
    task = asyncio.create_task(speaker.run(rec))
    try:
        await settle_speaker(speaker)
        recording = rig.record_speaker(tmp_path / "barge.wav")
        await asyncio.sleep(0.3)
        speaker.play("item_2", pcm)
        await until(lambda: speaker.played_ms_now("item_2") > 700)
        speaker.stop()
        await until(lambda: bool(rec.of(PlaybackStopped)))
        await asyncio.sleep(0.4)
        recording.stop()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    (stopped,) = rec.of(PlaybackStopped)
    assert isinstance(stopped, PlaybackStopped) and stopped.interrupted
    assert stopped.item_id == "item_2"
    recorded, rate = read_wav_samples(recording.path)
    loud = np.flatnonzero(np.abs(recorded.astype(int)) > 30)
    # What was heard is the tone's samples, not underrun gaps (exact zeros ≥ 1 ms).
    span = recorded[loud[0] : loud[-1] + 1]
    heard = sum(b - a for a, b in pieces(span, gap=48, min_len=1))
    heard_ms = heard * 1000 / rate
    print("barge-in: played_ms", stopped.played_ms, "recording", round(heard_ms, 1))
    assert abs(stopped.played_ms - heard_ms) <= 40


async def test_mic_vanishing_and_coming_back(rig: PulseRig, tmp_path: Path) -> None:
    """The sound server dies mid-stream: DeviceLost, then DeviceRestored and frames again."""
    rec = Recorder()
    mic = SoundcardMicrophone(
        "pulse", rate_hz=48_000, reopen_backoff=QUICK_REOPEN, stall_timeout_s=1.0
    )
    task = asyncio.create_task(mic.run(rec))
    try:
        await until(lambda: len(rec.frames) >= 10)
        rig.crash()
        await until(lambda: bool(rec.of(DeviceLost)))
        await asyncio.sleep(0.5)
        rig.start()
        await until(lambda: bool(rec.of(DeviceRestored)), timeout_s=30)
        mark = len(rec.frames)
        await until(lambda: len(rec.frames) >= mark + 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    kinds = [type(e).__name__ for e in rec.events]
    assert kinds[0] == "DeviceLost" and "DeviceRestored" in kinds
    assert task.done() and not isinstance(
        task.exception() if not task.cancelled() else None, Exception
    )


async def test_speaker_vanishing_mid_reply_and_coming_back(rig: PulseRig, tmp_path: Path) -> None:
    """The speaker vanishes mid-reply: the item is reported interrupted, DeviceLost, then
    restored and the next reply plays to the end."""
    t = np.arange(24_000 * 4) / 24_000
    pcm = (6000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16).tobytes()
    rec = Recorder()
    speaker = SoundcardSpeaker(
        "pulse", rate_hz=48_000, reopen_backoff=QUICK_REOPEN, stall_timeout_s=1.0
    )
    task = asyncio.create_task(speaker.run(rec))
    try:
        await settle_speaker(speaker)
        speaker.play("item_a", pcm)
        speaker.finish("item_a")
        await until(lambda: speaker.played_ms_now("item_a") > 300)
        rig.crash()
        await until(lambda: bool(rec.of(DeviceLost)))
        rig.start()
        await until(lambda: bool(rec.of(DeviceRestored)), timeout_s=30)
        await settle_speaker(speaker)
        speaker.play("item_b", pcm[:9600])
        speaker.finish("item_b")
        await until(lambda: any(getattr(e, "item_id", "") == "item_b" for e in rec.events))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    stops = rec.of(PlaybackStopped)
    first = stops[0]
    assert isinstance(first, PlaybackStopped)
    assert first.item_id == "item_a" and first.interrupted and 300 <= first.played_ms < 4000
    assert stops[-1] == PlaybackStopped("item_b", 200, interrupted=False)
