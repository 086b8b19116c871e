"""The echo gate: tells the user's voice from our own playback coming back through the mic.

The speaker records what it hands to the device (``EchoReference.record_played``,
stamped with the monotonic time it reaches the DAC, kept at 8 kHz); the microphone asks
``EchoGate.is_echo`` for each voiced frame.  The gate finds the echo's delay by
normalised cross-correlation over plausible delays and learns its level; from then on a
frame is our own echo when it is no louder than the echo expected there, or when the
best-matching delayed, scaled copy of the reference explains it well enough that what
is left (the user's voice, if any) is no louder than that expected echo.  This is a
gate, not a canceller: in a reverberant room a real AEC (PulseAudio/PipeWire
``echo-cancel``, see docs/audio.md) does better, and the gate then simply stays quiet.

It must not import asyncio or PyAudio, and must stay cheap: it runs on the capture
thread, only for frames the VAD already called voiced, and only while playback is
recent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hark.audio.pcm import Resampler, Samples, decimate

log = logging.getLogger(__name__)

ECHO_RATE_HZ = 8_000
"""Both sides are decimated to this rate: speech energy is below 4 kHz, and it is cheap."""

Floats = npt.NDArray[np.float32]

WIDE_SEARCH_EVERY = 4
"""After a failed full delay search, the next one waits this many checked frames."""
RECHECK_EVERY = 8
"""Frames the level shortcut may decide alone before the correlation re-checks the delay."""
NARROW_S = 0.03
"""Half width of the search around the tracked delay: covers how far the capture stamps
wander (bursty callbacks, the two sound clocks drifting apart)."""
LEVEL_SHORTCUT = 10 ** (2 / 10)
"""Once locked, a frame at most 2 dB over the expected echo is echo without a search."""
CONFIDENT = 0.8
"""ρ² of a match sure enough to learn the delay and echo level from (or to re-lock on)."""
MATCH_MEANINGFUL = 0.2
"""ρ² above which the best match's lag is trusted to say where the echo is."""
UNLOCKED_MARGIN_DB = 6.0
"""Extra level margin before the delay is known (the expected echo is then a guess)."""


