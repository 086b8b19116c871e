"""Whole-daemon rig: ``build_app`` with the real adapters, a private PulseAudio, hark_sim.

It must not replace any production adapter: the sound card (PyAudio through the rig's
PulseAudio), GPIO (gpiozero's MockFactory), the WebSocket link and the key fetch are
the real ones; only the far side (OpenAI) is the simulator's parrot brain.

The daemon runs in the test process: PortAudio is initialised afresh each time the
soundcard adapters open a stream, so setting the rig's env first is enough, and the
MockFactory pins can be pressed from the test (a subprocess could not share them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hark.service.wiring import build_app
from hark.testing import RecordingNotifier, mock_pins, until

from tests.audio_rig import PulseRig, pulse_available

log = logging.getLogger(__name__)

BUTTON_PIN = 17
LED_PIN = 27
needs_pulse = pytest.mark.skipif(not pulse_available(), reason="pulseaudio missing")


@pytest.fixture
def sim() -> Iterator[Any]:
    """hark_sim on an ephemeral loopback port, parrot brain, no added delay."""
    from hark_sim import SimConfig, start_sim

    with start_sim(SimConfig(api_key="sk-test-e2e", brain="parrot", realtime_factor=0)) as handle:
        yield handle


@pytest.fixture
def paced_sim() -> Iterator[Any]:
    """hark_sim streaming reply audio at twice real time (still arriving while heard)."""
    from hark_sim import SimConfig, start_sim

    with start_sim(SimConfig(api_key="sk-test-e2e", brain="parrot", realtime_factor=0.5)) as handle:
        yield handle


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PulseRig]:
    """A private PulseAudio; PortAudio in this process talks to it."""
    with PulseRig(tmp_path) as r:
        for key, value in r.env.items():
            monkeypatch.setenv(key, value)
        yield r


@pytest.fixture
def factory() -> Iterator[Any]:
    """gpiozero's MockFactory with PWM pins, installed as the default and restored after."""
    with mock_pins() as mock:
        yield mock


def write_config(sim: Any, tmp: Path, extra: str = "", *, device: str = "pulse") -> Path:
    """A daemon config pointing at the sim, with the sim's key as the 0600 device token."""
    token = tmp / "token"
    token.write_text(sim.api_key + "\n")
    token.chmod(0o600)
    path = tmp / "hark.toml"
    path.write_text(
        f'[backend]\nurl = "{sim.base_url}/realtime/client_secrets"\ntoken_file = "token"\n'
        f'[realtime]\nurl = "{sim.ws_url}"\n'
        "[history]\nenabled = false\n"
        f'[audio]\ninput_device = "{device}"\noutput_device = "{device}"\ncues_enabled = false\n'
        + extra
    )
    return path


class Running:
    """A running daemon: its app, the events it saw (with monotonic times), the pins."""

    def __init__(self, daemon: Any, factory: Any, notes: RecordingNotifier) -> None:
        self.daemon = daemon
        self.app = daemon.app
        self.factory = factory
        self.notes = notes
        self.events: list[tuple[float, Any]] = []
        self.commands: list[tuple[float, Any]] = []
        self.mic_frames = 0
        self.app.add_listener(self._observe)

    def _observe(self, event: Any, commands: Any) -> None:
        now = time.monotonic()
        if type(event).__name__ == "MicFrame":
            self.mic_frames += 1
        else:
            self.events.append((now, event))
        self.commands.extend((now, c) for c in commands)

    def of(self, name: str) -> list[Any]:
        return [e for _, e in self.events if type(e).__name__ == name]

    async def mic_flowing(self, give_up: Callable[[], bool] = lambda: False) -> None:
        """Wait until the capture stream (opened or reopened) has delivered two seconds.

        The rig's microphone is a PulseAudio null sink's monitor, which renders in 2 s
        blocks until a stream asks for less: a capture stream's first callback comes
        ~1.8 s after it starts, and what was played into the sink meanwhile never
        reaches it. A hardware-timed source (``module-sine-source``, an ALSA card) has
        no such gap, so this is the rig's, not the product's: speak once it flows.
        Push to talk posts no frames while idle, so count what the device delivered.
        """
        mic = self.app.mic  # frames_seen counts from the stream's latest (re)open
        await until(lambda: mic.frames_seen >= 2 * (mic.opened_rate_hz or 48_000) or give_up())

    def press(self) -> None:
        self.factory.pin(BUTTON_PIN).drive_low()

    def release(self) -> None:
        self.factory.pin(BUTTON_PIN).drive_high()


@contextlib.asynccontextmanager
async def running_daemon(path: Path, factory: Any) -> AsyncIterator[Running]:
    """Build the daemon from ``path`` with the real adapters and run it until the block ends."""
    from hark.config import parse

    config = parse(path.read_text(), base_dir=path.parent)
    token = (path.parent / "token").read_text().strip()
    notes = RecordingNotifier()
    daemon = build_app(config, token, notes, pin_factory=factory)
    running = Running(daemon, factory, notes)
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: any(m.startswith("STATUS=idle") for m in notes.messages) or task.done())
        if task.done():
            task.result()
        await running.mic_flowing(lambda: task.done())
        yield running
    finally:
        daemon.shutdown()
        try:
            await asyncio.wait_for(asyncio.shield(task), 10)
        except Exception:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def sent_of(session: Any, kind: str) -> list[dict[str, Any]]:
    """Client events of type ``kind`` the sim received in ``session``."""
    return [e for e in list(session.received) if e.get("type") == kind]


def committed_audio(session: Any) -> list[bytes]:
    """The audio of each committed user turn (appends since the last commit or clear)."""
    turns: list[bytes] = []
    buffer = bytearray()
    for event in list(session.received):
        kind = event.get("type")
        if kind == "input_audio_buffer.append":
            buffer += base64.b64decode(event["audio"])
        elif kind == "input_audio_buffer.clear":
            buffer.clear()
        elif kind == "input_audio_buffer.commit":
            turns.append(bytes(buffer))
            buffer.clear()
    return turns


def as_int16(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype=np.int16)


def match(recorded: np.ndarray, reference: np.ndarray) -> float:
    """Normalised correlation of ``reference`` at its best place in ``recorded`` (either leads)."""
    from tests.audio_rig import best_alignment

    pad = np.zeros(len(reference), dtype=np.int16)
    return best_alignment(np.concatenate([pad, recorded, pad]), reference)[1]
