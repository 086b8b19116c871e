"""The wiring's own glue over the real stack: handoffs, button approvals, end of conversation.

Each test builds the daemon with ``build_app`` (WAV audio from ``hark.demo``) against
``hark_sim``'s script brain on loopback and drives it with typed turns and posted
button events, as the GPIO button would post them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hark.agents.agent import RealtimeAgent
from hark.agents.tools import function_tool
from hark.config import parse
from hark.demo import build_with_fake_audio
from hark.events import (
    ButtonLongPressed,
    ButtonPressed,
    ButtonReleased,
    LinkDown,
    ShutdownRequested,
    TextRequested,
)
from hark.service.wiring import Daemon
from hark.testing import mock_pins, until
from hark_sim import SimConfig, SimHandle, start_sim

pytestmark = pytest.mark.slow

# ----------------------------------------------------------------- agents (loaded by agent.object)

helper = RealtimeAgent(name="Helper", instructions="You are the helper.")
front = RealtimeAgent(name="Front", instructions="You are the front desk.", handoffs=[helper])


@function_tool(needs_approval=True)
def unlock_door() -> str:
    """Unlock the front door."""
    return "unlocked"


door = RealtimeAgent(name="Door", instructions="You guard the door.", tools=[unlock_door])

# ----------------------------------------------------------------- helpers


@pytest.fixture
def scripted(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SimHandle]:
    """hark_sim with the test's script brain, no pacing."""
    script = tmp_path / "scenario.toml"
    script.write_text(textwrap.dedent(request.param))
    with start_sim(
        SimConfig(api_key="sk-test-daemon", brain="script", script=script, realtime_factor=0)
    ) as sim:
        yield sim


def build(sim: SimHandle, extra: str, pin_factory: Any = None) -> Daemon:
    config = parse(
        f'[backend]\nurl = "{sim.base_url}/realtime/client_secrets"\n'
        f'[realtime]\nurl = "{sim.ws_url}"\n[history]\nenabled = false\n' + textwrap.dedent(extra)
    )
    return build_with_fake_audio(config, sim.api_key, None, pin_factory=pin_factory)


