"""hark.audio.frontend: the in-process echo canceller, noise suppression and gain, in the chain.

A synthetic room (the reply convolved with an impulse response from bench/bench_frontend.py)
stands in for the speaker-to-mic path; the speaker's reference is written with the same
DAC times the mic's chunks are stamped with, as the real adapters do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hark.audio.capture import CaptureChain
from hark.audio.cues import read_wav
from hark.audio.frontend import (
    MAX_HOLD_S,
    RATE_HZ,
    EchoDelay,
    EchoReference16k,
    FrontEnd,
    FrontEndUnavailableError,
    NoiseGain,
    ResidualGate,
    SpeexEchoCanceller,
    TeeReference,
    make_front_end,
)
from hark.audio.pcm import dbfs
from hark.config import ConfigError, parse
from hark.conversation import Settings
from hark.testing import speech_wav

from bench.bench_frontend import room_impulse


def _speex_missing() -> bool:
    try:
        SpeexEchoCanceller().close()
    except FrontEndUnavailableError:
        return True
    return False


def _noise_gain_missing() -> bool:
    try:
        NoiseGain()
    except FrontEndUnavailableError:
        return True
    return False


needs_speex = pytest.mark.skipif(_speex_missing(), reason="libspeexdsp1 is not installed")
needs_noise_gain = pytest.mark.skipif(_noise_gain_missing(), reason="webrtc-noise-gain missing")
DEVICE_HZ = 48_000
CHUNK_MS = 20


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    """(reply, user) speech at 48 kHz, as a Pi's sound card delivers it."""
    d = tmp_path_factory.mktemp("fe")
    text = "the weather today is sunny with a light breeze and rain is coming tomorrow"
    reply = read_wav(speech_wav(text, d / "r.wav"), DEVICE_HZ).astype(np.float64)
    user = read_wav(speech_wav("stop, what about the weekend", d / "u.wav"), DEVICE_HZ)
    return reply, user.astype(np.float64)


def _room(played: np.ndarray) -> np.ndarray:
    """``played`` (48 kHz) through the bench's reverberant room, 6 dB quieter."""
    h = room_impulse()
    h48 = np.zeros(len(h) * 3)
    h48[::3] = h  # the same room at 48 kHz (an impulse train; fine for a linear filter)
    return np.convolve(played, h48)[: len(played)] * 0.5


def _run(
    played: np.ndarray, mic: np.ndarray, *, aec: bool, gate: str | None = None, ns: int = 0
) -> tuple[np.ndarray, list[bool]]:
    """Play and capture in 20 ms chunks at 48 kHz; (24 kHz audio for the model, verdicts)."""
    tee = TeeReference()
    front = make_front_end("speex", tee, noise_suppression=ns) if aec else None
    judge = None
    if gate == "residual":
        judge = ResidualGate(tee, front_end=front)
    chain = CaptureChain(DEVICE_HZ, echo_gate=judge, front_end=front)
    step = DEVICE_HZ * CHUNK_MS // 1000
    played16 = np.clip(played, -32768, 32767).astype(np.int16)
    mic16 = np.clip(mic, -32768, 32767).astype(np.int16)
    out: list[bytes] = []
    voiced: list[bool] = []
    t0 = 500.0
    for i in range(0, len(mic16) - step + 1, step):
        tee.record_played(played16[i : i + step], DEVICE_HZ, t0 + i / DEVICE_HZ)
        frames = chain.process(mic16[i : i + step].tobytes(), t0 + (i + step) / DEVICE_HZ)
        out += [f.pcm for f in frames]
        voiced += [f.voiced for f in frames]
    return np.frombuffer(b"".join(out), np.int16).astype(np.float64), voiced


@needs_speex
def test_the_model_gets_the_cancelled_signal(voices: tuple[np.ndarray, np.ndarray]) -> None:
    """With echo cancellation on, the 24 kHz audio the chain hands out (what is sent to the
    model) carries the reply's echo at least 20 dB weaker once the filter has converged."""
    reply, _ = voices
    played = np.concatenate([reply, reply, reply])
    mic = _room(played)
    plain, _ = _run(played, mic, aec=False)
    cleaned, _ = _run(played, mic, aec=True)
    # The filter learns the room over the first replies (it keeps what it learned across
    # replies): the last one is measured.
    skip = len(reply) * 2 // 2  # 48 kHz samples → 24 kHz
    n = min(len(plain), len(cleaned))
    erle_db = 10 * np.log10(np.sum(plain[skip:n] ** 2) / np.sum(cleaned[skip:n] ** 2))
    assert erle_db >= 20, erle_db


