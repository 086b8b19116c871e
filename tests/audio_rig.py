"""Test rigs for real audio without a sound card: ALSA file PCMs and a private PulseAudio server.

``alsa_file_env(tmp_path)`` returns the environment that makes PortAudio list
``fileout``/``filein``/``default`` devices backed by raw files (unpaced: reads and writes
return at once).  ``PulseRig(tmp_path)`` runs a private ``pulseaudio`` with two 48 kHz
mono null sinks, ``speaker`` (what the daemon plays; record its monitor) and
``micfeed`` (what the microphone hears: its monitor is the default source), on a
real-time clock.  Neither touches the machine's own audio setup, and both live in the
test's temporary directory.

    with PulseRig(tmp_path) as rig:
        monkeypatch.setenv(...) for k, v in rig.env.items()   # or pass env to a subprocess
        rec = rig.record_speaker(tmp_path / "out.wav")
        rig.play_into_mic(question_wav)
        rig.loopback(latency_ms=40, volume_db=-6)              # echo: speaker → mic
        rig.crash(); rig.start()                              # every device vanishes, returns
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path
from types import TracebackType

import numpy as np

ALSA_SYSTEM_CONFIG = "/usr/share/alsa/alsa.conf"


def alsa_file_env(
    tmp_path: Path, *, capture: bytes = b"", out_name: str = "out.raw", in_name: str = "in.raw"
) -> dict[str, str]:
    """Write an ALSA config with file-backed PCMs; return the env to give PortAudio.

    ``capture`` is written to ``tmp_path/in.raw`` (what ``filein``/``default`` capture
    reads, raw, in whatever format the stream is opened with); playback lands in
    ``tmp_path/out.raw``.  Set the env before PortAudio initialises in that process
    (a subprocess, or before the first ``pyaudio.PyAudio()``).
    """
    infile, outfile = tmp_path / in_name, tmp_path / out_name
    infile.write_bytes(capture)
    conf = tmp_path / "asound.conf"
    conf.write_text(
        f"""
pcm.!default {{ type asym; playback.pcm "fileout"; capture.pcm "filein" }}
pcm.fileout {{ type file; slave.pcm "null"; file "{outfile}"; format "raw" }}
pcm.filein {{ type file; slave.pcm "null"; file "/dev/null"; infile "{infile}"; format "raw" }}
"""
    )
    return {"ALSA_CONFIG_PATH": f"{ALSA_SYSTEM_CONFIG}:{conf}", "JACK_NO_START_SERVER": "1"}


def pulse_available() -> bool:
    """pulseaudio, pactl, paplay, parecord and ALSA's pulse plugin are installed."""
    tools = ("pulseaudio", "pactl", "paplay", "parecord")
    plugin = any(
        Path(d, "libasound_module_pcm_pulse.so").exists()
        for d in ("/usr/lib/x86_64-linux-gnu/alsa-lib", "/usr/lib/aarch64-linux-gnu/alsa-lib")
    ) or bool(list(Path("/usr/lib").glob("*/alsa-lib/libasound_module_pcm_pulse.so")))
    return all(shutil.which(t) for t in tools) and plugin


class Recording:
    """A running ``parecord``; ``stop()`` ends it cleanly and returns the WAV path."""

    def __init__(self, proc: subprocess.Popen[bytes], path: Path) -> None:
        self.proc = proc
        self.path = path

    def stop(self) -> Path:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # parecord finalises the WAV header
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.path