class Running:
    """A started daemon app that records every handled event."""

    def __init__(self, daemon: Daemon, *, wait_link: bool = True) -> None:
        self.daemon = daemon
        self.wait_link = wait_link
        self.app = daemon.app
        self.events: list[Any] = []
        self.app.add_listener(lambda event, commands: self.events.append(event))

    async def __aenter__(self) -> Running:
        await self.app.start()
        if self.wait_link:
            await self.app.wait_for(lambda: self.app.conversation.connected, 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.app.post(ShutdownRequested())
        await asyncio.wait_for(self.app.wait_stopped(), 10)
        self.daemon.close()

    async def say(self, text: str) -> None:
        seen = self.app.conversation.turns_completed
        self.app.post(TextRequested(text))
        await self.app.wait_turn_completed(30, after=seen)


def outputs(sim: SimHandle) -> list[str]:
    return [
        e["item"]["output"]
        for e in sim.sessions[0].received
        if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"
    ]


# ----------------------------------------------------------------- handoffs

HANDOFF = """
    [[turns]]
    calls = [{ name = "transfer_to_helper", arguments = {} }]
    after = "Helper here."
"""


@pytest.mark.parametrize("scripted", [HANDOFF], indirect=True, ids=["script"])
async def test_handoff_sends_one_update_keeping_server_vad(scripted: SimHandle) -> None:
    """In vad mode with server end of turn, a handoff's one session.update keeps server VAD."""
    daemon = build(
        scripted,
        """
        [trigger]
        mode = "vad"
        end_of_turn = "server"
        [agent]
        object = "tests.device.test_daemon:front"
        """,
    )
    async with Running(daemon) as running:
        await running.say("Get me the helper.")
        conversation = running.app.conversation
        assert conversation.session_config.instructions == "You are the helper."
    received = list(scripted.sessions[0].received)
    transfer_at = next(
        n
        for n, e in enumerate(received)
        if e["type"] == "conversation.item.create"
        and e["item"].get("type") == "function_call_output"
    )
    call_at = max(
        n
        for n, e in enumerate(received[:transfer_at])
        if e["type"] != "session.update" and e["type"] != "input_audio_buffer.append"
    )
    updates = [e for e in received[call_at:transfer_at] if e["type"] == "session.update"]
    assert len(updates) == 1
    session = updates[0]["session"]
    assert session["instructions"] == "You are the helper."
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert json.loads(outputs(scripted)[0]) == {"assistant": "Helper"}
    assert daemon.runner is not None and daemon.runner.agent.name == "Helper"


# ----------------------------------------------------------------- approval by button

APPROVAL = """
    [[turns]]
    calls = [{ name = "unlock_door", arguments = {} }]
    after = "Result: {output}"

    [[turns]]
    calls = [{ name = "unlock_door", arguments = {} }]
    after = "Result: {output}"
"""


@pytest.mark.parametrize("scripted", [APPROVAL], indirect=True, ids=["script"])
async def test_button_approves_then_long_press_refuses(scripted: SimHandle) -> None:
    """A short press approves a waiting tool, a long press refuses; the core never sees them."""
    with mock_pins(pwm=False) as factory:
        daemon = build(
            scripted,
            """
            [trigger]
            mode = "button"
            long_press_s = 0.3
            [gpio]
            button_pin = 17
            bounce_s = 0
            [agent]
            object = "tests.device.test_daemon:door"
            """,
            pin_factory=factory,
        )
        pin = factory.pin(17)
        async with Running(daemon) as running:
            app, conversation = running.app, running.app.conversation
            pending = lambda: getattr(conversation, "approval_pending", False)  # noqa: E731

            seen = conversation.turns_completed
            app.post(TextRequested("Open the door."))
            await until(pending)
            pin.drive_low()  # pressed ...
            pin.drive_high()  # ... and released at once: approve
            await until(lambda: conversation.turns_completed > seen)
            assert not pending()

            seen = conversation.turns_completed
            app.post(TextRequested("Open it again."))
            await until(pending)
            pin.drive_low()  # held past long_press_s: refuse
            await until(lambda: not pending())
            pin.drive_high()
            await until(lambda: conversation.turns_completed > seen)
            # Consumed by the approval interceptor: no button event reached the core.
            assert not any(
                isinstance(e, ButtonPressed | ButtonReleased | ButtonLongPressed)
                for e in running.events
            )
    assert outputs(scripted)[0] == "unlocked"
    assert json.loads(outputs(scripted)[1]) == {
        "error": "the user declined to run unlock_door; it was not run"
    }


# ----------------------------------------------------------------- end of conversation

GOODBYE = """
    [[turns]]
    calls = [{ name = "end_conversation", arguments = {} }]
    after = "Goodbye."
"""


@pytest.mark.parametrize("scripted", [GOODBYE], indirect=True, ids=["script"])
async def test_end_conversation_tool_disconnects_after_the_goodbye(scripted: SimHandle) -> None:
    """The end_conversation tool: the goodbye plays, then IDLE and (on demand) Disconnect."""
    from hark.conversation import Phase

    daemon = build(
        scripted,
        """
        [trigger]
        mode = "vad"
        [session]
        policy = "on_demand"
        idle_disconnect_s = 600
        [agent]
        tools = ["end_conversation"]
        """,
    )
    async with Running(daemon, wait_link=False) as running:
        await running.say("That's all, thanks.")
        await until(lambda: any(isinstance(e, LinkDown) for e in running.events))
        assert running.app.conversation.phase is Phase.IDLE
        spoken = [i.text for i in running.daemon.history.items if i.role == "assistant"]
    assert spoken[-1] == "Goodbye."
    assert json.loads(outputs(scripted)[0])


def _gate_shape(gate: Any) -> tuple[int, int, int, int]:
    return (gate.frame_ms, gate.open_voiced, gate.open_window, gate.close_silence_ms)


def test_default_config_runs_the_gates_the_echo_tests_prove() -> None:
    """A config with no [vad] section gives the core exactly Settings()' gates and pre-roll."""
    from hark.conversation import Settings
    from hark.events import SessionConfig
    from hark.service.wiring import conversation_settings

    config = parse('[backend]\nurl = "https://keys.example.com/v1/realtime/client_secrets"\n')
    daemon_settings = conversation_settings(config, SessionConfig())
    tested = Settings()
    assert _gate_shape(daemon_settings.open_gate()) == _gate_shape(tested.open_gate())
    assert _gate_shape(daemon_settings.barge_in_gate()) == _gate_shape(tested.barge_in_gate())
    assert daemon_settings.preroll_ms == tested.preroll_ms


# ----------------------------------------------------------------- `hark run` under a notify socket


class NotifyListener:
    """A real NOTIFY_SOCKET: what systemd would receive, in the order it would."""

    def __init__(self, path: Path) -> None:
        import socket

        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(60)
        self.seen: list[str] = []

    def until(self, predicate: Callable[[str], bool]) -> str:
        while True:
            message = self.sock.recv(4096).decode()
            self.seen.append(message)
            if predicate(message):
                return message

    def pending(self) -> list[str]:
        """Every datagram already queued (sent before now), without waiting."""
        got = []
        self.sock.setblocking(False)
        try:
            while True:
                got.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(60)
        self.seen += got
        return got

    def close(self) -> None:
        self.sock.close()


class HarkRun:
    """`hark run` as systemd would start it: NOTIFY_SOCKET, RUNTIME_DIRECTORY, stderr kept."""

    def __init__(self, config: Path, tmp: Path, *, fake_audio: bool, **env: str) -> None:
        import os
        import subprocess
        import sys

        self.runtime = tmp / "runtime"
        self.runtime.mkdir(exist_ok=True)
        self.notify = NotifyListener(tmp / "notify")
        environ = {
            k: v
            for k, v in os.environ.items()
            if k not in ("INVOCATION_ID", "JOURNAL_STREAM", "GPIOZERO_PIN_FACTORY")
        }
        environ.update(
            NOTIFY_SOCKET=str(self.notify.path),
            RUNTIME_DIRECTORY=str(self.runtime),
            PYTHONUNBUFFERED="1",
            **env,
        )
        self.env = environ
        argv = [sys.executable, "-m", "hark.cli", "run", "--config", str(config)]
        self.proc = subprocess.Popen(
            argv + (["--fake-audio"] if fake_audio else []),
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = ""

    def __enter__(self) -> HarkRun:
        return self

    def __exit__(self, *exc: object) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.output = self.proc.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.output = self.proc.communicate()[0]
        self.notify.close()

    def reload(self) -> Any:
        """`hark reload`, as the unit's ExecReload= runs it (with $MAINPID)."""
        import subprocess
        import sys

        return subprocess.run(
            [sys.executable, "-m", "hark.cli", "reload", "--pid", str(self.proc.pid)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )


def sim_config(sim: SimHandle, tmp: Path, extra: str = "", *, backend: str | None = None) -> Path:
    """A config for `hark run` against ``sim`` (or a ``backend`` URL), its token 0600."""
    token = tmp / "token"
    token.write_text(sim.api_key + "\n")
    token.chmod(0o600)
    url = backend or f"{sim.base_url}/realtime/client_secrets"
    path = tmp / "hark.toml"
    path.write_text(
        f'[backend]\nurl = "{url}"\ntoken_file = "token"\n'
        f'[realtime]\nurl = "{sim.ws_url}"\n[history]\nenabled = false\n' + textwrap.dedent(extra)
    )
    return path


@pytest.fixture
def parrot() -> Iterator[SimHandle]:
    with start_sim(SimConfig(api_key="sk-test-daemon", brain="parrot", realtime_factor=0)) as sim:
        yield sim


def test_status_is_true_after_the_first_connect_at_boot(tmp_path: Path) -> None:
    """Boot with the backend not yet up: STATUS says it cannot be reached; once the link is up,
    STATUS is plain "idle" (not "idle; last error: cannot reach the key backend — retrying")."""
    import socket

    with socket.socket() as probe:  # a loopback port with nobody listening, yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = f"http://127.0.0.1:{port}/v1/realtime/client_secrets"
    later = SimConfig(api_key="sk-test-daemon", brain="parrot", realtime_factor=0, port=port)
    (tmp_path / "token").write_text("sk-test-daemon\n")
    (tmp_path / "token").chmod(0o600)
    path = tmp_path / "hark.toml"
    path.write_text(
        f'[backend]\nurl = "{backend}"\ntoken_file = "token"\n'
        f'[realtime]\nurl = "ws://127.0.0.1:{port}/v1/realtime"\n[history]\nenabled = false\n'
    )
    with HarkRun(path, tmp_path, fake_audio=True, GPIOZERO_PIN_FACTORY="mock") as run:
        run.notify.until(lambda m: m == "READY=1")
        run.notify.until(lambda m: m.startswith("STATUS=") and "cannot reach the key backend" in m)
        with start_sim(later) as sim:
            assert sim.base_url == f"http://127.0.0.1:{port}/v1"
            run.notify.until(lambda m: m.startswith("STATUS=idle"))
            statuses = [m for m in run.notify.seen if m.startswith("STATUS=")]
            assert statuses[-1] == "STATUS=idle", statuses
            assert run.proc.poll() is None


def test_missing_sound_card_is_named_before_ready_and_retried(
    parrot: SimHandle, tmp_path: Path
) -> None:
    """No such card at boot: STATUS names it, then READY=1 (systemd's start timeout never
    fires), and the daemon keeps running and retrying instead of exiting."""
    from tests.audio_rig import alsa_file_env

    path = sim_config(
        parrot,
        tmp_path,
        '[audio]\ninput_device = "nosuchcard"\noutput_device = "fileout"\noutput_rate_hz = 48000\n',
    )
    env = {"GPIOZERO_PIN_FACTORY": "mock", "WATCHDOG_USEC": "400000", **alsa_file_env(tmp_path)}
    with HarkRun(path, tmp_path, fake_audio=False, **env) as run:
        run.notify.until(lambda m: m == "READY=1")
        before_ready = [m for m in run.notify.seen if m.startswith("STATUS=")]
        assert any("microphone nosuchcard" in m for m in before_ready), run.notify.seen
        run.notify.until(lambda m: m == "WATCHDOG=1")  # up and serving, not exiting
        assert run.proc.poll() is None
    assert "microphone nosuchcard unavailable: no input device matches 'nosuchcard'" in run.output


def test_ready_only_after_the_microphone_and_speaker_are_open(
    parrot: SimHandle, tmp_path: Path
) -> None:
    """With a real (ALSA file) card, both streams are open before READY=1 is sent."""
    from tests.audio_rig import alsa_file_env

    path = sim_config(
        parrot,
        tmp_path,
        '[audio]\ninput_device = "filein"\noutput_device = "fileout"\n'
        "capture_rate_hz = 48000\noutput_rate_hz = 48000\n[trigger]\nmode = 'vad'\n",
    )
    env = {"GPIOZERO_PIN_FACTORY": "mock", **alsa_file_env(tmp_path)}
    with HarkRun(path, tmp_path, fake_audio=False, **env) as run:
        run.notify.until(lambda m: m == "READY=1")
        run.proc.terminate()
    lines = run.output.splitlines()
    ready = next(n for n, line in enumerate(lines) if line.endswith("hark.service.loop: ready"))
    opened = [n for n, line in enumerate(lines) if " at 48000 Hz, " in line]
    assert len(opened) == 2 and max(opened) < ready, run.output


def test_reload_waits_for_the_outcome_and_fails_when_refused(
    parrot: SimHandle, tmp_path: Path
) -> None:
    """`hark reload` (ExecReload=) returns once the daemon is READY again, 0 when the new
    config runs, 78 when it was refused (the old one runs on); each reload is bracketed by
    RELOADING=1 (with MONOTONIC_USEC) and READY=1 before it returns."""
    path = sim_config(parrot, tmp_path)
    with HarkRun(path, tmp_path, fake_audio=True, GPIOZERO_PIN_FACTORY="mock") as run:
        run.notify.until(lambda m: m == "READY=1")

        path.write_text(path.read_text() + "[log]\nlevel = 'debug'\n")
        good = run.reload()
        assert good.returncode == 0, good.stderr
        assert "config reloaded" in good.stdout
        told = run.notify.pending()
        reloading = next(n for n, m in enumerate(told) if m.startswith("RELOADING=1\n"))
        assert "READY=1" in told[reloading:]
        assert "MONOTONIC_USEC=" in told[reloading]

        path.write_text(path.read_text() + "[trigger]\nmode = 'vox'\n")
        refused = run.reload()
        assert refused.returncode == 78
        assert "reload refused, old config kept: trigger.mode" in refused.stderr
        told = run.notify.pending()
        reloading = next(n for n, m in enumerate(told) if m.startswith("RELOADING=1\n"))
        assert "READY=1" in told[reloading + 1 :], told  # a status line may follow it
        assert any(m.startswith("STATUS=reload refused") for m in told)
        assert run.proc.poll() is None

        unchanged = run.reload()  # the refused file again: still refused
        assert unchanged.returncode == 78
        path.write_text(path.read_text().replace("[trigger]\nmode = 'vox'\n", ""))
        same = run.reload()  # back to what runs: nothing to do, and that is fine
        assert same.returncode == 0 and "config unchanged" in same.stdout
    assert "sk-test-daemon" not in run.output


def test_reload_of_a_daemon_that_is_gone_fails(tmp_path: Path) -> None:
    """`hark reload` for a pid that does not exist says so and exits 69."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "hark.cli", "reload", "--pid", "999999999"],
        env={"RUNTIME_DIRECTORY": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 69
    assert "hark is not running" in result.stderr


def test_reload_of_a_daemon_that_dies_meanwhile_fails_at_once(tmp_path: Path) -> None:
    """A process that dies of the SIGHUP (not hark): `hark reload` says so, no 50 s wait."""
    import subprocess
    import sys
    import threading

    victim = subprocess.Popen(["sleep", "600"])
    threading.Thread(target=victim.wait, daemon=True).start()  # reap it: no zombie
    try:
        result = subprocess.run(
            [sys.executable, "-m", "hark.cli", "reload", "--pid", str(victim.pid)],
            env={"RUNTIME_DIRECTORY": str(tmp_path), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        victim.kill()
    assert result.returncode == 69, result.stderr
    assert "ended during the reload" in result.stderr


@functools.cache
def _no_pin_factory() -> bool:
    """True on a machine where gpiozero finds no pin factory (not a Pi, no lgpio)."""
    import subprocess
    import sys

    probe = (
        "from gpiozero import Device\n"
        "try:\n    Device._default_pin_factory()\nexcept Exception:\n    print('none')"
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", probe],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return out.stdout.strip() == "none"


@pytest.fixture
def no_gpio() -> None:
    """Skip unless gpiozero really finds no pin driver here (the non-Pi board's case)."""
    if not _no_pin_factory():
        pytest.skip("this machine has a GPIO pin driver")


@pytest.mark.usefixtures("no_gpio")
def test_no_gpio_driver_with_voice_runs_hands_free(parrot: SimHandle, tmp_path: Path) -> None:
    """Button and LED configured on a board without a pin driver, voice enabled: the
    daemon runs hands-free, one error line each, STATUS says so; no exit, no restart."""
    path = sim_config(
        parrot, tmp_path, "[trigger]\nmode = 'both'\n[gpio]\nbutton_pin = 17\nled_pin = 27\n"
    )
    with HarkRun(path, tmp_path, fake_audio=True) as run:
        run.notify.until(lambda m: m == "READY=1")
        status = run.notify.until(lambda m: m.startswith("STATUS=idle"))
        assert "button on GPIO 17 unavailable: hands-free only" in status
        assert "LED unavailable" in status
        assert run.proc.poll() is None
    assert run.output.count("talk button on GPIO 17: ") == 1
    assert "running hands-free only" in run.output
    assert "PinFactoryFallback" not in run.output  # gpiozero's warnings: folded into the error


@pytest.mark.usefixtures("no_gpio")
def test_no_gpio_driver_for_a_button_only_device_exits_69_once(
    parrot: SimHandle, tmp_path: Path
) -> None:
    """Button only, no pin driver: nothing can open a turn. One clear error and exit 69,
    which the unit's RestartPreventExitStatus keeps from becoming a restart loop."""
    path = sim_config(parrot, tmp_path, "[trigger]\nmode = 'button'\n[gpio]\nbutton_pin = 17\n")
    with HarkRun(path, tmp_path, fake_audio=True) as run:
        status = run.notify.until(lambda m: m.startswith("STATUS=GPIO unavailable"))
        assert run.proc.wait(timeout=60) == 69
    assert "talk button on GPIO 17" in status and "GPIOZERO_PIN_FACTORY=mock" in status
    assert "READY=1" not in run.notify.seen
    assert "PinFactoryFallback" not in run.output
    assert run.output.count("talk button on GPIO 17") == 1, run.output