class EchoReference:
    """A ring of what the speaker played recently, at 8 kHz, anchored in monotonic time.

    Written from the speaker's callback thread, read from the microphone's.  Writing
    only queues the chunk (a few µs under a lock): the speaker wakes 50 times a second
    and the gate looks only at voiced frames while playback is recent, so the
    conversion to 8 kHz and the ring update are done by the reader, for everything
    queued at once, when it asks for a ``window``.  The output stream runs continuously,
    silence included, so the ring is contiguous and only the anchor (the DAC time of
    its newest sample) moves with each write.
    """

    def __init__(self, history_ms: int = 1_000) -> None:
        self._ring = np.zeros(ECHO_RATE_HZ * history_ms // 1000, dtype=np.float32)
        self._end_s = -1e9  # DAC time just after the ring's newest sample
        self._last_loud_s = -1e9  # DAC time of the end of the last non-silent write
        self._lock = threading.Lock()  # guards the queue (both threads, microseconds)
        self._ring_lock = threading.Lock()  # guards the ring (readers only)
        # (samples or None for silence, their rate, length at 8 kHz, DAC start time)
        self._queued: deque[tuple[Samples | None, int, int, float]] = deque()
        self._queued_8k = 0
        self._resampler: Resampler | None = None  # for played rates that are not 8k multiples

    def record(self, samples: Samples, dac_start_s: float, loud: bool = True) -> None:
        """Append ``samples`` (8 kHz) that reach the DAC at ``dac_start_s`` (monotonic)."""
        self._queue(samples, ECHO_RATE_HZ, len(samples), dac_start_s, loud)

    def record_played(self, samples: Samples, rate_hz: int, dac_start_s: float) -> None:
        """Append audible ``samples`` at the device's ``rate_hz`` (converted when read)."""
        self._queue(samples, rate_hz, len(samples) * ECHO_RATE_HZ // rate_hz, dac_start_s, True)

    def record_silence(self, frames: int, dac_start_s: float) -> None:
        """``frames`` (at 8 kHz) of silence were played (the idle stream)."""
        self._queue(None, ECHO_RATE_HZ, frames, dac_start_s, False)

    def _queue(
        self, samples: Samples | None, rate_hz: int, n8k: int, dac_start_s: float, loud: bool
    ) -> None:
        if n8k == 0:
            return
        end_s = dac_start_s + n8k / ECHO_RATE_HZ
        with self._lock:
            queued = self._queued
            queued.append((samples, rate_hz, n8k, dac_start_s))
            self._queued_8k += n8k
            # Whatever the ring's length of newer audio covers will never be read.
            while self._queued_8k - queued[0][2] >= len(self._ring):
                self._queued_8k -= queued.popleft()[2]
            if loud:
                self._last_loud_s = end_s

    def active(self, at_s: float, tail_s: float) -> bool:
        """Was anything audible played within ``tail_s`` before ``at_s``?"""
        return at_s - self._last_loud_s < tail_s

    def window(self, start_s: float, end_s: float) -> Floats | None:
        """The reference between two DAC times (zeros outside what is known), or None."""
        n = round((end_s - start_s) * ECHO_RATE_HZ)
        if n <= 0:
            return None
        out = np.zeros(n, dtype=np.float32)
        with self._ring_lock:
            self._fold()
            ring = self._ring
            # index of start_s within the ring: ring[-1] is at self._end_s - 1/rate
            first = len(ring) - round((self._end_s - start_s) * ECHO_RATE_HZ)
            lo, hi = max(first, 0), min(first + n, len(ring))
            if hi <= lo:
                return None
            out[lo - first : hi - first] = ring[lo:hi]
        return out

    def _fold(self) -> None:
        """Convert what was queued to 8 kHz and shift it into the ring (reader side)."""
        with self._lock:
            if not self._queued:
                return
            queued, self._queued, self._queued_8k = self._queued, deque(), 0
        parts: list[npt.NDArray[np.float32] | Samples] = []
        for samples, rate_hz, n8k, _ in queued:
            if samples is None:
                parts.append(np.zeros(n8k, dtype=np.float32))
            elif rate_hz % ECHO_RATE_HZ == 0:
                parts.append(decimate(samples, rate_hz // ECHO_RATE_HZ))
            else:
                rs = self._resampler
                if rs is None or rs.in_rate_hz != rate_hz:
                    rs = self._resampler = Resampler(rate_hz, ECHO_RATE_HZ, quality="QQ")
                parts.append(rs.process(samples))
        new = np.concatenate(parts) if len(parts) > 1 else parts[0]
        ring = self._ring
        m = len(new)
        if m >= len(ring):
            ring[:] = new[-len(ring) :]
        elif m:
            ring[:-m] = ring[m:]
            ring[-m:] = new
        last_start_s, last_n8k = queued[-1][3], queued[-1][2]
        self._end_s = last_start_s + last_n8k / ECHO_RATE_HZ


@dataclass
class EchoGateStats:
    """What the gate did, for tests, the benchmark and the debug log."""

    checked: int = 0
    echo_by_correlation: int = 0
    echo_by_level: int = 0
    echo_by_residual: int = 0
    passed: int = 0


class EchoGate:
    """Decides whether a voiced mic frame is our own playback.

    ``min_delay_ms``/``max_delay_ms`` bound the acoustic + buffering delay searched
    (negative allows for latency figures a driver under-reports).  ``correlation``
    is the ρ² above which a frame counts as a copy of the reference.
    ``echo_level_db`` is the starting guess of how loud the echo is relative to what
    we played (learned from confident echo frames afterwards).  ``margin_db`` is how
    much louder than the expected echo the user's voice must be: the part of the mic
    signal that the best-matching copy of the reference leaves unexplained.
    ``floor_dbfs``: while playback is recent, quieter voiced frames (webrtcvad's
    hangover after a word) are never the user.
    """

    def __init__(
        self,
        reference: EchoReference,
        *,
        min_delay_ms: int = -50,
        max_delay_ms: int = 350,
        correlation: float = 0.55,
        echo_level_db: float = -6.0,
        margin_db: float = 0.0,
        floor_dbfs: float = -50.0,
        tail_ms: int = 400,
    ) -> None:
        self.reference = reference
        self.min_delay_s = min_delay_ms / 1000
        self.max_delay_s = max_delay_ms / 1000
        self.correlation = correlation
        self._coupling = 10 ** (echo_level_db / 10)  # power ratio echo / reference
        self._margin = 10 ** (margin_db / 10)
        self._unlocked_margin = 10 ** ((margin_db + UNLOCKED_MARGIN_DB) / 10)
        self._floor = (32768 * 10 ** (floor_dbfs / 20)) ** 2  # mean power
        self.tail_s = tail_ms / 1000 + self.max_delay_s
        self._delay_s: float | None = None  # tracked echo delay, once confidently seen
        self._since_wide = WIDE_SEARCH_EVERY  # checked frames since the last failed wide search
        self._since_recheck = 0  # frames decided by level alone since the last correlation
        self.stats = EchoGateStats()

    @property
    def delay_ms(self) -> float | None:
        """The echo delay the gate has locked on to, if any."""
        return None if self._delay_s is None else self._delay_s * 1000

    @property
    def echo_level_db(self) -> float:
        return 10 * float(np.log10(self._coupling))

    def is_echo(self, mic: Samples, adc_start_s: float) -> bool:
        """True if ``mic`` (8 kHz, captured from ``adc_start_s``) is explained by playback.

        Once the delay is known: echo when the frame is no louder than the echo expected
        there (cheap: one dot product); otherwise the best-matching delayed, scaled copy
        of the reference near that delay is taken out, and what it leaves unexplained
        (the user's voice, if any) must be ``margin_db`` louder than the expected echo.
        Deciding on that residual rather than on the raw level is what lets a user who
        is only a few dB louder than the echo through, while the echo itself (which a
        copy of the reference typically explains to within -10 dB) stays out.
        """
        if not self.reference.active(adc_start_s, self.tail_s):
            return False
        self.stats.checked += 1
        x = mic.astype(np.float32)
        e_mic = float(np.dot(x, x))
        if e_mic <= self._floor * len(x):
            self.stats.echo_by_level += 1
            return True
        frame_s = len(x) / ECHO_RATE_HZ
        expected = self._expected_echo_energy(adc_start_s, frame_s, len(x))
        if self._delay_s is None:
            return self._is_echo_unlocked(x, e_mic, expected, adc_start_s, frame_s)
        self._since_recheck += 1
        if e_mic <= expected * LEVEL_SHORTCUT and self._since_recheck < RECHECK_EVERY:
            self.stats.echo_by_level += 1
            return True
        self._since_recheck = 0
        rho2, lag_s, e_ref = self._search(x, e_mic, adc_start_s, frame_s, self._delay_s, NARROW_S)
        self._learn(rho2, lag_s, e_mic, e_ref)
        if rho2 >= self.correlation:
            self.stats.echo_by_correlation += 1
            return True
        # The capture stamps wander by tens of ms, so the echo expected at the tracked
        # delay may miss a word's edge; where the best match means something, the
        # reference stretch it found bounds the echo too.
        if rho2 >= MATCH_MEANINGFUL:
            expected = max(expected, self._coupling * e_ref)
        if e_mic * (1.0 - max(rho2, 0.0)) <= expected * self._margin:
            self.stats.echo_by_residual += 1
            return True
        if self._moved(x, e_mic, adc_start_s, frame_s):
            self.stats.echo_by_correlation += 1
            return True
        self.stats.passed += 1
        return False

    def _is_echo_unlocked(
        self, x: Floats, e_mic: float, expected: float, t0: float, frame_s: float
    ) -> bool:
        """Before the delay is known: a full correlation search, else a cautious level test."""
        rho2, lag_s, e_ref = -1.0, 0.0, 0.0
        self._since_wide += 1
        if self._since_wide >= WIDE_SEARCH_EVERY:
            # The full delay search is the expensive part; while it keeps failing (the user
            # is talking, or nothing is echoed) run it on every few frames only.
            rho2, lag_s, e_ref = self._search(x, e_mic, t0, frame_s, *self._wide())
            self._since_wide = 0 if rho2 < self.correlation else WIDE_SEARCH_EVERY
            self._learn(rho2, lag_s, e_mic, e_ref)
        if rho2 >= self.correlation:
            self.stats.echo_by_correlation += 1
            return True
        if e_mic <= expected * self._unlocked_margin:
            self.stats.echo_by_level += 1
            return True
        self.stats.passed += 1
        return False

    def _moved(self, x: Floats, e_mic: float, t0: float, frame_s: float) -> bool:
        """Has the echo delay jumped out of the tracked window?  A confident full search says.

        Run on every few unexplained frames only (the expensive part); a user talking
        over the echo rarely matches any delay with ρ² ≥ 0.8, a copy of the reference does.
        """
        self._since_wide += 1
        if self._since_wide < WIDE_SEARCH_EVERY:
            return False
        self._since_wide = 0
        rho2, lag_s, e_ref = self._search(x, e_mic, t0, frame_s, *self._wide())
        self._learn(rho2, lag_s, e_mic, e_ref)
        return rho2 >= CONFIDENT

    def _learn(self, rho2: float, lag_s: float, e_mic: float, e_ref: float) -> None:
        """A confident match teaches the delay (a jump out of the window is taken at once)
        and the echo level: the whole frame's energy over the reference's, so reverberation
        the copy does not explain counts as echo too."""
        if rho2 < CONFIDENT or e_ref <= 0:
            return
        d = self._delay_s
        self._delay_s = lag_s if d is None or abs(lag_s - d) > NARROW_S else 0.8 * d + 0.2 * lag_s
        self._coupling = 0.9 * self._coupling + 0.1 * (e_mic / e_ref)

    def _wide(self) -> tuple[float, float]:
        """(centre, half width) of the full delay range."""
        return (self.min_delay_s + self.max_delay_s) / 2, (self.max_delay_s - self.min_delay_s) / 2

    def _search(
        self, x: Floats, e_mic: float, t0: float, frame_s: float, centre_s: float, half_s: float
    ) -> tuple[float, float, float]:
        """Best ρ² over delays centre±half; returns (ρ², delay_s, reference energy there)."""
        lo_delay, hi_delay = centre_s - half_s, centre_s + half_s
        ref = self.reference.window(t0 - hi_delay, t0 - lo_delay + frame_s)
        if ref is None or len(ref) < len(x):
            return -1.0, 0.0, 0.0
        n = len(x)
        c = np.correlate(ref, x, "valid")
        sq = np.cumsum(np.square(ref, dtype=np.float64))
        e_ref = sq[n - 1 :].copy()
        e_ref[1:] -= sq[: len(sq) - n]
        # ρ² = c² / (E_ref·E_mic); the +1 keeps silent stretches of reference at ρ² ≈ 0
        rho2 = np.square(c, dtype=np.float64)
        rho2 /= e_ref * e_mic + 1.0
        best = int(np.argmax(rho2))
        # offset ``best`` into the window starts at t0 - hi_delay + best/rate
        delay_s = hi_delay - best / ECHO_RATE_HZ
        return float(rho2[best]), delay_s, float(e_ref[best])

    def _expected_echo_energy(self, t0: float, frame_s: float, n: int) -> float:
        if self._delay_s is not None:
            ref = self.reference.window(t0 - self._delay_s, t0 - self._delay_s + frame_s)
            if ref is None:
                return 0.0
            return self._coupling * float(np.dot(ref, ref))
        # Delay unknown: the loudest reference frame over the plausible delays bounds it.
        ref = self.reference.window(t0 - self.max_delay_s, t0 - self.min_delay_s + frame_s)
        if ref is None or len(ref) < n:
            return 0.0
        usable = len(ref) - len(ref) % n
        frames = ref[:usable].reshape(-1, n)
        return self._coupling * float(np.max(np.einsum("ij,ij->i", frames, frames)))


class StreamClock:
    """Maps a continuous stream's sample count onto ``time.monotonic``, despite jittery callbacks.

    Drivers report buffer times unreliably (PulseAudio's ALSA plugin jumps by 200 ms),
    and callbacks arrive in bursts, so neither "now" nor PortAudio's ``time_info`` can
    stamp a chunk.  The stream itself is a steady clock: sample ``k`` is at
    ``origin + k / rate``.  A capture callback always comes after its samples were
    taken, so the origin is bounded above by ``now - k_end / rate``; a playback callback
    always comes before its samples are heard, bounding it below by
    ``now - k_start / rate``.  The origin follows the tightest bound seen and relaxes
    slowly (``relax`` per callback) so clock drift between the sound card and the CPU is
    followed.  What remains is a constant offset, which the echo gate's delay search
    absorbs.
    """

    def __init__(self, rate_hz: int, direction: str, relax: float = 0.002) -> None:
        self.rate_hz = rate_hz
        self.capture = direction == "input"
        self.relax = relax
        self._origin_s: float | None = None
        self._frames = 0

    def stamp(self, frames: int, now: float) -> float:
        """Monotonic time of the first sample of a chunk of ``frames`` delivered ``now``."""
        start = self._frames
        self._frames += frames
        end = self._frames if self.capture else start
        bound = now - end / self.rate_hz
        origin = self._origin_s
        if origin is None or (bound < origin if self.capture else bound > origin):
            origin = bound
        else:
            origin += self.relax * (bound - origin)
        self._origin_s = origin
        return origin + start / self.rate_hz


def now_s() -> float:
    """The clock both sides stamp with (monotonic, shared by all threads)."""
    return time.monotonic()
