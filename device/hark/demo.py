"""``hark demo`` and ``hark say``: whole turns through the daemon's real pipeline.

The demo starts ``hark_sim`` (and the real key backend in front of it when installed)
on loopback and plays a spoken question through the WAV-backed mic and speaker;
``say`` sends a typed turn and plays the reply. This is the one place besides the CLI
that picks ``hark.testing``'s fakes (``build_with_fake_audio`` is ``hark run
--fake-audio``). It must not wire adapters itself: ``hark.service.wiring.build_app`` does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hark.service.wiring import Daemon, NullIndicator, build_app, cue_files

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hark.config import Config
    from hark.events import LedPattern
    from hark.ports import Indicator, Link, Microphone, Notifier, Speaker, Trigger

log = logging.getLogger(__name__)

DEMO_QUESTION = "Hello hark. What is the tallest mountain on the moon?"


def build_with_fake_audio(
    config: Config,
    token: str,
    notifier: Notifier | None,
    *,
    mic: Microphone | None = None,
    speaker: Speaker | None = None,
    triggers: Sequence[Trigger] | None = None,
    indicator: Indicator | None = None,
    link: Link | None = None,
    pin_factory: Any = None,
) -> Daemon:
    """``build_app`` with WAV-backed silence in and a discarding speaker (tests, benchmarks);
    the wake/stop word spotter the config asks for runs on the fake mic's audio.

    ``$HARK_FAKE_SPEED`` paces both fakes (default 1, real time); ``$HARK_FAKE_CONTROL``
    names a Unix socket through which another process presses the button and speaks
    (``hark.testing.ControlSocket``), in place of the configured GPIO button.
    """
    import os

    from hark.service.wiring import make_spotter
    from hark.testing import ControlSocket, WavMicrophone, WavSpeaker

    speed = fake_speed()
    wav_mic = None
    spotter = None
    if mic is None:
        spotter = make_spotter(config)
        mic = wav_mic = WavMicrophone(
            vad_aggressiveness=config.vad.aggressiveness, speed=speed, spotter=spotter
        )
    if speaker is None:
        speaker = WavSpeaker(
            None, volume=config.audio.volume, cue_files=cue_files(config), speed=speed
        )
    control = os.environ.get("HARK_FAKE_CONTROL")
    if control and wav_mic is not None and triggers is None:
        triggers = [ControlSocket(control, wav_mic)]
    return build_app(
        config,
        token,
        notifier,
        mic=mic,
        speaker=speaker,
        triggers=triggers,
        indicator=indicator,
        link=link,
        pin_factory=pin_factory,
        spotter=spotter,
    )


def fake_speed() -> float:
    """``$HARK_FAKE_SPEED`` as a pace factor; ValueError naming a bad value."""
    import os

    text = os.environ.get("HARK_FAKE_SPEED", "1")
    try:
        speed = float(text)
    except ValueError:
        speed = -1.0
    if not 0 < speed <= 100:
        raise ValueError(f"HARK_FAKE_SPEED must be a number in (0, 100], got {text!r}")
    return speed


def build_with_control_socket(
    config: Config, token: str, notifier: Notifier | None, *, socket_path: str
) -> Daemon:
    """``build_app`` with the real sound card and, for a button, a harness's Unix socket
    (``hark run --control-socket PATH``: a soak through a real PulseAudio)."""
    from hark.testing import ControlSocket

    return build_app(config, token, notifier, triggers=[ControlSocket(socket_path, None)])


@contextlib.contextmanager
def _demo_backend(sim: Any, tmp: Path) -> Iterator[tuple[str, str, str]]:
    """The real key backend on loopback in front of ``hark_sim``; yields (url, token, label).

    Without the backend's dependencies the device asks the simulator's own key endpoint.
    """
    import threading
    import time

    try:
        import uvicorn
        from hark_backend.app import Settings as BackendSettings
        from hark_backend.app import create_app
        from hark_backend.httpserver import server_config
        from hark_backend.registry import Registry
    except ImportError:
        yield f"{sim.base_url}/realtime/client_secrets", sim.api_key, "hark_sim's key endpoint"
        return
    db_url = f"sqlite:///{tmp / 'backend.db'}"
    registry = Registry(db_url)
    try:
        registry.init_schema()
        token = registry.add("demo", group=None, now_s=time.time())
    finally:
        registry.close()
    app = create_app(
        BackendSettings(db_url=db_url, openai_base_url=sim.base_url, openai_api_key=sim.api_key)
    )
    import socket

    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(server_config(app))  # as ``hark-backend serve`` runs it
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="demo-backend", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the demo's key backend did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1/realtime/client_secrets", token, "hark-backend"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


class _PrintingIndicator:
    """The demo's LED: prints each pattern change."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self._say = say
        self.pattern = "off"

    def show(self, pattern: LedPattern) -> None:
        if pattern != self.pattern:
            self.pattern = pattern
            self._say(f"LED     {pattern}")

    def close(self) -> None:
        self.show("off")


