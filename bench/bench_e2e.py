"""Whole-daemon figures through a private PulseAudio and hark_sim (parrot, no added delay).

It must not change production code or assert anything: the daemon is ``build_app`` with
the real adapters (PyAudio on the rig's null sinks, GpioButton on gpiozero's
MockFactory, the real WebSocket link).  The instruments are outside it: a
timestamping list swapped into the sim's session record (the sim is not
production), an app listener, and a wrapper on the speaker's PlaybackBuffer
instance's ``render`` (called from PortAudio's callback when it fills the device).
Everything runs in one process and reads ``time.monotonic()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TURNS = 10
PHRASE = "turn on the kitchen light please"


class _TimedList(list[dict[str, Any]]):
    """A list that notes ``time.monotonic()`` when each client event is appended."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        super().__init__(items)
        self.times: list[tuple[float, str]] = []

    def append(self, item: dict[str, Any]) -> None:
        self.times.append((time.monotonic(), str(item.get("type"))))
        super().append(item)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _line(name: str, values_ms: list[float], target: str) -> None:
    if not values_ms:
        print(f"   {name}: no samples")
        return
    print(
        f"   {name}: p50 {_pct(values_ms, 0.5):.1f} ms, p95 {_pct(values_ms, 0.95):.1f} ms "
        f"(n={len(values_ms)}; target {target})"
    )


async def _wait(condition: Callable[[], bool]) -> None:
    from hark.testing import until

    await until(condition, interval_s=0.02)  # the figures come from timestamps, not this poll


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _config_text(sim: Any) -> str:
    return (
        f'[backend]\nurl = "{sim.base_url}/realtime/client_secrets"\ntoken_file = "token"\n'
        f'[realtime]\nurl = "{sim.ws_url}"\n[history]\nenabled = false\n'
        '[audio]\ninput_device = "pulse"\noutput_device = "pulse"\ncues_enabled = false\n'
    )


