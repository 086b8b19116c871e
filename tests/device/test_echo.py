"""hark.audio.echo: the echo gate against a synthetic room (a delayed, quieter copy of playback)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hark.audio.capture import CaptureChain
from hark.audio.cues import read_wav
from hark.audio.echo import ECHO_RATE_HZ, EchoGate, EchoReference, StreamClock
from hark.audio.pcm import MODEL_RATE_HZ, resample
from hark.conversation import Settings
from hark.testing import speech_wav, synthetic_speech

FRAME_MS = 20
FRAME = MODEL_RATE_HZ * FRAME_MS // 1000  # 20 ms at 24 kHz
HEARD_WITHIN_MS = 1_200
"""How soon the user talking over the echo must open the barge-in gate (audio time)."""


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    """(reply, user) speech at 24 kHz: two different utterances."""
    d = tmp_path_factory.mktemp("voices")
    reply = read_wav(
        speech_wav("the weather today is sunny with a light breeze", d / "r.wav"), MODEL_RATE_HZ
    )
    user = read_wav(speech_wav("stop, what about tomorrow", d / "u.wav"), MODEL_RATE_HZ)
    return reply, user


def simulate(
    reply: np.ndarray,
    user: np.ndarray | None,
    delay_ms: int,
    echo_db: float,
    user_at_ms: int = 600,
    gate: bool = True,
    *,
    user_db: float = 0.0,
    jitter_ms: float = 0.0,
    change_at_ms: int | None = None,
    delay2_ms: int | None = None,
    echo2_db: float | None = None,
) -> tuple[list[bool], list[bool], EchoGate]:
    """Play ``reply`` through a fake room into a capture chain; (voiced per frame, user mask).

    ``jitter_ms``: the capture stamps wander by up to that much (peak to peak), like a
    streaming resampler's varying hold-back.  From ``change_at_ms`` on, the echo comes
    ``delay2_ms`` late at ``echo2_db`` (a volume change, a re-buffered output).
    """
    ref = EchoReference()
    echo_gate = EchoGate(ref)
    chain = CaptureChain(MODEL_RATE_HZ, echo_gate=echo_gate if gate else None)
    n = len(reply) + MODEL_RATE_HZ
    played = np.zeros(n, dtype=np.float32)
    played[: len(reply)] = reply

    def room(delay_ms: int, echo_db: float) -> np.ndarray:
        d = MODEL_RATE_HZ * delay_ms // 1000
        out = np.zeros(n, dtype=np.float32)
        out[d:] = played[: n - d] * 10 ** (echo_db / 20)
        return out

    mic = room(delay_ms, echo_db)
    if change_at_ms is not None:
        c = MODEL_RATE_HZ * change_at_ms // 1000
        later = room(delay2_ms or delay_ms, echo_db if echo2_db is None else echo2_db)
        mic[c:] = later[c:]
    user_mask = np.zeros(n, dtype=bool)
    if user is not None:
        u0 = MODEL_RATE_HZ * user_at_ms // 1000
        u = user[: n - u0] * 10 ** (user_db / 20)
        mic[u0 : u0 + len(u)] += u
        user_mask[u0 : u0 + len(u)] = True
    mic16 = np.clip(mic, -32768, 32767).astype(np.int16)
    wander = np.random.default_rng(0).uniform(-jitter_ms / 2000, jitter_ms / 2000, n // FRAME)
    t0 = 1000.0
    voiced: list[bool] = []
    is_user: list[bool] = []
    for k, i in enumerate(range(0, n - FRAME + 1, FRAME)):
        # the speaker renders a chunk, then the mic delivers the same span
        chunk = played[i : i + FRAME].astype(np.int16)
        low = resample(chunk.tobytes(), MODEL_RATE_HZ, ECHO_RATE_HZ, quality="QQ")
        ref.record(np.frombuffer(low, np.int16), t0 + i / MODEL_RATE_HZ, loud=bool(chunk.any()))
        end_s = t0 + (i + FRAME) / MODEL_RATE_HZ + wander[k]
        frames = chain.process(mic16[i : i + FRAME].tobytes(), end_s)
        voiced += [f.voiced for f in frames]
        is_user += [bool(user_mask[i : i + FRAME].any())] * len(frames)
    return voiced, is_user, echo_gate


def heard_after_ms(voiced: list[bool], is_user: list[bool]) -> int | None:
    """When the barge-in gate opened, in ms after the user started; None if it did not."""
    gate = Settings().barge_in_gate()
    opened_at = [i for i, v in enumerate(voiced) if gate.update(v) == "opened"]
    if not opened_at:
        return None
    assert is_user[opened_at[0]], "the gate opened before the user spoke"
    return (opened_at[0] - is_user.index(True)) * FRAME_MS


def assert_never_opens(voiced: list[bool]) -> None:
    """Neither of the daemon's gates opens: no self-interruption, no new turn."""
    assert Settings().barge_in_gate().feed(voiced) == []
    assert Settings().open_gate().feed(voiced) == []  # the laxer gate


