"""Fakes for every port, test speech, and the helpers tests would otherwise write by hand.

As gpiozero ships ``MockFactory``, hark ships its fakes:

- ``WavMicrophone`` and ``WavSpeaker`` implement ``hark.ports.Microphone`` and
  ``hark.ports.Speaker`` with the same capture chain and playback engine as the real
  sound card (``hark.audio.capture``, ``hark.audio.playback``), paced at real time × ``speed``, so
  the demo, the benchmarks and timing tests see the real frame and accounting semantics.
- For each port a null fake (does nothing, keeps nothing: ``NullLink``,
  ``NullMicrophone``, ``NullSpeaker``, ``NullTrigger``, ``NullIndicator``,
  ``NullNotifier``) and a recording one (keeps what it was told: ``RecordingLink``,
  ``RecordingMicrophone``, ``RecordingSpeaker``, ``RecordingIndicator``, ``RecordingSpotter``,
  ``RecordingNotifier``, ``RecordingSwitch``); ``FakeButton`` presses from a thread
  of its own, as gpiozero does.
- ``ControlSocket`` is a trigger that takes line commands on a Unix socket (press,
  release, say, unplug): the hands of a harness driving a separate ``hark run
  --fake-audio`` process (``bench soak``).
- ``until`` waits for a condition; ``mock_pins`` installs gpiozero's ``MockFactory``
  and tears it down (gpiozero is imported only then).

Production code must not import this module (``hark.demo`` and ``hark.cli`` pick
fakes for ``hark demo``, ``hark say`` and ``hark run --fake-audio``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import subprocess
import tempfile
import threading
import time
import wave
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from hark import ports
from hark.audio.capture import FRAME_MS, CaptureChain
from hark.audio.cues import load_cues, read_wav
from hark.audio.echo import EchoGate, EchoReference, now_s
from hark.audio.frontend import FrontEnd
from hark.audio.pcm import MODEL_RATE_HZ, Resampler, Samples, as_samples
from hark.audio.playback import PlaybackBuffer, Volume
from hark.events import (
    ButtonPressed,
    ButtonReleased,
    Cue,
    DeviceLost,
    DeviceRestored,
    Event,
    LedPattern,
    LinkUp,
    MicDemand,
    PlaybackStopped,
    StopWordHeard,
    WakeWordHeard,
    WireCommand,
    Word,
)
from hark.ports import Post
from hark.service.loop import NullNotifier
from hark.service.wiring import NullIndicator

log = logging.getLogger(__name__)


class WavMicrophone:
    """Plays WAV files (or raw 24 kHz PCM) into the capture chain as if a mic heard them.

    ``speed``: 1.0 is real time, 2.0 twice as fast, 0 as fast as the loop allows.
    ``after``: when the queued audio runs out, keep posting ``"silence"`` (paced at real
    time × speed, or real time when ``speed`` is 0) or ``"end"`` (``run`` returns).
    ``rate_hz`` is the simulated device rate (files are resampled to it), so the
    48 kHz → 24 kHz path is exercised like on a Pi.  ``spotter``: the wake/stop word
    spotter, fed by the capture chain as on the real mic.
    """

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        rate_hz: int = 48_000,
        speed: float = 1.0,
        after: Literal["silence", "end"] = "silence",
        vad_aggressiveness: int = 2,
        gain: float = 1.0,
        echo_gate: EchoGate | None = None,
        front_end: FrontEnd | None = None,
        spotter: ports.WordSpotter | None = None,
    ) -> None:
        self.rate_hz = rate_hz
        self.speed = speed
        self.after = after
        self.chain = CaptureChain(
            rate_hz,
            1,
            vad_aggressiveness=vad_aggressiveness,
            gain=gain,
            echo_gate=echo_gate,
            front_end=front_end,
            spotter=spotter,
        )
        self._queue: deque[Samples] = deque()
        self.frames_posted = 0
        self._unplugged_until: float | None = None
        if path is not None:
            self.say(path)

    def say(self, source: Path | str | bytes, rate_hz: int = MODEL_RATE_HZ) -> None:
        """Queue a WAV file, or raw PCM16 mono ``bytes`` at ``rate_hz``, to be "heard" next."""
        if isinstance(source, bytes):
            samples = Resampler(rate_hz, self.rate_hz, "HQ").process(as_samples(source), True)
        else:
            samples = read_wav(Path(source), self.rate_hz)
        self._queue.append(samples)

    def silence(self, ms: int) -> None:
        """Queue ``ms`` of silence (e.g. between utterances)."""
        self._queue.append(np.zeros(self.rate_hz * ms // 1000, dtype=np.int16))

    def set_demand(self, demand: MicDemand) -> None:
        """Every frame is posted as it is "heard" anyway (tests want exact timing)."""

    def unplug(self, seconds: float) -> None:
        """Lose the device now for ``seconds``, as a USB mic pulled out and put back:
        ``DeviceLost``, no frames (queued audio is dropped), then ``DeviceRestored``."""
        self._unplugged_until = time.monotonic() + seconds

    @property
    def pending_ms(self) -> float:
        return sum(len(s) for s in self._queue) * 1000 / self.rate_hz

    async def run(self, post: Post) -> None:
        loop = asyncio.get_running_loop()
        chunk = self.rate_hz * FRAME_MS // 1000
        silence = np.zeros(chunk, dtype=np.int16)
        current: Samples = np.zeros(0, dtype=np.int16)
        offset = 0
        started = loop.time()
        frames_done = 0
        while True:
            if self._unplugged_until is not None:
                await self._unplugged(post)
                current, offset = np.zeros(0, dtype=np.int16), 0
                started, frames_done = loop.time(), 0
            if offset >= len(current) and self._queue:
                current, offset = self._queue.popleft(), 0
            if offset < len(current):
                piece = current[offset : offset + chunk]
                offset += len(piece)
                if len(piece) < chunk:
                    piece = np.concatenate([piece, silence[: chunk - len(piece)]])
                speed = self.speed
            elif self.after == "end":
                return
            else:
                piece, speed = silence, self.speed or 1.0
            frames_done += 1
            if speed > 0:
                due = started + frames_done * FRAME_MS / 1000 / speed
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.2:  # fell behind (or came back from a pause): re-anchor
                    started, frames_done = loop.time(), 0
            else:
                await asyncio.sleep(0)
                started, frames_done = loop.time(), 0
            for frame in self.chain.process(piece.tobytes(), now_s()):
                post(frame)
                self.frames_posted += 1

    async def _unplugged(self, post: Post) -> None:
        post(DeviceLost("microphone", "fake microphone unplugged"))
        until = self._unplugged_until
        if until is not None:
            await asyncio.sleep(max(0.0, until - time.monotonic()))
        self._unplugged_until = None
        self._queue.clear()
        post(DeviceRestored("microphone"))


class WavSpeaker:
    """Renders played audio into a WAV file at ``rate_hz``, pulled at real time × ``speed``.

    Accounting is the real speaker's: an item is played as its frames are "consumed" by
    the paced clock, ``latency_ms`` stands for the device's output latency.  With
    ``speed`` 0 it renders as fast as it can while there is audio, and idles otherwise.
    ``path`` None records nothing (benchmarks).
    """

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        rate_hz: int = MODEL_RATE_HZ,
        speed: float = 1.0,
        volume: float = 1.0,
        buffer_ms: int = 20,
        fade_ms: float = 5.0,
        latency_ms: int = 0,
        cue_files: Mapping[str, Path | str] | None = None,
        echo_reference: EchoReference | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.rate_hz = rate_hz
        self.speed = speed
        self.buffer_ms = buffer_ms
        self._volume = Volume(volume)
        self.buffer = PlaybackBuffer(
            rate_hz,
            volume=self._volume,
            fade_ms=fade_ms,
            latency_frames=rate_hz * latency_ms // 1000,
            echo_reference=echo_reference,
        )
        self._cues = load_cues(rate_hz, cue_files)
        self._resampler: Resampler | None = None
        self._resampling_item: str | None = None
        self._post: Post | None = None
        self._wake = asyncio.Event()
        self.cues_played: list[Cue] = []

    @property
    def volume(self) -> float:
        return self._volume.level

    @volume.setter
    def volume(self, value: float) -> None:
        self._volume.set(value)

    def play(self, item_id: str, pcm: bytes) -> None:
        if self._resampler is None or self._resampling_item != item_id:
            self._resampler = Resampler(MODEL_RATE_HZ, self.rate_hz)
            self._resampling_item = item_id
        self.buffer.enqueue(item_id, self._resampler.process(as_samples(pcm)))
        self._wake.set()

    def finish(self, item_id: str) -> None:
        if self._resampler is not None and self._resampling_item == item_id:
            self.buffer.enqueue(item_id, self._resampler.flush())
            self._resampler, self._resampling_item = None, None
        self.buffer.finish(item_id)
        self._wake.set()

    def stop(self) -> None:
        self._resampler, self._resampling_item = None, None
        self.buffer.stop()
        self._wake.set()

    def cue(self, cue: Cue) -> None:
        self.cues_played.append(cue)
        self.buffer.enqueue(None, self._cues[cue])
        self._wake.set()

    def played_ms_now(self, item_id: str) -> int:
        return self.buffer.played_ms_now(item_id)

    async def run(self, post: Post) -> None:
        self._post = post
        loop = asyncio.get_running_loop()
        frames = self.rate_hz * self.buffer_ms // 1000
        out = None
        if self.path is not None:
            out = wave.open(str(self.path), "wb")  # noqa: SIM115 (closed in finally)
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(self.rate_hz)
        try:
            started, chunks = loop.time(), 0
            while True:
                if self.speed > 0:
                    chunks += 1
                    delay = started + chunks * self.buffer_ms / 1000 / self.speed - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    elif delay < -0.2:
                        started, chunks = loop.time(), 0
                elif not self.buffer.busy:
                    self._wake.clear()
                    await self._wake.wait()
                else:
                    await asyncio.sleep(0)
                data, events = self.buffer.render(frames, now_s())
                if out is not None:
                    out.writeframes(data)
                for event in events:
                    post(event)
        finally:
            if out is not None:
                out.close()


def synthetic_speech(
    duration_ms: int, rate_hz: int = MODEL_RATE_HZ, pitch_hz: float = 130.0
) -> Samples:
    """A voiced, speech-like signal: a harmonic-rich buzz shaped into ~4 syllables a second.

    webrtcvad calls it speech; used when espeak-ng is not installed.
    """
    n = rate_hz * duration_ms // 1000
    t = np.arange(n, dtype=np.float64) / rate_hz
    vibrato = pitch_hz * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(vibrato) / rate_hz
    buzz = sum(np.sin(k * phase) / k * (1.5 if 3 <= k <= 6 else 1.0) for k in range(1, 20))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t - math.pi / 2) * 0.6 + 0.6, 0, 1) ** 0.7
    signal = buzz * syllables
    peak = float(np.max(np.abs(signal))) or 1.0
    out: Samples = (signal / peak * 12000).astype(np.int16)
    return out


def write_wav(path: Path | str, samples: Samples, rate_hz: int) -> Path:
    """Write mono PCM16 ``samples`` to ``path``."""
    path = Path(path)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(samples.astype(np.int16).tobytes())
    return path


def speech_wav(text: str, path: Path | str, rate_hz: int = MODEL_RATE_HZ) -> Path:
    """Speak ``text`` into a mono PCM16 WAV at ``rate_hz`` (espeak-ng + sox when installed).

    Falls back to ``synthetic_speech`` (about 70 ms per character) without espeak-ng,
    so tests still get something webrtcvad calls voiced.
    """
    path = Path(path)
    espeak, sox = shutil.which("espeak-ng"), shutil.which("sox")
    if espeak and sox:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "espeak.wav"
            try:
                subprocess.run([espeak, "-w", str(raw), text], check=True, capture_output=True)
                subprocess.run(
                    [
                        sox,
                        str(raw),
                        "-r",
                        str(rate_hz),
                        "-c",
                        "1",
                        "-b",
                        "16",
                        "-e",
                        "signed",
                        str(path),
                    ],
                    check=True,
                    capture_output=True,
                )
                return path
            except (OSError, subprocess.CalledProcessError) as exc:
                log.warning("espeak-ng/sox failed (%s); using synthetic speech", exc)
    duration_ms = max(300, 70 * len(text))
    return write_wav(path, synthetic_speech(duration_ms, rate_hz), rate_hz)


def read_pcm(path: Path | str, rate_hz: int = MODEL_RATE_HZ) -> bytes:
    """A WAV file as PCM16 mono bytes at ``rate_hz`` (what ``Speaker.play`` takes)."""
    return read_wav(Path(path), rate_hz).tobytes()


# --------------------------------------------------------------------------- helpers


async def until(
    condition: Callable[[], bool], timeout_s: float = 30.0, *, interval_s: float = 0.01
) -> None:
    """Wait until ``condition()`` holds, checking every ``interval_s``.

    ``timeout_s`` only guards against a hang (tests never fail on a wall-clock
    threshold): past it, ``AssertionError``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached within {timeout_s:g} s")
        await asyncio.sleep(interval_s)


