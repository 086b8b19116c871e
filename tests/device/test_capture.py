"""hark.audio.capture.CaptureChain: VAD at the device rate, resampling deferred while holding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hark.audio.capture import CaptureChain
from hark.audio.pcm import resample
from hark.events import MicDemand, MicFrame
from hark.testing import read_pcm, speech_wav

CHUNK_MS = 40


def _utterance(tmp_path: Path, rate_hz: int) -> bytes:
    """500 ms of silence, speech, 800 ms of silence at ``rate_hz``."""
    speech = read_pcm(speech_wav("hello, can you hear me", tmp_path / "q.wav", rate_hz), rate_hz)
    return bytes(rate_hz) + speech + bytes(rate_hz * 8 // 5)


def _feed(
    chain: CaptureChain, pcm: bytes, rate_hz: int, demand: MicDemand = "every"
) -> list[list[MicFrame]]:
    """``pcm`` in 40 ms chunks, as a PortAudio callback would hand it; one list per chunk."""
    step = rate_hz * CHUNK_MS // 1000 * 2
    return [
        chain.process(pcm[i : i + step], 10.0 + (i + step) / 2 / rate_hz, demand)
        for i in range(0, len(pcm) - step + 1, step)
    ]


@pytest.mark.parametrize("demand", ["batched", "speech"])
@pytest.mark.parametrize("rate_hz", [48_000, 16_000, 44_100])
def test_holding_changes_when_frames_leave_not_what_they_are(
    tmp_path: Path, rate_hz: int, demand: MicDemand
) -> None:
    """ "batched" holds unvoiced audio, "speech" voiced audio, in batches of ≤ hold_ms; a
    frame of the other kind leaves at once; the frames (audio and verdicts) are the ones
    the chain gives without holding."""
    pcm = _utterance(tmp_path, rate_hz)
    at_once = _feed(CaptureChain(rate_hz), pcm, rate_hz)
    held = _feed(CaptureChain(rate_hz, hold_ms=100), pcm, rate_hz, demand)
    flat = [f for batch in at_once for f in batch]
    held_flat = [f for batch in held for f in batch]
    assert 0 <= len(flat) - len(held_flat) <= 5  # the last batch may still be held
    assert [f.voiced for f in held_flat] == [f.voiced for f in flat[: len(held_flat)]]
    # soxr's output may differ by a least significant bit with how its input was cut.
    a = np.frombuffer(b"".join(f.pcm for f in held_flat), np.int16).astype(int)
    b = np.frombuffer(b"".join(f.pcm for f in flat[: len(held_flat)]), np.int16).astype(int)
    assert np.max(np.abs(a - b)) <= 2
    assert any(f.voiced for f in flat) and not all(f.voiced for f in flat)
    # What the hold leaves: at most 100 ms (+ one 40 ms chunk) of audio waits.
    waited = 0
    for batch in held:
        waited = 0 if batch else waited + CHUNK_MS
        assert waited < 100
    # Where the held kind runs on (silence for "batched", speech for "speech"), 3 chunks
    # leave in one batch.
    kind = demand == "speech"
    steady = [i for i, b in enumerate(at_once) if b and all(f.voiced == kind for f in b)]
    assert len(steady) >= 10
    assert sum(1 for i in steady if held[i]) <= len(steady) / 2
    # A frame of the urgent kind is handed out at the latest with the chunk after the
    # one in which it was judged (soxr may still hold its audio at first).
    chain = CaptureChain(rate_hz, hold_ms=100)
    step = rate_hz * CHUNK_MS // 1000 * 2
    judged_before = handed = 0
    for i in range(0, len(pcm) - step + 1, step):
        urgent_before = _urgent(chain, demand)
        frames = chain.process(pcm[i : i + step], 10.0, demand)
        handed += sum(f.voiced != kind for f in frames)
        assert handed >= judged_before
        judged_before = urgent_before


def _urgent(chain: CaptureChain, demand: MicDemand) -> int:
    """How many frames of the kind ``demand`` never holds the chain has judged so far."""
    if demand == "batched":
        return chain.voiced_frames
    return chain.judged_frames - chain.voiced_frames


def test_device_rate_vad_hears_what_the_24k_path_hears(tmp_path: Path) -> None:
    """webrtcvad on 48 kHz frames agrees with it on the 24 kHz → 8 kHz path, and the audio
    handed out is the speech resampled to 24 kHz."""
    pcm48 = _utterance(tmp_path, 48_000)
    direct = [f for b in _feed(CaptureChain(48_000), pcm48, 48_000) for f in b]
    pcm24 = resample(pcm48, 48_000, 24_000)
    via = [f for b in _feed(CaptureChain(24_000), pcm24, 24_000) for f in b]
    n = min(len(direct), len(via))
    agree = sum(a.voiced == b.voiced for a, b in zip(direct[:n], via[:n], strict=True))
    assert agree >= 0.95 * n
    out = np.frombuffer(b"".join(f.pcm for f in direct), np.int16).astype(float)
    ref = np.frombuffer(pcm24, np.int16).astype(float)[: len(out)]
    lag = (
        int(np.argmax(np.correlate(out[: 24_000 * 2], ref[: 24_000 * 2], "full"))) - 2 * 24_000 + 1
    )
    assert abs(lag) < 48  # soxr's own delay, well under one frame
    aligned = out[lag:] if lag > 0 else out
    m = min(len(aligned), len(ref))
    corr = np.dot(aligned[:m], ref[:m]) / np.sqrt(
        np.dot(aligned[:m], aligned[:m]) * np.dot(ref[:m], ref[:m])
    )
    assert corr > 0.99


def test_reset_forgets_held_audio(tmp_path: Path) -> None:
    """After a reset (a device reopen), nothing captured before it is handed out."""
    chain = CaptureChain(48_000, hold_ms=200)
    assert chain.process(bytes(3840), 1.0, "batched") == []
    chain.reset()
    frames = chain.process(bytes(3840 * 5), 2.0)
    assert 8 <= len(frames) <= 10  # 200 ms of audio, less what soxr still holds
