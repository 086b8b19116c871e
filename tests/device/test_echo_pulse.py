"""The echo gate for real: PulseAudio's module-loopback feeds the speaker back into the mic.

Issue 3 §5: the mic hears the speaker's output 20–60 ms late at −6 dB.  Our own voice
must never open the VAD gate (no self-interruption, no new turn); a user speaking over
it at normal level must.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hark.conversation import Settings
from hark.echo import EchoGate, EchoReference
from hark.events import Event, MicFrame
from hark.soundcard import SoundcardMicrophone, SoundcardSpeaker
from hark.testing import read_pcm, speech_wav

from tests.audio_rig import PulseRig, pulse_available
from tests.device.test_soundcard_pulse import until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not pulse_available(), reason="pulseaudio / ALSA pulse plugin missing"),
]

REPLY = (
    "The forecast for Paris is sunny this morning, with clouds later in the afternoon "
    "and a light breeze from the west, and temperatures around twenty degrees."
)


@pytest.mark.parametrize("latency_ms", [20, 60])
async def test_own_voice_is_gated_and_the_user_is_heard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, latency_ms: int
) -> None:
    """Echo at -6 dB never opens the gate; the user talking over it does, while they talk."""
    reply = read_pcm(speech_wav(REPLY, tmp_path / "reply.wav", 24_000))
    user = speech_wav("stop, what about tomorrow?", tmp_path / "user.wav", 48_000)
    frames: list[MicFrame] = []
    other: list[Event] = []

    def post(event: Event) -> None:
        (frames if isinstance(event, MicFrame) else other).append(event)  # type: ignore[arg-type]

    with PulseRig(tmp_path) as rig:
        for key, value in rig.env.items():
            monkeypatch.setenv(key, value)
        reference = EchoReference()
        gate = EchoGate(reference)
        mic = SoundcardMicrophone("pulse", rate_hz=48_000, echo_gate=gate)
        speaker = SoundcardSpeaker("pulse", rate_hz=48_000, echo_reference=reference)
        tasks = [asyncio.create_task(mic.run(post)), asyncio.create_task(speaker.run(post))]
        try:
            await until(lambda: speaker.frames_rendered > 24_000 and len(frames) > 25)
            rig.loopback(latency_ms=latency_ms, volume_db=-6.0)
            await asyncio.sleep(0.3)
            start = len(frames)
            speaker.play("reply", reply)
            speaker.finish("reply")
            await until(lambda: speaker.played_ms_now("reply") > 3_000)
            user_at = len(frames)
            player = rig.play_into_mic(user)
            await asyncio.to_thread(player.wait, 30)
            user_end = len(frames)
            await until(lambda: len(frames) > user_end + 25)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert other == [] or all(type(e).__name__ == "PlaybackStopped" for e in other)
    assert gate.stats.echo_by_correlation > 20, "the echo never reached the mic"
    # The daemon's own gates: barge-in while speaking, and the laxer one that opens turns.
    assert Settings().barge_in_gate().feed(f.voiced for f in frames[start:user_at]) == []
    assert Settings().open_gate().feed(f.voiced for f in frames[start:user_at]) == []
    heard = Settings().barge_in_gate()
    opened = [
        i
        for i, f in enumerate(frames[user_at : user_end + 10])
        if heard.update(f.voiced) == "opened"
    ]
    assert opened, "the user's voice over the echo was not heard"
