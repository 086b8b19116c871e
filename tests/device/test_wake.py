"""The word spotter (pymicro-wakeword) on espeak-ng speech, alone and in the capture chain.

espeak-ng triggers the shipped "okay nabu", "alexa" and "hey mycroft" models (and the
vendored "stop"), not "hey jarvis" (bench/bench_wake.py has the figures), so these tests
speak "okay nabu".
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hark.audio.capture import CaptureChain
from hark.audio.cues import read_wav
from hark.audio.wake import MicroWordSpotter, WakeWordError, load_detector, model_path
from hark.events import MicFrame, StopWordHeard, WakeWordHeard
from hark.testing import speech_wav

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="needs espeak-ng and sox (scripts/install-system-deps)",
)


def speech(tmp_path: Path, text: str, rate_hz: int = 16_000, pad_ms: int = 500) -> np.ndarray:
    """``text`` spoken, trimmed to where the voice is, with ``pad_ms`` of silence each side."""
    wav = speech_wav(text, tmp_path / f"{abs(hash((text, rate_hz)))}.wav", rate_hz)
    voice = read_wav(wav, rate_hz)
    loud = np.flatnonzero(np.abs(voice.astype(np.int32)) > 0.02 * np.abs(voice).max())
    voice = voice[loud[0] : loud[-1] + 1]
    pad = np.zeros(rate_hz * pad_ms // 1000, dtype=np.int16)
    return np.concatenate([pad, voice, pad])


def spot(
    spotter: MicroWordSpotter, samples: np.ndarray, chunk: int = 640
) -> list[tuple[int, object]]:
    """Feed in ``chunk``-sample pieces; detections with absolute sample positions."""
    heard, done = [], 0
    for i in range(0, len(samples), chunk):
        piece = samples[i : i + chunk].tobytes()
        heard += [(done + at, word) for at, word in spotter.process(piece)]
        done += len(piece) // 2
    return heard


def test_hears_the_wake_word_where_it_ends(tmp_path: Path) -> None:
    alone = speech(tmp_path, "okay nabu", pad_ms=0)
    samples = np.concatenate([np.zeros(8000, np.int16), alone, np.zeros(16000, np.int16)])
    spotter = MicroWordSpotter("okay_nabu")
    spotter.arm(frozenset({"wake"}))
    heard = spot(spotter, samples)
    assert [w for _, w in heard] == [WakeWordHeard("Okay Nabu")]
    end = 8000 + len(alone)
    # Recognised after the word, within 300 ms of its end (the model needs its tail).
    assert end - 1600 <= heard[0][0] <= end + 4800
    assert spotter.heard == {"wake": 1}


def test_no_wake_word_in_other_speech(tmp_path: Path) -> None:
    spotter = MicroWordSpotter("okay_nabu")
    spotter.arm(frozenset({"wake"}))
    text = "the weather today is sunny with a light breeze from the west"
    assert spot(spotter, speech(tmp_path, text)) == []


def test_unarmed_words_are_not_heard(tmp_path: Path) -> None:
    samples = speech(tmp_path, "okay nabu")
    spotter = MicroWordSpotter("okay_nabu", stop=True)
    assert spotter.words == {"wake", "stop"} and spotter.armed == frozenset()
    assert spot(spotter, samples) == []
    spotter.arm(frozenset({"stop"}))
    assert spot(spotter, samples) == []
    spotter.arm(frozenset({"wake", "stop"}))
    assert [w for _, w in spot(spotter, samples)] == [WakeWordHeard("Okay Nabu")]


def test_only_words_it_has_can_be_armed() -> None:
    spotter = MicroWordSpotter(None, stop=True)
    spotter.arm(frozenset({"wake", "stop"}))
    assert spotter.armed == {"stop"}


def test_hears_stop(tmp_path: Path) -> None:
    spotter = MicroWordSpotter(None, stop=True)
    spotter.arm(frozenset({"stop"}))
    assert [w for _, w in spot(spotter, speech(tmp_path, "stop"))] == [StopWordHeard()]


def test_refractory_time(tmp_path: Path) -> None:
    once = speech(tmp_path, "okay nabu", pad_ms=1000)
    twice = np.concatenate([once, once])  # the second ends ~2.8 s after the first
    spotter = MicroWordSpotter("okay_nabu", refractory_s=3.5)
    spotter.arm(frozenset({"wake"}))
    assert len(spot(spotter, twice)) == 1
    # The probability stays above the cutoff for ~0.5 s after the word: 1 s apart is one.
    spotter = MicroWordSpotter("okay_nabu", refractory_s=1.0)
    spotter.arm(frozenset({"wake"}))
    assert len(spot(spotter, twice)) == 2


def test_cutoff_from_the_config_overrides_the_model(tmp_path: Path) -> None:
    spotter = MicroWordSpotter("okay_nabu", wake_cutoff=0.999)
    spotter.arm(frozenset({"wake"}))
    assert spot(spotter, speech(tmp_path, "okay nabu")) == []
    assert 0.5 < spotter.peak["wake"] <= 0.999


def test_an_owners_model_file(tmp_path: Path) -> None:
    """A path to a microWakeWord JSON (its .tflite beside it) works like a shipped name."""
    shipped = model_path("okay_nabu")
    (tmp_path / "mine.tflite").write_bytes(shipped.with_suffix(".tflite").read_bytes())
    (tmp_path / "mine.json").write_text(
        '{"wake_word": "Okay Mine", "model": "mine.tflite",'
        ' "micro": {"probability_cutoff": 0.8, "sliding_window_size": 5}}'
    )
    detector, cutoff, phrase = load_detector(tmp_path / "mine.json")
    assert (cutoff, phrase) == (0.8, "Okay Mine")
    detector.close()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the model"),
        ("{not json", "not a microWakeWord model config"),
        ('{"model": "x.tflite"}', "not a microWakeWord model config"),
        (
            '{"model": "gone.tflite", "micro": {"probability_cutoff": 0.5,'
            ' "sliding_window_size": 5}}',
            "gone.tflite .* does not exist",
        ),
    ],
)
def test_bad_model_files_are_one_clear_line(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "model.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(WakeWordError, match=message):
        load_detector(path)


def test_unknown_name() -> None:
    with pytest.raises(WakeWordError, match="unknown wake word 'hey_toaster'"):
        MicroWordSpotter("hey_toaster")


@pytest.mark.parametrize("rate_hz", [48_000, 16_000, 44_100])
def test_the_capture_chain_places_the_word_between_frames(tmp_path: Path, rate_hz: int) -> None:
    """The word comes out between the frames where it ended: everything before it is the
    wake word (and what preceded it), what follows is the question."""
    wake = speech(tmp_path, "okay nabu", rate_hz, pad_ms=0)
    question = speech(tmp_path, "what time is it", rate_hz, pad_ms=0)
    gap = np.zeros(rate_hz // 5, dtype=np.int16)
    lead = np.zeros(rate_hz // 2, dtype=np.int16)
    samples = np.concatenate([lead, wake, gap, question, np.zeros(rate_hz, np.int16)])
    spotter = MicroWordSpotter("okay_nabu")
    spotter.arm(frozenset({"wake"}))
    chain = CaptureChain(rate_hz, spotter=spotter)
    out: list[object] = []
    step = rate_hz * 40 // 1000
    for i in range(0, len(samples), step):
        out += chain.process(samples[i : i + step].tobytes(), 0.0, "batched")
    words = [i for i, e in enumerate(out) if not isinstance(e, MicFrame)]
    assert [out[i] for i in words] == [WakeWordHeard("Okay Nabu")]
    frames_before = words[0]
    wake_end_frames = (len(lead) + len(wake)) * 50 // rate_hz
    question_start_frames = (len(lead) + len(wake) + len(gap)) * 50 // rate_hz
    # Between the end of the word and the start of the question (+ a frame for soxr).
    assert wake_end_frames <= frames_before <= question_start_frames + 1
    assert all(isinstance(e, MicFrame) for e in out[words[0] + 1 :])


def test_an_unarmed_spotter_leaves_the_chain_as_it_was(tmp_path: Path) -> None:
    samples = speech(tmp_path, "okay nabu", 48_000)
    spotter = MicroWordSpotter("okay_nabu")
    chain = CaptureChain(48_000, spotter=spotter)
    out = []
    for i in range(0, len(samples), 1920):
        out += chain.process(samples[i : i + 1920].tobytes(), 0.0)
    assert all(isinstance(e, MicFrame) for e in out)


def test_the_wiring_maps_the_trigger_section() -> None:
    from hark.config import parse
    from hark.events import SessionConfig
    from hark.service.wiring import conversation_settings, make_spotter

    base = '[backend]\nurl = "https://keys.example.com/v1"\n'
    config = parse(base + '[trigger]\nmode = "wake"\nstop_word = true\nfollow_up_s = 3\n')
    settings = conversation_settings(config, SessionConfig())
    assert (settings.trigger_mode, settings.stop_word, settings.follow_up_s) == ("wake", True, 3.0)
    spotter = make_spotter(config)
    assert isinstance(spotter, MicroWordSpotter) and spotter.words == {"wake", "stop"}
    assert make_spotter(parse(base)) is None  # neither: pymicro-wakeword not even imported


def test_start_failures_name_the_model_or_the_extra() -> None:
    from hark.cli import EX_CONFIG, EX_UNAVAILABLE, _start_failure

    bad = WakeWordError("unknown wake word 'x'")
    assert _start_failure(bad) == (EX_CONFIG, "trigger: unknown wake word 'x'")
    missing = WakeWordError("needs pymicro-wakeword", missing_package=True)
    assert _start_failure(missing)[0] == EX_UNAVAILABLE


def test_the_stop_word_does_not_hear_the_device_say_stop(tmp_path: Path) -> None:
    """A reply that says "stop" itself, heard from the speaker beside the mic (and a little
    of the bench's room): with echo cancellation the spotter hears the cleaned signal and
    stays quiet; without, it stops its own reply. The user saying "stop" over it is still
    heard."""
    from hark.audio.frontend import FrontEndUnavailableError, TeeReference, make_front_end

    from bench.bench_frontend import room_impulse

    rate = 48_000
    said = speech(tmp_path, "stop", rate)
    reply = np.concatenate([said, speech(tmp_path, "the timer is done", rate), said])
    played = np.concatenate([speech(tmp_path, "the weather is sunny and warm today", rate)] * 3)
    played = np.concatenate([played, reply])  # the filter learns the room first
    echo = np.zeros(len(played))
    echo[240:] = played[:-240] * 0.8  # the speaker beside the mic: 5 ms, direct sound
    echo += np.convolve(played.astype(np.float64), room_impulse()[::3])[: len(played)] * 0.05
    user = speech(tmp_path, "stop", rate, pad_ms=0).astype(np.float64)

    def heard(mic: np.ndarray, cancel: bool) -> list[object]:
        tee = TeeReference()
        try:
            front = make_front_end("speex", tee) if cancel else None
        except FrontEndUnavailableError:
            pytest.skip("libspeexdsp1 is not installed")
        spotter = MicroWordSpotter(None, stop=True)
        spotter.arm(frozenset({"stop"}))
        chain = CaptureChain(rate, front_end=front, spotter=spotter)
        pcm = np.clip(mic, -32768, 32767).astype(np.int16)
        out: list[object] = []
        step = rate * 20 // 1000
        for i in range(0, len(pcm) - step + 1, step):
            tee.record_played(played[i : i + step], rate, 100.0 + i / rate)
            out += chain.process(pcm[i : i + step].tobytes(), 100.0 + (i + step) / rate)
        return [e for e in out if isinstance(e, StopWordHeard)]

    assert heard(echo, cancel=False), "the room's echo of 'stop' never reached the spotter"
    assert heard(echo, cancel=True) == []
    with_user = echo.copy()
    at = len(played) - len(reply) // 2
    with_user[at : at + len(user)] += user * 2
    assert heard(with_user, cancel=True) == [StopWordHeard()]
