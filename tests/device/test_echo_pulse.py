"""The echo gate for real: PulseAudio's module-loopback feeds the speaker back into the mic.

Issue 3 §5: the mic hears the speaker's output 20–60 ms late at −6 dB.  Our own voice
must never open the VAD gate (no self-interruption, no new turn); a user speaking over
it at normal level must.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from hark.audio.echo import EchoGate, EchoReference
from hark.audio.pcm import Samples
from hark.audio.soundcard import SoundcardMicrophone, SoundcardSpeaker
from hark.conversation import Settings
from hark.events import Event, MicFrame
from hark.testing import read_pcm, speech_wav, until

from tests.audio_rig import PulseRig, pulse_available
from tests.device.test_frontend import needs_speex
from tests.echo_rig import REPLY, echo_rig_case

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not pulse_available(), reason="pulseaudio / ALSA pulse plugin missing"),
]


class TracingGate(EchoGate):
    """The gate, noting which rule decided each checked frame, for the failure message.

    ``trace`` holds (frames posted so far, verdict): U the user, c/l/r echo by
    correlation, level or residual.
    """

    CODES = "clrU"  # in EchoGateStats field order after ``checked``

    def __init__(self, reference: EchoReference, frames: list[MicFrame]) -> None:
        super().__init__(reference)
        self.trace: list[tuple[int, str]] = []
        self._frames = frames

    def is_echo(self, mic: Samples, adc_start_s: float) -> bool:
        before = dataclasses.astuple(self.stats)
        echo = super().is_echo(mic, adc_start_s)
        after = dataclasses.astuple(self.stats)
        changed = [i for i in range(1, len(after)) if after[i] != before[i]]
        if changed:
            self.trace.append((len(self._frames), self.CODES[changed[0] - 1]))
        return echo

    def explain(self, frames: list[MicFrame], start: int, user_at: int, user_end: int) -> str:
        def voiced(lo: int, hi: int) -> str:
            return "".join("V" if f.voiced else "." for f in frames[lo:hi])

        def verdicts(lo: int, hi: int) -> str:
            return "".join(code for at, code in self.trace if lo <= at < hi)

        return (
            f"\ngate: {self.stats}, delay {self.delay_ms} ms, "
            f"echo level {self.echo_level_db:.1f} dB"
            f"\nreply only, voiced:   {voiced(start, user_at)}"
            f"\nuser speaking, voiced: {voiced(user_at, user_end + 10)}"
            f"\n  gate verdicts (U user; echo by c correlation, l level, r residual): "
            f"{verdicts(user_at, user_end + 10)}"
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
        gate = TracingGate(reference, frames)
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
    why = gate.explain(frames, start, user_at, user_end)
    assert other == [] or all(type(e).__name__ == "PlaybackStopped" for e in other), why
    assert gate.stats.echo_by_correlation > 20, "the echo never reached the mic" + why
    # The daemon's own gates: barge-in while speaking, and the laxer one that opens turns.
    reply_only = [f.voiced for f in frames[start:user_at]]
    assert Settings().barge_in_gate().feed(reply_only) == [], "our own voice barged in" + why
    assert Settings().open_gate().feed(reply_only) == [], "our own voice opened a turn" + why
    heard = Settings().barge_in_gate()
    opened = [
        i
        for i, f in enumerate(frames[user_at : user_end + 10])
        if heard.update(f.voiced) == "opened"
    ]
    assert opened, "the user's voice over the echo was not heard" + why


def _have_livekit() -> bool:
    try:
        import livekit.rtc  # noqa: F401
    except ImportError:
        return False
    return True


SPEEX_REVERB_SOFT = (
    "measured 2026-12-06: the user 10 dB below a reverberant echo (more reverberation than "
    "direct sound) was heard in 12 of 18 runs; the others missed the user (the residual "
    "gate's 15 dB margin) or the filter had not converged (3-6 dB after 10 s)"
)
AEC3_REVERB = (
    "measured 2026-12-06: AEC3 (livekit) + residual gate let our own voice barge in in the "
    "reverberant room in 1 of 2 runs (ERLE 5-68 dB there; 71 dB on the plain delay)"
)


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("speex", marks=needs_speex),
        pytest.param(
            "webrtc",
            marks=pytest.mark.skipif(not _have_livekit(), reason="livekit is not installed"),
        ),
    ],
)
@pytest.mark.parametrize(
    ("room", "user_db"),
    [
        ("delay", 0.0),  # the speaker as loud at the mic as the user
        ("delay", -6.0),  # the speaker 6 dB louder than the user
        ("delay", -10.0),  # the user 10 dB below the echo
        ("reverb", 0.0),  # a reverberant room (RT60 300 ms, more reverb than direct sound)
        ("reverb", -10.0),
    ],
)
async def test_front_end_on_the_rig(
    tmp_path: Path, request: pytest.FixtureRequest, room: str, user_db: float, method: str
) -> None:
    """[frontend] echo_cancel on real streams, harder than the gate's test: the echo as
    loud as the speaker's output, straight (40 ms late) or through a synthetic reverberant
    room, the user level with it or 6 or 10 dB below. Our own voice never barges in; the
    user does; what the mic hands out (for the model) is cleaned.

    The echo path is one fixed delay (module-loopback not nudging its rate) or the room's
    convolver: the mic and speaker share a clock, as on a HAT or a USB speakerphone.
    """
    if method == "webrtc" and room == "reverb":
        request.applymarker(pytest.mark.xfail(reason=AEC3_REVERB, strict=False))
    if method == "speex" and (room, user_db) == ("reverb", -10.0):
        request.applymarker(pytest.mark.xfail(reason=SPEEX_REVERB_SOFT, strict=False))
    case = await echo_rig_case(tmp_path, method, room, user_db)
    why = case.explain()
    assert "the echo never reached the mic" not in why, why
    assert case.erle_db >= 10, "the echo was not cancelled" + why
    assert not case.false_barge_in, "our own voice barged in" + why
    assert case.barge_in, "the user's voice over the echo was not heard" + why
