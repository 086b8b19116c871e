"""Barge-in over our own voice on the PulseAudio rig: one case, for the tests and the bench.

A reply plays through the real speaker adapter (PyAudio, a private PulseAudio); the
mic hears it back through an echo path (``delay``: module-loopback, one fixed 40 ms
delay as loud as the speaker; ``reverb``: a synthetic room, RT60 300 ms, more
reverberation than direct sound). After ``LEARN_MS`` of the reply the user speaks over
it at ``user_db`` relative to the echo. The mic runs one of:

- ``gate``: today's path, webrtcvad and ``hark.audio.echo.EchoGate``;
- ``speex`` / ``webrtc``: ``[frontend] echo_cancel``, then the residual gate, as
  ``hark.service.wiring.echo_path`` builds them.

    case = await echo_rig_case(tmp_path, "speex", "reverb", user_db=-10.0)
    case.false_barge_in, case.barge_in, case.erle_db
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hark.audio.echo import EchoGate, EchoReference
from hark.audio.pcm import dbfs
from hark.audio.soundcard import SoundcardMicrophone, SoundcardSpeaker
from hark.conversation import Settings
from hark.events import Event, MicFrame
from hark.testing import read_pcm, speech_wav, until

from tests.audio_rig import PulseRig

REPLY = (
    "The forecast for Paris is sunny this morning, with clouds later in the afternoon "
    "and a light breeze from the west, and temperatures around twenty degrees."
)
LEARN_MS = 10_000
"""How much of the reply plays before the user speaks: speex needs about 8 s of playback
to take 20 dB off a reverberant room's echo (it keeps what it learned across replies;
this is the device's first)."""


@dataclass
class EchoRigCase:
    """What one case produced: the verdicts from the reply's start, and where the user was."""

    method: str
    room: str
    user_db: float
    voiced: list[bool]
    user_at: int  # index in ``voiced`` where the user started speaking
    user_end: int  # ... and stopped
    erle_db: float  # the echo's level minus what the model got, the 3 s before the user
    cpu_ms_per_s: float  # the capture chain's CPU per audio-second (mic thread only)
    notes: list[str] = field(default_factory=list)

    @property
    def false_barge_in(self) -> bool:
        """Our own voice alone opened the daemon's barge-in gate."""
        return Settings().barge_in_gate().feed(self.voiced[: self.user_at]) != []

    @property
    def barge_in(self) -> bool:
        """The barge-in gate opened while the user spoke (or just after)."""
        gate = Settings().barge_in_gate()
        spoken = self.voiced[self.user_at : self.user_end + 10]
        return any(gate.update(v) == "opened" for v in spoken)

    def explain(self) -> str:
        marks = "".join("V" if v else "." for v in self.voiced)
        return (
            f"\nvoiced from the reply's start: {marks}\n(user from frame {self.user_at})"
            f"\necho {self.erle_db:.1f} dB weaker in what the model gets; " + "; ".join(self.notes)
        )


class _TimedFrontEnd:
    """Wraps the chain's front end to count the capture thread's CPU in it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.cpu_s = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def process(self, samples: Any, adc_end_s: float) -> Any:
        t0 = time.thread_time()
        try:
            return self.inner.process(samples, adc_end_s)
        finally:
            self.cpu_s += time.thread_time() - t0


async def echo_rig_case(tmp_path: Path, method: str, room: str, user_db: float) -> EchoRigCase:
    """Run one case on a fresh rig (sets the rig's PULSE_* variables in this process)."""
    from hark.audio.frontend import ResidualGate, TeeReference, make_front_end

    from bench.bench_frontend import room_impulse

    reply = read_pcm(speech_wav(" ".join([REPLY] * 3), tmp_path / "reply.wav", 24_000))
    user = speech_wav("stop, what about tomorrow?", tmp_path / "user.wav", 48_000)
    frames: list[MicFrame] = []

    def post(event: Event) -> None:
        if isinstance(event, MicFrame):
            frames.append(event)

    front: Any = None
    gate: Any
    if method == "gate":
        reference: EchoReference = EchoReference()
        gate = EchoGate(reference)
    else:
        reference = tee = TeeReference()
        inner = make_front_end(method, tee)
        front = _TimedFrontEnd(inner)
        gate = ResidualGate(tee, front_end=inner)  # as the wiring does
    saved = {k: os.environ.get(k) for k in ("PULSE_SERVER", "PULSE_SINK", "PULSE_SOURCE")}
    with PulseRig(tmp_path) as rig:
        os.environ.update(rig.env)
        try:
            mic = SoundcardMicrophone("pulse", rate_hz=48_000, echo_gate=gate, front_end=front)
            speaker = SoundcardSpeaker("pulse", rate_hz=48_000, echo_reference=reference)
            tasks = [asyncio.create_task(mic.run(post)), asyncio.create_task(speaker.run(post))]
            try:
                await until(lambda: speaker.frames_rendered > 24_000 and len(frames) > 25)
                if room == "delay":
                    rig.loopback(latency_ms=40, volume_db=0.0, steady=True)
                else:
                    rig.room(room_impulse(rate_hz=rig.rate_hz))
                await asyncio.sleep(0.3)
                start = len(frames)
                cpu0 = front.cpu_s if front is not None else 0.0
                speaker.play("reply", reply)
                speaker.finish("reply")
                await until(lambda: speaker.played_ms_now("reply") > LEARN_MS, 30)
                user_at = len(frames)
                player = rig.play_into_mic(user, volume_db=user_db)
                await asyncio.to_thread(player.wait, 30)
                user_end = len(frames)
                await until(lambda: len(frames) > user_end + 25)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    audio_s = (len(frames) - start) * 0.02
    sent = np.frombuffer(b"".join(f.pcm for f in frames[user_at - 150 : user_at]), np.int16)
    case = EchoRigCase(
        method,
        room,
        user_db,
        [f.voiced for f in frames[start:]],
        user_at - start,
        user_end - start,
        dbfs(np.frombuffer(reply, np.int16)) - dbfs(sent),
        ((front.cpu_s - cpu0) / audio_s * 1e3) if front is not None else 0.0,
    )
    if front is not None:
        fe, lag = front.inner, front.inner.echo_delay
        case.notes.append(
            f"echo {lag.lag_s} s behind the reference read {fe.delay_s:.3f} s before the stamps"
            f" ({lag.estimates} estimates), realigned {fe.realigned}x, drift resyncs "
            f"{fe.drift_resyncs}x, unrendered reads {fe.unwritten_reads}x"
        )
        if lag.estimates <= 3:
            case.notes.append("the echo never reached the mic")
    elif isinstance(gate, EchoGate):
        case.notes.append(f"gate: {gate.stats}, delay {gate.delay_ms} ms")
    return case
