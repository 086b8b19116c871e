"""Does a recording hold a copy of a reference, piece by piece?  (numpy only)

The system-test guest records what hark played (hark-sim's parrot answers with the
question's own audio) and compares it with the question.  Under emulation the guest's
audio drops 50-125 ms now and then: a piece of the question missing from the capture
shifts the rest of the reply earlier, a playback underrun shifts it later.  One
correlation over the whole reply fails such audio although every word is there, so the
question is cut into short voiced pieces and each is looked for near where the previous
one was found.  Usage: ``python pieces.py QUESTION.wav REPLY.wav`` (exit 0 on a match).
"""

from __future__ import annotations

import sys
import wave
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Signal = Any  # a 1-D float64 numpy array

WORK_RATE_HZ = 16_000  # speech fits; a third of the work of 48 kHz


@dataclass(frozen=True)
class Verdict:
    """The comparison's outcome: per-piece scores and where each piece was found."""

    lag_s: float  # where the reference starts in the recording (global alignment)
    scores: list[float] = field(default_factory=list)  # per voiced piece, normalised 0..1
    shifts_ms: list[float] = field(default_factory=list)  # each piece's offset from lag
    median: float = 0.0
    matched: int = 0  # pieces scoring at least `piece_ok`
    ok: bool = False
    reason: str = ""

    @property
    def jumps(self) -> int:
        """How often the alignment moved by more than 30 ms: dropouts, roughly."""
        steps = np.diff(np.asarray(self.shifts_ms, dtype=np.float64))
        return int(np.sum(np.abs(steps) > 30))

    def summary(self) -> str:
        drift = (self.shifts_ms[-1] - self.shifts_ms[0]) if self.shifts_ms else 0.0
        return (
            f"{self.matched}/{len(self.scores)} voiced pieces matched, median "
            f"{self.median:.2f}, reply at {self.lag_s:.2f} s, {self.jumps} jumps, "
            f"drift {drift:+.0f} ms"
        )


def load_wav(path: str) -> tuple[Signal, int]:
    """A WAV file's first channel as floats in -1..1, and its rate."""
    with wave.open(path) as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * w.getsampwidth()}-bit samples; expected 16-bit")
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
        return raw.reshape(-1, w.getnchannels())[:, 0] / 32768.0, w.getframerate()


def to_work_rate(x: Signal, rate_hz: int) -> Signal:
    """Resample to WORK_RATE_HZ: a moving average as the low-pass, then linear interpolation."""
    x = np.asarray(x, dtype=np.float64)
    if rate_hz > WORK_RATE_HZ:
        width = max(1, round(rate_hz / WORK_RATE_HZ))
        x = np.convolve(x, np.ones(width) / width, mode="same")
    n = int(len(x) * WORK_RATE_HZ / rate_hz)
    return np.interp(np.arange(n) * rate_hz / WORK_RATE_HZ, np.arange(len(x)), x)


def _ncc(piece: Signal, hay: Signal) -> Signal:
    """Normalised cross-correlation of piece at every offset of hay (len(hay)-len(piece)+1)."""
    m = len(piece)
    if len(hay) < m:
        return np.zeros(0)
    size = 1 << int(np.ceil(np.log2(len(hay) + m)))
    corr = np.fft.irfft(np.fft.rfft(hay, size) * np.conj(np.fft.rfft(piece, size)), size)
    corr = corr[: len(hay) - m + 1]
    cum = np.concatenate(([0.0], np.cumsum(hay * hay)))
    energy = np.sqrt(np.maximum(cum[m:] - cum[:-m], 0.0))
    return np.asarray(corr / (energy * np.linalg.norm(piece) + 1e-9))


def compare(
    reference: Signal,
    ref_rate_hz: int,
    recording: Signal,
    rec_rate_hz: int,
    *,
    piece_s: float = 0.1,
    search_s: float = 0.8,
    voiced_dbfs: float = -40.0,
    piece_ok: float = 0.6,
    median_ok: float = 0.6,
    matched_ok: float = 0.75,
) -> Verdict:
    """Find each voiced piece of ``reference`` in ``recording``, in order.

    A piece is looked for within ``search_s`` of where it should be, given where the
    previous good piece was found (so a dropout's shift carries over to the rest).  The
    copy is judged present when the median piece score is at least ``median_ok`` and at
    least ``matched_ok`` of the pieces score ``piece_ok`` or more.
    """
    ref = to_work_rate(reference, ref_rate_hz)
    rec = to_work_rate(recording, rec_rate_hz)
    if len(rec) < len(ref) // 2:
        return Verdict(0.0, reason="the recording is shorter than half the reference")
    if float(np.sqrt(np.mean(rec * rec))) < 1e-4:
        return Verdict(0.0, reason="the recording is silent")
    whole = _ncc(ref, np.concatenate((rec, np.zeros(len(ref)))))
    lag = int(np.argmax(whole))
    piece = int(piece_s * WORK_RATE_HZ)
    slack = int(search_s * WORK_RATE_HZ)
    floor = 10 ** (voiced_dbfs / 20)
    scores: list[float] = []
    shifts: list[float] = []
    shift = 0
    for start in range(0, len(ref) - piece + 1, piece):
        p = ref[start : start + piece]
        if float(np.sqrt(np.mean(p * p))) < floor:
            continue
        expect = lag + start + shift
        lo, hi = max(0, expect - slack), min(len(rec), expect + slack + piece)
        found = _ncc(p, rec[lo:hi])
        if len(found) == 0:
            scores.append(0.0)
            continue
        best = int(np.argmax(found))
        score = float(found[best])
        scores.append(max(0.0, score))
        if score >= piece_ok:
            shift = lo + best - lag - start
            shifts.append(1000.0 * shift / WORK_RATE_HZ)
    if len(scores) < 3:
        return Verdict(lag / WORK_RATE_HZ, scores, shifts, reason="fewer than 3 voiced pieces")
    median = float(np.median(scores))
    matched = sum(s >= piece_ok for s in scores)
    ok = median >= median_ok and matched >= matched_ok * len(scores)
    reason = "" if ok else f"median {median:.2f} (>= {median_ok}), matched {matched}/{len(scores)}"
    return Verdict(lag / WORK_RATE_HZ, scores, shifts, median, matched, ok, reason)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: pieces.py QUESTION.wav REPLY.wav", file=sys.stderr)
        return 2
    q, qr = load_wav(argv[1])
    r, rr = load_wav(argv[2])
    v = compare(q, qr, r, rr)
    print(f"question {len(q) / qr:.2f} s, recording {len(r) / rr:.2f} s: {v.summary()}")
    print("piece scores: " + " ".join(f"{s:.2f}" for s in v.scores))
    print("piece shifts (ms): " + " ".join(f"{s:+.0f}" for s in v.shifts_ms))
    if not v.ok:
        print(f"no match: {v.reason}")
    return 0 if v.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
