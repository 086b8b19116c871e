"""The audio front end against today's echo gate, in rooms harder than the gate's tests.

Each case plays a reply (espeak-ng speech) through a synthetic room into the mic while
the user speaks over it at a given level, and runs the mic through one of:

- ``gate``: today's path (webrtcvad + ``hark.audio.echo.EchoGate``);
- ``speex``: ``hark.audio.frontend.SpeexEchoCanceller`` (libspeexdsp), then webrtcvad;
- ``speex+gate``: the canceller, then webrtcvad and the gate as a fallback;
- ``aec3``: WebRTC AEC3 through livekit's ``AudioProcessingModule`` (only when the
  ``livekit`` package is installed: it is 42 MB of resident memory, too much for a
  Pi Zero 2 W, so it is measured as a peer, not offered);
- ``speex+ns``: the canceller, then WebRTC noise suppression and gain (webrtc-noise-gain).

Rooms: ``delay``: a plain copy 40 ms late at -6 dB (what tests/device/test_echo.py
uses); ``reverb``: the reply convolved with a synthetic room impulse response (direct
path, six early reflections, an exponential noise tail with RT60 300 ms). Levels: the
echo at 0 dB and +6 dB relative to the user, and the user 10 dB below the echo.

Figures, per case: barge-ins detected (the daemon's barge-in gate opened while the user
spoke), false barge-ins (it opened on the echo alone, no user), ERLE (echo return loss
enhancement, dB, echo alone, after the first second), and CPU per audio-second
(``time.process_time``, best of the runs), as a ratio to webrtcvad alone in the same run.

Then the same on real streams (``rig``): tests/echo_rig.py's PulseAudio rig, gate, speex
and (with livekit) AEC3, the echo straight or through the room, the user at 0, -6 and
-10 dB, 10 s into the device's first reply; about 4 minutes in real time.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from hark.audio.capture import CaptureChain
from hark.audio.echo import ECHO_RATE_HZ, EchoGate, EchoReference
from hark.audio.frontend import (
    FRAME_SAMPLES,
    RATE_HZ,
    EchoReference16k,
    FrontEnd,
    FrontEndUnavailableError,
    NoiseGain,
    ResidualGate,
    SpeexEchoCanceller,
    WebRtcEchoCanceller,
)
from hark.audio.pcm import decimate
from hark.conversation import Settings
from hark.events import MicFrame
from hark.testing import read_pcm, speech_wav

CHUNK = RATE_HZ * 20 // 1000  # the mic delivers 20 ms at a time
USER_DBFS = -26.0
USER_AT_S = 2.0
Floats = npt.NDArray[np.float64]


def _speech(text: str, tmp: Path) -> Floats:
    wav = speech_wav(text, tmp / f"{abs(hash(text))}.wav", RATE_HZ)
    return np.frombuffer(read_pcm(wav, RATE_HZ), np.int16).astype(np.float64)


def _pcm(x: Floats) -> npt.NDArray[np.int16]:
    return np.clip(x, -32768, 32767).astype(np.int16)


def _at_dbfs(x: Floats, dbfs: float) -> Floats:
    rms = float(np.sqrt(np.mean(x[np.abs(x) > 100] ** 2)))
    return x * (32768 * 10 ** (dbfs / 20) / rms)


def room_impulse(rt60_s: float = 0.3, seed: int = 1, rate_hz: int = RATE_HZ) -> Floats:
    """A synthetic room: direct path at 2 ms, six early reflections, an exponential tail.

    The tail's noise is drawn at ``rate_hz`` (the PulseAudio rig runs it at 48 kHz)."""
    rng = np.random.default_rng(seed)
    n = int(rate_hz * min(rt60_s, 0.5))
    h = np.zeros(n)
    h[int(0.002 * rate_hz)] = 1.0
    for _ in range(6):
        h[int(rng.uniform(0.005, 0.04) * rate_hz)] += rng.uniform(-0.6, 0.6)
    t = np.arange(n) / rate_hz
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60_s) * 0.3 * np.sqrt(RATE_HZ / rate_hz)
    tail[: int(0.01 * rate_hz)] = 0
    room: Floats = h + tail
    return room


@dataclass
class Case:
    room: str  # "delay" or "reverb"
    echo_db: float  # echo level relative to the user's voice


@dataclass
class Outcome:
    barge_in: bool
    false_barge_in: bool
    erle_db: float
    cpu_s: float