def run_demo(out: Path, text: str | None, speed: float) -> bool:
    """A whole spoken turn: sim (+ backend) on loopback, WAV mic and speaker, the real pipeline."""
    import asyncio
    import secrets
    import shutil
    import tempfile
    import time

    from hark_sim import SimConfig, start_sim

    from hark.config import BackendConfig, Config, HistoryConfig, RealtimeConfig
    from hark.service.notify import setup_logging
    from hark.testing import WavMicrophone, WavSpeaker, speech_wav

    setup_logging("warning")
    out.mkdir(parents=True, exist_ok=True)
    text = text or DEMO_QUESTION
    t0 = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - t0:6.2f} s] {message}", flush=True)

    print("hark demo: one spoken turn through the real pipeline, offline (no key, no sound card)")
    question = speech_wav(text, out / "question.wav")
    voice = "espeak-ng" if shutil.which("espeak-ng") else "synthetic speech"
    say(f"question  {text!r} -> {question} ({voice})")
    api_key = "sk-demo-" + secrets.token_hex(8)
    factor = 1.0 / speed if speed > 0 else 0.0
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_sim(SimConfig(api_key=api_key, brain="parrot", realtime_factor=factor)) as sim,
        _demo_backend(sim, Path(tmp)) as (backend_url, token, label),
    ):
        say(f"hark_sim  {sim.ws_url} (parrot brain: replies with what it heard)")
        say(f"keys      {label} at {backend_url}")
        config = Config(
            backend=BackendConfig(url=backend_url),
            realtime=RealtimeConfig(url=sim.ws_url),
            history=HistoryConfig(enabled=False),
        )
        mic = WavMicrophone(speed=speed)
        speaker = WavSpeaker(out / "reply.wav", speed=speed)
        daemon = build_app(
            config,
            token,
            None,
            mic=mic,
            speaker=speaker,
            triggers=[],
            indicator=_PrintingIndicator(say),
        )
        try:
            ok = asyncio.run(_demo_turn(daemon, mic, question, say))
        finally:
            daemon.close()
    print()
    for item in daemon.history.items:
        if item.type == "message" and item.role in ("user", "assistant") and item.text:
            mark = " (interrupted)" if item.heard_ms is not None else ""
            print(f"  {item.role:>9}: {item.text}{mark}")
    print(f"\nreply written to {out / 'reply.wav'}")
    return ok


