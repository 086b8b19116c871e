"""The audio front end: echo cancellation, then noise suppression and automatic gain, at 16 kHz.

Two stages, each optional, both on 10 ms frames of 16 kHz PCM16:

- ``SpeexEchoCanceller``: speexdsp's MDF adaptive filter (the one PulseAudio's
  ``echo-cancel`` module offers as ``aec_method=speex``) with its residual-echo
  suppressor, through ctypes on Debian's ``libspeexdsp1`` (no Python package needed;
  ``apt install libspeexdsp1``). It subtracts the speaker's sound, as the filter learned
  it reaches the mic, from each mic frame; the reference comes from ``EchoReference16k``,
  which the speaker feeds with DAC-time stamps, so the bulk delay is already removed and
  the filter only spans the room.
- ``NoiseGain``: WebRTC's noise suppression, high-pass filter and automatic gain, from the
  ``webrtc-noise-gain`` wheel (the one Home Assistant's satellites use; aarch64 and
  x86_64 abi3 wheels, manylinux_2_28: Bookworm and Trixie).

Both libraries are imported only when configured. It runs on the capture thread: it
must not block or import asyncio/PyAudio; its per-frame work is two C calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections import deque
from typing import Any

import numpy as np

from hark.audio.echo import ECHO_RATE_HZ, EchoGate, EchoReference
from hark.audio.pcm import Resampler, Samples, decimate

LEAD_MARGIN_S = 0.06
"""How far before the echo's measured delay the reference is read (the filter needs the
echo after its reference; the delay search wanders by tens of ms)."""
DRIFT_S = 0.05
"""The smoothed disagreement between the capture stamps and the running reference position
that makes the reader jump back to the stamps (clock drift, a reopened stream)."""
CONVERGE_S = 2.0
"""After the filter starts over, the residual gate calls playback echo for this long."""
RATE_HZ = 16_000
FRAME_SAMPLES = 160  # 10 ms at 16 kHz: what both libraries take
FRAME_S = FRAME_SAMPLES / RATE_HZ

_SPEEX_ECHO_SET_SAMPLING_RATE = 24
_SPEEX_PREPROCESS_SET_DENOISE = 0
_SPEEX_PREPROCESS_SET_AGC = 2
_SPEEX_PREPROCESS_SET_ECHO_SUPPRESS = 20
_SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE = 22
_SPEEX_PREPROCESS_SET_ECHO_STATE = 24


class FrontEndUnavailableError(Exception):
    """A configured stage's library is missing; the message says what to install."""


def _speexdsp() -> ctypes.CDLL:
    name = ctypes.util.find_library("speexdsp") or "libspeexdsp.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        raise FrontEndUnavailableError(
            "echo cancellation needs libspeexdsp (apt install libspeexdsp1)"
        ) from None
    p, i, s16 = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int16)
    lib.speex_echo_state_init.restype = p
    lib.speex_echo_state_init.argtypes = [i, i]
    lib.speex_echo_state_destroy.argtypes = [p]
    lib.speex_echo_state_reset.argtypes = [p]
    lib.speex_echo_cancellation.argtypes = [p, s16, s16, s16]
    lib.speex_echo_ctl.argtypes = [p, i, p]
    lib.speex_preprocess_state_init.restype = p
    lib.speex_preprocess_state_init.argtypes = [i, i]
    lib.speex_preprocess_state_destroy.argtypes = [p]
    lib.speex_preprocess_run.argtypes = [p, s16]
    lib.speex_preprocess_ctl.argtypes = [p, i, p]
    return lib


