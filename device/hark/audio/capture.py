"""The capture chain: device-rate chunks in, 20 ms ``MicFrame``s at 24 kHz with a VAD verdict out.

Shared by the PyAudio microphone and the WAV-backed fake so both behave the same.  Where
webrtcvad takes the device's rate (8/16/32/48 kHz, the usual case): downmix → gain →
webrtcvad and the echo gate on 20 ms device-rate frames at once → resample to 24 kHz
(soxr, streaming) only when the frames are handed out.  Other rates (44.1 kHz): resample
first, then VAD on the 24 kHz frames decimated to 8 kHz.

Each wake-up of the capture thread costs far more than the samples it carries (caches
are cold after 40 ms of sleep), so where the core can wait (see ``process``) audio is
kept raw and resampled in one call per ``hold_ms``; a frame the core needs now releases
everything at once.  It runs on whatever thread delivers the audio (the PortAudio
callback thread for the real mic), so it must not block, must not touch the event loop
and must not import asyncio or PyAudio; callers post the frames it returns.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from hark.audio.echo import ECHO_RATE_HZ
from hark.audio.pcm import (
    MODEL_RATE_HZ,
    VAD_RATES_HZ,
    Framer,
    Resampler,
    Samples,
    Vad,
    apply_gain,
    as_samples,
    decimate,
    downmix,
    ms_to_bytes,
)
from hark.events import MicDemand, MicFrame, StopWordHeard, WakeWordHeard

if TYPE_CHECKING:
    from hark.audio.frontend import FrontEnd
    from hark.ports import WordSpotter

log = logging.getLogger(__name__)


class EchoJudge(Protocol):
    """What the chain asks of an echo gate (``EchoGate``, or ``frontend.ResidualGate``)."""

    def is_echo(self, mic: Samples, adc_start_s: float) -> bool: ...


FRAME_MS = 20
"""One ``MicFrame`` per 20 ms: a webrtcvad frame length, 960 bytes at 24 kHz."""
SPOT_RATE_HZ = 16_000
"""The word spotter's rate (microWakeWord models)."""

CaptureEvent = MicFrame | WakeWordHeard | StopWordHeard
"""What the chain hands out: frames, and the words heard, in stream order."""