async def _turns(sim: Any, rig: Any, tmp: Path, speech: Path) -> None:
    from hark.config import parse
    from hark.service.wiring import build_app
    from hark.testing import NullNotifier, mock_pins

    (tmp / "token").write_text(sim.api_key)
    (tmp / "token").chmod(0o600)
    config = parse(_config_text(sim), base_dir=tmp)
    pins = contextlib.ExitStack()
    factory = pins.enter_context(mock_pins(pwm=False))
    daemon = build_app(config, sim.api_key, NullNotifier(), pin_factory=factory)
    app: Any = daemon.app  # the benchmark reaches into the sound card (its render, _pending)
    events: list[tuple[float, Any]] = []

    def observe(event: Any, _commands: Any) -> None:
        if type(event).__name__ != "MicFrame":
            events.append((time.monotonic(), event))

    app.add_listener(observe)
    task = asyncio.create_task(daemon.run())
    pin = factory.pin(17)
    renders: list[tuple[float, bool, bool]] = []
    commit_ms: list[float] = []
    first_frame_ms: list[float] = []
    stop_ms: list[float] = []
    faded_ms: list[float] = []

    def of(name: str, since: float) -> list[tuple[float, Any]]:
        return [(t, e) for t, e in events if t >= since and type(e).__name__ == name]

    try:
        await _wait(lambda: bool(sim.sessions) and app.speaker.frames_rendered > 24_000)
        buf = app.speaker._pending  # the instance PortAudio's callback renders from
        original = buf.render

        def render(frames: int, dac_start_s: float) -> Any:
            data, stopped = original(frames, dac_start_s)
            # (time, any sound in the chunk, its last quarter silent: audio has stopped)
            renders.append(
                (
                    time.monotonic(),
                    bool(data.strip(b"\x00")),
                    not data[-len(data) // 4 :].strip(b"\x00"),
                )
            )
            return data, stopped

        buf.render = render
        record = sim.sessions[-1]
        timed = _TimedList(record.received)
        record.received = timed
        for _ in range(TURNS):
            pin.drive_low()
            await asyncio.sleep(0.2)
            await asyncio.to_thread(rig.play_into_mic(speech).wait, 30)
            await asyncio.sleep(0.1)
            mark = len(timed.times)
            released = time.monotonic()
            pin.drive_high()
            await _wait(lambda: bool(of("AudioDelta", released)))  # noqa: B023 (awaited at once)
            delta_t, delta = of("AudioDelta", released)[0]
            await _wait(lambda: any(t > delta_t and a for t, a, _ in renders))  # noqa: B023 (awaited at once)
            first_frame_ms.append(next(t for t, a, _ in renders if t > delta_t and a) - delta_t)
            commits = [t for t, k in timed.times[mark:] if k == "input_audio_buffer.commit"]
            commit_ms.append(commits[0] - released)
            await _wait(lambda: app.speaker.played_ms_now(delta.item_id) > 600)  # noqa: B023 (awaited at once)
            pressed = time.monotonic()
            pin.drive_low()  # barge-in
            await _wait(lambda: bool(of("ButtonPressed", pressed)))  # noqa: B023 (awaited at once)
            detected = of("ButtonPressed", pressed)[0][0]
            await _wait(lambda: any(t > detected and not a for t, a, _ in renders))  # noqa: B023 (awaited at once)
            faded_ms.append(next(t for t, _, q in renders if t > detected and q) - detected)
            stop_ms.append(next(t for t, a, _ in renders if t > detected and not a) - detected)
            await asyncio.sleep(0.3)
            pin.drive_high()
            await asyncio.sleep(1.0)  # the short reply to the barge-in turn
    finally:
        daemon.shutdown()
        await asyncio.wait_for(task, 10)
        pins.close()
    _line("button release → commit received by the sim", [x * 1000 for x in commit_ms], "≤ 5")
    _line(
        "first audio delta dispatched → first audible frame rendered",
        [x * 1000 for x in first_frame_ms],
        "≤ 20",
    )
    _line(
        "barge-in press dispatched → fade-out rendered (playback stopped)",
        [x * 1000 for x in faded_ms],
        "≤ 30",
    )
    _line(
        "  (for comparison: → first all-silent chunk, one buffer later)",
        [x * 1000 for x in stop_ms],
        "-",
    )


def _proc_cpu_s(pid: int) -> float:
    """CPU seconds of every live thread of ``pid`` (schedstat: nanoseconds, not ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_ms_per_s(
    pids: list[int], seconds: float, during: Callable[[], None] | None = None
) -> list[float]:
    """CPU ms per wall second of each process over one shared window (``during`` runs in it)."""
    cpu0, wall0 = [_proc_cpu_s(pid) for pid in pids], time.monotonic()
    if during is not None:
        during()
    time.sleep(max(0.0, wall0 + seconds - time.monotonic()))
    wall = time.monotonic() - wall0
    return [(_proc_cpu_s(pid) - c) / wall * 1000 for pid, c in zip(pids, cpu0, strict=True)]


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_BARE_STREAMS = """
import ctypes, sys, threading, time
import pyaudio
pinned = set()
def pin():  # what hark.audio.soundcard does: keep the callback thread's Python state
    if threading.get_ident() not in pinned:
        pinned.add(threading.get_ident())
        ctypes.pythonapi.PyGILState_Ensure()
silence = bytes(960 * 2)
def mic(data, frames, info, status):
    pin()
    return (None, pyaudio.paContinue)
def speaker(data, frames, info, status):
    pin()
    return (silence, pyaudio.paContinue)
pa = pyaudio.PyAudio()
fmt = dict(rate=48000, channels=1, format=pyaudio.paInt16)
i = pa.open(input=True, frames_per_buffer=1920, stream_callback=mic, **fmt)
o = pa.open(output=True, frames_per_buffer=960, stream_callback=speaker, **fmt)
time.sleep(float(sys.argv[1]))
"""


def _commits(sim: Any) -> int:
    return sum(
        1 for s in sim.sessions for e in s.received if e.get("type") == "input_audio_buffer.commit"
    )


def _daemon_figures(sim: Any, rig: Any, tmp: Path, speech: Path) -> None:
    """A `hark run` subprocess: idle RSS and CPU, then hands-free turns, against bare streams.

    The conversation runs in ``vad`` mode so nothing but audio drives it: speech played
    into the mic opens each turn, local silence ends it, the parrot's reply plays.  The
    floor is a process holding the same two PortAudio streams with empty callbacks: what
    any PyAudio program pays PortAudio and PulseAudio's client library here.
    """
    (tmp / "token").write_text(sim.api_key)
    (tmp / "token").chmod(0o600)
    path, button_path = tmp / "hark.toml", tmp / "hark-button.toml"
    path.write_text(_config_text(sim) + '[trigger]\nmode = "vad"\n')
    button_path.write_text(_config_text(sim))
    from bench.bench_startup import _unit_environment

    # as hark.service runs it: one BLAS thread, two malloc arenas, no pydantic plugins
    env = {**os.environ, **_unit_environment(), **rig.env, "GPIOZERO_PIN_FACTORY": "mock"}
    turns = 6

    def converse() -> None:
        for _ in range(turns):
            rig.play_into_mic(speech).wait(30)
            time.sleep(4.0)  # end of turn (0.7 s of silence), the reply (~2 s), a pause

    run = [sys.executable, "-m", "hark.cli", "run", "--config"]
    # The floor runs alongside throughout, measured over the same windows: the machine's
    # state (PulseAudio's load, other tenants) then weighs on both alike.
    with _process([sys.executable, "-c", _BARE_STREAMS, "600"], env) as bare:
        with _process([*run, str(button_path)], env) as proc:
            time.sleep(4.0)
            button_idle_ms, floor_button_ms = _cpu_ms_per_s([proc.pid, bare.pid], 10.0)
            rss_mib = _rss_mib(proc.pid)
        with _process([*run, str(path)], env) as proc:
            time.sleep(4.0)
            idle_ms, floor_idle_ms = _cpu_ms_per_s([proc.pid, bare.pid], 10.0)
            commits_before = _commits(sim)
            talk_ms, floor_talk_ms = _cpu_ms_per_s([proc.pid, bare.pid], 0.0, converse)
            turns_done = _commits(sim) - commits_before
    print(f"   daemon idle VmRSS (`hark run`, PulseAudio devices): {rss_mib:.1f} MiB (target ≤ 50)")
    print(
        f"   daemon CPU per second of audio, whole process: idle {button_idle_ms:.1f} ms/s "
        f"(push to talk), {idle_ms:.1f} ms/s (hands-free); in conversation {talk_ms:.1f} ms/s "
        f"(hands-free, {turns_done} of {turns} turns committed)"
    )
    print(
        "   floor, the same two PyAudio streams with empty callbacks, same windows: "
        f"{floor_button_ms:.1f}, {floor_idle_ms:.1f}, {floor_talk_ms:.1f} ms/s"
    )
    print(
        f"   hark's own work (whole process - floor): in conversation "
        f"{talk_ms - floor_talk_ms:.1f} ms/s (target ≤ 10); idle "
        f"{button_idle_ms - floor_button_ms:.1f} (push to talk), "
        f"{idle_ms - floor_idle_ms:.1f} (hands-free)"
    )


def main() -> None:
    from hark.testing import speech_wav
    from hark_sim import SimConfig, start_sim

    from tests.audio_rig import PulseRig, pulse_available

    if not pulse_available():
        print("   skipped: pulseaudio / ALSA pulse plugin missing")
        return
    logging.disable(logging.WARNING)
    with (
        tempfile.TemporaryDirectory() as tmp_name,
        start_sim(SimConfig(api_key="sk-bench-e2e", brain="parrot", realtime_factor=0)) as sim,
        PulseRig(Path(tmp_name)) as rig,
        _env(rig.env),
    ):
        tmp = Path(tmp_name)
        speech = speech_wav(PHRASE, tmp / "q.wav", 48_000)
        asyncio.run(_turns(sim, rig, tmp, speech))
        _daemon_figures(sim, rig, tmp, speech)
    logging.disable(logging.NOTSET)