class SpeexEchoCanceller:
    """speexdsp's echo canceller with residual echo suppression, 10 ms at 16 kHz.

    ``tail_ms``: how long an echo the filter models (the room's reverberation plus what
    the DAC-time alignment leaves); longer costs CPU linearly. ``suppress_db``: the most
    the residual-echo suppressor takes off what the filter left (0 turns it off).
    """

    def __init__(self, tail_ms: int = 200, suppress_db: int = 40) -> None:
        self._lib = _speexdsp()
        self.tail_s = tail_ms / 1000
        lib = self._lib
        self._echo = lib.speex_echo_state_init(FRAME_SAMPLES, RATE_HZ * tail_ms // 1000)
        rate = ctypes.c_int(RATE_HZ)
        lib.speex_echo_ctl(self._echo, _SPEEX_ECHO_SET_SAMPLING_RATE, ctypes.byref(rate))
        self._pre: int | None = None
        if suppress_db > 0:
            self._pre = lib.speex_preprocess_state_init(FRAME_SAMPLES, RATE_HZ)
            off = ctypes.c_int(0)
            lib.speex_preprocess_ctl(self._pre, _SPEEX_PREPROCESS_SET_DENOISE, ctypes.byref(off))
            lib.speex_preprocess_ctl(self._pre, _SPEEX_PREPROCESS_SET_AGC, ctypes.byref(off))
            lib.speex_preprocess_ctl(
                self._pre, _SPEEX_PREPROCESS_SET_ECHO_STATE, ctypes.c_void_p(self._echo)
            )
            level = ctypes.c_int(-suppress_db)
            active = ctypes.c_int(-max(suppress_db // 2, 1))
            lib.speex_preprocess_ctl(
                self._pre, _SPEEX_PREPROCESS_SET_ECHO_SUPPRESS, ctypes.byref(level)
            )
            lib.speex_preprocess_ctl(
                self._pre, _SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE, ctypes.byref(active)
            )
        self._out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._ptr = ctypes.POINTER(ctypes.c_int16)

    def process(self, mic: Samples, ref: Samples) -> Samples:
        """One 10 ms frame: ``mic`` with ``ref`` (what played at the same DAC time) removed."""
        mic = np.ascontiguousarray(mic, dtype=np.int16)
        ref = np.ascontiguousarray(ref, dtype=np.int16)
        out = np.empty(FRAME_SAMPLES, dtype=np.int16)
        p = self._ptr
        self._lib.speex_echo_cancellation(
            self._echo, mic.ctypes.data_as(p), ref.ctypes.data_as(p), out.ctypes.data_as(p)
        )
        if self._pre is not None:
            self._lib.speex_preprocess_run(self._pre, out.ctypes.data_as(p))
        return out

    def reset(self) -> None:
        self._lib.speex_echo_state_reset(self._echo)

    def close(self) -> None:
        lib = getattr(self, "_lib", None)  # None: __init__ failed before loading it
        if lib is None:
            return
        if getattr(self, "_pre", None) is not None:
            lib.speex_preprocess_state_destroy(self._pre)
            self._pre = None
        if getattr(self, "_echo", None):
            lib.speex_echo_state_destroy(self._echo)
            self._echo = None

    def __del__(self) -> None:
        self.close()


class NoiseGain:
    """WebRTC noise suppression (levels 0-4) and automatic gain (target 0-31 dBFS below full
    scale; 0 = off), 10 ms at 16 kHz, through ``webrtc-noise-gain``."""

    def __init__(self, suppression: int = 2, auto_gain_dbfs: int = 0) -> None:
        try:
            from webrtc_noise_gain import AudioProcessor
        except ImportError:
            raise FrontEndUnavailableError(
                "noise suppression needs the webrtc-noise-gain package "
                "(pip install 'hark-voice[frontend]')"
            ) from None
        self._proc: Any = AudioProcessor(auto_gain_dbfs, suppression)

    def process(self, frame: Samples) -> Samples:
        out = self._proc.Process10ms(np.ascontiguousarray(frame, dtype=np.int16).tobytes())
        return np.frombuffer(out.audio, dtype=np.int16)


class EchoReference16k:
    """What the speaker played, at 16 kHz, by DAC time: the canceller's reference.

    The speaker's callback only queues (under a lock, microseconds); the capture thread
    converts and reads. Silence between replies is zeros, so the ring stays contiguous.
    """

    def __init__(self, history_ms: int = 2_000) -> None:
        self._ring = np.zeros(RATE_HZ * history_ms // 1000, dtype=np.int16)
        self._end_s = -1e9  # DAC time just after the newest sample
        self._written = 0  # samples written since the start
        self._lock = threading.Lock()
        self._queued: deque[tuple[Samples | None, int, int, float]] = deque()
        self._resamplers: dict[int, Resampler] = {}

    def record_played(self, samples: Samples, rate_hz: int, dac_start_s: float) -> None:
        n16 = len(samples) * RATE_HZ // rate_hz
        with self._lock:
            self._queued.append((samples, rate_hz, n16, dac_start_s))

    def record_silence(self, n16: int, dac_start_s: float) -> None:
        with self._lock:
            self._queued.append((None, RATE_HZ, n16, dac_start_s))

    def _fold(self) -> None:
        with self._lock:
            if not self._queued:
                return
            queued, self._queued = self._queued, deque()
        for samples, rate_hz, n16, start_s in queued:
            if samples is None:
                part = np.zeros(n16, dtype=np.int16)
            elif rate_hz == RATE_HZ:
                part = samples
            elif rate_hz % RATE_HZ == 0:  # exact length, and what the mic side does too
                part = decimate(samples, rate_hz // RATE_HZ)
            else:
                rs = self._resamplers.get(rate_hz)
                if rs is None:
                    rs = self._resamplers[rate_hz] = Resampler(rate_hz, RATE_HZ, quality="QQ")
                part = rs.process(samples)
            # The output stream runs continuously (silence included): the ring is contiguous
            # and only its anchor, the DAC time of the newest sample, moves with each write.
            ring = self._ring
            if len(part) >= len(ring):
                ring[:] = part[-len(ring) :]
            elif len(part):
                ring[: -len(part)] = ring[len(part) :]
                ring[-len(part) :] = part
            self._written += len(part)
            self._end_s = start_s + len(part) / RATE_HZ

    def index_at(self, t_s: float) -> int:
        """The absolute sample index (counted since the first write) played at DAC time ``t_s``."""
        self._fold()
        return self._written - round((self._end_s - t_s) * RATE_HZ)

    def read(self, index: int, n: int) -> Samples:
        """``n`` samples from absolute ``index`` on (zeros where the ring has none)."""
        self._fold()
        out = np.zeros(n, dtype=np.int16)
        ring = self._ring
        first = len(ring) - (self._written - index)
        lo, hi = max(first, 0), min(first + n, len(ring))
        if hi > lo:
            out[lo - first : hi - first] = ring[lo:hi]
        return out

    def window(self, start_s: float, n: int) -> Samples:
        """``n`` samples from DAC time ``start_s`` (zeros where nothing is known)."""
        return self.read(self.index_at(start_s), n)


class TeeReference(EchoReference):
    """The speaker's echo reference (8 kHz, for the gate) that also keeps a 16 kHz copy
    (``ring16``) for the canceller; the speaker writes it like a plain ``EchoReference``."""

    def __init__(self, history_ms: int = 1_000) -> None:
        super().__init__(history_ms)
        self.ring16 = EchoReference16k()

    def record_played(self, samples: Samples, rate_hz: int, dac_start_s: float) -> None:
        super().record_played(samples, rate_hz, dac_start_s)
        self.ring16.record_played(samples, rate_hz, dac_start_s)

    def record_silence(self, frames: int, dac_start_s: float) -> None:
        super().record_silence(frames, dac_start_s)
        self.ring16.record_silence(frames * RATE_HZ // ECHO_RATE_HZ, dac_start_s)


class WebRtcEchoCanceller:
    """WebRTC's AEC3 through livekit's ``AudioProcessingModule`` (10 ms at 16 kHz).

    Measured best (bench/bench_frontend.py), but the livekit package adds ~42 MB of
    resident memory: an option for a Pi 4/5, not the Pi Zero 2 W's default.
    """

    def __init__(self) -> None:
        try:
            from livekit import rtc
        except ImportError:
            raise FrontEndUnavailableError(
                "echo_cancel = 'webrtc' needs the livekit package (pip install livekit)"
            ) from None
        self._rtc: Any = rtc
        self._apm: Any = rtc.AudioProcessingModule(echo_cancellation=True, high_pass_filter=True)

    def process(self, mic: Samples, ref: Samples) -> Samples:
        rtc = self._rtc
        self._apm.process_reverse_stream(rtc.AudioFrame(ref.tobytes(), RATE_HZ, 1, FRAME_SAMPLES))
        frame = rtc.AudioFrame(mic.tobytes(), RATE_HZ, 1, FRAME_SAMPLES)
        self._apm.process_stream(frame)
        return np.frombuffer(bytes(frame.data), dtype=np.int16)

    def reset(self) -> None:
        """AEC3 keeps adapting; nothing to clear."""


def make_front_end(
    echo_cancel: str,
    reference: TeeReference | None,
    *,
    tail_ms: int = 200,
    noise_suppression: int = 0,
    auto_gain_dbfs: int = 0,
) -> FrontEnd | None:
    """The configured front end, or None when every stage is off.

    Raises ``FrontEndUnavailableError`` naming what to install when a library is missing.
    """
    aec: SpeexEchoCanceller | WebRtcEchoCanceller | None = None
    if echo_cancel == "speex":
        aec = SpeexEchoCanceller(tail_ms)
    elif echo_cancel == "webrtc":
        aec = WebRtcEchoCanceller()
    ns = None
    if noise_suppression or auto_gain_dbfs:
        ns = NoiseGain(noise_suppression, auto_gain_dbfs)
    if aec is None and ns is None:
        return None
    if aec is None:
        return FrontEnd(None, ns)
    if reference is None:
        raise ValueError("echo cancellation needs the speaker's reference")
    # The gate's delay search, on the raw mic, keeps the reference aligned.
    return FrontEnd(aec, ns, reference.ring16, delay_tracker=EchoGate(reference))


class FrontEnd:
    """Mic audio at 16 kHz in any chunk size, cleaned 10 ms frames out.

    ``aec`` needs ``reference``; a frame is aligned with the reference by its capture
    time (``adc_end_s`` of the chunk's last sample) minus ``delay_s`` (what the stamps
    leave: acoustic path, converter latency not reported).
    """

    def __init__(
        self,
        aec: SpeexEchoCanceller | WebRtcEchoCanceller | None = None,
        noise_gain: NoiseGain | None = None,
        reference: EchoReference16k | None = None,
        delay_s: float = 0.0,
        delay_tracker: EchoGate | None = None,
    ) -> None:
        if aec is not None and reference is None:
            raise ValueError("echo cancellation needs a reference")
        self.aec = aec
        self.noise_gain = noise_gain
        self.reference = reference
        self.delay_s = delay_s
        self.delay_tracker = delay_tracker
        self.realigned = 0  # times the bulk delay moved and the filter started over
        self.drift_resyncs = 0  # times the stamps and the running position parted
        self._track: list[Samples] = []  # raw 10 ms frames not yet shown to the tracker
        self.tail_s = getattr(aec, "tail_s", 0.2)
        self.converged_from_s = -1e9  # capture time before which the filter is still learning
        self._ref_index: int | None = None  # next reference sample, advanced per frame
        self._offset = 0.0  # smoothed (stamped - running) reference position, samples
        self._pending = np.zeros(0, dtype=np.int16)
        # (capture time, mean power) of the canceller's output, before noise suppression
        # and gain change its level: what the residual gate judges.
        self.cancelled_power: deque[tuple[float, float]] = deque(maxlen=64)

    def process(self, samples: Samples, adc_end_s: float) -> Samples:
        """Clean what ``samples`` completes; returns whole frames only (the rest waits)."""
        pending = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        n = len(pending) // FRAME_SAMPLES
        self._pending = pending[n * FRAME_SAMPLES :]
        if n == 0:
            return np.zeros(0, dtype=np.int16)
        # capture time of the first whole frame's first sample
        start_s = adc_end_s - len(pending) / RATE_HZ - self.delay_s
        out = np.empty(n * FRAME_SAMPLES, dtype=np.int16)
        for k in range(n):
            frame = pending[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES]
            if self.delay_tracker is not None:
                self._follow_delay(frame, start_s + self.delay_s + k * FRAME_S)
            if self.aec is not None and self.reference is not None:
                ref = self._reference_frame(start_s + k * FRAME_S)
                frame = self.aec.process(frame, ref)
                if self.noise_gain is not None:
                    f = frame.astype(np.float32)
                    power = float(np.dot(f, f)) / FRAME_SAMPLES
                    self.cancelled_power.append((start_s + k * FRAME_S, power))
            if self.noise_gain is not None:
                frame = self.noise_gain.process(frame)
            out[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES] = frame
        return out

    def _restart(self, at_s: float) -> None:
        """The filter starts over: it needs a few seconds of playback to learn the room."""
        if self.aec is not None:
            self.aec.reset()
        self.converged_from_s = at_s + CONVERGE_S

    def _reference_frame(self, frame_start_s: float) -> Samples:
        """The reference for one mic frame, read sample-continuously.

        Capture stamps wander by tens of ms (bursty callbacks, soxr's varying hold-back);
        an adaptive filter needs a steady alignment, so the read position advances by
        exactly one frame per frame and follows the stamps only when their smoothed
        disagreement passes ``DRIFT_S`` (clock drift, a reopened stream): then the filter
        starts over.
        """
        reference = self.reference
        assert reference is not None and self.aec is not None
        stamped = reference.index_at(frame_start_s)
        if self._ref_index is None:
            self._ref_index, self._offset = stamped, 0.0
            if self.converged_from_s < 0:  # the very first frame: the filter knows nothing
                self.converged_from_s = frame_start_s + CONVERGE_S
        else:
            self._offset += 0.02 * ((stamped - self._ref_index) - self._offset)
            if abs(self._offset) > DRIFT_S * RATE_HZ:
                self._ref_index, self._offset = stamped, 0.0
                self.drift_resyncs += 1
                self._restart(frame_start_s)
        ref = reference.read(self._ref_index, FRAME_SAMPLES)
        self._ref_index += FRAME_SAMPLES
        return ref

    def _follow_delay(self, frame: Samples, frame_start_s: float) -> None:
        """Keep the reference aligned with the echo's bulk delay (sound server buffering,
        the two streams' clocks: tens to hundreds of ms) so the filter only models the room.

        The echo gate's delay search runs on the raw mic, 20 ms at a time, while playback
        is recent; when the delay it locks on moves by more than 15 ms the reference is
        shifted to 20 ms before it (the filter needs the echo after its reference) and
        the filter starts over.
        """
        tracker = self.delay_tracker
        assert tracker is not None
        self._track.append(frame)
        if len(self._track) < 2:
            return
        raw = np.concatenate(self._track)
        self._track = []
        tracker.is_echo(decimate(raw, RATE_HZ // ECHO_RATE_HZ), frame_start_s - FRAME_S)
        delay_ms = tracker.delay_ms
        if delay_ms is None:
            return
        delay_s = delay_ms / 1000
        # The filter models echoes from 0 to its tail after the reference: keep the delay
        # inside that span with room both ways, and move (and start over) only when it
        # leaves it. The search wanders by tens of ms; the filter absorbs that.
        early = delay_s < self.delay_s + LEAD_MARGIN_S / 2
        late = delay_s > self.delay_s + self.tail_s - LEAD_MARGIN_S
        if (early or late) and (self.delay_s > 0 or delay_s > LEAD_MARGIN_S):
            self.delay_s = max(0.0, delay_s - LEAD_MARGIN_S)
            self.realigned += 1
            self._ref_index = None  # re-read from the new position
            self._restart(frame_start_s)

    @property
    def pending_s(self) -> float:
        """Audio waiting for a whole frame: the cleaned output ends this much earlier."""
        return len(self._pending) / RATE_HZ

    def reset(self) -> None:
        """Forget a partial frame (after a gap). The canceller keeps what it learned of the
        room: it took seconds of playback to learn and the room has not changed."""
        self._pending = np.zeros(0, dtype=np.int16)
        self._ref_index = None


class ResidualGate:
    """The echo gate for a cancelled signal: during playback a voiced frame counts as the
    user only when it is ``margin_db`` louder than the canceller's residual is expected to be.

    The residual's level relative to the reference (over the frame and the ``tail_s``
    before it, where reverberation comes from) is tracked as a floor that drops at once
    and rises by ``rise_db_per_s``: echo alone keeps it at the residual, while a user's
    words, much louder than that, stand out. Same interface as ``EchoGate.is_echo``
    (8 kHz frames, capture time), so ``CaptureChain`` takes either. Given the
    ``front_end``, it judges the canceller's output level at that time rather than the
    frame's: noise suppression and gain after the canceller would move it.
    """

    def __init__(
        self,
        reference: EchoReference,
        margin_db: float = 15.0,
        tail_s: float = 0.15,
        rise_db_per_s: float = 3.0,
        frame_s: float = 0.02,
        front_end: FrontEnd | None = None,
    ) -> None:
        self.reference = reference
        self.front_end = front_end
        self.tail_s = tail_s
        self._margin = 10 ** (margin_db / 10)
        self._rise = 10 ** (rise_db_per_s * frame_s / 10)
        self._ratio: float | None = None  # residual / reference power, the tracked floor
        self.checked = 0

    def is_echo(self, mic: Samples, adc_start_s: float) -> bool:
        frame_s = len(mic) / ECHO_RATE_HZ
        if not self.reference.active(adc_start_s, self.tail_s + 0.5):
            return False
        ref = self.reference.window(adc_start_s - self.tail_s, adc_start_s + frame_s)
        if ref is None:
            return False
        self.checked += 1
        fe = self.front_end
        if fe is not None and adc_start_s < fe.converged_from_s:
            return True  # the canceller is still learning the room: do not trust it yet
        x = mic.astype(np.float32)
        e_mic = float(np.dot(x, x)) / len(x)
        if self.front_end is not None and self.front_end.cancelled_power:
            # Noise suppression and gain came after the canceller: judge its output.
            half = FRAME_S / 2
            powers = [
                p
                for t, p in self.front_end.cancelled_power
                if adc_start_s - half <= t < adc_start_s + frame_s - half
            ]
            if powers:
                e_mic = sum(powers) / len(powers)
        e_ref = float(np.dot(ref, ref)) / len(ref) + 1.0
        ratio = e_mic / e_ref
        floor = self._ratio
        self._ratio = ratio if floor is None else min(ratio, floor * self._rise)
        if floor is None:
            return True  # the first frame of playback: nothing learned yet, stay safe
        return ratio <= floor * self._margin
