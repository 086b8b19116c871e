"""Durations of PCM16 audio and the Realtime API's audio format: plain arithmetic.

Split from ``hark.audio.pcm`` so the core and the history can count audio without importing
numpy, soxr or webrtcvad (``hark.audio.pcm`` re-exports all of it).
"""

from __future__ import annotations

SAMPLE_WIDTH_BYTES = 2
MODEL_RATE_HZ = 24_000
"""The Realtime API takes and returns PCM16 mono at 24 kHz only."""


def ms_to_frames(ms: float, rate_hz: int) -> int:
    """Sample frames in ``ms`` milliseconds at ``rate_hz`` (rounded down)."""
    return int(ms * rate_hz // 1000)


def frames_to_ms(frames: int, rate_hz: int) -> float:
    return frames * 1000.0 / rate_hz


def bytes_to_ms(n_bytes: int, rate_hz: int = MODEL_RATE_HZ, channels: int = 1) -> float:
    """Duration of ``n_bytes`` of PCM16 at ``rate_hz`` (the model's, by default)."""
    return n_bytes / (SAMPLE_WIDTH_BYTES * channels) * 1000.0 / rate_hz


def ms_to_bytes(ms: float, rate_hz: int, channels: int = 1) -> int:
    """Bytes of PCM16 in ``ms`` milliseconds, always a whole number of frames."""
    return ms_to_frames(ms, rate_hz) * SAMPLE_WIDTH_BYTES * channels
