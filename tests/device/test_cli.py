"""hark.cli: exit codes, check-config output, bad-config messages, lean imports, signals."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hark import __version__, cli, demo
from hark.config import Config, parse
from hark.service import wiring as daemon
from hark.testing import RecordingNotifier, mock_pins, until

GOOD = """\
[backend]
url = "https://keys.example.com/v1/realtime/client_secrets"
token_file = "token"

[agent]
instructions = '''Say "hi" \\ then stop.'''

[[agent.outputs]]
name = "kitchen light"
pin = 22

[gpio]
rgb_pins = [5, 6, 13]

[audio]
input_device = 2
output_device = "USB"
"""


def hark(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a fresh interpreter, as systemd or a person would."""
    return subprocess.run(
        [sys.executable, "-m", "hark.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A config folder with a valid config and a 0600 token next to it."""
    (tmp_path / "hark.toml").write_text(GOOD)
    token = tmp_path / "token"
    token.write_text("tok_very_secret\n")
    token.chmod(0o600)
    return tmp_path


def test_version() -> None:
    """`hark --version` prints the package version and exits 0."""
    result = hark("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"hark {__version__}"


def test_no_command_is_usage_error() -> None:
    """No command, or an unknown one, is a usage error (exit 2)."""
    assert hark().returncode == cli.EX_USAGE
    assert hark("fly").returncode == cli.EX_USAGE


def test_lean_imports(config_dir: Path) -> None:
    """--version and check-config import neither numpy, PyAudio nor websockets."""
    code = (
        "import sys\n"
        "from hark import cli\n"
        f"assert cli.main(['check-config', '--config', {str(config_dir / 'hark.toml')!r}]) == 0\n"
        "heavy = {'numpy', 'pyaudio', 'websockets', 'soxr', 'webrtcvad', 'gpiozero'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_check_config_round_trips_as_toml(config_dir: Path) -> None:
    """check-config prints the effective config as TOML that parses back to the same config."""
    result = hark("check-config", "--config", config_dir / "hark.toml")
    assert result.returncode == 0, result.stderr
    printed = parse(result.stdout)
    original = parse(GOOD, base_dir=config_dir)
    assert printed == original
    assert "tok_very_secret" not in result.stdout


def test_check_config_json_redacts(config_dir: Path) -> None:
    """--json prints JSON; URL credentials are masked and the token never appears."""
    path = config_dir / "hark.toml"
    path.write_text(GOOD.replace("https://keys", "https://admin:pa55word@keys"))
    result = hark("check-config", "--json", "--config", path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["backend"]["url"] == "https://***@keys.example.com/v1/realtime/client_secrets"
    assert "pa55word" not in result.stdout
    assert "tok_very_secret" not in result.stdout
    assert data["audio"]["input_device"] == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda t: t + "[trigger]\nmodee = 'button'\n", "trigger.modee: unknown key"),
        (lambda t: t.replace("input_device = 2", "input_device = 2.5"), "audio.input_device"),
        (lambda t: t + "[vad]\naggressiveness = 9\n", "vad.aggressiveness: must be ≤ 3"),
        (lambda t: t + "[trigger]\nmode = 'vox'\n", "trigger.mode: must be one of"),
        (lambda t: t + "[trigger\n", "TOML syntax error"),
        (lambda t: t.replace("v1/realtime/client_secrets", "v1/client secrets"), "backend.url"),
        (lambda t: t + "[vad]\necho_gate = 'yes'\n", "vad.echo_gate: must be true or false"),
    ],
)
def test_bad_config_exits_78_naming_the_field(config_dir: Path, change: Any, field: str) -> None:
    """Unknown key, wrong type, out of range, bad enum, bad syntax: exit 78, field named."""
    path = config_dir / "hark.toml"
    path.write_text(change(GOOD))
    result = hark("check-config", "--config", path)
    assert result.returncode == cli.EX_CONFIG
    assert f"{path}: {field}" in result.stderr, result.stderr


def test_token_problems_exit_78(config_dir: Path) -> None:
    """A token file others can read, or none at all, is a config error naming the field."""
    path = config_dir / "hark.toml"
    token = config_dir / "token"
    token.chmod(0o644)
    result = hark("check-config", "--config", path)
    assert result.returncode == cli.EX_CONFIG
    assert "backend.token_file:" in result.stderr
    assert f"chmod 600 {token}" in result.stderr
    assert "tok_very_secret" not in result.stderr + result.stdout
    token.unlink()
    result = hark("check-config", "--config", path)
    assert result.returncode == cli.EX_CONFIG
    assert "backend.token_file:" in result.stderr
    assert hark("check-config", "--no-token", "--config", path).returncode == 0


def test_run_refuses_bad_config_with_78(config_dir: Path) -> None:
    """`hark run` with a bad config exits 78 (systemd's RestartPreventExitStatus) at once."""
    path = config_dir / "hark.toml"
    path.write_text(GOOD + "[session]\nrotate_after_s = 7200\n")
    result = hark("run", "--config", path)
    assert result.returncode == cli.EX_CONFIG
    assert "session.rotate_after_s: must be ≤ 3600" in result.stderr
    assert hark("run", "--config", config_dir / "missing.toml").returncode == cli.EX_CONFIG


def test_history_disabled_and_empty(config_dir: Path) -> None:
    """`hark history` says when history is off, and when there is none yet."""
    path = config_dir / "hark.toml"
    path.write_text(GOOD + "[history]\nenabled = false\n")
    result = hark("history", "--config", path)
    assert result.returncode == 0
    assert "history is disabled" in result.stdout
    path.write_text(GOOD + "[history]\npath = 'h.jsonl'\n")
    result = hark("history", "--config", path)
    assert result.returncode == 0
    assert "no history" in result.stdout


def test_history_last_refuses_negative_counts(config_dir: Path) -> None:
    """`--last -1` is a usage error (it printed all but the first item); `--last 1` is one."""
    path = config_dir / "hark.toml"
    path.write_text(GOOD + "[history]\npath = 'h.jsonl'\n")
    records = [
        {"id": f"u{n}", "type": "message", "role": "user", "text": f"turn {n}"} for n in (1, 2, 3)
    ]
    (config_dir / "h.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = hark("history", "--last", "-1", "--config", path)
    assert result.returncode == cli.EX_USAGE
    assert "--last: must be 0 or more (got -1)" in result.stderr
    assert "turn" not in result.stdout
    result = hark("history", "--last", "1", "--config", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["-  user: turn 3"]


def test_history_of_a_torn_file_and_an_unreadable_one(config_dir: Path) -> None:
    """A line cut inside "…" is skipped with a note; a history that is a folder is named."""
    path = config_dir / "hark.toml"
    path.write_text(GOOD + "[history]\npath = 'h.jsonl'\n")
    good = json.dumps({"id": "u1", "type": "message", "role": "user", "text": "so…"})
    torn = json.dumps({"id": "a1", "type": "message", "text": "well…"}, ensure_ascii=False)
    (config_dir / "h.jsonl").write_bytes((good + "\n").encode() + torn.encode()[:-4])
    result = hark("history", "--config", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["-  user: so…"]
    assert "Traceback" not in result.stderr
    assert "skipped a damaged line 2: not UTF-8" in result.stderr
    (config_dir / "h.jsonl").unlink()
    (config_dir / "h.jsonl").mkdir()
    result = hark("history", "--config", path)
    assert result.returncode == cli.EX_NOINPUT
    assert result.stderr == f"hark history: cannot read {config_dir / 'h.jsonl'}: Is a directory\n"


def test_check_config_and_doctor_import_the_agent_object(config_dir: Path) -> None:
    """An agent.object that cannot be imported fails check-config and doctor (78), not
    only `hark run`; one that imports passes."""
    path = config_dir / "hark.toml"
    path.write_text(
        '[backend]\nurl = "http://127.0.0.1:9/v1"\ntoken_file = "token"\n'
        "[agent]\nobject = 'nonexistent_mod:agent'\n"
    )
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock")
    result = hark("check-config", "--config", path, env=env)
    assert result.returncode == cli.EX_CONFIG
    assert result.stderr.startswith(
        f"{path}: agent.object 'nonexistent_mod:agent': cannot import 'nonexistent_mod': "
        "ModuleNotFoundError"
    ), result.stderr
    result = hark("doctor", "--quiet", "--config", path, env=env)
    assert result.returncode == cli.EX_CONFIG, result.stdout
    assert "FAIL agent" in result.stdout
    assert "No module named 'nonexistent_mod'" in result.stdout
    result = hark("say", "--fake-audio", "--config", path, "hi", env=env)
    assert result.returncode == cli.EX_CONFIG, result.stderr
    assert result.stderr == (
        "hark say: agent.object 'nonexistent_mod:agent': cannot import 'nonexistent_mod': "
        "ModuleNotFoundError: No module named 'nonexistent_mod'\n"
    )

    path.write_text(path.read_text().replace("nonexistent_mod:agent", "kitchen_agent:nope"))
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "examples")
    result = hark("check-config", "--config", path, env=env)
    assert result.returncode == cli.EX_CONFIG
    assert "module 'kitchen_agent' has no attribute 'nope'" in result.stderr
    path.write_text(path.read_text().replace("kitchen_agent:nope", "kitchen_agent:agent"))
    result = hark("check-config", "--config", path, env=env)
    assert result.returncode == 0, result.stderr
    result = hark("doctor", "--quiet", "--config", path, env=env)
    assert "ok   agent" in result.stdout
    assert result.returncode == cli.EX_UNAVAILABLE  # only the backend (port 9) and audio fail


def test_to_toml_arrays_of_tables() -> None:
    """The TOML printer handles nested tables, arrays of tables, strings needing escapes."""
    config = parse(GOOD, base_dir=Path("/etc/hark"))
    text = cli.to_toml(json.loads(json.dumps(config.model_dump(mode="json"))))
    assert "[[agent.outputs]]" in text
    assert parse(text) == config


# --------------------------------------------------------------------------- supervisor


class FakeApp:
    """Runs until shutdown(); records the config it was built with."""

    def __init__(self, config: Config, stubborn: bool = False) -> None:
        self.config = config
        self.stubborn = stubborn
        self._done = asyncio.Event()
        self.shutdowns = 0

    async def run(self) -> None:
        await self._done.wait()
        if self.stubborn:
            await asyncio.Event().wait()  # ignores shutdown: must be cancelled

    def shutdown(self, when_quiet_s: float = 0.0) -> None:
        self.shutdowns += 1
        self._done.set()


@pytest.fixture
def supervisor(
    config_dir: Path,
) -> Iterator[tuple[daemon.Supervisor, list[FakeApp], RecordingNotifier]]:
    config, token = daemon.load_config(str(config_dir / "hark.toml"), with_token=True)
    assert token is not None
    apps: list[FakeApp] = []
    notifier = RecordingNotifier()

    def build(config: Config, token: str, notifier: Any) -> FakeApp:
        apps.append(FakeApp(config))
        return apps[-1]

    sup = daemon.Supervisor(str(config_dir / "hark.toml"), config, token, build, notifier)
    yield sup, apps, notifier


async def test_sighup_good_then_bad_then_sigterm(
    supervisor: tuple[daemon.Supervisor, list[FakeApp], RecordingNotifier], config_dir: Path
) -> None:
    """SIGHUP with a good config rebuilds the app; with a bad one keeps it; SIGTERM stops."""
    sup, apps, notifier = supervisor
    serving = asyncio.create_task(sup.serve())
    await until(lambda: len(apps) == 1)

    path = config_dir / "hark.toml"
    path.write_text(GOOD + "[log]\nlevel = 'debug'\n")
    os.kill(os.getpid(), signal.SIGHUP)
    await until(lambda: len(apps) == 2)
    assert apps[0].shutdowns == 1
    assert apps[1].config.log.level == "debug"
    assert "RELOADING=1" in notifier.messages

    path.write_text(GOOD + "[trigger]\nmode = 'vox'\n")
    os.kill(os.getpid(), signal.SIGHUP)
    await until(lambda: sup.refused_reloads == 1)
    assert len(apps) == 2 and apps[1].shutdowns == 0
    assert any(
        m.startswith("STATUS=reload refused") and "trigger.mode" in m for m in notifier.messages
    )

    path.write_text(GOOD + "[log]\nlevel = 'debug'\n")
    os.kill(os.getpid(), signal.SIGHUP)  # same as running: nothing to do
    await until(lambda: "STATUS=config unchanged" in notifier.messages)
    assert len(apps) == 2

    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(serving, 5) == cli.EX_OK
    assert notifier.messages[-1] == "STOPPING=1"
    assert sup.reloads == 1


async def test_sigterm_cancels_a_stuck_app(
    supervisor: tuple[daemon.Supervisor, list[FakeApp], RecordingNotifier],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An app that ignores shutdown is cancelled after the stop budget."""
    sup, apps, _ = supervisor
    monkeypatch.setattr(daemon, "STOP_WITHIN_S", 0.2)

    def stubborn(config: Config, token: str, notifier: Any) -> FakeApp:
        apps.append(FakeApp(config, stubborn=True))
        return apps[-1]

    sup._build = stubborn
    serving = asyncio.create_task(sup.serve())
    await until(lambda: len(apps) == 1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(serving, 5) == cli.EX_OK


# --------------------------------------------------------------------------- whole processes


@pytest.fixture
def sim() -> Iterator[Any]:
    """hark_sim on an ephemeral loopback port, parrot brain, no pacing."""
    from hark_sim import SimConfig, start_sim

    with start_sim(SimConfig(api_key="sk-test-cli", brain="parrot", realtime_factor=0)) as handle:
        yield handle


def _sim_config(sim: Any, tmp: Path, extra: str = "") -> Path:
    token = tmp / "token"
    token.write_text(sim.api_key + "\n")
    token.chmod(0o600)
    path = tmp / "hark.toml"
    path.write_text(
        f'[backend]\nurl = "{sim.base_url}/realtime/client_secrets"\ntoken_file = "token"\n'
        f'[realtime]\nurl = "{sim.ws_url}"\n'
        '[history]\npath = "history.jsonl"\n' + extra
    )
    return path


class NotifyListener:
    """A real NOTIFY_SOCKET: a datagram socket in the test's temp dir."""

    def __init__(self, path: Path) -> None:
        import socket

        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(30)
        self.seen: list[str] = []

    def until(self, predicate: Any) -> str:
        while True:
            message = self.sock.recv(4096).decode()
            self.seen.append(message)
            if predicate(message):
                return message


@pytest.mark.slow
def test_run_under_notify_socket_with_reload_and_stop(sim: Any, tmp_path: Path) -> None:
    """`hark run`: READY, WATCHDOG, STATUS; SIGHUP bad keeps, good reloads; SIGTERM stops."""
    path = _sim_config(sim, tmp_path)
    listener = NotifyListener(tmp_path / "notify")
    env = dict(os.environ)
    env.update(
        NOTIFY_SOCKET=str(listener.path),
        WATCHDOG_USEC="400000",
        GPIOZERO_PIN_FACTORY="mock",
        PYTHONUNBUFFERED="1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "hark.cli", "run", "--fake-audio", "--config", str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        listener.until(lambda m: m == "READY=1")
        listener.until(lambda m: m == "WATCHDOG=1")
        listener.until(lambda m: m.startswith("STATUS=idle"))

        path.write_text(path.read_text() + "[trigger]\nmode = 'vox'\n")
        proc.send_signal(signal.SIGHUP)
        refused = listener.until(lambda m: m.startswith("STATUS=reload refused"))
        assert "trigger.mode" in refused
        assert proc.poll() is None

        path.write_text(_sim_config(sim, tmp_path, "[log]\nlevel = 'debug'\n").read_text())
        mark = len(listener.seen)
        proc.send_signal(signal.SIGHUP)
        listener.until(lambda m: m.startswith("RELOADING=1\n"))  # with MONOTONIC_USEC
        listener.until(lambda m: m == "READY=1")
        assert "STOPPING=1" not in listener.seen[mark:]  # a reload is not a stop
        listener.until(lambda m: m == "WATCHDOG=1")

        proc.send_signal(signal.SIGTERM)
        listener.until(lambda m: m == "STOPPING=1")
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0]
    assert "sk-test-cli" not in output  # the token never reaches the log
    assert "reload refused" in output


@pytest.mark.slow
def test_run_starts_on_a_history_torn_inside_a_character(sim: Any, tmp_path: Path) -> None:
    """A power cut in the middle of writing "…" must not crash-loop the daemon (it exited
    70 and systemd restarted it every 3 s): `hark run` gets to READY, the good items stay,
    and `hark say` works on such a file too."""
    path = _sim_config(sim, tmp_path)
    history = tmp_path / "history.jsonl"
    good = json.dumps({"id": "u1", "type": "message", "role": "user", "text": "ok 👍"})
    torn = json.dumps({"id": "a1", "type": "message", "text": "so…"}, ensure_ascii=False)
    damaged = (good + "\n").encode() + torn.encode()[:-4]  # ends inside the "…"
    history.write_bytes(damaged)
    listener = NotifyListener(tmp_path / "notify")
    env = dict(os.environ, NOTIFY_SOCKET=str(listener.path), GPIOZERO_PIN_FACTORY="mock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hark.cli", "run", "--fake-audio", "--config", str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        started = listener.until(lambda m: m == "READY=1" or m.startswith("STATUS=crashed"))
        assert started == "READY=1", started
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0]
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output
    assert "skipped a damaged line 2: not UTF-8" in output, output
    assert [json.loads(line)["id"] for line in history.read_text().splitlines()] == ["u1"]

    history.write_bytes(damaged)
    said = _say_hi(path, dict(os.environ, GPIOZERO_PIN_FACTORY="mock"))
    assert said.returncode == 0, said.stderr
    assert "Traceback" not in said.stderr, said.stderr


def _say_hi(
    config: Path, env: dict[str, str], *words: str, fake_audio: bool = True
) -> subprocess.CompletedProcess[str]:
    """`hark say hi` (or WORDS) with WAV-backed audio, as a person would type it."""
    audio = ["--fake-audio"] if fake_audio else []
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "hark.cli",
            "say",
            *audio,
            "--config",
            str(config),
            *(words or ["hi"]),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_say_text_turn(sim: Any, tmp_path: Path) -> None:
    """`hark say TEXT` sends a text turn, prints the reply, and `hark history` shows both."""
    path = _sim_config(sim, tmp_path)
    result = _say_hi(path, dict(os.environ, GPIOZERO_PIN_FACTORY="mock"))
    assert result.returncode == 0, result.stderr
    assert "hi" in result.stdout  # the parrot brain answers "You said: hi"
    history = hark("history", "--config", path)
    assert history.returncode == 0
    assert "user: hi" in history.stdout
    assert "assistant: " in history.stdout


def test_say_refuses_an_empty_turn(sim: Any, tmp_path: Path) -> None:
    """`hark say ""` (or only spaces) is a usage error and sends nothing."""
    path = _sim_config(sim, tmp_path)
    for words in ([""], ["  ", "\t"]):
        result = _say_hi(path, dict(os.environ, GPIOZERO_PIN_FACTORY="mock"), *words)
        assert result.returncode == cli.EX_USAGE, result.stderr
        assert result.stderr == "hark say: nothing to say (TEXT is empty)\n"
    assert sim.sessions == []


def _assert_failed_at_once(result: subprocess.CompletedProcess[str], code: int, why: str) -> None:
    """The reason on a line of its own, with the documented code; the pipeline stopped
    cleanly (no timeout waited out, no task outliving the shutdown, no traceback)."""
    assert result.returncode == code, result.stderr
    assert f"\nhark say: {why}" in "\n" + result.stderr, result.stderr
    assert "no reply" not in result.stderr
    assert "did not stop in time" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_say_fails_at_once_for_a_revoked_device(sim: Any, tmp_path: Path) -> None:
    """A device the real backend has revoked (401): exit 78 with the reason, at once."""
    import time

    from hark_backend.registry import Registry

    with demo._demo_backend(sim, tmp_path) as (url, token, _):
        registry = Registry(f"sqlite:///{tmp_path / 'backend.db'}")
        try:
            assert registry.revoke("demo", now_s=time.time())
        finally:
            registry.close()
        path = _sim_config(sim, tmp_path)
        path.write_text(path.read_text().replace(f"{sim.base_url}/realtime/client_secrets", url))
        (tmp_path / "token").write_text(token + "\n")
        result = _say_hi(path, dict(os.environ, GPIOZERO_PIN_FACTORY="mock"))
    _assert_failed_at_once(result, cli.EX_CONFIG, "device not authorised")
    assert "401" in result.stderr
    assert token not in result.stdout + result.stderr
    assert sim.sessions == []


@pytest.mark.slow
def test_say_fails_at_once_for_a_wrong_backend_path(sim: Any, tmp_path: Path) -> None:
    """A backend URL that answers 404 is a config error (78) named as such."""
    path = _sim_config(sim, tmp_path)
    path.write_text(path.read_text().replace("/realtime/client_secrets", "/realtime/nope"))
    result = _say_hi(path, dict(os.environ, GPIOZERO_PIN_FACTORY="mock"))
    _assert_failed_at_once(result, cli.EX_CONFIG, "the key backend is set up wrong")
    assert "404" in result.stderr


@pytest.mark.slow
def test_say_fails_at_once_without_a_speaker(sim: Any, tmp_path: Path) -> None:
    """No such speaker: exit 69 naming it, instead of waiting for a reply nobody hears."""
    from tests.audio_rig import alsa_file_env

    path = _sim_config(sim, tmp_path, '[audio]\noutput_device = "no-such-speaker"\n')
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", **alsa_file_env(tmp_path))
    result = _say_hi(path, env, fake_audio=False)
    _assert_failed_at_once(result, cli.EX_UNAVAILABLE, "speaker")
    assert "no output device matches 'no-such-speaker'" in result.stderr


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    """`hark demo` runs a spoken turn offline, prints phases and transcript, writes reply.wav."""
    import wave

    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "hark.cli", "demo", "--speed", "0", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for phase in ("listening", "thinking", "speaking", "idle"):
        assert f"phase   {phase}" in result.stdout
    assert "assistant:" in result.stdout
    assert "release -> first reply audio" in result.stdout
    with wave.open(str(out / "reply.wav")) as w:
        assert w.getnframes() / w.getframerate() > 1.0


def test_devices_lists_alsa_pcms(tmp_path: Path) -> None:
    """`hark devices` lists inputs and outputs (ALSA file PCMs stand in for a card)."""
    from tests.audio_rig import alsa_file_env

    env = dict(os.environ, **alsa_file_env(tmp_path))
    result = hark("devices", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    inputs, _, outputs = result.stdout.partition("outputs:")
    assert "filein" in inputs
    assert "fileout" in outputs
    assert "Hz" in outputs


def test_doctor_against_sim(sim: Any, tmp_path: Path) -> None:
    """`hark doctor` mints a real key through the backend URL and checks audio and GPIO."""
    from tests.audio_rig import alsa_file_env

    path = _sim_config(sim, tmp_path, '[gpio]\nled_pin = 27\n[audio]\noutput_device = "fileout"\n')
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", **alsa_file_env(tmp_path))
    result = hark("doctor", "--quiet", "--config", path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in ("config", "token", "backend", "audio input", "audio output", "gpio button"):
        assert any(line.startswith("ok") and f" {name} " in line for line in lines), name
    assert "minted a Realtime key" in result.stdout
    assert sim.api_key not in result.stdout + result.stderr

    if shutil.which("espeak-ng"):  # without --quiet the verdict is spoken on the speaker
        result = hark("doctor", "--config", path, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert (tmp_path / "out.raw").stat().st_size > 10_000

    (tmp_path / "token").write_text("sk-wrong\n")
    result = hark("doctor", "--quiet", "--config", path, env=env)
    assert result.returncode == cli.EX_UNAVAILABLE
    assert "FAIL backend" in result.stdout
    assert "fix: the device token was refused" in result.stdout

    (tmp_path / "token").chmod(0o644)
    result = hark("doctor", "--quiet", "--config", path, env=env)
    assert result.returncode == cli.EX_CONFIG
    assert "FAIL token" in result.stdout
    assert "chmod 600" in result.stdout


DOCTOR_CLOCK = "timedatectl"


@pytest.mark.parametrize(
    ("answer", "ok", "detail", "fix"),
    [
        pytest.param(
            lambda seen: _key_answer(lifetime_s=600),
            True,
            "minted a Realtime key (valid ",
            "",
            id="good",
        ),
        pytest.param(
            lambda seen: _key_answer(lifetime_s=-3600),
            False,
            "the key the backend minted had already expired (",
            DOCTOR_CLOCK,
            id="expired",
        ),
        pytest.param(
            lambda seen: (200, {}, b'{"value": "ek_x", "expires_at": 0}'),
            False,
            "the key backend answered 200 but not with a key (expires_at: ",
            "/v1/realtime/client_secrets endpoint",
            id="expires-at-zero",
        ),
        pytest.param(
            lambda seen: _key_answer(lifetime_s=86400 * 30),
            False,
            "more than OpenAI's 7200 s maximum",
            DOCTOR_CLOCK,
            id="far-future",
        ),
        pytest.param(
            lambda seen: (429, {"Retry-After": "30"}, b'{"error": {"message": "slow down"}}'),
            False,
            "key backend is rate-limiting this device (429, retry after 30 s): slow down",
            "the backend is rate-limiting this device: wait 30 s",
            id="rate-limited",
        ),
        pytest.param(
            lambda seen: (307, {"Location": "https://keys.elsewhere.example:8443/x"}, b""),
            False,
            "answered 307, redirecting to https://keys.elsewhere.example:8443; refused",
            "hark never follows a redirect with the device token",
            id="redirect",
        ),
        pytest.param(
            lambda seen: (200, {"Content-Type": "text/html"}, b"<html>captive portal</html>"),
            False,
            "the key backend answered 200 but not with a key (not JSON (27 bytes))",
            "/v1/realtime/client_secrets endpoint",
            id="garbage",
        ),
        pytest.param(
            lambda seen: (503, {}, b'{"error": {"message": "upstream down"}}'),
            False,
            "key backend answered 503: upstream down",
            "the backend (or OpenAI behind it) is failing",
            id="server-error",
        ),
    ],
)
def test_doctor_says_what_the_backend_did(answer: Any, ok: bool, detail: str, fix: str) -> None:
    """Each key-backend outcome gets a message that says what happened and a fix that fits:
    an expired key is not "ok ... valid -1796168684 s", a 429 is rate limiting (with its
    Retry-After), a redirect names where it pointed, garbage names the key backend."""
    from hark.doctor import _check_backend

    from tests.device.test_key_fetch import ScriptedHttp

    with ScriptedHttp(answer) as backend:
        config = parse(f'[backend]\nurl = "{backend.url()}"\n')
        check = _check_backend(config, "hark_dt_doctor_secret")
    assert (check.name, check.ok) == ("backend", ok), check
    assert detail in check.detail
    assert fix in check.fix
    assert "hark_dt_doctor_secret" not in check.detail + check.fix


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/v1/client secrets", "http://127.0.0.1:9/v1\r\nX: 1"]
)
def test_doctor_names_a_bad_backend_url_without_a_traceback(url: str) -> None:
    """A backend URL that config validation let through (space, CR/LF) is a named FAIL."""
    from hark.doctor import _check_backend

    config = parse('[backend]\nurl = "http://127.0.0.1:9/v1"\n')
    config = config.model_copy(update={"backend": config.backend.model_copy(update={"url": url})})
    check = _check_backend(config, "hark_dt_doctor_secret")
    assert not check.ok
    assert "key backend URL" in check.detail and "contains" in check.detail
    assert check.fix.startswith("fix backend.url")


def _key_answer(lifetime_s: float) -> tuple[int, dict[str, str], bytes]:
    import time

    body = json.dumps({"value": "ek_doctor", "expires_at": int(time.time() + lifetime_s)})
    return 200, {"Content-Type": "application/json"}, body.encode()


@pytest.mark.slow
def test_tls_to_backend_and_realtime_checks_the_certificate(pki: Any, tmp_path: Path) -> None:
    """Over https and wss, the device talks only to a server its CA store vouches for.

    Trusted (``SSL_CERT_FILE`` names the test CA): `hark say` gets a key and a spoken reply
    through TLS. Not trusted (the system's store): `hark doctor` names the certificate
    check and the clock as the thing to look at, and no key is sent anywhere.
    """
    from hark_sim import SimConfig, start_sim

    tls = SimConfig(
        api_key="sk-test-tls", realtime_factor=0, tls_certfile=pki.cert, tls_keyfile=pki.key
    )
    with start_sim(tls) as sim:
        assert sim.ws_url.startswith("wss://127.0.0.1:")
        path = _sim_config(sim, tmp_path)
        trusted = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", SSL_CERT_FILE=str(pki.ca))
        said = _say_hi(path, trusted)
        assert said.returncode == 0, said.stderr
        assert "hi" in said.stdout
        assert len(sim.sessions) == 1
        minted = len(sim.state.keys)

        untrusted = {k: v for k, v in trusted.items() if not k.startswith("SSL_CERT_")}
        result = hark("doctor", "--quiet", "--config", path, env=untrusted)
        assert result.returncode == cli.EX_UNAVAILABLE
        assert "FAIL backend" in result.stdout
        assert "TLS certificate check failed" in result.stdout
        assert "timedatectl" in result.stdout
        assert len(sim.state.keys) == minted  # the token never left an unverified handshake


async def test_sigterm_turns_the_led_off(sim: Any, tmp_path: Path) -> None:
    """The real wiring under the supervisor: the LED shows idle, and SIGTERM leaves it off."""
    import functools

    path = _sim_config(sim, tmp_path, "[gpio]\nled_pin = 27\n")
    config, token = daemon.load_config(str(path), with_token=True)
    assert token is not None
    notifier = RecordingNotifier()
    with mock_pins() as factory:
        build = functools.partial(demo.build_with_fake_audio, pin_factory=factory)
        sup = daemon.Supervisor(str(path), config, token, build, notifier)
        serving = asyncio.create_task(sup.serve())
        try:
            await until(lambda: any(m.startswith("STATUS=idle") for m in notifier.messages))
            await until(lambda: factory.pin(27).state > 0)
            assert "READY=1" in notifier.messages
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
            assert await asyncio.wait_for(serving, 10) == cli.EX_OK
        assert factory.pin(27).state == 0
    assert notifier.messages.count("STOPPING=1") >= 1


async def test_reload_that_cannot_build_keeps_the_old_config(
    supervisor: tuple[daemon.Supervisor, list[FakeApp], RecordingNotifier], config_dir: Path
) -> None:
    """A valid config whose app cannot be built (bad agent object) falls back to the old one."""
    sup, apps, notifier = supervisor

    def build(config: Config, token: str, notifier: Any) -> FakeApp:
        if config.log.level == "error":
            raise RuntimeError("agent.object 'kitchen:agent': cannot import 'kitchen'")
        apps.append(FakeApp(config))
        return apps[-1]

    sup._build = build
    serving = asyncio.create_task(sup.serve())
    await until(lambda: len(apps) == 1)
    (config_dir / "hark.toml").write_text(GOOD + "[log]\nlevel = 'error'\n")
    os.kill(os.getpid(), signal.SIGHUP)
    await until(lambda: len(apps) == 2)
    assert apps[1].config.log.level == "info"
    assert any(m.startswith("STATUS=reload failed, old config kept") for m in notifier.messages)
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(serving, 5) == cli.EX_OK


def test_run_with_unloadable_agent_exits_78(config_dir: Path) -> None:
    """`hark run` with an agent.object that cannot be imported is a config error (78)."""
    path = config_dir / "hark.toml"
    path.write_text(
        '[backend]\nurl = "https://keys.example.com/v1"\ntoken_file = "token"\n'
        "[agent]\nobject = 'no_such_pkg.kitchen:agent'\n"
    )
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock")
    result = hark("run", "--fake-audio", "--config", path, env=env)
    assert result.returncode == cli.EX_CONFIG, result.stderr
    assert "agent.object 'no_such_pkg.kitchen:agent'" in result.stderr


def test_run_fake_audio_names_a_bad_speed(config_dir: Path) -> None:
    """$HARK_FAKE_SPEED that is not a pace: one line naming it, exit 2, no traceback."""
    path = config_dir / "hark.toml"
    path.write_text('[backend]\nurl = "https://keys.example.com/v1"\ntoken_file = "token"\n')
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", HARK_FAKE_SPEED="fast")
    result = hark("run", "--fake-audio", "--config", path, env=env)
    assert result.returncode == cli.EX_USAGE
    assert "HARK_FAKE_SPEED must be a number in (0, 100], got 'fast'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.filterwarnings("ignore:The callback was set to None")
def test_failed_wiring_releases_pins(tmp_path: Path) -> None:
    """When wiring fails half-way (bad agent object), the button and LED pins are free again."""
    from gpiozero import LED, Button

    config = parse(
        '[backend]\nurl = "https://keys.example.com/v1"\n'
        "[agent]\nobject = 'no_such_pkg.kitchen:agent'\n[gpio]\nled_pin = 27\n"
        "[history]\nenabled = false\n"
    )
    with mock_pins() as factory:
        with pytest.raises(Exception, match="no_such_pkg"):
            demo.build_with_fake_audio(config, "tok", None, pin_factory=factory)
        Button(17, pin_factory=factory).close()  # GPIOPinInUse if the failed build kept it
        LED(27, pin_factory=factory).close()


def test_provision_is_forwarded(capsys: pytest.CaptureFixture[str]) -> None:
    """`hark provision ...` hands its whole argv to hark.provision (its own help and codes)."""
    with pytest.raises(SystemExit) as listed:
        cli.main(["--help"])
    assert listed.value.code == 0
    assert "provision" in capsys.readouterr().out
    assert cli.main(["provision", "--help"]) == 0
    assert "usage: hark provision" in capsys.readouterr().out
    assert cli.main(["provision"]) == 2  # its target and options are required


WORDS_BASE = '[backend]\nurl = "https://keys.example.com/x"\n'


@pytest.mark.parametrize(
    ("extra", "ok", "text"),
    [
        ('[trigger]\nmode = "wake"\nstop_word = true\n', True, "the stop and wake word models run"),
        ('[trigger]\nmode = "wake"\nwake_word = "/nonexistent.json"\n', False, "trigger.wake_word"),
        ("", None, ""),
    ],
)
def test_doctor_checks_the_word_models(extra: str, ok: bool | None, text: str) -> None:
    """`hark doctor` loads and runs the wake/stop word models the config names, and says
    how to fix a missing model; nothing when no word is configured."""
    pytest.importorskip("pymicro_wakeword")
    from hark.config import parse
    from hark.doctor import _check_words

    checks = _check_words(parse(WORDS_BASE + extra))
    if ok is None:
        assert checks == []
        return
    assert [c.ok for c in checks] == [ok]
    assert text in (checks[0].detail if ok else checks[0].fix + checks[0].detail)


def test_doctor_names_the_extra_for_a_missing_word_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """pymicro-wakeword missing: the fix is the install-device extra."""
    from hark.audio import wake
    from hark.config import parse
    from hark.doctor import _check_words

    def missing() -> None:
        raise wake.WakeWordError("the wake/stop word needs pymicro-wakeword", missing_package=True)

    monkeypatch.setattr(wake, "_import", missing)
    (check,) = _check_words(parse(WORDS_BASE + '[trigger]\nmode = "wake"\n'))
    assert not check.ok and "--extras wake" in check.fix


def test_doctor_checks_the_front_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """[frontend] stages whose library is there: ok; a missing one: the package to install."""
    from hark.audio import frontend
    from hark.config import parse
    from hark.doctor import _check_front_end

    config = parse(WORDS_BASE + '[frontend]\necho_cancel = "speex"\n')
    assert _check_front_end(parse(WORDS_BASE)) == []
    try:
        frontend.SpeexEchoCanceller().close()
    except frontend.FrontEndUnavailableError:
        pytest.skip("libspeexdsp1 is not installed")
    (check,) = _check_front_end(config)
    assert check.ok and "echo canceller" in check.detail

    def missing(*args: object, **kwargs: object) -> None:
        raise frontend.FrontEndUnavailableError("echo cancellation needs libspeexdsp")

    monkeypatch.setattr(frontend.SpeexEchoCanceller, "__init__", missing)
    (check,) = _check_front_end(config)
    assert not check.ok and check.fix == "sudo apt install libspeexdsp1"
