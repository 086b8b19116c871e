"""PCM arithmetic for the audio path: framing, resampling, gain, fades, durations, VAD.

Everything here is pure computation on 16-bit little-endian mono samples (bytes or
``numpy.int16`` arrays) so both the real sound card and the WAV fakes share it and it can
be tested without a device.  It must not import asyncio, PyAudio or anything that does
I/O, and it must not use ``audioop`` (gone in Python 3.13, which Raspberry Pi OS Trixie
ships).  The VAD hysteresis and the pre-roll live in ``hark.vadgate`` (pure Python, for
the core).
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import soxr
import webrtcvad

# The durations are the core's too (no numpy there); re-exported for the audio path.
from hark.durations import MODEL_RATE_HZ as MODEL_RATE_HZ
from hark.durations import SAMPLE_WIDTH_BYTES as SAMPLE_WIDTH_BYTES
from hark.durations import bytes_to_ms as bytes_to_ms
from hark.durations import frames_to_ms as frames_to_ms
from hark.durations import ms_to_bytes as ms_to_bytes
from hark.durations import ms_to_frames as ms_to_frames

log = logging.getLogger(__name__)

Samples = npt.NDArray[np.int16]

VAD_RATES_HZ = (8_000, 16_000, 32_000, 48_000)
VAD_FRAME_MS = (10, 20, 30)
"""webrtcvad accepts only these rates and frame lengths."""

_INT16_MIN = -32768
_INT16_MAX = 32767

# --------------------------------------------------------------------------- samples


def as_samples(pcm: bytes) -> Samples:
    """A read-only int16 view of ``pcm`` (no copy); an odd trailing byte is an error."""
    if len(pcm) % SAMPLE_WIDTH_BYTES:
        raise ValueError(f"PCM16 needs an even number of bytes, got {len(pcm)}")
    return np.frombuffer(pcm, dtype=np.int16)


def downmix(pcm: bytes, channels: int) -> Samples:
    """Interleaved ``channels`` → mono by averaging (e.g. a ReSpeaker that only does stereo)."""
    samples = as_samples(pcm)
    if channels == 1:
        return samples
    return _average_runs(samples[: len(samples) - len(samples) % channels], channels)


def upmix(samples: Samples, channels: int) -> Samples:
    """Mono → ``channels`` interleaved copies (a speaker that only plays stereo)."""
    if channels == 1:
        return samples
    return np.repeat(samples, channels)


def apply_gain(samples: Samples, gain: float) -> Samples:
    """Multiply by ``gain`` with saturation (no wrap-around crackle); 1.0 is a no-op."""
    if gain == 1.0:
        return samples
    scaled = samples.astype(np.float32) * np.float32(gain)
    out: Samples = np.clip(scaled, _INT16_MIN, _INT16_MAX).astype(np.int16)
    return out


def ramp(samples: Samples, start_gain: float, end_gain: float) -> Samples:
    """Gain sliding linearly from ``start_gain`` to ``end_gain`` across ``samples``.

    One mechanism for fade-in, fade-out and volume changes, so none of them clicks.
    """
    if start_gain == end_gain:
        return apply_gain(samples, start_gain)
    n = len(samples)
    if n == 0:
        return samples
    gains = np.linspace(start_gain, end_gain, n, endpoint=False, dtype=np.float32)
    scaled = samples.astype(np.float32) * gains
    out: Samples = np.clip(scaled, _INT16_MIN, _INT16_MAX).astype(np.int16)
    return out


def fade_in(samples: Samples, fade_frames: int) -> Samples:
    """Ramp the first ``fade_frames`` up from silence (a copy; the input is untouched)."""
    out = samples.copy()
    n = min(fade_frames, len(out))
    if n:
        out[:n] = ramp(out[:n], 0.0, 1.0)
    return out


def fade_out(samples: Samples, fade_frames: int) -> Samples:
    """Ramp the last ``fade_frames`` down to silence (a copy)."""
    out = samples.copy()
    n = min(fade_frames, len(out))
    if n:
        out[len(out) - n :] = ramp(out[len(out) - n :], 1.0, 0.0)
    return out


def rms(samples: Samples) -> float:
    """Root mean square in int16 units (0 for an empty frame)."""
    if len(samples) == 0:
        return 0.0
    x = samples.astype(np.float32)
    return float(np.sqrt(np.dot(x, x) / len(x)))


def dbfs(samples: Samples) -> float:
    """RMS level relative to full scale (−inf-ish floor at −120 dB)."""
    return 20.0 * float(np.log10(max(rms(samples), 1e-3) / 32768.0))


def decimate(samples: Samples, factor: int) -> Samples:
    """Average each run of ``factor`` samples: a cheap low-pass + downsample.

    Good enough for the VAD and the echo gate (they look at speech energy below 4 kHz),
    far cheaper than a second soxr stream per frame.  Trailing samples that do not
    fill a run are dropped, so feed whole frames.
    """
    if factor == 1:
        return samples
    return _average_runs(samples[: len(samples) - len(samples) % factor], factor)


def _average_runs(samples: Samples, n: int) -> Samples:
    """Mean of each run of ``n`` samples (``len(samples)`` a multiple of ``n``).

    Strided adds in int32, no BLAS: this runs once per audio callback, with caches cold
    from 20-40 ms of sleep, where a matrix-vector product costs ~80 µs (BLAS dispatch
    evicted) and these few ufuncs ~20.
    """
    acc = samples[0::n].astype(np.int32)
    for k in range(1, n):
        acc += samples[k::n]
    acc //= n
    out: Samples = acc.astype(np.int16)
    return out


# --------------------------------------------------------------------------- framing


class Framer:
    """Cuts arbitrary chunks into fixed-size frames, carrying the remainder over."""

    def __init__(self, frame_bytes: int) -> None:
        if frame_bytes <= 0 or frame_bytes % SAMPLE_WIDTH_BYTES:
            raise ValueError(f"frame_bytes must be a positive even number, got {frame_bytes}")
        self.frame_bytes = frame_bytes
        self._pending = bytearray()

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def push(self, chunk: bytes) -> list[bytes]:
        """Append ``chunk``; return every complete frame now available, oldest first."""
        n = self.frame_bytes
        if not self._pending and len(chunk) % n == 0:  # the common case: whole frames
            return [bytes(chunk[i : i + n]) for i in range(0, len(chunk), n)]
        self._pending += chunk
        whole = len(self._pending) - len(self._pending) % n
        frames = [bytes(self._pending[i : i + n]) for i in range(0, whole, n)]
        del self._pending[:whole]
        return frames

    def clear(self) -> None:
        self._pending.clear()


# --------------------------------------------------------------------------- resampling


class Resampler:
    """A streaming resampler (soxr) keeping filter state across chunks; identity if rates match.

    ``soxr.ResampleStream`` holds back a few milliseconds of delay; ``flush()`` returns
    it at the end of a stream.  Cost is dominated by per-call overhead, so feed it
    chunks of 10 ms or more.
    """

    def __init__(self, in_rate_hz: int, out_rate_hz: int, quality: str = "MQ") -> None:
        self.in_rate_hz = in_rate_hz
        self.out_rate_hz = out_rate_hz
        self._quality = quality
        self._stream: soxr.ResampleStream | None = None
        self.reset()

    @property
    def is_identity(self) -> bool:
        return self.in_rate_hz == self.out_rate_hz

    @property
    def held_s(self) -> float:
        """How much of the input it holds back: its output ends this much before its input
        (the output is aligned with the input's start, so this is the whole offset)."""
        return self._in / self.in_rate_hz - self._out / self.out_rate_hz

    def reset(self) -> None:
        """Forget filter state (after a gap, a device reopen or a new item)."""
        self._in = self._out = 0
        if self.is_identity:
            self._stream = None
        else:
            self._stream = soxr.ResampleStream(
                self.in_rate_hz, self.out_rate_hz, 1, dtype="int16", quality=self._quality
            )

    def process(self, samples: Samples, last: bool = False) -> Samples:
        if self._stream is None:
            return samples
        out: Samples = self._stream.resample_chunk(samples, last=last)
        self._in += len(samples)
        self._out += len(out)
        return out

    def process_bytes(self, pcm: bytes, last: bool = False) -> bytes:
        return self.process(as_samples(pcm), last=last).tobytes()

    def flush(self) -> Samples:
        """The samples still held in the filter; the stream is reset afterwards."""
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        out = self.process(np.zeros(0, dtype=np.int16), last=True)
        self.reset()
        return out


def resample(pcm: bytes, in_rate_hz: int, out_rate_hz: int, quality: str = "HQ") -> bytes:
    """One-shot resampling of a whole buffer (cues, test fixtures)."""
    if in_rate_hz == out_rate_hz:
        return pcm
    out: Samples = soxr.resample(as_samples(pcm), in_rate_hz, out_rate_hz, quality=quality)
    return out.astype(np.int16).tobytes()


# --------------------------------------------------------------------------- VAD


class Vad:
    """webrtcvad with its constraints checked once, at construction.

    ``aggressiveness`` 0–3: higher rejects more non-speech (noisy rooms) and misses
    more soft speech.
    """

    def __init__(self, aggressiveness: int = 2, rate_hz: int = 8_000, frame_ms: int = 20) -> None:
        if rate_hz not in VAD_RATES_HZ:
            raise ValueError(f"webrtcvad needs a rate in {VAD_RATES_HZ}, got {rate_hz}")
        if frame_ms not in VAD_FRAME_MS:
            raise ValueError(f"webrtcvad needs frames of {VAD_FRAME_MS} ms, got {frame_ms}")
        if not 0 <= aggressiveness <= 3:
            raise ValueError(f"webrtcvad aggressiveness is 0..3, got {aggressiveness}")
        self.rate_hz = rate_hz
        self.frame_ms = frame_ms
        self.frame_bytes = ms_to_bytes(frame_ms, rate_hz)
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: bytes) -> bool:
        """``frame`` must be exactly ``frame_bytes`` long at ``rate_hz``."""
        return bool(self._vad.is_speech(frame, self.rate_hz))
