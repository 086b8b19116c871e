"""The capture chain: device-rate chunks in, 20 ms ``MicFrame``s at 24 kHz with a VAD verdict out.

Shared by the PyAudio microphone and the WAV-backed fake so both behave the same:
downmix → resample to 24 kHz (soxr, streaming) → gain → 20 ms frames → decimate to
8 kHz → webrtcvad → echo gate.  It runs on whatever thread delivers the audio (the
PortAudio callback thread for the real mic), so it must not block, must not touch the
event loop and must not import asyncio or PyAudio; callers post the frames it returns.
"""

from __future__ import annotations

import logging

import numpy as np

from hark.echo import ECHO_RATE_HZ, EchoGate
from hark.events import MicFrame
from hark.pcm import (
    MODEL_RATE_HZ,
    Framer,
    Resampler,
    Vad,
    apply_gain,
    as_samples,
    decimate,
    downmix,
    ms_to_bytes,
)

log = logging.getLogger(__name__)

FRAME_MS = 20
"""One ``MicFrame`` per 20 ms: a webrtcvad frame length, 960 bytes at 24 kHz."""


class CaptureChain:
    """Turns captured chunks into ``MicFrame``s; keeps resampler and framing state between calls.

    ``gain`` is software gain for quiet mics (1.0 costs nothing).  ``echo_gate``, when
    given, turns voiced frames that are our own playback into unvoiced ones (see
    ``hark.echo``).
    """

    def __init__(
        self,
        in_rate_hz: int,
        channels: int = 1,
        *,
        vad_aggressiveness: int = 2,
        gain: float = 1.0,
        echo_gate: EchoGate | None = None,
        resample_quality: str = "MQ",
    ) -> None:
        self.in_rate_hz = in_rate_hz
        self.channels = channels
        self.gain = gain
        self.echo_gate = echo_gate
        self._resampler = Resampler(in_rate_hz, MODEL_RATE_HZ, quality=resample_quality)
        self._framer = Framer(ms_to_bytes(FRAME_MS, MODEL_RATE_HZ))
        self._vad = Vad(vad_aggressiveness, ECHO_RATE_HZ, FRAME_MS)
        self._decimation = MODEL_RATE_HZ // ECHO_RATE_HZ
        self.frames_out = 0
        self.voiced_frames = 0
        self.echo_frames = 0
        self._in_total = 0  # samples fed to the resampler (per channel) since the last reset
        self._out_total = 0  # samples it gave back

    def reset(self) -> None:
        """Forget partial frames and filter state (after a device reopen)."""
        self._resampler.reset()
        self._framer.clear()
        self._in_total = self._out_total = 0

    def process(self, chunk: bytes, adc_end_s: float) -> list[MicFrame]:
        """Frames completed by ``chunk``; its last sample was captured at ``adc_end_s``."""
        samples = downmix(chunk, self.channels) if self.channels > 1 else as_samples(chunk)
        pcm24 = apply_gain(self._resampler.process(samples), self.gain)
        self._in_total += len(samples)
        self._out_total += len(pcm24)
        frames = self._framer.push(pcm24.tobytes())
        if not frames:
            return []
        out: list[MicFrame] = []
        frame_s = FRAME_MS / 1000
        # The framer may hold a partial frame back, and soxr a varying few ms (0-40 ms
        # at 48 kHz in 40 ms chunks): their samples came after these frames.
        held_s = self._framer.pending_bytes / 2 / MODEL_RATE_HZ
        held_s += self._in_total / self.in_rate_hz - self._out_total / MODEL_RATE_HZ
        first_start_s = adc_end_s - held_s - len(frames) * frame_s
        for i, frame in enumerate(frames):
            low = decimate(as_samples(frame), self._decimation)
            voiced = self._vad.is_speech(low.tobytes())
            gate = self.echo_gate
            if voiced and gate is not None and gate.is_echo(low, first_start_s + i * frame_s):
                voiced = False
                self.echo_frames += 1
            self.voiced_frames += voiced
            out.append(MicFrame(frame, voiced))
        self.frames_out += len(out)
        return out


def silence_frame() -> bytes:
    """One 20 ms frame of silence at 24 kHz (fakes use it after a WAV ends)."""
    return np.zeros(ms_to_bytes(FRAME_MS, MODEL_RATE_HZ) // 2, dtype=np.int16).tobytes()