@contextlib.contextmanager
def mock_pins(*, pwm: bool = True) -> Iterator[Any]:
    """gpiozero's ``MockFactory`` as the default pin factory; yields it.

    ``pwm``: pins take PWM (a dimmable LED), as on a Pi.  Afterwards every pin is
    released, the factory closed and the previous default restored.
    """
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    previous = Device.pin_factory
    factory = MockFactory(pin_class=MockPWMPin) if pwm else MockFactory()
    Device.pin_factory = factory
    try:
        yield factory
    finally:
        factory.reset()
        factory.close()
        Device.pin_factory = previous


async def _forever() -> None:
    await asyncio.Event().wait()


# --------------------------------------------------------------------------- remote control


class ControlSocket:
    """A ``Trigger`` whose button and microphone a harness drives over a Unix socket.

    One command per line, each answered ``ok`` or ``error: <why>``: ``press``,
    ``release``, ``say <wav path>``, ``silence <ms>``, ``unplug <seconds>`` (the
    microphone, when it is a ``WavMicrophone``), ``ping``. A separate process (``bench
    soak``) can so drive a real ``hark run --fake-audio`` (``$HARK_FAKE_CONTROL``) or
    ``hark run --control-socket PATH`` (the real sound card): nothing else reaches in.
    """

    def __init__(self, path: Path | str, mic: WavMicrophone | None) -> None:
        self.path = Path(path)
        self.mic = mic
        self._post: Post | None = None
        self._pressed_at: float | None = None

    async def run(self, post: Post) -> None:
        self._post = post
        self.path.unlink(missing_ok=True)  # a previous app's (a reload) or a stale one
        server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        try:
            await _forever()
        finally:
            server.close()
            self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write((self.command(line.decode("utf-8", "replace")) + "\n").encode())
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def command(self, line: str) -> str:
        """Carry out one command line; the answer line."""
        verb, _, arg = line.strip().partition(" ")
        post = self._post
        try:
            if post is None:
                return "error: not running"
            if verb == "press":
                self._pressed_at = time.monotonic()
                post(ButtonPressed())
            elif verb == "release":
                held = time.monotonic() - (self._pressed_at or time.monotonic())
                self._pressed_at = None
                post(ButtonReleased(held_s=held))
            elif verb in ("say", "silence", "unplug") and self.mic is None:
                return "error: the microphone is a real one here"
            elif verb == "say" and self.mic is not None:
                self.mic.say(arg)
            elif verb == "silence" and self.mic is not None:
                self.mic.silence(int(arg))
            elif verb == "unplug" and self.mic is not None:
                self.mic.unplug(float(arg))
            elif verb != "ping":
                return f"error: unknown command {verb!r}"
        except (OSError, ValueError, EOFError, wave.Error) as exc:
            return f"error: {exc}"
        return "ok"


