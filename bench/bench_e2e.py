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


class _Quiet:
    def ready(self) -> None: ...
    def reloading(self) -> None: ...
    def status(self, text: str) -> None: ...
    def watchdog(self) -> None: ...
    def stopping(self) -> None: ...


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


def _thread_cpu_s(native_id: int) -> float:
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sim_threads_cpu_s() -> float:
    """CPU of the sim's server thread (it shares the process; not the daemon's cost)."""
    import threading

    return sum(
        _thread_cpu_s(t.native_id)
        for t in threading.enumerate()
        if t.name.startswith("hark-sim") and t.native_id is not None
    )


async def _wait(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)  # the figures come from timestamps, not this poll


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
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory
    from hark.config import parse
    from hark.daemon import build_app

    (tmp / "token").write_text(sim.api_key)
    (tmp / "token").chmod(0o600)
    config = parse(_config_text(sim), base_dir=tmp)
    previous = Device.pin_factory
    factory = MockFactory()
    Device.pin_factory = factory
    daemon = build_app(config, sim.api_key, _Quiet(), pin_factory=factory)
    app = daemon.app
    events: list[tuple[float, Any]] = []

    def observe(event: Any, _commands: Any) -> None:
        if type(event).__name__ != "MicFrame":
            events.append((time.monotonic(), event))

    app.add_listener(observe)
    task = asyncio.create_task(daemon.run())
    pin = factory.pin(17)
    renders: list[tuple[float, bool]] = []
    commit_ms: list[float] = []
    first_frame_ms: list[float] = []
    stop_ms: list[float] = []

    def of(name: str, since: float) -> list[tuple[float, Any]]:
        return [(t, e) for t, e in events if t >= since and type(e).__name__ == name]

    try:
        await _wait(lambda: bool(sim.sessions) and app.speaker.frames_rendered > 24_000)
        buf = app.speaker._pending  # the instance PortAudio's callback renders from
        original = buf.render

        def render(frames: int, dac_start_s: float) -> Any:
            data, stopped = original(frames, dac_start_s)
            renders.append((time.monotonic(), bool(data.strip(b"\x00"))))
            return data, stopped

        buf.render = render
        record = sim.sessions[-1]
        timed = _TimedList(record.received)
        record.received = timed
        cpu0, sim0, wall0 = time.process_time(), _sim_threads_cpu_s(), time.monotonic()
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
            await _wait(lambda: any(t > delta_t and a for t, a in renders))  # noqa: B023 (awaited at once)
            first_frame_ms.append(next(t for t, a in renders if t > delta_t and a) - delta_t)
            commits = [t for t, k in timed.times[mark:] if k == "input_audio_buffer.commit"]
            commit_ms.append(commits[0] - released)
            await _wait(lambda: app.speaker.played_ms_now(delta.item_id) > 600)  # noqa: B023 (awaited at once)
            pressed = time.monotonic()
            pin.drive_low()  # barge-in
            await _wait(lambda: bool(of("ButtonPressed", pressed)))  # noqa: B023 (awaited at once)
            detected = of("ButtonPressed", pressed)[0][0]
            await _wait(lambda: any(t > detected and not a for t, a in renders))  # noqa: B023 (awaited at once)
            stop_ms.append(next(t for t, a in renders if t > detected and not a) - detected)
            await asyncio.sleep(0.3)
            pin.drive_high()
            await asyncio.sleep(1.0)  # the short reply to the barge-in turn
        wall_s = time.monotonic() - wall0
        cpu_s = (time.process_time() - cpu0) - (_sim_threads_cpu_s() - sim0)
    finally:
        daemon.shutdown()
        await asyncio.wait_for(task, 10)
        factory.close()
        Device.pin_factory = previous
    _line("button release → commit received by the sim", [x * 1000 for x in commit_ms], "≤ 5")
    _line(
        "first audio delta dispatched → first audible frame rendered",
        [x * 1000 for x in first_frame_ms],
        "≤ 20",
    )
    _line("barge-in press dispatched → silent frames rendered", [x * 1000 for x in stop_ms], "≤ 30")
    print(
        f"   daemon CPU per second of audio (capture and playback streams run throughout): "
        f"{cpu_s / wall_s * 1000:.1f} ms/s over {wall_s:.0f} s (target ≤ 10; sim thread excluded)"
    )


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle_rss_mib(sim: Any, rig: Any, tmp: Path) -> tuple[float, float]:
    """VmRSS of a `hark run` subprocess on the rig's PulseAudio after 4 s idle; CPU ms/s then.

    Idle still means the microphone stream runs (capture, resample, VAD every frame),
    so the CPU figure is the daemon-only cost of a second of captured audio.
    """
    (tmp / "token").write_text(sim.api_key)
    (tmp / "token").chmod(0o600)
    path = tmp / "hark.toml"
    path.write_text(_config_text(sim))
    env = {**os.environ, **rig.env, "GPIOZERO_PIN_FACTORY": "mock"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hark.cli", "run", "--config", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(4.0)
        cpu0, wall0 = _proc_cpu_s(proc.pid), time.monotonic()
        time.sleep(5.0)
        cpu_ms_per_s = (_proc_cpu_s(proc.pid) - cpu0) / (time.monotonic() - wall0) * 1000
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024, cpu_ms_per_s
        return float("nan"), cpu_ms_per_s
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
        rss_mib, idle_cpu_ms = _idle_rss_mib(sim, rig, tmp)
        print(
            f"   daemon idle VmRSS (`hark run`, PulseAudio devices): {rss_mib:.1f} MiB (target 50)"
        )
        print(
            f"   `hark run` idle CPU (mic stream capturing, resampling, VAD): "
            f"{idle_cpu_ms:.1f} ms per second of audio"
        )
    logging.disable(logging.NOTSET)