class PulseRig:
    """A private PulseAudio server with null sinks ``speaker`` and ``micfeed`` (48 kHz mono)."""

    SINKS = ("speaker", "micfeed")

    def __init__(self, tmp_path: Path, rate_hz: int = 48_000) -> None:
        self.dir = tmp_path / "pulse"
        self.rate_hz = rate_hz
        self.socket = self.dir / "native"
        self.proc: subprocess.Popen[bytes] | None = None
        self._children: list[subprocess.Popen[bytes]] = []
        self._modules: dict[str, int] = {}
        self.env: dict[str, str] = {}

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> PulseRig:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "run").mkdir(exist_ok=True)
        client_conf = self.dir / "client.conf"
        client_conf.write_text("autospawn = no\n")
        (self.dir / "default.pa").write_text(
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.socket}\n"
            "set-default-sink speaker\n"
        )
        # PULSE_SINK/PULSE_SOURCE pin PortAudio's "pulse" device to the rig's sinks, so a
        # stream cannot silently fall back to another device while one is unplugged.
        self.env = {
            "PULSE_SERVER": f"unix:{self.socket}",
            "PULSE_CLIENTCONFIG": str(client_conf),
            "PULSE_SINK": "speaker",
            "PULSE_SOURCE": "micfeed.monitor",
            "JACK_NO_START_SERVER": "1",
        }
        server_env = {
            **os.environ,
            **self.env,
            "HOME": str(self.dir),
            "XDG_RUNTIME_DIR": str(self.dir / "run"),
            "XDG_CONFIG_HOME": str(self.dir / "config"),
        }
        for key in ("PULSE_SERVER", "PULSE_SINK", "PULSE_SOURCE"):
            server_env.pop(key)
        log = (self.dir / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [
                "pulseaudio",
                "-n",
                "-F",
                str(self.dir / "default.pa"),
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--disallow-exit",
                "--use-pid-file=no",
                "--realtime=no",
                "--high-priority=no",
                "--log-target=stderr",
            ],
            env=server_env,
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pulseaudio exited: {(self.dir / 'server.log').read_text()}")
            if self.socket.exists() and self._pactl_ok("info"):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("pulseaudio did not come up")
        for sink in self.SINKS:
            self.replug(sink)
        self.pactl("set-default-sink", "speaker")
        self.pactl("set-default-source", "micfeed.monitor")

    def close(self) -> None:
        for child in self._children:
            if child.poll() is None:
                child.kill()
                child.wait()
        self._children.clear()
        self.crash()

    def crash(self) -> None:
        """Kill the server (every device vanishes at once); ``start()`` brings it back."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self._modules.clear()
        self.socket.unlink(missing_ok=True)

    # ------------------------------------------------------------------ control

    def _client_env(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        for key in ("PULSE_SINK", "PULSE_SOURCE"):  # pactl/paplay name their devices
            env.pop(key)
        return env

    def _pactl_ok(self, *args: str) -> bool:
        result = subprocess.run(
            ["pactl", *args], env=self._client_env(), capture_output=True, timeout=10
        )
        return result.returncode == 0

    def pactl(self, *args: str) -> str:
        """Run ``pactl`` against this server; its stdout."""
        result = subprocess.run(
            ["pactl", *args], env=self._client_env(), capture_output=True, text=True, timeout=10
        )
        if result.returncode != 0:
            raise RuntimeError(f"pactl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout.strip()

    def load_module(self, name: str, *args: str) -> int:
        return int(self.pactl("load-module", name, *args))

    def unload_module(self, module_id: int) -> None:
        self.pactl("unload-module", str(module_id))

    def unplug(self, sink: str) -> None:
        """Remove a null sink and its monitor source.

        PulseAudio moves the streams that used it to another device, so a client sees no
        error; ``crash()`` is what makes a device vanish for PortAudio.
        """
        self.unload_module(self._modules.pop(sink))

    def replug(self, sink: str) -> None:
        """Create (or bring back) a null sink."""
        self._modules[sink] = self.load_module(
            "module-null-sink",
            f"sink_name={sink}",
            f"rate={self.rate_hz}",
            "channels=1",
            f"sink_properties=device.description={sink}",
        )

    def loopback(
        self, latency_ms: int = 40, volume_db: float = -6.0, *, steady: bool = False
    ) -> int:
        """Feed ``speaker`` into ``micfeed`` ``latency_ms`` late at ``volume_db``; module id.

        By default module-loopback keeps its latency by nudging its resampler's rate, so
        the echo path keeps changing (as between two sound cards whose clocks are being
        matched). ``steady``: never nudge (``adjust_time=0``): both null sinks run on one
        clock, so the path stays one fixed delay, as on a HAT whose mic and speaker share
        a clock.
        """
        module = self.load_module(
            "module-loopback",
            "source=speaker.monitor",
            "sink=micfeed",
            f"latency_msec={latency_ms}",
            *(["adjust_time=0"] if steady else []),
            "source_dont_move=true",
            "sink_dont_move=true",
            "remix=no",
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            inputs = json.loads(self.pactl("-f", "json", "list", "sink-inputs") or "[]")
            mine = [i for i in inputs if str(i.get("owner_module")) == str(module)]
            if mine:
                self.pactl("set-sink-input-volume", str(mine[0]["index"]), f"{volume_db}dB")
                return module
            time.sleep(0.05)
        raise RuntimeError("module-loopback made no sink input")

    def room(self, impulse: np.ndarray, latency_ms: int = 100, volume_db: float = 0.0) -> None:
        """Feed ``speaker`` into ``micfeed`` through a room: convolved with ``impulse``
        (at the rig's rate, normalised to unit energy, then ``volume_db``).

        PulseAudio has no convolver without LADSPA plugins, so a separate process does it:
        ``parec`` from the speaker's monitor, an FFT overlap-add in ``_ROOM``, ``pacat``
        into the mic. Both null sinks run on one clock, so the delay stays fixed once the
        pipe has filled (``latency_ms`` of slack for the convolver's scheduling).
        """
        h = impulse / np.sqrt(np.sum(impulse.astype(np.float64) ** 2))
        path, ready = self.dir / "room.npy", self.dir / "room.ready"
        ready.unlink(missing_ok=True)
        np.save(path, h * 10 ** (volume_db / 20))
        fmt = [f"--rate={self.rate_hz}", "--channels=1", "--format=s16le", "--raw"]
        env = self._client_env()
        rec = subprocess.Popen(
            ["parec", "-d", "speaker.monitor", "--latency-msec=10", *fmt],
            env=env,
            stdout=subprocess.PIPE,
        )
        conv = subprocess.Popen(
            [sys.executable, "-c", _ROOM, str(path), str(self.rate_hz // 100), str(ready)],
            stdin=rec.stdout,
            stdout=subprocess.PIPE,
        )
        assert rec.stdout is not None
        rec.stdout.close()  # the convolver owns the pipe now
        play = subprocess.Popen(
            ["pacat", "-d", "micfeed", f"--latency-msec={latency_ms}", *fmt],
            env=env,
            stdin=conv.stdout,
        )
        assert conv.stdout is not None
        conv.stdout.close()
        self._children += [rec, conv, play]
        # Flowing once the convolver has started (numpy imported, the room loaded).
        deadline = time.monotonic() + 10
        while not ready.exists():
            if conv.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the room's convolver did not start")
            time.sleep(0.05)

    # ------------------------------------------------------------------ audio in and out

    def play_into_mic(self, wav: Path, volume_db: float = 0.0) -> subprocess.Popen[bytes]:
        """Start playing ``wav`` into the microphone (``micfeed``); returns the ``paplay``."""
        args = ["paplay", "-d", "micfeed"]
        if volume_db:
            # PulseAudio's volume scale is cubic: 65536 * cbrt(linear gain) is that gain.
            args.append(f"--volume={round(65536 * 10 ** (volume_db / 60))}")
        proc = subprocess.Popen([*args, str(wav)], env=self._client_env())
        self._children.append(proc)
        return proc

    def record_speaker(self, path: Path) -> Recording:
        """Record what the daemon plays (``speaker.monitor``) into a 48 kHz mono WAV."""
        proc = subprocess.Popen(
            [
                "parecord",
                "-d",
                "speaker.monitor",
                f"--rate={self.rate_hz}",
                "--channels=1",
                "--format=s16le",
                "--file-format=wav",
                "--latency-msec=10",
                str(path),
            ],
            env=self._client_env(),
        )
        self._children.append(proc)
        return Recording(proc, path)


_ROOM = """
import sys
import numpy as np
h = np.load(sys.argv[1]); block = int(sys.argv[2])
open(sys.argv[3], "w").close()
n = 1 << int(np.ceil(np.log2(block + len(h) - 1)))
H = np.fft.rfft(h, n)
tail = np.zeros(n - block)
src, out = sys.stdin.buffer, sys.stdout.buffer
while True:
    data = src.read(block * 2)
    if len(data) < block * 2:
        break
    y = np.fft.irfft(np.fft.rfft(np.frombuffer(data, np.int16), n) * H, n)
    y[: n - block] += tail
    tail = y[block:].copy()
    out.write(np.clip(np.round(y[:block]), -32768, 32767).astype(np.int16).tobytes())
    out.flush()
"""
"""The room's convolver (``PulseRig.room``): block by block, an FFT overlap-add."""


# --------------------------------------------------------------------------- analysis


def read_wav_samples(path: Path) -> tuple[np.ndarray, int]:
    """(mono int16 samples, rate_hz) of a PCM16 WAV (parecord's header may lack a length)."""
    with wave.open(str(path), "rb") as w:
        rate, channels = w.getframerate(), w.getnchannels()
        data = w.readframes(w.getnframes())
    if not data:  # parecord killed before finalising: data follows a 44-byte header
        data = path.read_bytes()[44:]
    samples = np.frombuffer(data[: len(data) - len(data) % 2], dtype=np.int16)
    if channels > 1:
        samples = samples[: len(samples) - len(samples) % channels].reshape(-1, channels)[:, 0]
    return samples, rate


def best_alignment(
    recorded: np.ndarray, reference: np.ndarray, max_lag: int | None = None
) -> tuple[int, float]:
    """(lag, normalised correlation) of ``reference`` inside ``recorded``, via FFT."""
    a = recorded.astype(np.float64)
    b = reference.astype(np.float64)
    n = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    corr = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)[: len(a)]
    limit = len(a) - len(b) + 1 if max_lag is None else min(max_lag, len(a) - len(b) + 1)
    if limit <= 0:
        return 0, 0.0
    lag = int(np.argmax(corr[:limit]))
    segment = a[lag : lag + len(b)]
    denom = float(np.linalg.norm(segment) * np.linalg.norm(b)) or 1.0
    return lag, float(np.dot(segment, b) / denom)


def audible_extent(
    samples: np.ndarray, rate_hz: int, threshold: float = 200.0
) -> tuple[float, float]:
    """(first, last) time in seconds where the 10 ms RMS exceeds ``threshold``; (0, 0) if never."""
    step = rate_hz // 100
    n = len(samples) // step
    if n == 0:
        return 0.0, 0.0
    frames = samples[: n * step].astype(np.float64).reshape(n, step)
    loud = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > threshold)
    if len(loud) == 0:
        return 0.0, 0.0
    return loud[0] / 100, (loud[-1] + 1) / 100


def pieces(samples: np.ndarray, gap: int = 48, min_len: int = 960) -> list[tuple[int, int]]:
    """(start, end) of the runs of ``samples`` split by ``gap`` or more exact zeros.

    A sink that ran dry fills the gap with digital silence (PulseAudio after an
    underrun; the file PCM between runs), which speech never contains. Runs shorter
    than ``min_len`` samples are left out.
    """
    nonzero = np.flatnonzero(samples)
    if len(nonzero) == 0:
        return []
    cuts = np.flatnonzero(np.diff(nonzero) > gap)
    starts = np.r_[nonzero[0], nonzero[cuts + 1]]
    ends = np.r_[nonzero[cuts], nonzero[-1]] + 1
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True) if b - a >= min_len]