@needs_speex
def test_the_user_still_comes_through(voices: tuple[np.ndarray, np.ndarray]) -> None:
    """The user talking over the echo keeps most of their level in the cleaned signal."""
    reply, user = voices
    played = np.concatenate([reply, reply, reply])
    echo = _room(played)
    at = len(reply) * 2 + DEVICE_HZ
    mic = echo.copy()
    mic[at : at + len(user)] += user
    cleaned, _ = _run(played, mic, aec=True)
    alone, _ = _run(played, echo, aec=True)
    a, b = at // 2, (at + len(user)) // 2  # 48 kHz positions at 24 kHz
    gained_db = 10 * np.log10(np.sum(cleaned[a:b] ** 2) / np.sum(alone[a:b] ** 2))
    assert gained_db >= 10, gained_db  # the user, not leftover echo, is what is heard there


@needs_speex
@pytest.mark.parametrize("ns", [0, pytest.param(2, marks=needs_noise_gain)])
def test_residual_gate_barge_in_without_self_interruption(
    voices: tuple[np.ndarray, np.ndarray], ns: int
) -> None:
    """Canceller + residual gate, reverberant room, echo as loud as the user: our own reply
    never opens the barge-in gate; the user talking over it does. Also with noise
    suppression after the canceller (the gate judges the canceller's output level)."""
    reply, user = voices
    played = np.concatenate([reply, reply, reply])
    echo = _room(played)
    user = user * np.sqrt(np.mean(echo[np.abs(echo) > 100] ** 2) / np.mean(user[user != 0] ** 2))
    _, alone = _run(played, echo, aec=True, gate="residual", ns=ns)
    assert Settings().barge_in_gate().feed(alone) == []
    at = len(reply) * 2 + DEVICE_HZ
    mic = echo.copy()
    mic[at : at + len(user)] += user
    _, heard = _run(played, mic, aec=True, gate="residual", ns=ns)
    gate = Settings().barge_in_gate()
    opened = [k for k, v in enumerate(heard) if gate.update(v) == "opened"]
    assert opened, "the user was not heard"
    assert opened[0] * CHUNK_MS >= at * 1000 // DEVICE_HZ - 40  # not before the user spoke


def test_reference_ring_by_dac_time() -> None:
    """The 16 kHz reference returns what played at a DAC time, zeros where nothing is known;
    at 48 kHz too, through the resampler, whose held-back audio comes out in its place."""
    ring = EchoReference16k(history_ms=500)
    ring.record_played(np.full(160, 1000, np.int16), RATE_HZ, 10.0)  # 10 ms
    ring.record_silence(160, 10.01)
    window = ring.window(9.995, 320)  # sample i was played at 9.995 + i / 16000
    assert window[:80].tolist() == [0] * 80  # before anything played
    assert window[80:240].tolist() == [1000] * 160  # the tone
    assert window[240:].tolist() == [0] * 80  # the silence after it
    ring48 = EchoReference16k(history_ms=500)
    click = np.zeros(960, np.int16)
    click[480] = 30000  # at 20.01 s
    ring48.record_played(click, 48_000, 20.0)  # the resampler holds it back...
    for k in range(5):
        ring48.record_silence(320, 20.02 + k * 0.02)  # ...and silence brings it out
    window = ring48.window(20.0, 480).astype(np.float64)
    assert int(np.argmax(np.abs(window))) == 160  # 10 ms in: where it played