# --------------------------------------------------------------------------- null and recording


class NullLink:
    """A link with no server: up (``LinkUp``) as soon as it is asked to connect; what is
    sent goes nowhere.  ``post`` is the app's once ``run`` began (a test can play the
    server with it)."""

    session_id = "sess_fake"

    def __init__(self) -> None:
        self.post: Post | None = None
        self._want_up = False

    async def run(self, post: Post) -> None:
        self.post = post
        if self._want_up:
            post(LinkUp(self.session_id, None))
        await _forever()

    def connect(self) -> None:
        if self.post is None:
            self._want_up = True
        else:
            self.post(LinkUp(self.session_id, None))

    def disconnect(self, reason: str) -> None:
        pass

    def rotate(self) -> None:
        pass

    def send(self, command: WireCommand) -> None:
        pass


class RecordingLink(NullLink):
    """A ``NullLink`` that keeps what it was told: ``sent`` (wire commands), ``calls``
    (``"connect"``, ``"disconnect:<reason>"``, ``"rotate"``)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[WireCommand] = []
        self.calls: list[str] = []

    def connect(self) -> None:
        self.calls.append("connect")
        super().connect()

    def disconnect(self, reason: str) -> None:
        self.calls.append(f"disconnect:{reason}")

    def rotate(self) -> None:
        self.calls.append("rotate")

    def send(self, command: WireCommand) -> None:
        self.sent.append(command)


class NullMicrophone:
    """Hears nothing, posts nothing (``hark say``: a typed turn needs no capture)."""

    async def run(self, post: Post) -> None:
        await _forever()

    def set_demand(self, demand: MicDemand) -> None:
        """Nothing is posted either way."""


class RecordingMicrophone(NullMicrophone):
    """Hears nothing (a test posts the frames) and keeps what the app asked of it.

    ``demands``: every ``set_demand``, in order; ``runs``: how often it was started;
    the first ``crashes`` runs fail with ``OSError``, like a device unplugged;
    ``cancelled`` once the app stopped it.
    """

    def __init__(self, crashes: int = 0) -> None:
        self.crashes = crashes
        self.runs = 0
        self.cancelled = False
        self.demands: list[MicDemand] = []

    def set_demand(self, demand: MicDemand) -> None:
        self.demands.append(demand)

    async def run(self, post: Post) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise OSError("device unplugged")
        try:
            await _forever()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


class NullSpeaker:
    """Plays nothing and drains at once: ``finish`` reports the item heard in full;
    ``stop`` reports the item last played, interrupted after ``heard_at_stop`` of it."""

    def __init__(self, *, volume: float = 1.0, heard_at_stop: float = 1.0) -> None:
        self.heard_at_stop = heard_at_stop
        self._volume = Volume(volume)
        self._post: Post | None = None
        self._bytes: dict[str, int] = {}  # received per item
        self._last: str | None = None

    @property
    def volume(self) -> float:
        return self._volume.level

    @volume.setter
    def volume(self, value: float) -> None:
        self._volume.set(value)

    async def run(self, post: Post) -> None:
        self._post = post
        await _forever()

    def received_ms(self, item_id: str) -> int:
        return self._bytes.get(item_id, 0) // (MODEL_RATE_HZ * 2 // 1000)

    def play(self, item_id: str, pcm: bytes) -> None:
        self._bytes[item_id] = self._bytes.get(item_id, 0) + len(pcm)
        self._last = item_id

    def finish(self, item_id: str) -> None:
        if self._post is not None:
            self._post(PlaybackStopped(item_id, self.received_ms(item_id), interrupted=False))

    def stop(self) -> None:
        item = self._last
        if self._post is not None and item is not None:
            heard = int(self.received_ms(item) * self.heard_at_stop)
            self._post(PlaybackStopped(item, heard, interrupted=True))

    def cue(self, cue: Cue) -> None:
        pass


class RecordingSpeaker(NullSpeaker):
    """A ``NullSpeaker`` that keeps what it was told: ``played`` (item, pcm) chunks,
    ``cues``, ``finished`` items and the number of ``stops``."""

    def __init__(self, *, volume: float = 1.0, heard_at_stop: float = 1.0) -> None:
        super().__init__(volume=volume, heard_at_stop=heard_at_stop)
        self.played: list[tuple[str, bytes]] = []
        self.cues: list[Cue] = []
        self.finished: list[str] = []
        self.stops = 0

    def play(self, item_id: str, pcm: bytes) -> None:
        self.played.append((item_id, pcm))
        super().play(item_id, pcm)

    def finish(self, item_id: str) -> None:
        self.finished.append(item_id)
        super().finish(item_id)

    def stop(self) -> None:
        self.stops += 1
        super().stop()

    def cue(self, cue: Cue) -> None:
        self.cues.append(cue)


class RecordingSpotter:
    """A ``ports.WordSpotter`` that keeps what it was armed for and hears on cue:
    ``hear(event)`` makes the next ``process`` call report it at the end of its audio."""

    def __init__(self, words: frozenset[Word] = frozenset({"wake", "stop"})) -> None:
        self.words = words
        self.arms: list[frozenset[Word]] = []
        self._armed: frozenset[Word] = frozenset()
        self._cued: list[WakeWordHeard | StopWordHeard] = []

    @property
    def armed(self) -> frozenset[Word]:
        return self._armed

    def arm(self, words: frozenset[Word]) -> None:
        self._armed = words & self.words
        self.arms.append(self._armed)

    def hear(self, event: WakeWordHeard | StopWordHeard) -> None:
        self._cued.append(event)

    def process(self, pcm16k: bytes) -> list[tuple[int, WakeWordHeard | StopWordHeard]]:
        heard, self._cued = self._cued, []
        return [(len(pcm16k) // 2, e) for e in heard]


class NullTrigger:
    """No button: never posts."""

    async def run(self, post: Post) -> None:
        await _forever()


class FakeButton:
    """A button the test presses: ``fire(*events)`` posts them from a thread of its own,
    as gpiozero's callbacks do, and returns once they are posted."""

    def __init__(self) -> None:
        self._post: Post | None = None

    async def run(self, post: Post) -> None:
        self._post = post
        await _forever()

    def fire(self, *events: Event) -> None:
        post = self._post
        assert post is not None, "the app has not started the button yet"
        thread = threading.Thread(target=lambda: [post(e) for e in events])
        thread.start()
        thread.join()


