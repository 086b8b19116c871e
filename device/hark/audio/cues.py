"""Sound cues: the generated default tones and owner-supplied WAV files, as device-rate samples.

Cues are output only: the speaker plays them as its own audio (so the echo gate sees
them in the reference), they are never sent to the model, and they are never reported
in ``PlaybackStopped``.  This module must not import asyncio or PyAudio.
"""

from __future__ import annotations

import logging
import wave
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hark.audio.pcm import Samples, as_samples, downmix, fade_in, fade_out, resample
from hark.events import Cue

log = logging.getLogger(__name__)

CUES: tuple[Cue, ...] = ("listening", "done", "error")

# (frequency_hz, duration_ms) notes; 0 Hz is a rest.  Rising = "go ahead", falling = "done".
_TONES: dict[Cue, tuple[tuple[float, int], ...]] = {
    "listening": ((660.0, 70), (880.0, 90)),
    "done": ((880.0, 70), (660.0, 90)),
    "error": ((330.0, 120), (0.0, 60), (330.0, 120)),
}


def tone(cue: Cue, rate_hz: int, level_dbfs: float = -14.0) -> Samples:
    """The default tone for ``cue``: short notes with 5 ms ramps so nothing clicks."""
    amplitude = 32767 * 10 ** (level_dbfs / 20)
    fade = rate_hz * 5 // 1000
    parts: list[Samples] = []
    for freq_hz, ms in _TONES[cue]:
        n = rate_hz * ms // 1000
        if freq_hz == 0:
            parts.append(np.zeros(n, dtype=np.int16))
            continue
        t = np.arange(n, dtype=np.float32) / rate_hz
        note = (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)
        parts.append(fade_out(fade_in(note, fade), fade))
    return np.concatenate(parts)


def read_wav(path: Path, rate_hz: int) -> Samples:
    """A PCM16 WAV file as mono samples at ``rate_hz`` (downmixed, resampled)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        channels, file_rate_hz = w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    mono = downmix(raw, channels) if channels > 1 else as_samples(raw)
    return as_samples(resample(mono.tobytes(), file_rate_hz, rate_hz))


def load_cues(rate_hz: int, files: Mapping[str, Path | str] | None = None) -> dict[Cue, Samples]:
    """Every cue at ``rate_hz``: the owner's file where given and readable, else the tone.

    A broken cue file is logged and replaced by the default; a cue is not worth failing
    start-up for.
    """
    files = files or {}
    out: dict[Cue, Samples] = {}
    for cue in CUES:
        path = files.get(cue)
        if path is not None:
            try:
                out[cue] = read_wav(Path(path), rate_hz)
                continue
            except (OSError, ValueError, wave.Error) as exc:
                log.warning("cue %s: cannot use %s (%s); using the default tone", cue, path, exc)
        out[cue] = tone(cue, rate_hz)
    return out
