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
import numpy.typing as npt

from hark.audio.echo import ECHO_RATE_HZ, EchoReference
from hark.audio.pcm import Resampler, Samples, decimate

LEAD_MARGIN_S = 0.04
"""How far the echo's direct path is kept behind the reference the filter reads (the
filter needs the echo after its reference; the rest of its tail is the room's)."""
DRIFT_S = 0.05
"""The smoothed disagreement between the capture stamps and the running reference position
that makes the reader jump back to the stamps (clock drift, a reopened stream)."""
CONVERGE_S = 2.0
"""After the filter starts over, the residual gate calls playback echo until it has heard
this much playback (not wall time: it learns the room only while the speaker plays)."""
PLAYING_S = 0.5
"""How long after its last sound the speaker still counts as playing (a reply's pauses)."""
MAX_HOLD_S = 0.06
"""The most mic audio kept back waiting for the speaker to render its reference."""
LEARNED_CAP_S = CONVERGE_S + 10.0
"""How much playback ``FrontEnd.learned_s`` counts up to (it only says how settled)."""
HEARD_POWER = 100.0
"""Mean power (PCM16 units², about -50 dBFS) of a reference frame the filter learns from."""
RATE_HZ = 16_000
QUALITY = "LQ"
"""soxr's quality for bringing the mic and the speaker's reference to 16 kHz: both sides
need a real low-pass (see ``CaptureChain``); the lowest soxr offers is plenty."""
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
        self._sound_until = -(10**9)  # the absolute index just after the last sound written
        self._lock = threading.Lock()
        self._queued: deque[tuple[Samples | None, int, int, float]] = deque()
        self._resampler: Resampler | None = None  # the speaker's rate to 16 kHz

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
            end_s = start_s + n16 / RATE_HZ
            rs = self._resampler
            if samples is None and rs is not None:
                # through the speaker's resampler, so the audio it holds back comes out
                # now, in its place, and the ring stays contiguous
                part = rs.process(np.zeros(n16 * rs.in_rate_hz // RATE_HZ, dtype=np.int16))
                end_s -= rs.held_s
            elif samples is None or rate_hz == RATE_HZ:
                part = np.zeros(n16, dtype=np.int16) if samples is None else samples
            else:
                if rs is None or rs.in_rate_hz != rate_hz:
                    rs = self._resampler = Resampler(rate_hz, RATE_HZ, quality=QUALITY)
                part = rs.process(samples)
                end_s = start_s + len(samples) / rate_hz - rs.held_s
            # The output stream runs continuously (silence included): the ring is contiguous
            # and only its anchor, the DAC time of the newest sample, moves with each write.
            ring = self._ring
            if len(part) >= len(ring):
                ring[:] = part[-len(ring) :]
            elif len(part):
                ring[: -len(part)] = ring[len(part) :]
                ring[-len(part) :] = part
            self._written += len(part)
            self._end_s = end_s
            if samples is not None and len(part):
                p = part.astype(np.float32)
                if float(np.dot(p, p)) > HEARD_POWER * len(p):
                    self._sound_until = self._written

    @property
    def written(self) -> int:
        """Samples written since the start (the absolute index just after the newest)."""
        self._fold()
        return self._written

    @property
    def playing(self) -> bool:
        """Sound was written within the last ``PLAYING_S`` (a reply's pauses included)."""
        self._fold()
        return self._written - self._sound_until < PLAYING_S * RATE_HZ

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
    return FrontEnd(aec, ns, reference.ring16, echo_delay=EchoDelay())


class EchoDelay:
    """How far the echo trails the reference as the canceller reads it: GCC-PHAT.

    The canceller reads the reference sample-continuously beside the mic, so the lag of
    the echo behind that read position is what has to stay inside the filter's tail.
    Every ``EVERY_S`` of playback the last ``WINDOW_S`` of raw mic is cross-correlated
    (8 kHz, phase transform: every frequency weighs alike, so a room's reverberation and
    the speech's spectrum do not smear the peak) with the reference around it, lags from
    ``-NEGATIVE_S`` to ``MAX_S``. A peak ``MIN_PEAK`` times the median, twice in a row
    within ``AGREE_S``, is the lag. Three FFTs of 16k points each time; nothing per frame
    but a copy.
    """

    WINDOW_S = 0.75
    MAX_S = 0.4
    NEGATIVE_S = 0.05
    EVERY_S = 0.5
    MIN_PEAK = 10.0
    AGREE_S = 0.003
    RATE_HZ = 8_000

    def __init__(self) -> None:
        self._frames: deque[Samples] = deque(maxlen=round(self.WINDOW_S / FRAME_S))
        self._since = 0  # mic samples since the last estimate
        self._candidate: float | None = None
        self.lag_s: float | None = None  # the agreed lag, seconds
        self.estimates = 0  # GCC-PHAT runs with a clear peak
        lags = round(self.RATE_HZ * (self.MAX_S + self.NEGATIVE_S))
        n_mic = round(self.RATE_HZ * self.WINDOW_S)
        self._n = 1 << int(np.ceil(np.log2(n_mic + lags)))

    def forget(self) -> None:
        """The read position moved: lags measured before no longer apply."""
        self._frames.clear()
        self._since = 0
        self._candidate = self.lag_s = None

    def feed(self, frame: Samples, reference: EchoReference16k, read_end: int) -> float | None:
        """Note a raw mic frame whose reference read ends at ``read_end``; the lag, once
        a new one is agreed (None otherwise)."""
        frames = self._frames
        frames.append(frame)
        self._since += len(frame)
        if len(frames) < (frames.maxlen or 0) or self._since < self.EVERY_S * RATE_HZ:
            return None
        self._since = 0
        mic = np.concatenate(frames)
        start = read_end - len(mic) - round(self.MAX_S * RATE_HZ)
        ref = reference.read(start, read_end + round(self.NEGATIVE_S * RATE_HZ) - start)
        lag = self._estimate(decimate(mic, 2), decimate(ref, 2))
        if lag is None:
            return None
        agreed = self._candidate is not None and abs(lag - self._candidate) <= self.AGREE_S
        self._candidate = lag
        if not agreed:
            return None
        self.lag_s = lag
        return lag

    def _estimate(self, mic: Samples, ref: Samples) -> float | None:
        m = mic.astype(np.float32)
        r = ref.astype(np.float32)
        floor = HEARD_POWER * len(m)
        if float(np.dot(m, m)) < floor or float(np.dot(r, r)) < floor:
            return None  # nothing played, or nothing heard: no echo to find
        n = self._n
        cross = np.fft.rfft(m, n) * np.conj(np.fft.rfft(r, n))
        corr = np.fft.irfft(cross / (np.abs(cross) + 1e-9), n)
        # mic[t] ~ ref[t + MAX - lag], and corr[k] = sum mic[t] ref[t - k]: k = lag - MAX
        max_lag = round(self.MAX_S * self.RATE_HZ)
        lags = np.arange(-round(self.NEGATIVE_S * self.RATE_HZ), max_lag)
        values = corr[(lags - max_lag) % n]
        best = int(np.argmax(values))
        median = float(np.median(np.abs(values))) + 1e-12
        if values[best] < self.MIN_PEAK * median:
            return None
        self.estimates += 1
        return float(lags[best]) / self.RATE_HZ


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
        echo_delay: EchoDelay | None = None,
    ) -> None:
        if aec is not None and reference is None:
            raise ValueError("echo cancellation needs a reference")
        self.aec = aec
        self.noise_gain = noise_gain
        self.reference = reference
        self.delay_s = delay_s
        self.echo_delay = echo_delay
        self.realigned = 0  # times the bulk delay moved and the filter started over
        self.drift_resyncs = 0  # times the stamps and the running position parted
        self.unwritten_reads = 0  # frames cleaned with reference the speaker never rendered
        self.tail_s = getattr(aec, "tail_s", 0.2)
        self.learned_s = 0.0  # playback the filter has learned from since it started over
        self._ref_index: int | None = None  # next reference sample, advanced per frame
        self._offset = 0.0  # smoothed (stamped - running) reference position, samples
        self._pending = np.zeros(0, dtype=np.int16)
        # (capture time, mean power) of the canceller's output, 10 ms frames, before noise
        # suppression and gain change its level: what the residual gate judges then.
        self.powers: deque[tuple[float, float]] = deque(maxlen=64)

    def process(self, samples: Samples, adc_end_s: float) -> Samples:
        """Clean what ``samples`` completes; returns whole frames only (the rest waits, as
        do frames whose reference the speaker has not rendered yet: ``pending_s``)."""
        pending = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        n = len(pending) // FRAME_SAMPLES
        # capture time of the first whole frame's first sample
        start_s = adc_end_s - len(pending) / RATE_HZ - self.delay_s
        out = np.empty(n * FRAME_SAMPLES, dtype=np.int16)
        done = 0
        for k in range(n):
            frame = pending[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES]
            if self.aec is not None and self.reference is not None:
                if self._wait_for_reference(
                    start_s + k * FRAME_S, len(pending) - k * FRAME_SAMPLES
                ):
                    break
                ref = self._reference_frame(start_s + k * FRAME_S)
                if self.learned_s < LEARNED_CAP_S:
                    r = ref.astype(np.float32)
                    if float(np.dot(r, r)) > HEARD_POWER * FRAME_SAMPLES:
                        self.learned_s += FRAME_S
                if self.echo_delay is not None:
                    assert self._ref_index is not None
                    lag_s = self.echo_delay.feed(frame, self.reference, self._ref_index)
                    if lag_s is not None:
                        self._keep_lag(lag_s)
                frame = self.aec.process(frame, ref)
                if self.noise_gain is not None:  # it will move the level the gate judges
                    left = frame.astype(np.float32)
                    power = float(np.dot(left, left)) / FRAME_SAMPLES
                    self.powers.append((start_s + self.delay_s + k * FRAME_S, power))
            if self.noise_gain is not None:
                frame = self.noise_gain.process(frame)
            out[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES] = frame
            done = k + 1
        self._pending = pending[done * FRAME_SAMPLES :]
        return out[: done * FRAME_SAMPLES]

    def _wait_for_reference(self, frame_start_s: float, held: int) -> bool:
        """The speaker has not rendered this frame's reference yet: keep the mic audio
        (``held`` samples of it now) until it has, up to ``MAX_HOLD_S``.

        Capture can run ahead of rendering by tens of ms where a sound server reports
        less latency than it has. Reading the reference early would feed the filter
        zeros for audio that plays a moment later, and it keeps what it is fed.
        """
        reference = self.reference
        assert reference is not None
        index = self._ref_index
        if index is None:
            index = reference.index_at(frame_start_s)
        if index + FRAME_SAMPLES <= reference.written or not reference.playing:
            return False  # written, or silence between replies: nothing to wait for
        if held <= MAX_HOLD_S * RATE_HZ:
            return True
        self.unwritten_reads += 1  # the speaker stalled: read silence
        return False

    def _restart(self) -> None:
        """The filter starts over: it needs a few seconds of playback to learn the room."""
        if self.aec is not None:
            self.aec.reset()
        self.learned_s = 0.0

    @property
    def converged(self) -> bool:
        """The filter has heard enough playback to be trusted."""
        return self.learned_s >= CONVERGE_S

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
        else:
            self._offset += 0.02 * ((stamped - self._ref_index) - self._offset)
            if abs(self._offset) > DRIFT_S * RATE_HZ:
                self._ref_index, self._offset = stamped, 0.0
                self.drift_resyncs += 1
                if self.echo_delay is not None:
                    self.echo_delay.forget()
                self._restart()
        ref = reference.read(self._ref_index, FRAME_SAMPLES)
        self._ref_index += FRAME_SAMPLES
        return ref

    def _keep_lag(self, lag_s: float) -> None:
        """Keep the echo ``LEAD_MARGIN_S`` behind the reference the filter reads.

        The filter models echoes from 0 to its tail after the reference: the bulk delay
        (sound server buffering, converter latency the stamps do not report: tens to
        hundreds of ms) should use little of it, leaving the rest for the room. When the
        echo comes before the reference (the filter cannot model that) or more than twice
        the margin after it, the read position moves and the filter starts over.
        """
        if 0.001 <= lag_s <= 2 * LEAD_MARGIN_S:  # 1 ms: a fractional delay's taps before it
            return
        self._move_reference(lag_s - LEAD_MARGIN_S)
        self.realigned += 1

    def _move_reference(self, older_s: float) -> None:
        """Read the reference ``older_s`` further back from now on; learn the room again."""
        self.delay_s += older_s
        if self._ref_index is not None:
            self._ref_index -= round(older_s * RATE_HZ)
        if self.echo_delay is not None:
            self.echo_delay.forget()
        self._restart()

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
    user only when it is ``margin_db`` louder than the canceller's residual usually is.

    The residual's level relative to the reference (over the frame and the ``tail_s``
    before it, where reverberation comes from; the canceller's tail and lead by default)
    is kept for the last ``history`` voiced frames of playback, and its ``percentile``-th
    percentile is the floor: echo alone keeps the level near it, while a user's words,
    much louder than the residual, stand out. Measured on the PulseAudio rig (speex,
    straight and reverberant echo, the user 0 and 10 dB below it): a running minimum
    called 6 % of the echo's voiced frames the user, this 0.1 %. Same interface as
    ``EchoGate.is_echo`` (8 kHz frames, capture time), so ``CaptureChain`` takes either.
    Given the ``front_end``, it judges the canceller's output level at that time rather
    than the frame's: noise suppression and gain after the canceller would move it.
    """

    def __init__(
        self,
        reference: EchoReference,
        margin_db: float = 15.0,
        tail_s: float | None = None,
        percentile: float = 30.0,
        history: int = 100,
        front_end: FrontEnd | None = None,
    ) -> None:
        self.reference = reference
        self.front_end = front_end
        if tail_s is None:
            tail_s = front_end.tail_s + LEAD_MARGIN_S if front_end is not None else 0.15
        self.tail_s = tail_s
        self._margin = 10 ** (margin_db / 10)
        self.percentile = percentile
        self._ratios: deque[float] = deque(maxlen=history)  # residual / reference power
        self.checked = 0

    def is_echo(self, mic: Samples, adc_start_s: float) -> bool:
        frame_s = len(mic) / ECHO_RATE_HZ
        fe = self.front_end
        # the reference the canceller is reading for this frame, and the tail before it
        played_s = adc_start_s - (fe.delay_s if fe is not None else 0.0)
        if not self.reference.active(played_s, self.tail_s + 0.5):
            return False
        ref = self.reference.window(played_s - self.tail_s, played_s + frame_s)
        if ref is None:
            return False
        self.checked += 1
        if fe is not None and not fe.converged:
            return True  # the canceller is still learning the room: do not trust it yet
        ratio = self._ratio_now(mic, ref, adc_start_s, frame_s)
        ratios = self._ratios
        ratios.append(ratio)
        if len(ratios) < 10:
            # Too few voiced frames of echo to know the residual's level. Right after the
            # filter converged, stay safe; a second of playback later it means the
            # canceller leaves little that sounds like speech (AEC3 takes 40-70 dB off):
            # a voiced frame is the user.
            return fe is None or fe.learned_s < CONVERGE_S + 1.0
        floor = float(np.percentile(np.fromiter(ratios, np.float64, len(ratios)), self.percentile))
        return ratio <= floor * self._margin

    def _ratio_now(
        self, mic: Samples, ref: npt.NDArray[np.float32], adc_start_s: float, frame_s: float
    ) -> float:
        """The frame's level (the canceller's output, if noise suppression or gain came
        after it) over the reference's."""
        e_ref = float(np.dot(ref, ref)) / len(ref) + 1.0
        fe = self.front_end
        if fe is not None and fe.noise_gain is not None:
            half = FRAME_S / 2
            left = [
                p for t, p in fe.powers if adc_start_s - half <= t < adc_start_s + frame_s - half
            ]
            if left:
                return sum(left) / len(left) / e_ref
        x = mic.astype(np.float32)
        return float(np.dot(x, x)) / len(x) / e_ref