@pytest.mark.parametrize("jitter_ms", [0, 20])
@pytest.mark.parametrize("delay_ms", [20, 40, 60])
def test_own_voice_never_opens_the_gate(
    voices: tuple[np.ndarray, np.ndarray], delay_ms: int, jitter_ms: int
) -> None:
    """Our reply coming back 20-60 ms late at -6 dB opens neither of the daemon's gates,
    not even with the capture clock wandering by ±10 ms."""
    reply, _ = voices
    voiced, _, gate = simulate(reply, None, delay_ms, -6.0, jitter_ms=jitter_ms)
    assert_never_opens(voiced)
    assert gate.stats.checked > 20


def test_without_the_gate_the_echo_would_open_it(voices: tuple[np.ndarray, np.ndarray]) -> None:
    """Control: the same echo with no gate is called speech (so the gate is what helps)."""
    reply, _ = voices
    voiced, _, _ = simulate(reply, None, 40, -6.0, gate=False)
    assert "opened" in Settings().barge_in_gate().feed(voiced)


@pytest.mark.parametrize("delay_ms", [20, 40, 60])
def test_user_over_the_echo_opens_the_gate(
    voices: tuple[np.ndarray, np.ndarray], delay_ms: int
) -> None:
    """A user speaking at normal level over the echo is heard within about a second.

    (Alone, this utterance opens the barge-in gate 180 ms in; over the echo, only its
    syllables louder than the echo can count.  A level-only gate needed 1.4 s here.)
    """
    reply, user = voices
    voiced, is_user, gate = simulate(reply, user, delay_ms, -6.0)
    after = heard_after_ms(voiced, is_user)
    assert after is not None, f"the user was not heard: {gate.stats}"
    assert after <= HEARD_WITHIN_MS, f"heard only {after} ms in: {gate.stats}"


@pytest.mark.parametrize(("jitter_ms", "user_db"), [(20.0, 0.0), (0.0, -3.0)])
@pytest.mark.parametrize("delay_ms", [20, 60])
def test_user_heard_despite_clock_jitter_or_a_louder_echo(
    voices: tuple[np.ndarray, np.ndarray], delay_ms: int, jitter_ms: float, user_db: float
) -> None:
    """With the capture clock wandering ±10 ms, or a user only 3 dB over the echo, the user
    is still heard while they talk."""
    reply, user = voices
    voiced, is_user, gate = simulate(
        reply, user, delay_ms, -6.0, jitter_ms=jitter_ms, user_db=user_db
    )
    assert heard_after_ms(voiced, is_user) is not None, f"the user was not heard: {gate.stats}"


@pytest.mark.parametrize(
    ("delay2_ms", "echo2_db"),
    [
        (None, 0.0),  # the volume went up 6 dB: louder than the learned echo level
        (150, None),  # the output re-buffered: the echo jumped out of the tracked window
        (5, None),
    ],
)
def test_echo_that_changes_mid_reply_never_opens_the_gate(
    voices: tuple[np.ndarray, np.ndarray], delay2_ms: int | None, echo2_db: float | None
) -> None:
    """A louder or differently delayed echo is re-learned, not mistaken for the user."""
    reply, _ = voices
    voiced, _, gate = simulate(
        reply, None, 40, -6.0, change_at_ms=800, delay2_ms=delay2_ms, echo2_db=echo2_db
    )
    assert_never_opens(voiced)
    if delay2_ms is not None:
        assert gate.delay_ms is not None and abs(gate.delay_ms - delay2_ms) < 10