def place(piece: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    """(where ``piece`` starts in ``reference``, correlation); either may overhang the other."""
    pad = np.zeros(len(piece), dtype=np.int16)
    lag, score = best_alignment(np.concatenate([pad, reference, pad]), piece)
    return lag - len(pad), score


def coverage(recorded: np.ndarray, reference: np.ndarray, *, gap: int = 480) -> float:
    """Share of ``reference``'s energy that pieces of ``recorded`` reproduce (each ≥ 0.9).

    For sinks that play in pieces: an unpaced file PCM drains the jitter buffer faster
    than a busy loop refills it, and a PulseAudio stream starved of CPU underruns (the
    server plays silence meanwhile), so a reply can come out as runs of audio split by
    exact zeros (``gap`` or more samples). Joining the runs shifts the later ones and
    one correlation over the whole no longer measures the audio; each run is aligned
    on its own instead. Runs under 20 ms at 48 kHz are ignored.
    """
    ref = reference.astype(np.float64)
    covered = np.zeros(len(ref), dtype=bool)
    for start, end in pieces(recorded, gap):
        at, score = place(recorded[start:end], reference)
        if score >= 0.9:
            covered[max(0, at) : max(0, at + end - start)] = True
    return float((ref[covered] ** 2).sum() / ((ref**2).sum() or 1.0))