async def _demo_turn(daemon: Daemon, mic: Any, question: Path, say: Callable[[str], None]) -> bool:
    """Press, speak the question, release, wait for the reply to finish playing; print phases."""
    import asyncio
    import time
    import wave

    from hark.audio.capture import FRAME_MS
    from hark.events import (
        AudioDelta,
        ButtonPressed,
        ButtonReleased,
        CommitAudio,
        MicFrame,
        PlaybackStopped,
        ShutdownRequested,
        UserTranscript,
    )

    app = daemon.app
    marks: dict[str, float] = {}
    last_phase = [""]

    def watch(event: Any, commands: Sequence[Any]) -> None:
        now = time.monotonic()
        phase = app.conversation.phase.value
        if phase != last_phase[0]:
            last_phase[0] = phase
            say(f"phase   {phase}")
        if isinstance(event, AudioDelta) and "first_audio" not in marks:
            marks["first_audio"] = now
            say("reply   first audio received")
        if isinstance(event, UserTranscript):
            say(f"heard   {event.transcript!r}")
        if isinstance(event, PlaybackStopped) and event.item_id is not None:
            marks["played"] = now
        if any(isinstance(c, CommitAudio) for c in commands):
            marks["commit"] = now

    app.add_listener(watch)
    started = time.monotonic()
    await app.start()
    say(f"ready   (READY=1 after {1000 * (time.monotonic() - started):.0f} ms)")
    try:
        # State, not an event: LinkUp may have been handled before start() returned.
        await app.wait_for(lambda: app.conversation.connected, 20)
        say("link    session open")
        app.post(ButtonPressed())
        pressed = time.monotonic()
        say("button  pressed (hold to talk)")
        # The mic posts one 20 ms frame per chunk: wait until the whole question (and
        # a little trailing silence) has been "heard", as a person holding the button would.
        with wave.open(str(question)) as w:
            question_ms = 1000 * w.getnframes() / w.getframerate()
        before = mic.frames_posted
        mic.say(question)
        wanted = before + int(question_ms / FRAME_MS) + 10
        await app.run_until(
            lambda e: isinstance(e, MicFrame) and mic.frames_posted >= wanted,
            10 + 2 * question_ms / 1000,
        )
        say(f"mic     spoke {question_ms / 1000:.2f} s of audio")
        done = app.conversation.turns_completed
        app.post(ButtonReleased(held_s=time.monotonic() - pressed))
        released = time.monotonic()
        say("button  released")
        await app.wait_turn_completed(60, after=done)
    except TimeoutError:
        say("FAILED: no complete reply within the time limit")
        return False
    finally:
        app.post(ShutdownRequested())
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await app.wait_stopped()
    print("\ntimings")
    if "commit" in marks:
        print(f"  release -> commit on the wire   {1000 * (marks['commit'] - released):7.1f} ms")
    if "first_audio" in marks:
        print(
            f"  release -> first reply audio    {1000 * (marks['first_audio'] - released):7.1f} ms"
        )
    if "played" in marks and "first_audio" in marks:
        print(f"  reply playback                  {marks['played'] - marks['first_audio']:7.2f} s")
    print(f"  whole demo                      {time.monotonic() - started:7.2f} s")
    return "first_audio" in marks


@dataclass(frozen=True)
class SayFailed:
    """Why ``hark say`` got no reply; ``config`` when the fix is in the config or token."""

    reason: str
    config: bool = False


def say(config: Config, token: str, text: str, *, fake_audio: bool = False) -> SayFailed | None:
    """Send a typed turn; the reply plays on the configured speaker and its text is printed.

    Returns None once the reply has played, or why not as soon as the pipeline says so
    (a refused device, a missing speaker, a failed reply): no waiting out a timeout.
    """
    import asyncio

    from hark.testing import NullMicrophone  # a typed turn needs no capture

    build = build_with_fake_audio if fake_audio else build_app
    daemon = build(
        config, token, None, mic=NullMicrophone(), triggers=[], indicator=NullIndicator()
    )
    try:
        failed = asyncio.run(_say(daemon, text, config.session.response_timeout_s))
    finally:
        daemon.close()
    for item in daemon.history.items:
        if item.type == "message" and item.role == "assistant" and item.text:
            print(item.text)
    return failed


async def _say(daemon: Daemon, text: str, timeout_s: float) -> SayFailed | None:
    import asyncio

    from hark.conversation import Phase
    from hark.events import LinkFailed, ShutdownRequested, TextRequested

    app = daemon.app
    conversation = app.conversation
    failed: list[SayFailed] = []

    def watch(event: Any, commands: Sequence[Any]) -> None:
        # The core's ERROR phase is every failure a person must hear about: the link
        # refused or unreachable, a device lost, no or a failed reply. The daemon
        # retries those; a one-shot command stops at the first and says why.
        if failed or conversation.phase is not Phase.ERROR:
            return
        fix_in_config = isinstance(event, LinkFailed) and event.kind in ("unauthorised", "config")
        failed.append(SayFailed(conversation.last_error or "failed", fix_in_config))

    app.add_listener(watch)
    await app.start()
    try:
        done = conversation.turns_completed
        app.post(TextRequested(text))
        # The core gives up on a reply after timeout_s; this only backs it up.
        backstop_s = timeout_s + 60
        await app.wait_for(lambda: bool(failed) or conversation.turns_completed > done, backstop_s)
    except TimeoutError:
        return SayFailed(f"no reply within {backstop_s:g} s")
    finally:
        app.post(ShutdownRequested())
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await app.wait_stopped()
    return failed[0] if failed else None
