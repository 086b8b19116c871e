"""Audio path costs: CPU per audio-second (capture, playback), first delta → first frame latency.

CPU figures use ``time.process_time`` over many seconds of speech pushed through the
same objects the daemon uses (``hark.audio.capture.CaptureChain``, ``hark.audio.pcm.Resampler``,
``hark.audio.playback.PlaybackBuffer``, ``hark.audio.echo``), in 20 ms device chunks at 48 kHz.
Latency is measured from ``Speaker.play()`` to the item's first frame being handed to
the device: with the paced WAV speaker, and with real PyAudio through a private
PulseAudio server when one can be started.  Figures are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from hark.audio.capture import CaptureChain
from hark.audio.echo import ECHO_RATE_HZ, EchoGate, EchoReference
from hark.audio.pcm import MODEL_RATE_HZ, Resampler, as_samples
from hark.audio.playback import PlaybackBuffer, Volume
from hark.testing import WavSpeaker, read_pcm, speech_wav

DEVICE_RATE_HZ = 48_000
CHUNK = DEVICE_RATE_HZ // 50  # one 20 ms PortAudio buffer
SECONDS = 20
REPEATS = 3
"""Each CPU figure is the best of this many runs: the machine is shared, noise only adds."""


def _speech(tmp: Path) -> tuple[np.ndarray, bytes]:
    """(48 kHz capture samples, 24 kHz reply bytes) of about SECONDS of speech."""
    text = "the quick brown fox jumps over the lazy dog while the weather stays sunny"
    wav48 = speech_wav(text, tmp / "s48.wav", DEVICE_RATE_HZ)
    one = np.frombuffer(read_pcm(wav48, DEVICE_RATE_HZ), np.int16)
    reps = SECONDS * DEVICE_RATE_HZ // len(one) + 1
    capture = np.tile(one, reps)[: SECONDS * DEVICE_RATE_HZ]
    reply = np.frombuffer(read_pcm(wav48, MODEL_RATE_HZ), np.int16)
    reply = np.tile(reply, reps)[: SECONDS * MODEL_RATE_HZ]
    return capture, reply.tobytes()


def _capture_cost_us(capture: np.ndarray, gain: float, gate: EchoGate | None) -> float:
    chain = CaptureChain(DEVICE_RATE_HZ, gain=gain, echo_gate=gate)
    chunks = [capture[i : i + CHUNK].tobytes() for i in range(0, len(capture), CHUNK)]
    t = 1000.0
    started = time.process_time()
    for chunk in chunks:
        t += 0.02
        chain.process(chunk, t)
    return (time.process_time() - started) / SECONDS * 1e6


def _playback_cost_us(reply: bytes, echo: bool) -> float:
    reference = EchoReference() if echo else None
    buf = PlaybackBuffer(DEVICE_RATE_HZ, volume=Volume(0.8), echo_reference=reference)
    resampler = Resampler(MODEL_RATE_HZ, DEVICE_RATE_HZ)
    delta = MODEL_RATE_HZ // 5 * 2  # 200 ms deltas, bytes
    started = time.process_time()
    for i in range(0, len(reply), delta):
        buf.enqueue("item", resampler.process(as_samples(reply[i : i + delta])))
    buf.enqueue("item", resampler.flush())
    buf.finish("item")
    t = 1000.0
    while buf.busy:
        t += 0.02
        buf.render(CHUNK, t)
    return (time.process_time() - started) / SECONDS * 1e6


class _ReplayingGate(EchoGate):
    """Keeps its reference full of reply audio, so every voiced frame gets the gate's full
    delay search (the worst case: the mic hears something that is not the echo)."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(EchoReference())
        self._low = np.frombuffer(reply, np.int16)[:: MODEL_RATE_HZ // ECHO_RATE_HZ].copy()

    def is_echo(self, mic: np.ndarray, adc_start_s: float) -> bool:
        i = int(adc_start_s * ECHO_RATE_HZ) % (len(self._low) - 320)
        self.reference.record(self._low[i : i + 160], adc_start_s)
        return super().is_echo(mic, adc_start_s)


def _speaking_cost_us(reply: bytes) -> tuple[float, EchoGate]:
    """The whole audio path while the agent talks: playback (+ echo reference) and capture of
    its echo (40 ms late, -6 dB) through the gate, in lockstep like the two callbacks."""
    reference = EchoReference()
    gate = EchoGate(reference)
    chain = CaptureChain(DEVICE_RATE_HZ, echo_gate=gate)
    buf = PlaybackBuffer(DEVICE_RATE_HZ, echo_reference=reference)
    resampler = Resampler(MODEL_RATE_HZ, DEVICE_RATE_HZ)
    delta = MODEL_RATE_HZ // 5 * 2
    delay = DEVICE_RATE_HZ * 40 // 1000
    history = np.zeros(delay, dtype=np.int16)
    started = time.process_time()
    for i in range(0, len(reply), delta):
        buf.enqueue("item", resampler.process(as_samples(reply[i : i + delta])))
    buf.finish("item")
    t = 1000.0
    while buf.busy:
        data, _ = buf.render(CHUNK, t)
        played = np.frombuffer(data, np.int16)
        room = np.concatenate([history, played])
        history = room[-delay:]
        echo = (room[:CHUNK].astype(np.float32) * 0.5).astype(np.int16)
        chain.process(echo.tobytes(), t + 0.02)
        t += 0.02
    return (time.process_time() - started) / SECONDS * 1e6, gate


def _idle_speaker_cost_us() -> float:
    """The speaker callback with nothing to play (it runs all the time)."""
    buf = PlaybackBuffer(DEVICE_RATE_HZ, echo_reference=EchoReference())
    started = time.process_time()
    t = 1000.0
    for _ in range(SECONDS * 50):
        t += 0.02
        buf.render(CHUNK, t)
    return (time.process_time() - started) / SECONDS * 1e6


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


async def _wav_speaker_latency_ms(trials: int) -> list[float]:
    speaker = WavSpeaker(None, speed=1.0)
    task = asyncio.create_task(speaker.run(lambda e: None))
    delta = bytes(960)  # 20 ms
    out = []
    try:
        await asyncio.sleep(0.05)
        for n in range(trials):
            while speaker.buffer.busy:  # noqa: ASYNC110 (one item at a time: latency, not queueing)
                await asyncio.sleep(0.005)
            item = f"w{n}"
            sent = time.perf_counter()
            speaker.play(item, delta)
            speaker.finish(item)
            while item not in speaker.buffer.started_s:  # noqa: ASYNC110 (polling a thread's dict)
                await asyncio.sleep(0.001)
            out.append((speaker.buffer.started_s[item] - sent) * 1000)
            await asyncio.sleep(0.013 * (n % 3))  # vary the phase against the 20 ms clock
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return out


async def _pulse_speaker_latency_ms(trials: int) -> list[float]:
    from hark.audio.soundcard import SoundcardSpeaker

    speaker = SoundcardSpeaker("pulse", rate_hz=DEVICE_RATE_HZ)
    task = asyncio.create_task(speaker.run(lambda e: None))
    out = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while speaker.frames_rendered < DEVICE_RATE_HZ and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        delta = bytes(960)  # 20 ms
        for n in range(trials):
            buf = speaker._buffer
            while buf is not None and buf.busy and loop.time() < deadline + 30:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            item = f"p{n}"
            sent = time.perf_counter()
            speaker.play(item, delta)
            speaker.finish(item)
            while buf is not None and item not in buf.started_s and loop.time() < deadline + 30:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            if buf is not None and item in buf.started_s:
                out.append((buf.started_s[item] - sent) * 1000)
            await asyncio.sleep(0.013 * (n % 3))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return out


def _pulse_latency(tmp: Path) -> list[float] | None:
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.audio_rig import PulseRig, pulse_available
    except ImportError:
        return None
    if not pulse_available():
        return None
    saved = {
        k: os.environ.get(k)
        for k in (
            "PULSE_SERVER",
            "PULSE_CLIENTCONFIG",
            "PULSE_SINK",
            "PULSE_SOURCE",
            "JACK_NO_START_SERVER",
        )
    }
    try:
        with PulseRig(tmp) as rig:
            os.environ.update(rig.env)
            return asyncio.run(_pulse_speaker_latency_ms(40))
    except (OSError, RuntimeError) as exc:
        print(f"   (PulseAudio latency skipped: {exc})")
        return None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        capture, reply = _speech(tmp)
        cap = min(_capture_cost_us(capture, 1.0, None) for _ in range(REPEATS))
        cap_gain = min(_capture_cost_us(capture, 1.5, None) for _ in range(REPEATS))
        cap_worst = min(
            _capture_cost_us(capture, 1.0, _ReplayingGate(reply)) for _ in range(REPEATS)
        )
        speaking, gate = min((_speaking_cost_us(reply) for _ in range(REPEATS)), key=lambda r: r[0])
        play = min(_playback_cost_us(reply, echo=False) for _ in range(REPEATS))
        play_echo = min(_playback_cost_us(reply, echo=True) for _ in range(REPEATS))
        idle = min(_idle_speaker_cost_us() for _ in range(REPEATS))
        print(f"   capture 48k->24k + VAD framing:             {cap:7.0f} us per audio-second")
        print(f"   capture with software gain 1.5:             {cap_gain:7.0f} us per audio-second")
        print(f"   playback 24k->48k + gain + fades:           {play:7.0f} us per audio-second")
        print(
            f"   playback + echo reference:                  {play_echo:7.0f} us per audio-second"
        )
        print(
            f"   listening (capture + idle speaker):         {cap + idle:7.0f} us per audio-second"
        )
        print(
            f"   speaking (playback + capture of its echo):  {speaking:7.0f} us per audio-second"
            f" (gate: {gate.stats.echo_by_correlation} by correlation,"
            f" {gate.stats.echo_by_level} by level, {gate.stats.passed} passed)"
        )
        print(
            f"   worst case (user over echo, gate searching): {cap_worst + play_echo:6.0f}"
            " us per audio-second"
        )
        print("   (target: <= 10000 us per audio-second for the whole device)")
        wav = asyncio.run(_wav_speaker_latency_ms(40))
        print(
            "   first delta -> first frame (WAV speaker, 20 ms clock): "
            f"p50 {statistics.median(wav):.1f} ms, p95 {_percentile(wav, 95):.1f} ms"
        )
        pulse = _pulse_latency(tmp)
        if pulse:
            print(
                "   first delta -> first frame (PyAudio via PulseAudio):   "
                f"p50 {statistics.median(pulse):.1f} ms, p95 {_percentile(pulse, 95):.1f} ms"
            )


if __name__ == "__main__":
    main()
