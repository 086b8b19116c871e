"""hark.audio.pcm: pure PCM arithmetic, no device."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from hark.audio import pcm
from hark.audio.pcm import Framer, Resampler, Vad
from hark.vadgate import PreRoll, VadGate
from hypothesis import given, settings
from hypothesis import strategies as st


def tone(freq_hz: float, ms: int, rate_hz: int, amplitude: float = 10_000) -> np.ndarray:
    t = np.arange(rate_hz * ms // 1000) / rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def test_module_imports_no_asyncio_or_pyaudio() -> None:
    """pcm stays pure: no asyncio, no PyAudio, no audioop."""
    tree = ast.parse(Path(pcm.__file__).read_text())
    names = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    names |= {
        n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
    }
    assert not names & {"asyncio", "pyaudio", "audioop"}


def test_durations_round_trip() -> None:
    """Bytes and milliseconds convert both ways, frame-aligned, for any rate and channels."""
    assert pcm.ms_to_bytes(20, 24_000) == 960
    assert pcm.bytes_to_ms(960, 24_000) == 20
    assert pcm.ms_to_bytes(10, 48_000, channels=2) == 1920
    assert pcm.bytes_to_ms(1920, 48_000, channels=2) == 10
    assert pcm.ms_to_frames(20, 44_100) == 882
    assert pcm.frames_to_ms(882, 44_100) == pytest.approx(20)


def test_odd_byte_count_is_rejected() -> None:
    """Half a sample is a caller bug, not something to guess about."""
    with pytest.raises(ValueError):
        pcm.as_samples(b"\x00\x01\x02")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3000), max_size=20))
def test_framer_reassembles_any_chunking(sizes: list[int]) -> None:
    """Whatever the chunk sizes, frames come out whole, in order, and nothing is lost."""
    data = bytes(range(256)) * (sum(sizes) // 256 + 1)
    data = data[: sum(sizes) - sum(sizes) % 2]
    framer = Framer(960)
    out: list[bytes] = []
    pos = 0
    for size in sizes:
        chunk = data[pos : pos + size]
        pos += len(chunk)
        out += framer.push(chunk)
    assert all(len(f) == 960 for f in out)
    assert b"".join(out) == data[: len(out) * 960]
    assert framer.pending_bytes == len(data) - len(out) * 960


def test_framer_rejects_bad_frame_size() -> None:
    """A frame must hold whole samples."""
    with pytest.raises(ValueError):
        Framer(961)


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(48_000, 24_000), (24_000, 48_000), (44_100, 24_000)]
)
def test_streaming_resampler_matches_duration_and_pitch(in_rate: int, out_rate: int) -> None:
    """Chunked soxr resampling keeps the duration and the frequency of a tone."""
    signal = tone(440, 1000, in_rate)
    rs = Resampler(in_rate, out_rate)
    chunk = in_rate // 50
    parts = [rs.process(signal[i : i + chunk]) for i in range(0, len(signal), chunk)]
    parts.append(rs.flush())
    out = np.concatenate(parts)
    assert abs(len(out) - out_rate) <= 2
    spectrum = np.abs(np.fft.rfft(out[out_rate // 10 : out_rate // 10 + out_rate // 2]))
    peak_hz = np.argmax(spectrum) * out_rate / (out_rate // 2)
    assert abs(peak_hz - 440) < 5


def test_resampler_identity_is_a_passthrough() -> None:
    """Equal rates cost nothing and change nothing."""
    x = tone(300, 20, 24_000)
    rs = Resampler(24_000, 24_000)
    assert rs.is_identity
    assert rs.process(x) is x
    assert len(rs.flush()) == 0


def test_one_shot_resample_bytes() -> None:
    """``resample`` converts a whole buffer (cues, fixtures)."""
    out = pcm.resample(tone(440, 100, 48_000).tobytes(), 48_000, 24_000)
    assert abs(len(out) - 4800) <= 4


def test_gain_saturates_instead_of_wrapping() -> None:
    """Gain above 1 clips at full scale (no wrap-around crackle); 1.0 is the same array."""
    x = np.array([20_000, -20_000, 100], dtype=np.int16)
    assert list(pcm.apply_gain(x, 2.0)) == [32767, -32768, 200]
    assert pcm.apply_gain(x, 1.0) is x
    assert list(pcm.apply_gain(x, 0.0)) == [0, 0, 0]


def test_ramp_and_fades_have_no_step() -> None:
    """Fades start or end at silence and change gradually; the input is not modified."""
    x = np.full(480, 10_000, dtype=np.int16)
    up = pcm.fade_in(x, 240)
    down = pcm.fade_out(x, 240)
    assert up[0] == 0 and up[-1] == 10_000
    assert down[-1] < 100 and down[0] == 10_000
    assert np.max(np.abs(np.diff(up.astype(int)))) < 100
    assert np.max(np.abs(np.diff(down.astype(int)))) < 100
    assert x[0] == 10_000
    r = pcm.ramp(x, 1.0, 0.5)
    assert r[0] == 10_000 and 5_000 <= r[-1] < 5_100


def test_downmix_and_upmix() -> None:
    """Stereo averages to mono (ReSpeaker); mono duplicates to stereo."""
    stereo = np.array([100, 300, -100, -300], dtype=np.int16).tobytes()
    assert list(pcm.downmix(stereo, 2)) == [200, -200]
    assert list(pcm.upmix(np.array([1, 2], dtype=np.int16), 2)) == [1, 1, 2, 2]


def test_decimate_averages_runs() -> None:
    """Decimation by 3 averages each run of three samples."""
    x = np.array([3, 3, 3, 6, 6, 6, 9], dtype=np.int16)
    assert list(pcm.decimate(x, 3)) == [3, 6]


def test_levels() -> None:
    """RMS and dBFS of a full-scale square wave and of silence."""
    square = np.array([32767, -32767] * 100, dtype=np.int16)
    assert pcm.dbfs(square) == pytest.approx(0.0, abs=0.01)
    assert pcm.rms(np.zeros(0, dtype=np.int16)) == 0.0
    assert pcm.dbfs(np.zeros(10, dtype=np.int16)) < -100


def test_preroll_keeps_the_latest_frames() -> None:
    """The pre-roll holds the last ``duration_ms`` of frames and empties on ``take``."""
    roll = PreRoll(duration_ms=60, frame_ms=20)
    for i in range(5):
        roll.push(bytes([i]))
    assert len(roll) == 3
    assert roll.take() == [b"\x02", b"\x03", b"\x04"]
    assert len(roll) == 0


def test_vad_checks_webrtcvad_limits() -> None:
    """Unsupported rates, frame lengths and modes fail at construction, not per frame."""
    with pytest.raises(ValueError):
        Vad(rate_hz=24_000)
    with pytest.raises(ValueError):
        Vad(frame_ms=25)
    with pytest.raises(ValueError):
        Vad(aggressiveness=4)
    vad = Vad(2, 16_000, 20)
    assert vad.frame_bytes == 640
    assert vad.is_speech(bytes(640)) is False


def test_vad_gate_needs_n_of_m_to_open() -> None:
    """A single voiced blip does not open the gate; N voiced of the last M do."""
    gate = VadGate(frame_ms=20, open_voiced=3, open_window=5, close_silence_ms=100)
    assert gate.feed([True, False, False, False, False, True, False]) == []
    assert not gate.is_open
    assert gate.feed([True, False, True]) == ["opened"]
    assert gate.is_open


def test_vad_gate_closes_after_silence_not_on_a_pause() -> None:
    """Short pauses keep the gate open; ``close_silence_ms`` of silence closes it."""
    gate = VadGate(frame_ms=20, open_voiced=2, open_window=3, close_silence_ms=100)
    assert gate.feed([True, True]) == ["opened"]
    assert gate.feed([False] * 4 + [True] + [False] * 4) == []
    assert gate.feed([False]) == ["closed"]
    assert not gate.is_open
    assert gate.feed([True]) == []  # the window was cleared: needs N again
    assert gate.feed([True]) == ["opened"]


def test_vad_gate_rejects_impossible_settings() -> None:
    """open_voiced must fit in the window."""
    with pytest.raises(ValueError):
        VadGate(open_voiced=5, open_window=3)