class CaptureChain:
    """Turns captured chunks into ``MicFrame``s; keeps resampler, framing and hold state.

    ``gain`` is software gain for quiet mics (1.0 costs nothing).  ``echo_gate``, when
    given, turns voiced frames that are our own playback into unvoiced ones (see
    ``hark.audio.echo``).  ``hold_ms``: the most audio ``process`` keeps back before handing
    it out.  ``front_end`` (``hark.audio.frontend``): echo cancellation, noise suppression
    and gain; with one, the audio is taken to 16 kHz first and everything after it (VAD,
    gate, the 24 kHz frames for the model) sees the cleaned signal.
    ``spotter``, when given, hears the wake and stop words (``hark.audio.wake``)
    while armed: on the same chunks, at 16 kHz (the device's audio as it is at 16 kHz,
    averaged down from 32 or 48 kHz like the echo gate's 8 kHz, soxr only from other
    rates); a word heard is handed out between the frames where it ended.
    """

    def __init__(
        self,
        in_rate_hz: int,
        channels: int = 1,
        *,
        vad_aggressiveness: int = 2,
        gain: float = 1.0,
        echo_gate: EchoJudge | None = None,
        resample_quality: str = "MQ",
        hold_ms: int = 100,
        front_end: FrontEnd | None = None,
        spotter: WordSpotter | None = None,
    ) -> None:
        self.front_end = front_end
        self._to_front: Resampler | None = None
        if front_end is not None:
            from hark.audio.frontend import QUALITY as FRONT_QUALITY
            from hark.audio.frontend import RATE_HZ as FRONT_RATE_HZ

            # A real low-pass (soxr), the same the speaker's reference gets: averaging
            # aliases 8-12 kHz into the band differently on the two sides (their phases
            # differ by the echo's delay), which no canceller can subtract.
            if in_rate_hz != FRONT_RATE_HZ:
                self._to_front = Resampler(in_rate_hz, FRONT_RATE_HZ, quality=FRONT_QUALITY)
            in_rate_hz = FRONT_RATE_HZ  # from here on the chain sees the cleaned 16 kHz
        self.in_rate_hz = in_rate_hz
        self.channels = channels
        self.gain = gain
        self.echo_gate = echo_gate
        # webrtcvad downsamples to 8 kHz itself (in C): at a rate it takes, VAD and gate
        # need no resampling, and the 24 kHz stream is only made when it is handed out.
        self.direct = in_rate_hz in VAD_RATES_HZ and in_rate_hz % ECHO_RATE_HZ == 0
        vad_rate_hz = in_rate_hz if self.direct else ECHO_RATE_HZ
        self._vad = Vad(vad_aggressiveness, vad_rate_hz, FRAME_MS)
        self._decimation = (in_rate_hz if self.direct else MODEL_RATE_HZ) // ECHO_RATE_HZ
        self._resampler = Resampler(in_rate_hz, MODEL_RATE_HZ, quality=resample_quality)
        self._framer = Framer(ms_to_bytes(FRAME_MS, MODEL_RATE_HZ))
        self._vad_framer = Framer(ms_to_bytes(FRAME_MS, in_rate_hz))
        self.hold_ms = hold_ms
        self._hold_samples = max(1, in_rate_hz * hold_ms // 1000)
        self._verdicts: deque[bool] = deque()  # direct: verdicts of frames not yet handed out
        self._last_verdict = False
        self._raw: list[Samples] = []  # direct: device-rate audio not yet resampled
        self._raw_samples = 0
        self._held: list[CaptureEvent] = []  # via 24 kHz: frames (and words) kept back
        self.frames_out = 0
        self.judged_frames = 0
        self.voiced_frames = 0
        self.echo_frames = 0
        self._in_total = 0  # samples fed to the resampler (per channel) since the last reset
        self._out_total = 0  # samples it gave back
        self.spotter = spotter
        self._spot_factor = in_rate_hz // SPOT_RATE_HZ if in_rate_hz % SPOT_RATE_HZ == 0 else 0
        self._spot_resampler = (  # only a spotter at a rate the averaging cannot serve
            Resampler(in_rate_hz, SPOT_RATE_HZ, quality="QQ")
            if spotter is not None and not self._spot_factor
            else None
        )
        self._spot_carry: Samples | None = None  # < factor samples left by the averaging
        self._frame_samples = in_rate_hz * FRAME_MS // 1000
        self._in_pos = 0  # device samples seen since the last reset
        self._handed = 0  # 24 kHz frames handed out since the last reset
        self._marks: deque[tuple[int, WakeWordHeard | StopWordHeard]] = deque()  # (frame, word)

    def reset(self) -> None:
        """Forget partial frames, held audio and filter state (after a gap or a reopen)."""
        self._resampler.reset()
        if self._to_front is not None:
            self._to_front.reset()
        if self.front_end is not None:
            self.front_end.reset()
        self._framer.clear()
        self._vad_framer.clear()
        self._verdicts.clear()
        self._raw, self._raw_samples, self._held = [], 0, []
        self._in_total = self._out_total = 0
        self._in_pos = self._handed = 0
        self._marks.clear()
        self._spot_carry = None
        if self._spot_resampler is not None:
            self._spot_resampler.reset()

    def process(
        self, chunk: bytes, adc_end_s: float, demand: MicDemand = "every"
    ) -> list[CaptureEvent]:
        """Frames completed by ``chunk``; its last sample was captured at ``adc_end_s``.

        ``demand`` (see ``hark.ports.Microphone.set_demand``): ``"batched"`` lets unvoiced
        audio, ``"speech"`` voiced audio, wait up to ``hold_ms`` (``[]`` meanwhile) and
        leave in one batch; a frame of the other kind releases everything at once.
        ``"every"`` (and ``"off"``) hold nothing back.  A word heard is never held back.
        """
        samples = downmix(chunk, self.channels) if self.channels > 1 else as_samples(chunk)
        if self.gain != 1.0:
            samples = apply_gain(samples, self.gain)
        if self.front_end is not None:
            if self._to_front is not None:
                samples = self._to_front.process(samples)
                adc_end_s -= self._to_front.held_s  # its output ends that much earlier
            samples = self.front_end.process(samples, adc_end_s)
            if not len(samples):
                return []
            adc_end_s -= self.front_end.pending_s
        # The spotter hears what the model would: the cleaned audio, when cleaned.
        if self.spotter is not None:
            self._spot(samples)
        self._in_pos += len(samples)
        if not self.direct:
            return self._via_model_rate(samples, adc_end_s, demand)
        plain = self.channels == 1 and self.gain == 1.0 and self.front_end is None
        self._judge(chunk if plain else samples.tobytes(), adc_end_s)
        self._raw.append(samples)
        self._raw_samples += len(samples)
        # The verdicts not yet handed out include any whose audio soxr still held at the
        # last release: an urgent one among them goes now too.
        may_wait = self._may_wait(demand, self._verdicts) and not self._marks
        if may_wait and self._raw_samples < self._hold_samples:
            return []
        raw = self._raw[0] if len(self._raw) == 1 else np.concatenate(self._raw)
        self._raw, self._raw_samples = [], 0
        frames = self._framer.push(self._resampler.process(raw).tobytes())
        verdicts = self._verdicts
        out: list[CaptureEvent] = []
        for frame in frames:
            # soxr holds a few ms back, so the 24 kHz frames trail the judged ones by up
            # to two; each takes the oldest verdict not yet handed out.
            if verdicts:
                self._last_verdict = verdicts.popleft()
            out.append(MicFrame(frame, self._last_verdict))
            self._handed += 1
            if self._marks:
                self._place_words(out)
        self.frames_out += len(frames)
        if self._marks:  # heard in audio soxr still holds: it goes now, not a batch later
            out += [word for _, word in self._marks]
            self._marks.clear()
        return out

    def _spot(self, samples: Samples) -> None:
        """Feed the spotter 16 kHz audio; note where each word ended."""
        spotter = self.spotter
        assert spotter is not None
        factor = self._spot_factor
        if factor == 1:
            pcm16 = samples
        elif factor:
            if self._spot_carry is not None:
                samples = np.concatenate([self._spot_carry, samples])
            cut = len(samples) - len(samples) % factor
            self._spot_carry = samples[cut:] if cut < len(samples) else None
            pcm16 = decimate(samples[:cut], factor)
        else:
            assert self._spot_resampler is not None
            pcm16 = self._spot_resampler.process(samples)
        for at, word in spotter.process(pcm16.tobytes()):
            # Where it ended, in device samples, then in 20 ms frames since the reset.
            ended = self._in_pos + at * self.in_rate_hz // SPOT_RATE_HZ
            self._marks.append((ended // self._frame_samples, word))

    def _place_words(self, out: list[CaptureEvent]) -> None:
        """Words that ended within the frames handed out so far go after them."""
        while self._marks and self._marks[0][0] < self._handed:
            out.append(self._marks.popleft()[1])

    @staticmethod
    def _may_wait(demand: MicDemand, verdicts: Iterable[bool]) -> bool:
        """Whether frames with these verdicts may be held back under ``demand``."""
        if demand == "batched":
            return True not in verdicts
        if demand == "speech":
            return False not in verdicts
        return False

    def _judge(self, pcm: bytes, adc_end_s: float) -> None:
        """VAD (and the echo gate) on the device-rate frames ``pcm`` completes."""
        frames = self._vad_framer.push(pcm)
        if not frames:
            return
        frame_s = FRAME_MS / 1000
        first_start_s = (
            adc_end_s - self._vad_framer.pending_bytes / 2 / self.in_rate_hz - len(frames) * frame_s
        )
        for i, frame in enumerate(frames):
            self._verdicts.append(self._verdict(frame, first_start_s + i * frame_s))

    def _verdict(self, vad_pcm: bytes, start_s: float, low: Samples | None = None) -> bool:
        """webrtcvad on one frame (captured from ``start_s``), unless the echo gate says it
        is our own playback.  ``low``: the frame at 8 kHz, if already made."""
        self.judged_frames += 1
        voiced = self._vad.is_speech(vad_pcm)
        gate = self.echo_gate
        if voiced and gate is not None:
            if low is None:
                low = decimate(as_samples(vad_pcm), self._decimation)
            if gate.is_echo(low, start_s):
                self.echo_frames += 1
                voiced = False
        self.voiced_frames += voiced
        return voiced

    def _via_model_rate(
        self, samples: Samples, adc_end_s: float, demand: MicDemand
    ) -> list[CaptureEvent]:
        """Rates webrtcvad does not take: resample every chunk, VAD at 8 kHz from 24 kHz."""
        pcm24 = self._resampler.process(samples)
        self._in_total += len(samples)
        self._out_total += len(pcm24)
        frames = self._framer.push(pcm24.tobytes())
        held = self._held
        if frames:
            frame_s = FRAME_MS / 1000
            # The framer may hold a partial frame back, and soxr a varying few ms: their
            # samples came after these frames.
            held_s = self._framer.pending_bytes / 2 / MODEL_RATE_HZ
            held_s += self._in_total / self.in_rate_hz - self._out_total / MODEL_RATE_HZ
            first_start_s = adc_end_s - held_s - len(frames) * frame_s
            for i, frame in enumerate(frames):
                low = decimate(as_samples(frame), self._decimation)
                held.append(
                    MicFrame(frame, self._verdict(low.tobytes(), first_start_s + i * frame_s, low))
                )
                self._handed += 1
                if self._marks:
                    self._place_words(held)
        if self._marks:
            held += [word for _, word in self._marks]
            self._marks.clear()
        if not held:
            return []
        verdicts = (f.voiced for f in held if isinstance(f, MicFrame))
        words = any(not isinstance(f, MicFrame) for f in held)
        if not words and self._may_wait(demand, verdicts) and len(held) * FRAME_MS < self.hold_ms:
            return []
        self._held = []
        self.frames_out += sum(isinstance(f, MicFrame) for f in held)
        return held


def silence_frame() -> bytes:
    """One 20 ms frame of silence at 24 kHz (fakes use it after a WAV ends)."""
    return np.zeros(ms_to_bytes(FRAME_MS, MODEL_RATE_HZ) // 2, dtype=np.int16).tobytes()