def test_gate_learns_delay_and_level(voices: tuple[np.ndarray, np.ndarray]) -> None:
    """After some echo the gate has locked on to the delay and the echo level."""
    reply, _ = voices
    _, _, gate = simulate(reply, None, 40, -6.0)
    assert gate.delay_ms is not None and abs(gate.delay_ms - 40) < 10
    assert abs(gate.echo_level_db - -6.0) < 3


def test_gate_is_idle_without_playback() -> None:
    """With nothing played recently the gate never vetoes (and costs nothing)."""
    ref = EchoReference()
    gate = EchoGate(ref)
    speech = synthetic_speech(200, ECHO_RATE_HZ)
    assert not gate.is_echo(speech[:160], 5.0)
    assert gate.stats.checked == 0


def test_reference_window_is_zero_outside_what_was_played() -> None:
    """The reference window pads unknown time with zeros and returns None when disjoint."""
    ref = EchoReference(history_ms=100)
    ref.record(np.full(160, 1000, dtype=np.int16), 10.0)
    w = ref.window(9.99, 10.03)
    assert w is not None and len(w) == 320
    assert w[:80].max() == 0 and w[80:240].min() == 1000 and w[240:].max() == 0
    assert ref.window(20.0, 20.02) is None
    assert ref.active(10.1, 0.2) and not ref.active(11.0, 0.2)


def test_stream_clock_ignores_bursty_callbacks() -> None:
    """A burst reveals the stream's origin; later chunks sit on a steady 20 ms timeline."""
    capture = StreamClock(48_000, "input")
    # three chunks (captured from t=1.0) delivered at once at 1.06, then one every 20 ms,
    # each a little late by a varying amount
    stamps = [capture.stamp(960, 1.06) for _ in range(3)]
    stamps += [capture.stamp(960, 1.08 + 0.02 * k + 0.004 * (k % 2)) for k in range(5)]
    assert stamps[2] == pytest.approx(1.04)
    assert np.allclose(np.diff(stamps[2:]), 0.02, atol=1e-4)
    playback = StreamClock(48_000, "output")
    out = [playback.stamp(960, 0.0) for _ in range(3)] + [playback.stamp(960, 1.6)]
    assert out[-1] == pytest.approx(1.6)  # the stall moved the origin, not the spacing


def test_reply_wav_fixture_is_speech(tmp_path: Path) -> None:
    """The test voices are long enough to mean something."""
    audio = read_wav(speech_wav("hello there", tmp_path / "h.wav"), MODEL_RATE_HZ)
    assert len(audio) > MODEL_RATE_HZ // 2


def test_echo_reference_converts_played_audio_when_read() -> None:
    """Played 48 kHz audio reads back as its 8 kHz version, silence as zeros, at its DAC time."""
    ref = EchoReference()
    tone = (8_000 * np.sin(np.arange(960) * 2 * np.pi * 300 / 48_000)).astype(np.int16)
    ref.record_silence(160, 4.98)
    ref.record_played(tone, 48_000, 5.0)
    ref.record_silence(160, 5.02)
    assert ref.active(5.1, 0.2) and not ref.active(6.0, 0.2)
    window = ref.window(4.98, 5.04)
    assert window is not None and len(window) == 480
    assert not window[:160].any() and not window[320:].any()
    expected = tone.reshape(-1, 6).astype(np.int32).sum(axis=1) // 6
    assert np.allclose(window[160:320], expected, atol=1)


def test_echo_reference_queue_stays_bounded_while_nobody_reads() -> None:
    """Hours of idle playback with no voiced frame to check keep at most a ring's worth queued."""
    ref = EchoReference(history_ms=200)
    loud = np.full(960, 6_000, dtype=np.int16)
    for i in range(5_000):
        if i % 50 == 0 or i == 4_990:
            ref.record_played(loud, 48_000, i * 0.02)
        else:
            ref.record_silence(160, i * 0.02)
    assert ref._queued_8k <= 1_600 + 160
    window = ref.window(4_999 * 0.02 - 0.18, 5_000 * 0.02)
    assert window is not None and window.max() == 6_000  # i = 4990 was loud
