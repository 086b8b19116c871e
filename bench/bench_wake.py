"""The wake and stop words: detections, false wakes per hour, CPU per audio-second.

- Detections: each shipped wake word (and "stop") spoken by espeak-ng voices at three
  speeds, clean and with white and brown noise at 10 dB and 0 dB SNR, through the same
  ``MicroWordSpotter`` the daemon runs, at each model's own cutoff.
- False wakes: espeak-ng reading this repository's README (several voices) and
  synthesised noise, none of it the wake word, processed faster than real time;
  reported per hour of audio (with how much audio that was: zero in 10 minutes is
  "< 6 per hour", not "none").  ``HARK_BENCH_WAKE_MINUTES`` (default 10) sets the
  minutes of each.
- CPU per audio-second: the capture chain at 48 kHz (20 ms chunks) with webrtcvad
  alone, then with the spotter unarmed (front end only), the wake word armed, and the
  wake and stop words armed; as ratios against webrtcvad alone in the same run.

espeak-ng triggers "okay nabu", "alexa" and "hey mycroft" but rarely "hey jarvis", whose
model was trained on other voices: its row says how rarely.  Figures are printed,
never asserted.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from hark.audio.capture import CaptureChain
from hark.audio.cues import read_wav
from hark.audio.wake import MicroWordSpotter
from hark.events import Word

RATE = 16_000
VOICES = ("en-us", "en-gb", "en-us+f3", "en-us+m3", "en-gb-x-rp", "en-029")
SPEEDS = (130, 175, 210)  # words per minute (espeak-ng's default is 175)
NOISES: tuple[tuple[str, float | None], ...] = (
    ("clean", None),
    ("white 10 dB", 10.0),
    ("brown 10 dB", 10.0),
    ("white 0 dB", 0.0),
)
PHRASES = {
    "okay_nabu": "okay nabu",
    "alexa": "alexa",
    "hey_mycroft": "hey mycroft",
    "hey_jarvis": "hey jarvis",
    "stop": "stop",
}
ROOT = Path(__file__).resolve().parents[1]


def _espeak(text: str, voice: str, speed: int, tmp: Path) -> np.ndarray:
    raw, wav = tmp / "raw.wav", tmp / "s16.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(wav)],
        check=True,
        capture_output=True,
    )
    return read_wav(wav, RATE)


def _noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.normal(0.0, 1.0, n)
    if kind.startswith("brown"):
        brown = np.cumsum(white)
        brown -= np.convolve(brown, np.ones(1600) / 1600, mode="same")  # no DC drift
        return brown / (np.std(brown) or 1.0)
    return white


def _mix(speech: np.ndarray, kind: str, snr_db: float | None, rng: np.random.Generator) -> bytes:
    pad = np.zeros(RATE // 2)
    x = np.concatenate([pad, speech.astype(np.float64), pad, pad])
    if snr_db is not None:
        voiced = speech.astype(np.float64)
        power = float(np.mean(voiced[np.abs(voiced) > 0.05 * np.abs(voiced).max()] ** 2))
        noise = _noise(kind, len(x), rng) * np.sqrt(power / 10 ** (snr_db / 10))
        x = x + noise
    pcm: bytes = np.clip(x, -32768, 32767).astype(np.int16).tobytes()
    return pcm


def _heard(spotter: MicroWordSpotter, word: Word, pcm: bytes) -> bool:
    spotter.arm(frozenset())
    spotter.arm(frozenset({word}))  # afresh: model state cleared
    return any(True for _ in _spot(spotter, pcm))


def _spot(spotter: MicroWordSpotter, pcm: bytes, step: int = 1280) -> list[object]:
    out: list[object] = []
    for i in range(0, len(pcm), step):
        out += spotter.process(pcm[i : i + step])
    return out


def detections(tmp: Path) -> None:
    rng = np.random.default_rng(17)
    for name, phrase in PHRASES.items():
        word: Word = "stop" if name == "stop" else "wake"
        spotter = MicroWordSpotter(None if word == "stop" else name, stop=word == "stop")
        clips = {(v, s): _espeak(phrase, v, s, tmp) for v in VOICES for s in SPEEDS}
        cells = []
        for label, snr in NOISES:
            hits = sum(_heard(spotter, word, _mix(c, label, snr, rng)) for c in clips.values())
            cells.append(f"{label} {hits}/{len(clips)}")
        spotter.close()
        print(
            f"   detected {name!r} ({len(VOICES)} voices x {len(SPEEDS)} speeds): "
            + ", ".join(cells)
        )


def _readme_text() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"[`*#|>\[\]()_]", " ", text)
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.strip()) > 20]
    # None of the words themselves ("stops" is "stop" to the model, rightly).
    words = re.compile(r"stop|nabu|alexa|jarvis|mycroft", re.I)
    return [s for s in sentences if not words.search(s)]


def false_wakes(tmp: Path, minutes: float) -> None:
    sentences = _readme_text()
    target = int(minutes * 60 * RATE)
    parts: list[np.ndarray] = []
    total, i = 0, 0
    while total < target and i < 10 * len(sentences):
        chunk = " ".join(sentences[i % len(sentences) : i % len(sentences) + 8])
        voice = VOICES[(i // 8) % len(VOICES)]
        clip = _espeak(chunk, voice, SPEEDS[(i // 8) % len(SPEEDS)], tmp)
        parts.append(clip)
        total += len(clip)
        i += 8
    speech = np.concatenate(parts)[:target].tobytes()
    rng = np.random.default_rng(5)
    n = target
    noise = np.concatenate(
        [
            _noise("white", n // 2, rng) * 3000,
            _noise("brown", n - n // 2, rng) * 3000,
        ]
    )
    noise_pcm = np.clip(noise, -32768, 32767).astype(np.int16).tobytes()
    for name in ("okay_nabu", "alexa", "hey_mycroft", "hey_jarvis", "stop"):  # own cutoffs
        word: Word = "stop" if name == "stop" else "wake"
        spotter = MicroWordSpotter(
            None if word == "stop" else name, stop=word == "stop", refractory_s=2.0
        )
        spotter.arm(frozenset({word}))
        cells = []
        for label, pcm in (("speech", speech), ("noise", noise_pcm)):
            started = time.perf_counter()
            count = len(_spot(spotter, pcm))
            hours = len(pcm) / 2 / RATE / 3600
            speed = len(pcm) / 2 / RATE / (time.perf_counter() - started)
            per_hour = f"{count / hours:.1f}/h" if count else f"< {1 / hours:.0f}/h"
            cells.append(
                f"{label} {count} in {hours * 60:.0f} min ({per_hour}, {speed:.0f}x real time)"
            )
        spotter.close()
        print(f"   false {name!r}: " + "; ".join(cells))
    _stop_cutoffs(tmp, speech)


def _stop_cutoffs(tmp: Path, speech: bytes) -> None:
    """The stop word runs during replies, on speech: its cutoff trades misses for cuts."""
    rng = np.random.default_rng(23)
    clips = [_espeak("stop", v, s, tmp) for v in VOICES for s in SPEEDS]
    minutes = len(speech) / 2 / RATE / 60
    for cutoff in (0.5, 0.7, 0.8):
        spotter = MicroWordSpotter(None, stop=True, stop_cutoff=cutoff)
        clean = sum(_heard(spotter, "stop", _mix(c, "clean", None, rng)) for c in clips)
        noisy = sum(_heard(spotter, "stop", _mix(c, "white", 10.0, rng)) for c in clips)
        spotter.arm(frozenset({"stop"}))
        false = len(_spot(spotter, speech))
        spotter.close()
        print(
            f"   'stop' at cutoff {cutoff}: detected clean {clean}/{len(clips)}, white 10 dB "
            f"{noisy}/{len(clips)}; false {false} in {minutes:.0f} min of speech"
        )


def _chain_cost(samples: np.ndarray, spotter: MicroWordSpotter | None, words: set[Word]) -> float:
    """Process-CPU µs per audio-second of the 48 kHz chain; best of three."""
    chunk = 960  # 20 ms at 48 kHz
    chunks = [samples[i : i + chunk].tobytes() for i in range(0, len(samples), chunk)]
    seconds = len(samples) / 48_000
    best = float("inf")
    for _ in range(3):
        if spotter is not None:
            spotter.arm(frozenset(words))
        chain = CaptureChain(48_000, spotter=spotter)
        t, started = 1000.0, time.process_time()
        for piece in chunks:
            t += 0.02
            chain.process(piece, t, "batched")
        best = min(best, (time.process_time() - started) / seconds * 1e6)
    return best


def cpu(tmp: Path) -> None:
    clip = read_wav(_wav48(tmp), 48_000)
    samples = np.tile(clip, 20 * 48_000 // len(clip) + 1)[: 20 * 48_000]
    spotter = MicroWordSpotter("okay_nabu", stop=True)
    vad = _chain_cost(samples, None, set())
    rows = [
        ("spotter unarmed (front end)", _chain_cost(samples, spotter, set())),
        ("wake word armed", _chain_cost(samples, spotter, {"wake"})),
        ("wake + stop armed", _chain_cost(samples, spotter, {"wake", "stop"})),
    ]
    print(f"   capture chain 48 kHz, webrtcvad alone: {vad:.0f} µs CPU per audio-second")
    for label, cost in rows:
        print(f"   ... {label}: {cost:.0f} µs per audio-second, {cost / vad:.1f}x webrtcvad alone")
    spotter.close()


def _wav48(tmp: Path) -> Path:
    raw, wav = tmp / "c.wav", tmp / "c48.wav"
    text = "the quick brown fox jumps over the lazy dog while the weather stays sunny"
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(
        ["sox", str(raw), "-r", "48000", "-c", "1", "-b", "16", str(wav)],
        check=True,
        capture_output=True,
    )
    return wav


def main() -> None:
    minutes = float(os.environ.get("HARK_BENCH_WAKE_MINUTES", "10"))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cpu(tmp)
        detections(tmp)
        false_wakes(tmp, minutes)


if __name__ == "__main__":
    main()
