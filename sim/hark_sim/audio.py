"""PCM16 helpers for the simulator: durations, tones, speech synthesis and resampling.

It must not know about events or sessions; it turns text and numbers into 24 kHz mono
little-endian PCM16 bytes and back into milliseconds.
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

RATE_HZ = 24000
BYTES_PER_MS = RATE_HZ * 2 // 1000  # 48 bytes of PCM16 mono per millisecond
G711_BYTES_PER_MS = 8


def bytes_per_ms(format_type: str) -> int:
    """Bytes per millisecond of audio in the session's format."""
    return BYTES_PER_MS if format_type == "audio/pcm" else G711_BYTES_PER_MS


def ms_of(nbytes: int, format_type: str = "audio/pcm") -> float:
    return nbytes / bytes_per_ms(format_type)


def tone(duration_ms: int, freq_hz: float = 440.0, amplitude: float = 0.25) -> bytes:
    """A sine tone with 10 ms fades, as PCM16 at 24 kHz."""
    n = max(0, duration_ms * RATE_HZ // 1000)
    t = np.arange(n) / RATE_HZ
    wave_ = np.sin(2 * np.pi * freq_hz * t) * amplitude
    fade = min(n // 2, RATE_HZ // 100)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        wave_[:fade] *= ramp
        wave_[n - fade :] *= ramp[::-1]
    return to_pcm16(wave_)


def silence(duration_ms: int) -> bytes:
    return b"\x00\x00" * (duration_ms * RATE_HZ // 1000)


def to_pcm16(samples: npt.NDArray[np.float64]) -> bytes:
    """Float samples in [-1, 1] to little-endian PCM16 bytes."""
    clipped = np.clip(samples, -1.0, 1.0) * 32767.0
    return bytes(np.round(clipped).astype("<i2").tobytes())


def resample(pcm: bytes, from_hz: int, to_hz: int) -> bytes:
    """Linear-interpolation resampling of PCM16 mono (good enough for synthetic speech)."""
    if from_hz == to_hz or not pcm:
        return pcm
    src = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    n_out = round(len(src) * to_hz / from_hz)
    x_out = np.arange(n_out) * (from_hz / to_hz)
    out = np.interp(x_out, np.arange(len(src)), src)
    return bytes(np.round(out).clip(-32768, 32767).astype("<i2").tobytes())


def stretch(pcm: bytes, speed: float) -> bytes:
    """``pcm`` played ``speed`` times as fast (``audio.output.speed``): 1/speed as long.

    Plain resampling, so the pitch moves too; the sim only needs the length right.
    """
    return resample(pcm, RATE_HZ, round(RATE_HZ / speed))


# Each OpenAI voice as an espeak-ng variant, so replies in different voices differ.
VOICE_VARIANTS = {
    "alloy": "f3",
    "ash": "m3",
    "ballad": "m5",
    "coral": "f2",
    "echo": "m2",
    "sage": "f4",
    "shimmer": "f5",
    "verse": "m4",
    "marin": "f1",
    "cedar": "m1",
}


def espeak_voice(language: str, voice: object) -> str:
    """The espeak-ng voice for a session voice: ``en`` + the voice's variant (``en+f1``).

    A scenario's own variant (``en+m7``), a custom voice or an unknown name keep ``language``.
    """
    variant = VOICE_VARIANTS.get(voice) if isinstance(voice, str) else None
    if variant is None or "+" in language:
        return language
    return f"{language}+{variant}"


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


@functools.lru_cache(maxsize=128)
def speak(text: str, voice: str = "en", words_per_minute: int = 175) -> bytes:
    """``text`` spoken by espeak-ng as 24 kHz PCM16; a tone when espeak-ng is missing."""
    if not text.strip():
        return b""
    if not have_espeak():
        return hum(_text_ms(text))
    with tempfile.TemporaryDirectory(prefix="hark-sim-") as tmp:
        wav_path = Path(tmp) / "say.wav"
        try:
            subprocess.run(
                ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(wav_path), text],
                check=True,
                capture_output=True,
                timeout=30,
            )
            with wave.open(str(wav_path), "rb") as wav:
                rate_hz = wav.getframerate()
                channels = wav.getnchannels()
                frames = wav.readframes(wav.getnframes())
        except (OSError, subprocess.SubprocessError, wave.Error) as exc:
            log.warning("espeak-ng failed (%s); using a hum", exc)
            return hum(_text_ms(text))
    if channels != 1:
        frames = np.frombuffer(frames, dtype="<i2")[::channels].tobytes()
    return resample(frames, rate_hz, RATE_HZ)


def _text_ms(text: str) -> int:
    return min(6000, max(300, 60 * len(text)))


def text_tone(text: str) -> bytes:
    """A tone whose length follows the text (60 ms a character, 0.3 to 6 s)."""
    return tone(_text_ms(text), 330.0 + 10 * (len(text) % 20))


def hum(duration_ms: int) -> bytes:
    """A voice-like hum (gliding 110–150 Hz harmonics, 3.5 Hz syllable beat).

    Unlike a steady sine, webrtcvad keeps judging it as speech for seconds, so it can
    stand in for espeak-ng output in VAD-driven flows.
    """
    n = max(0, duration_ms * RATE_HZ // 1000)
    t = np.arange(n) / RATE_HZ
    f0 = 130.0 + 20.0 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE_HZ
    x = sum(np.sin(k * phase) / k for k in range(1, 30))
    x = np.asarray(x, dtype=np.float64) * (0.55 + 0.45 * np.sin(2 * np.pi * 3.5 * t) ** 2)
    peak = float(np.max(np.abs(x))) if n else 1.0
    return to_pcm16(x / peak * 0.4)


def lowpass_decimate(pcm: bytes, factor: int) -> bytes:
    """PCM16 decimated by an integer ``factor`` after a windowed-sinc low-pass (31 taps)."""
    if factor == 1 or not pcm:
        return pcm
    src = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    taps = 31
    cutoff = 0.5 / factor
    n = np.arange(taps) - (taps - 1) / 2
    kernel = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(taps)
    kernel /= kernel.sum()
    filtered = np.convolve(src, kernel, mode="same")[::factor]
    return bytes(np.round(filtered).clip(-32768, 32767).astype("<i2").tobytes())
