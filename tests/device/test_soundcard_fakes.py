"""hark.testing and hark.audio.cues: the WAV-backed microphone and speaker, test speech, cues."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
import pytest
from hark.audio.cues import CUES, load_cues, tone
from hark.events import (
    ButtonPressed,
    ButtonReleased,
    DeviceLost,
    DeviceRestored,
    Event,
    MicFrame,
    PlaybackStopped,
)
from hark.testing import (
    ControlSocket,
    WavMicrophone,
    WavSpeaker,
    read_pcm,
    speech_wav,
    synthetic_speech,
    until,
    write_wav,
)
from hark.vadgate import VadGate


def test_speech_wav_makes_voiced_audio(tmp_path: Path) -> None:
    """speech_wav writes mono 16-bit audio at the asked rate that webrtcvad calls speech."""
    path = speech_wav("what time is it", tmp_path / "q.wav", 16_000)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16_000)
        assert w.getnframes() > 8_000


async def test_synthetic_fallback_is_voiced(tmp_path: Path) -> None:
    """The espeak-less fallback signal is called speech by the VAD."""
    path = write_wav(tmp_path / "s.wav", synthetic_speech(1000, 48_000), 48_000)
    frames: list[Event] = []
    await WavMicrophone(path, speed=0, after="end").run(frames.append)
    voiced = [f.voiced for f in frames if isinstance(f, MicFrame)]
    assert sum(voiced) > len(voiced) // 2


async def test_wav_microphone_posts_24k_frames_with_vad(tmp_path: Path) -> None:
    """Silence, speech, silence: 20 ms 24 kHz frames, voiced only around the speech."""
    speech = speech_wav("hello, can you hear me", tmp_path / "q.wav", 48_000)
    mic = WavMicrophone(rate_hz=48_000, speed=0, after="end")
    mic.silence(500)
    mic.say(speech)
    mic.silence(800)
    frames: list[MicFrame] = []
    await mic.run(lambda e: frames.append(e) if isinstance(e, MicFrame) else None)
    assert all(len(f.pcm) == 960 for f in frames)
    total_ms = 1300 + len(read_pcm(speech)) * 1000 // 48_000
    assert abs(len(frames) * 20 - total_ms) <= 40
    gate = VadGate()
    changes = [(i, c) for i, f in enumerate(frames) if (c := gate.update(f.voiced))]
    assert [c for _, c in changes] == ["opened", "closed"]
    assert 20 <= changes[0][0] <= 35  # opened shortly after 500 ms of silence


async def test_wav_microphone_paces_at_speed(tmp_path: Path) -> None:
    """At speed 4 a 400 ms file takes about 100 ms of loop time (paced, not instant)."""
    path = write_wav(tmp_path / "s.wav", synthetic_speech(400, 24_000), 24_000)
    mic = WavMicrophone(path, rate_hz=24_000, speed=4.0, after="end")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await mic.run(lambda e: None)
    assert loop.time() - started >= 0.09
    assert mic.frames_posted >= 19


async def test_wav_microphone_unplugged_and_back() -> None:
    """unplug(s): DeviceLost at once, no frames meanwhile, DeviceRestored after, frames again."""
    mic = WavMicrophone(rate_hz=24_000, speed=0)
    events: list[Event] = []
    task = asyncio.create_task(mic.run(events.append))
    await until(lambda: mic.frames_posted > 3)
    mic.say(synthetic_speech(200, 24_000).tobytes())
    mic.unplug(0.2)
    await until(lambda: any(isinstance(e, DeviceRestored) for e in events))
    kinds = [type(e).__name__ for e in events]
    lost, back = kinds.index("DeviceLost"), kinds.index("DeviceRestored")
    assert set(kinds[lost + 1 : back]) <= {"MicFrame"} and back - lost <= 2  # the frame in flight
    assert events[lost] == DeviceLost("microphone", "fake microphone unplugged")
    await until(lambda: len(events) > back + 3)
    task.cancel()


async def test_control_socket_drives_button_and_microphone(tmp_path: Path) -> None:
    """A harness in another process presses, speaks and unplugs through the socket."""
    path = tmp_path / "control.sock"
    mic = WavMicrophone(rate_hz=24_000, speed=0)
    control = ControlSocket(path, mic)
    events: list[Event] = []
    task = asyncio.create_task(control.run(events.append))
    await until(path.exists)
    speech = write_wav(tmp_path / "s.wav", synthetic_speech(300, 24_000), 24_000)
    reader, writer = await asyncio.open_unix_connection(str(path))
    answers = []
    for line in ("press", f"say {speech}", "silence 100", "release", "say /nope.wav", "dance"):
        writer.write(line.encode() + b"\n")
        answers.append((await reader.readline()).decode().strip())
    writer.close()
    assert answers[:4] == ["ok"] * 4
    assert answers[4].startswith("error: ") and "nope.wav" in answers[4]
    assert answers[5] == "error: unknown command 'dance'"
    assert [type(e) for e in events] == [ButtonPressed, ButtonReleased]
    assert mic.pending_ms == pytest.approx(400, abs=1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not path.exists()
    real = ControlSocket(path, None)  # hark run --control-socket: the mic is a real one
    real._post = events.append
    assert real.command("say /x.wav") == "error: the microphone is a real one here"
    assert real.command("press") == "ok"


async def test_wav_microphone_accepts_raw_pcm() -> None:
    """say() takes raw 24 kHz bytes too (e.g. a reply fed back as an echo)."""
    mic = WavMicrophone(rate_hz=48_000, speed=0, after="end")
    mic.say(synthetic_speech(200).tobytes())
    frames: list[Event] = []
    await mic.run(frames.append)
    assert 9 <= len(frames) <= 11


async def test_wav_speaker_records_and_reports(tmp_path: Path) -> None:
    """Played audio lands in the WAV and PlaybackStopped reports its duration."""
    out = tmp_path / "out.wav"
    speaker = WavSpeaker(out, speed=0)
    events: list[Event] = []
    task = asyncio.create_task(speaker.run(events.append))
    pcm = synthetic_speech(300).tobytes()
    speaker.play("a", pcm[:4800])
    speaker.play("a", pcm[4800:])
    speaker.finish("a")
    for _ in range(200):
        await asyncio.sleep(0)
        if events:
            break
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert events == [PlaybackStopped("a", 300, interrupted=False)]
    with wave.open(str(out)) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    ref = np.frombuffer(pcm, np.int16)
    seg = audio[: len(ref)].astype(float)
    corr = np.dot(seg, ref) / (np.linalg.norm(seg) * np.linalg.norm(ref))
    assert corr > 0.95


async def test_wav_speaker_stop_accounts_played_time() -> None:
    """At real time, stop() after ~200 ms reports about that much played."""
    speaker = WavSpeaker(None, speed=1.0)
    events: list[Event] = []
    task = asyncio.create_task(speaker.run(events.append))
    speaker.play("a", synthetic_speech(2000).tobytes())
    await asyncio.sleep(0.2)
    heard = speaker.played_ms_now("a")
    speaker.stop()
    await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(events) == 1
    stopped = events[0]
    assert isinstance(stopped, PlaybackStopped) and stopped.interrupted
    assert stopped.item_id == "a"
    assert heard <= stopped.played_ms <= heard + 60  # at most the fade chunk and one tick


async def test_wav_speaker_cues_are_not_reported(tmp_path: Path) -> None:
    """Cues play (into the recording) but never produce PlaybackStopped."""
    out = tmp_path / "cue.wav"
    speaker = WavSpeaker(out, speed=0)
    events: list[Event] = []
    task = asyncio.create_task(speaker.run(events.append))
    speaker.cue("listening")
    for _ in range(100):
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert events == [] and speaker.cues_played == ["listening"]
    with wave.open(str(out)) as w:
        assert np.abs(np.frombuffer(w.readframes(w.getnframes()), np.int16)).max() > 1000


def test_default_cues_are_short_distinct_and_click_free() -> None:
    """Each generated cue is under half a second, starts and ends near silence."""
    tones = [tone(c, 48_000) for c in CUES]
    for t in tones:
        assert len(t) < 24_000
        assert abs(int(t[0])) < 200 and abs(int(t[-1])) < 200
    assert len({t.tobytes() for t in tones}) == 3


def test_owner_cue_files_replace_defaults(tmp_path: Path) -> None:
    """A cue WAV from the config is used (resampled); a broken one falls back to the tone."""
    good = write_wav(tmp_path / "ding.wav", np.full(2400, 1234, dtype=np.int16), 24_000)
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not a wav")
    cues = load_cues(48_000, {"done": good, "error": bad})
    assert len(cues["done"]) == pytest.approx(4800, abs=10)
    assert np.array_equal(cues["error"], tone("error", 48_000))
