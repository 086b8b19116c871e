"""The system-test guest's piecewise reply comparison (system/guest/checks/pieces.py).

It runs inside the guest with only numpy, so it is loaded from its file here.  The
signals are synthetic speech-like bursts; the dropouts are the kinds seen under TCG:
a piece of the question missing from the capture, a gap inserted by a playback underrun.
"""

from __future__ import annotations

import importlib.util
import sys
import wave
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

PIECES = Path(__file__).resolve().parents[2] / "system" / "guest" / "checks" / "pieces.py"
RATE_Q = 22_050  # espeak-ng's rate
RATE_R = 48_000  # what the guest records


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("guest_pieces", PIECES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pieces = _load()


def speechlike(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Voiced bursts (harmonics of a wandering pitch, noise-shaped) with short pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    voice = voice + 0.3 * rng.standard_normal(len(t))
    envelope = (np.sin(2 * np.pi * 2.3 * t + rng.uniform(0, 6)) > -0.6).astype(float)
    return 0.3 * voice * envelope / np.max(np.abs(voice))


def to_rate(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    n = int(len(x) * dst / src)
    return np.interp(np.arange(n) * src / dst, np.arange(len(x)), x)


def reply_of(question: np.ndarray, *, delay_s: float = 2.0, tail_s: float = 3.0) -> np.ndarray:
    """What the guest records: silence, the question at the recording's rate, silence."""
    q = to_rate(question, RATE_Q, RATE_R)
    return np.concatenate((np.zeros(int(delay_s * RATE_R)), q, np.zeros(int(tail_s * RATE_R))))


def test_an_exact_copy_matches() -> None:
    q = speechlike(4.0, RATE_Q, seed=1)
    v = pieces.compare(q, RATE_Q, reply_of(q), RATE_R)
    assert v.ok, v.reason
    assert v.median > 0.95
    assert abs(v.lag_s - 2.0) < 0.01


def test_dropouts_in_capture_and_playback_still_match_and_show_as_drift() -> None:
    q = speechlike(5.0, RATE_Q, seed=2)
    r = reply_of(q)
    cut = lambda s: int(s * RATE_R)  # noqa: E731
    # The capture lost 125 ms of the question (the rest of the reply comes earlier) ...
    r = np.concatenate((r[: cut(3.0)], r[cut(3.125) :]))
    # ... and the playback ran dry twice (gaps of silence push the rest later).
    for at, gap in ((4.0, 0.1), (5.5, 0.05)):
        r = np.concatenate((r[: cut(at)], np.zeros(cut(gap)), r[cut(at) :]))
    v = pieces.compare(q, RATE_Q, r, RATE_R)
    assert v.ok, v.reason
    assert v.matched < len(v.scores)  # the pieces across the cut are damaged ...
    drift = v.shifts_ms[-1] - v.shifts_ms[0]
    assert 0 < drift < 60  # ... and -125 + 100 + 50 ms shows as the drift ...
    assert v.jumps == 3  # ... in three jumps


def test_noise_added_and_quieter_still_matches() -> None:
    q = speechlike(4.0, RATE_Q, seed=3)
    r = 0.5 * reply_of(q)
    r = r + 0.01 * np.random.default_rng(9).standard_normal(len(r))
    assert pieces.compare(q, RATE_Q, r, RATE_R).ok


def test_another_utterance_does_not_match() -> None:
    q = speechlike(4.0, RATE_Q, seed=4)
    other = speechlike(4.0, RATE_Q, seed=5)
    v = pieces.compare(q, RATE_Q, reply_of(other), RATE_R)
    assert not v.ok
    assert "median" in v.reason


def test_a_reply_sharing_only_some_words_does_not_match() -> None:
    q = speechlike(5.0, RATE_Q, seed=11)
    other = speechlike(5.0, RATE_Q, seed=12)
    half = np.concatenate((q[: int(2.0 * RATE_Q)], other[int(2.0 * RATE_Q) :]))  # 60 % differs
    v = pieces.compare(q, RATE_Q, reply_of(half), RATE_R)
    assert not v.ok
    assert v.matched < 0.75 * len(v.scores)


def test_silence_does_not_match() -> None:
    q = speechlike(4.0, RATE_Q, seed=6)
    v = pieces.compare(q, RATE_Q, np.zeros(10 * RATE_R), RATE_R)
    assert not v.ok
    assert v.reason == "the recording is silent"


def test_a_reply_cut_short_does_not_match() -> None:
    q = speechlike(6.0, RATE_Q, seed=7)
    r = reply_of(q, tail_s=0.0)
    r = r[: int(len(r) * 0.6)]  # only the first ~40 % of the question came back
    assert not pieces.compare(q, RATE_Q, r, RATE_R).ok


def write_wav(path: Path, x: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def test_main_reads_wavs_and_exits_by_the_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    q = speechlike(4.0, RATE_Q, seed=8)
    write_wav(tmp_path / "q.wav", q, RATE_Q)
    write_wav(tmp_path / "good.wav", reply_of(q), RATE_R)
    write_wav(tmp_path / "bad.wav", reply_of(speechlike(4.0, RATE_Q, seed=10)), RATE_R)
    assert pieces.main(["pieces.py", str(tmp_path / "q.wav"), str(tmp_path / "good.wav")]) == 0
    assert "voiced pieces matched" in capsys.readouterr().out
    assert pieces.main(["pieces.py", str(tmp_path / "q.wav"), str(tmp_path / "bad.wav")]) == 1
    assert "no match" in capsys.readouterr().out
