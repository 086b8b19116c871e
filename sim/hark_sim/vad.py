"""Turn detection for the simulator: ``server_vad`` and an approximate ``semantic_vad``.

It must not emit events or own the audio buffer; it is fed appended audio and answers
with speech start/stop positions in milliseconds since the session's first appended byte.

How: the 24 kHz PCM16 input is low-passed (31-tap windowed sinc, cut-off 4 kHz) and
decimated by 3 to 8 kHz, then judged by webrtcvad in 10 ms frames. Speech starts after
3 consecutive voiced frames (30 ms); it stops after ``silence_duration_ms`` of unvoiced
frames. ``threshold`` picks webrtcvad's aggressiveness (<0.25 → 0, <0.5 → 1, <0.75 → 2,
else 3). ``semantic_vad`` has no semantics here: it is server_vad with a silence wait
chosen by eagerness (high 300 ms, medium/auto 800 ms, low 2000 ms) and 300 ms padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import webrtcvad

VAD_RATE_HZ = 8000
DECIMATION = 3  # 24 kHz -> 8 kHz
FRAME_MS = 10
FRAME_BYTES_24K = 24000 * 2 * FRAME_MS // 1000  # 480 bytes
ONSET_FRAMES = 3
_TAPS = 31

SEMANTIC_SILENCE_MS = {"high": 300, "medium": 800, "auto": 800, "low": 2000}


def _kernel() -> np.ndarray[Any, np.dtype[np.float64]]:
    cutoff = 0.5 / DECIMATION
    n = np.arange(_TAPS) - (_TAPS - 1) / 2
    k = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(_TAPS)
    return np.asarray(k / k.sum(), dtype=np.float64)


_KERNEL = _kernel()


@dataclass
class VadEvent:
    """``started`` carries audio_start_ms (padding included); ``stopped`` audio_end_ms."""

    kind: Literal["started", "stopped"]
    ms: int


def _mode_for(threshold: float) -> int:
    if threshold < 0.25:
        return 0
    if threshold < 0.5:
        return 1
    if threshold < 0.75:
        return 2
    return 3


class TurnDetector:
    """Stateful speech detector over the session's appended audio."""

    def __init__(self, turn_detection: dict[str, Any]) -> None:
        self.silence_ms = 200
        self.prefix_ms = 300
        self._vad = webrtcvad.Vad(2)
        self.configure(turn_detection)
        self._pending = b""  # 24 kHz bytes not yet a whole frame
        self._history = np.zeros(_TAPS - 1)
        self._phase = 0  # decimation phase carried across frames
        self.position_ms = 0  # end of the last judged frame, since session start
        self.in_speech = False
        self._voiced_run = 0
        self._silent_run_ms = 0

    def configure(self, turn_detection: dict[str, Any]) -> None:
        if turn_detection.get("type") == "semantic_vad":
            eagerness = str(turn_detection.get("eagerness") or "auto")
            self.silence_ms = SEMANTIC_SILENCE_MS.get(eagerness, 800)
            self.prefix_ms = 300
            self._vad.set_mode(2)
        else:
            self.silence_ms = int(turn_detection.get("silence_duration_ms") or 200)
            self.prefix_ms = int(turn_detection.get("prefix_padding_ms") or 300)
            self._vad.set_mode(_mode_for(float(turn_detection.get("threshold", 0.5))))

    def reset_turn(self) -> None:
        """Forget a speech segment in progress (the buffer was cleared or committed)."""
        self.in_speech = False
        self._voiced_run = 0
        self._silent_run_ms = 0

    def skip(self, nbytes: int) -> None:
        """Account for appended audio that is not judged (e.g. while VAD was off)."""
        self._pending += b"\x00" * nbytes
        n_frames = len(self._pending) // FRAME_BYTES_24K
        self.position_ms += n_frames * FRAME_MS
        self._pending = self._pending[n_frames * FRAME_BYTES_24K :]

    def feed(self, pcm: bytes, buffer_start_ms: int) -> list[VadEvent]:
        """Judge newly appended audio; ``buffer_start_ms`` bounds the prefix padding."""
        self._pending += pcm
        n_frames = len(self._pending) // FRAME_BYTES_24K
        if not n_frames:
            return []
        chunk = self._pending[: n_frames * FRAME_BYTES_24K]
        self._pending = self._pending[n_frames * FRAME_BYTES_24K :]
        frames8k = self._decimate(chunk)
        events: list[VadEvent] = []
        step = len(frames8k) // n_frames
        for i in range(n_frames):
            frame = frames8k[i * step : (i + 1) * step]
            voiced = self._vad.is_speech(frame, VAD_RATE_HZ)
            self.position_ms += FRAME_MS
            event = self._step(voiced, buffer_start_ms)
            if event is not None:
                events.append(event)
        return events

    def _decimate(self, chunk: bytes) -> bytes:
        src = np.frombuffer(chunk, dtype="<i2").astype(np.float64)
        joined = np.concatenate([self._history, src])
        filtered = np.convolve(joined, _KERNEL, mode="valid")  # len == len(src)
        self._history = joined[-(_TAPS - 1) :]
        out = filtered[::DECIMATION]
        return bytes(np.round(out).clip(-32768, 32767).astype("<i2").tobytes())

    def _step(self, voiced: bool, buffer_start_ms: int) -> VadEvent | None:
        if not self.in_speech:
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            if self._voiced_run >= ONSET_FRAMES:
                self.in_speech = True
                self._silent_run_ms = 0
                onset_ms = self.position_ms - ONSET_FRAMES * FRAME_MS
                return VadEvent("started", max(buffer_start_ms, onset_ms - self.prefix_ms))
            return None
        if voiced:
            self._silent_run_ms = 0
            return None
        self._silent_run_ms += FRAME_MS
        if self._silent_run_ms >= self.silence_ms:
            self.in_speech = False
            self._voiced_run = 0
            return VadEvent("stopped", self.position_ms)
        return None