def _mix(reply: Floats, user: Floats | None, case: Case) -> tuple[Floats, Floats]:
    """(played, mic) for ``case``: mic = room(played) + user + a quiet noise floor."""
    n = len(reply) + RATE_HZ
    played = np.zeros(n)
    played[: len(reply)] = reply
    if case.room == "delay":
        d = int(0.04 * RATE_HZ)
        echo = np.zeros(n)
        echo[d:] = played[: n - d]
    else:
        echo = np.convolve(played, room_impulse())[:n]
    echo = _at_dbfs(echo, USER_DBFS + case.echo_db)
    mic = echo + np.random.default_rng(2).standard_normal(n) * 32768 * 10 ** (-65 / 20)
    if user is not None:
        u0 = int(USER_AT_S * RATE_HZ)
        u = user[: n - u0]
        mic[u0 : u0 + len(u)] += u
    return played, mic


def run(
    method: str,
    played: Floats,
    mic: Floats,
    user_span: tuple[int, int] | None,
    warm: tuple[Any, Any] | None = None,
) -> Outcome:
    """Push ``mic`` through ``method`` in 20 ms chunks, the speaker writing its reference
    first (DAC time = capture time: the stamps are exact here)."""
    ref8 = EchoReference()
    ref16 = EchoReference16k()
    front: FrontEnd | None = None
    if method != "gate" and method != "vad":
        aec: Any = WebRtcEchoCanceller() if method.startswith("aec3") else SpeexEchoCanceller()
        ns = NoiseGain(2, 0) if "+ns" in method else None
        front = FrontEnd(aec, ns, ref16)
        if warm is not None:  # the device has spoken before: the filter has converged
            w_played, w_mic = warm
            t = 900.0
            for i in range(0, len(w_mic) - CHUNK + 1, CHUNK):
                ref16.record_played(w_played[i : i + CHUNK], RATE_HZ, t + i / RATE_HZ)
                front.process(w_mic[i : i + CHUNK], t + (i + CHUNK) / RATE_HZ)
    gate: Any = None
    if method.endswith("+rgate"):
        gate = ResidualGate(ref8, front_end=front)
    elif "gate" in method:
        gate = EchoGate(ref8)
    chain = CaptureChain(RATE_HZ, echo_gate=gate)
    played16 = np.clip(played, -32768, 32767).astype(np.int16)
    mic16 = np.clip(mic, -32768, 32767).astype(np.int16)
    t0 = 1000.0
    voiced: list[bool] = []
    cleaned: list[npt.NDArray[np.int16]] = []
    started = time.process_time()
    for i in range(0, len(mic16) - CHUNK + 1, CHUNK):
        chunk = played16[i : i + CHUNK]
        ref8.record(decimate(chunk, RATE_HZ // ECHO_RATE_HZ), t0 + i / RATE_HZ, bool(chunk.any()))
        ref16.record_played(chunk, RATE_HZ, t0 + i / RATE_HZ)
        end_s = t0 + (i + CHUNK) / RATE_HZ
        samples = mic16[i : i + CHUNK]
        if front is not None:
            samples = front.process(samples, end_s)
            cleaned.append(samples)
        voiced += [
            f.voiced for f in chain.process(samples.tobytes(), end_s) if isinstance(f, MicFrame)
        ]
    cpu_s = time.process_time() - started
    barge = Settings().barge_in_gate()
    frame = FRAME_SAMPLES * 2  # one verdict per 20 ms
    opened = [k for k, v in enumerate(voiced) if barge.update(v) == "opened"]
    barge_in = False
    false = False
    for k in opened:
        if user_span is not None and user_span[0] <= k * frame < user_span[1] + RATE_HZ // 2:
            barge_in = True
        else:
            false = True
    erle = float("nan")
    if user_span is None:
        out = np.concatenate(cleaned).astype(np.float64) if cleaned else mic16.astype(np.float64)
        skip = RATE_HZ  # the first second: the filter converges
        m = min(len(out), len(mic16))
        mic_e = float(np.sum(mic16[skip:m].astype(np.float64) ** 2))
        out_e = float(np.sum(out[skip:m] ** 2)) or 1e-9
        erle = 10 * np.log10(mic_e / out_e)
    return Outcome(barge_in, false, erle, cpu_s)


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        reply = _speech(
            "the weather today is sunny with a light breeze, and tomorrow it will rain in "
            "the morning before the clouds clear up in the afternoon",
            tmp,
        )
        user = _at_dbfs(_speech("stop, what about the weekend", tmp), USER_DBFS)
        earlier = _speech("good morning, the kettle is on and breakfast is almost ready", tmp)
    methods = ["gate", "speex", "speex+gate", "speex+rgate", "speex+ns+rgate"]
    try:
        WebRtcEchoCanceller()
        methods += ["aec3", "aec3+rgate"]
    except FrontEndUnavailableError:
        print("   aec3: livekit not installed, not measured")
    try:
        SpeexEchoCanceller().close()
    except FrontEndUnavailableError as exc:
        print(f"   speex: {exc}; only the gate is measured")
        methods = ["gate"]
    cases = [Case("delay", -6.0), Case("reverb", 0.0), Case("reverb", 6.0), Case("reverb", 10.0)]
    audio_s = (len(reply) + RATE_HZ) / RATE_HZ
    # the floor: webrtcvad alone on the same audio, in the same run
    _, plain = _mix(reply, None, cases[0])
    vad_cpu = min(run("vad", plain * 0, plain, None).cpu_s for _ in range(2))
    print(f"   webrtcvad alone: {vad_cpu / audio_s * 1e3:.2f} ms CPU per audio-second")
    print(
        f"   {'room':7} {'echo':>5}  {'method':11} {'barge-in':>8} {'false':>5} "
        f"{'ERLE dB':>7} {'CPU ms/s':>8} {'x vad':>6}"
    )
    u0 = int(USER_AT_S * RATE_HZ)
    span = (u0, u0 + len(user))
    for case in cases:
        played, with_user = _mix(reply, user, case)
        _, alone = _mix(reply, None, case)
        w_played, w_mic = _mix(earlier, None, case)
        warm = (_pcm(w_played), _pcm(w_mic))
        for method in methods:
            heard = run(method, played, with_user, span, warm)
            echo_only = run(method, played, alone, None, warm)
            cpu = min(heard.cpu_s, echo_only.cpu_s) / audio_s
            print(
                f"   {case.room:7} {case.echo_db:+5.0f}  {method:11} "
                f"{'yes' if heard.barge_in else 'NO':>8} "
                f"{'YES' if echo_only.false_barge_in or heard.false_barge_in else 'no':>5} "
                f"{echo_only.erle_db:7.1f} {cpu * 1e3:8.2f} {cpu / (vad_cpu / audio_s):6.1f}",
                flush=True,
            )
    rig()


RIG_CASES = [("delay", 0.0), ("delay", -6.0), ("delay", -10.0), ("reverb", 0.0), ("reverb", -10.0)]


def rig() -> None:
    """The same question on real streams: tests/echo_rig.py's PulseAudio rig (the real
    speaker and mic adapters, PyAudio, a private PulseAudio; the user speaks 10 s into
    the device's first reply, at 0, -6 and -10 dB relative to the echo)."""
    import asyncio

    from tests.audio_rig import pulse_available
    from tests.echo_rig import echo_rig_case

    if not pulse_available():
        print("   PulseAudio rig: pulseaudio or ALSA's pulse plugin missing, not measured")
        return
    methods = ["gate"]
    try:
        SpeexEchoCanceller().close()
        methods.append("speex")
    except FrontEndUnavailableError:
        pass
    try:
        WebRtcEchoCanceller()
        methods.append("webrtc")
    except FrontEndUnavailableError:
        pass
    print("   PulseAudio rig (real-time, real adapters; the canceller's CPU on the mic thread):")
    print(
        f"   {'room':7} {'user':>5}  {'method':8} {'barge-in':>8} {'false':>5} "
        f"{'ERLE dB':>7} {'CPU ms/s':>8}"
    )
    for room, user_db in RIG_CASES:
        for method in methods:
            with tempfile.TemporaryDirectory() as d:
                case = asyncio.run(echo_rig_case(Path(d), method, room, user_db))
            erle = f"{case.erle_db:7.1f}" if method != "gate" else f"{'-':>7}"
            cpu = f"{case.cpu_ms_per_s:8.2f}" if method != "gate" else f"{'-':>8}"
            print(
                f"   {room:7} {user_db:+5.0f}  {method:8} "
                f"{'yes' if case.barge_in else 'NO':>8} "
                f"{'YES' if case.false_barge_in else 'no':>5} {erle} {cpu}",
                flush=True,
            )


if __name__ == "__main__":
    main()