@pytest.mark.parametrize(
    ("lag_ms", "reverberant"), [(60, False), (130, False), (-20, False), (200, True)]
)
def test_echo_delay_finds_how_far_the_echo_trails(lag_ms: int, reverberant: bool) -> None:
    """GCC-PHAT finds the echo's lag behind the reference read beside the mic, in a
    reverberant room too (more reverberation than direct sound), and early echoes."""
    rng = np.random.default_rng(0)
    played = rng.standard_normal(RATE_HZ * 3) * 3000
    echo = np.roll(played, lag_ms * RATE_HZ // 1000)
    if reverberant:
        echo = np.convolve(echo, room_impulse())[: len(played)] * 0.3
    ring, delay = EchoReference16k(), EchoDelay()
    found = []
    for i in range(0, len(played), 160):
        ring.record_played(played[i : i + 160].astype(np.int16), RATE_HZ, i / RATE_HZ)
        mic = np.clip(echo[i : i + 160], -32768, 32767).astype(np.int16)
        lag = delay.feed(mic, ring, i + 160)
        if lag is not None:
            found.append(lag)
    assert found and all(abs(lag - (lag_ms + 2 * reverberant) / 1000) < 0.002 for lag in found)


def test_echo_delay_needs_playback() -> None:
    """No playback, or no echo of it: no lag is claimed."""
    ring, delay = EchoReference16k(), EchoDelay()
    noise = np.random.default_rng(1).standard_normal(RATE_HZ * 3) * 1000
    for i in range(0, len(noise), 160):
        ring.record_silence(160, i / RATE_HZ)
        assert delay.feed(noise[i : i + 160].astype(np.int16), ring, i + 160) is None
    assert delay.estimates == 0


@needs_speex
def test_the_front_end_waits_for_the_speaker_to_render() -> None:
    """Capture running ahead of the speaker (a sound server under-reporting its latency):
    mic frames wait (up to MAX_HOLD_S) for their reference instead of feeding the filter
    zeros where audio plays a moment later; a speaker that stalls is not waited for."""
    tee = TeeReference()
    front = make_front_end("speex", tee)
    assert front is not None
    tone = (np.sin(np.arange(RATE_HZ) * 0.3) * 8000).astype(np.int16)
    tee.ring16.record_played(tone[:1600], RATE_HZ, 100.0)  # 100.0-100.1 rendered
    # the mic's 20 ms up to 100.12: its last 20 ms need reference not rendered yet
    out = front.process(tone[:1920], 100.12)
    assert len(out) == 1600 and front.pending_s == pytest.approx(0.02)
    tee.ring16.record_played(tone[1600:1920], RATE_HZ, 100.1)
    out = front.process(np.zeros(0, np.int16), 100.12)
    assert len(out) == 320 and front.unwritten_reads == 0
    # the speaker stalls: the mic goes on without it, keeping back only MAX_HOLD_S
    out = front.process(tone[:1600], 100.22)
    assert len(out) == 640 and front.pending_s == pytest.approx(MAX_HOLD_S)
    assert front.unwritten_reads == 4


@needs_speex
def test_the_filter_learns_from_playback_not_from_time() -> None:
    """The residual gate distrusts the canceller until it has heard CONVERGE_S of
    playback, however long the mic ran before the first reply."""
    tee = TeeReference()
    front = make_front_end("speex", tee)
    assert front is not None
    silence = np.zeros(RATE_HZ * 5, np.int16)
    for i in range(0, len(silence), 320):
        tee.record_silence(160, 200.0 + i / RATE_HZ)
        front.process(silence[i : i + 320], 200.0 + (i + 320) / RATE_HZ)
    assert not front.converged
    tone = (np.sin(np.arange(RATE_HZ * 3) * 0.3) * 8000).astype(np.int16)
    for i in range(0, len(tone), 320):
        tee.ring16.record_played(tone[i : i + 320], RATE_HZ, 205.0 + i / RATE_HZ)
        front.process(silence[:320], 205.0 + (i + 320) / RATE_HZ)  # a quiet room
    assert front.converged


@needs_speex
def test_no_aliasing_between_the_mic_and_the_reference() -> None:
    """A 48 kHz echo a fraction of a 16 kHz sample late, of a reply with energy up to
    12 kHz (the Realtime API's 24 kHz voice): both sides reach 16 kHz through a real
    low-pass, so the canceller can remove it (averaging samples aliased 8-12 kHz
    differently on each side: about 6 dB was all any filter could take off)."""
    rng = np.random.default_rng(5)
    played = np.repeat(rng.standard_normal(DEVICE_HZ * 4 // 2) * 4000, 2)  # ~12 kHz wide
    mic = np.zeros_like(played)
    mic[1:] = played[:-1]  # one 48 kHz sample: a third of a 16 kHz sample
    plain, _ = _run(played, mic, aec=False)
    cleaned, _ = _run(played, mic, aec=True)
    half = len(cleaned) // 2
    erle_db = 10 * np.log10(np.sum(plain[half:] ** 2) / np.sum(cleaned[half:] ** 2))
    assert erle_db >= 20, erle_db


@needs_noise_gain
def test_noise_suppression_lowers_steady_noise() -> None:
    """WebRTC noise suppression takes a steady hiss down by at least 6 dB once it has learned
    it; the automatic gain lifts a quiet voice."""
    rng = np.random.default_rng(3)
    hiss = (rng.standard_normal(RATE_HZ * 2) * 300).astype(np.int16)
    front = FrontEnd(noise_gain=NoiseGain(suppression=3))
    out = front.process(hiss, 1.0)
    second = slice(RATE_HZ, 2 * RATE_HZ)
    assert dbfs(out[second]) <= dbfs(hiss[second]) - 6
    t = np.arange(RATE_HZ * 2) / RATE_HZ
    quiet = (np.sin(2 * np.pi * 200 * t) * np.sin(2 * np.pi * 3 * t) ** 2 * 300).astype(np.int16)
    lifted = FrontEnd(noise_gain=NoiseGain(suppression=0, auto_gain_dbfs=3)).process(quiet, 1.0)
    assert dbfs(lifted[second]) >= dbfs(quiet[second]) + 6


def test_every_stage_off_is_no_front_end() -> None:
    """All stages off: no front end at all (the chain is today's, at the device rate)."""
    assert make_front_end("off", None) is None
    chain = CaptureChain(DEVICE_HZ)
    assert chain.front_end is None and chain.in_rate_hz == DEVICE_HZ


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('echo_cancel = "aec"', "frontend.echo_cancel: must be one of 'off', 'speex', 'webrtc'"),
        ("echo_cancel = true", "frontend.echo_cancel: must be one of"),
        ("echo_tail_ms = 20", "frontend.echo_tail_ms: must be ≥ 50 (got 20)"),
        ("echo_tail_ms = 1000", "frontend.echo_tail_ms: must be ≤ 500 (got 1000)"),
        ("noise_suppression = 5", "frontend.noise_suppression: must be ≤ 4 (got 5)"),
        ("noise_suppression = true", "frontend.noise_suppression: must be an integer"),
        ("auto_gain_dbfs = 32", "frontend.auto_gain_dbfs: must be ≤ 31 (got 32)"),
        ("auto_gain_dbfs = -3", "frontend.auto_gain_dbfs: must be ≥ 0 (got -3)"),
        ("ns = 2", "frontend.ns: unknown key"),
    ],
)
def test_frontend_mistakes_are_named(text: str, expected: str) -> None:
    """Each bad [frontend] key is one line naming it."""
    minimal = '[backend]\nurl = "https://keys.example.com/x"\n[frontend]\n'
    with pytest.raises(ConfigError) as info:
        parse(minimal + text)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(expected), info.value.problems


def test_bench_is_importable_from_tests() -> None:
    """The room the tests use is the bench's (one definition of a reverberant room)."""
    assert Path(__file__).resolve().parents[2].joinpath("bench", "bench_frontend.py").is_file()
    assert len(room_impulse()) == int(RATE_HZ * 0.3)


# --------------------------------------------------------------------------- the wiring

BASE = '[backend]\nurl = "https://keys.example.com/x"\n'
HANDS_FREE = '[trigger]\nmode = "vad"\n'


def test_wiring_without_a_front_end_is_todays_gate() -> None:
    """No [frontend]: hands-free gets the classic echo gate, push to talk nothing."""
    from hark.audio.echo import EchoGate
    from hark.service.wiring import echo_path

    path = echo_path(parse(BASE + HANDS_FREE))
    assert isinstance(path.gate, EchoGate) and path.front_end is None
    assert echo_path(parse(BASE)).reference is None


@needs_speex
def test_wiring_puts_the_canceller_before_a_residual_gate() -> None:
    """echo_cancel = "speex": the speaker feeds a 16 kHz reference too, the mic's chain
    gets the front end, and the gate after it is the residual gate; in push to talk the
    canceller still runs (what it cleans goes to the model), with no gate."""
    from hark.service.wiring import echo_path

    path = echo_path(parse(BASE + HANDS_FREE + '[frontend]\necho_cancel = "speex"\n'))
    assert isinstance(path.reference, TeeReference)
    assert isinstance(path.gate, ResidualGate) and path.gate.reference is path.reference
    assert path.gate.front_end is path.front_end
    assert path.front_end is not None and path.front_end.reference is path.reference.ring16
    button = echo_path(parse(BASE + '[frontend]\necho_cancel = "speex"\n'))
    assert button.front_end is not None and button.front_end.aec is not None
    assert button.gate is None and isinstance(button.reference, TeeReference)


def test_a_missing_library_falls_back_to_the_gate(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A configured stage whose library is missing: one error line naming what to install,
    a STATUS note, and the classic echo gate carries on."""
    from hark.audio import frontend
    from hark.audio.echo import EchoGate
    from hark.service.wiring import echo_path

    def missing(*args: object, **kwargs: object) -> None:
        raise FrontEndUnavailableError("echo cancellation needs libspeexdsp (apt install x)")

    monkeypatch.setattr(frontend.SpeexEchoCanceller, "__init__", missing)
    path = echo_path(parse(BASE + HANDS_FREE + '[frontend]\necho_cancel = "speex"\n'))
    assert path.front_end is None and isinstance(path.gate, EchoGate)
    assert path.note == "audio front end unavailable"
    assert "apt install" in caplog.text and "running without the audio front end" in caplog.text