class RecordingIndicator:
    """LED patterns in the order shown (``shown``); ``closed`` once released."""

    def __init__(self) -> None:
        self.shown: list[LedPattern] = []
        self.closed = False

    def show(self, pattern: LedPattern) -> None:
        self.shown.append(pattern)

    def close(self) -> None:
        self.closed = True


class RecordingNotifier:
    """What systemd would have been told, in order: ``messages`` as sd_notify lines
    (``"READY=1"``, ``"STATUS=idle"``), ``at`` the monotonic time of each.

    ``statuses`` are the STATUS texts; ``times("watchdog")`` when each ping came.
    """

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.at: list[float] = []

    def _note(self, line: str) -> None:
        self.messages.append(line)
        self.at.append(time.monotonic())

    def ready(self) -> None:
        self._note("READY=1")

    def reloading(self) -> None:
        self._note("RELOADING=1")

    def status(self, text: str) -> None:
        self._note(f"STATUS={text}")

    def watchdog(self) -> None:
        self._note("WATCHDOG=1")

    def stopping(self) -> None:
        self._note("STOPPING=1")

    @property
    def statuses(self) -> list[str]:
        return [m.removeprefix("STATUS=") for m in self.messages if m.startswith("STATUS=")]

    def times(self, what: str) -> list[float]:
        """When each ``what`` (``"ready"``, ``"watchdog"``, ``"stopping"``, …) was sent."""
        line = f"{what.upper()}=1"
        return [t for m, t in zip(self.messages, self.at, strict=True) if m == line]


class RecordingSwitch:
    """An output for a tool to switch: ``is_active`` now, ``switched`` every change asked."""

    def __init__(self, active: bool = False) -> None:
        self.is_active = active
        self.switched: list[bool] = []

    def on(self) -> None:
        self.is_active = True
        self.switched.append(True)

    def off(self) -> None:
        self.is_active = False
        self.switched.append(False)


__all__ = [
    "FakeButton",
    "NullIndicator",
    "NullLink",
    "NullMicrophone",
    "NullNotifier",
    "NullSpeaker",
    "NullTrigger",
    "RecordingIndicator",
    "RecordingLink",
    "RecordingMicrophone",
    "RecordingNotifier",
    "RecordingSpeaker",
    "RecordingSwitch",
    "WavMicrophone",
    "WavSpeaker",
    "mock_pins",
    "read_pcm",
    "speech_wav",
    "synthetic_speech",
    "until",
    "write_wav",
]


if TYPE_CHECKING:  # the fakes satisfy the ports they stand in for
    _mic: ports.Microphone = WavMicrophone()
    _speaker: ports.Speaker = WavSpeaker()
    _links: list[ports.Link] = [NullLink(), RecordingLink()]
    _mics: list[ports.Microphone] = [NullMicrophone(), RecordingMicrophone()]
    _speakers: list[ports.Speaker] = [NullSpeaker(), RecordingSpeaker()]
    _triggers: list[ports.Trigger] = [NullTrigger(), FakeButton()]
    _indicators: list[ports.Indicator] = [NullIndicator(), RecordingIndicator()]
    _notifiers: list[ports.ServiceNotifier] = [NullNotifier(), RecordingNotifier()]
    _switch: ports.Switch = RecordingSwitch()
