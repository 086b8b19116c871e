"""Soak: a real ``hark run`` process for many turns with faults mixed in; does it stay well?

``python -m bench soak --turns 1000 --faults 120`` is the long run; ``make bench`` runs a
short one, then a short run of the key backend's own soak (``bench/soak_backend.py``).
What runs (all on loopback):

- ``hark_sim`` (parrot brain, sessions capped at ``SESSION_CAP_S`` so the daemon rotates
  every couple of minutes) in this process, its fault switches flipped per turn, its
  ``call_next`` steering tool and handoff turns;
- a real ``hark-backend`` process (SQLite) minting the keys, behind a small fault proxy
  of this harness's (401, 429 with Retry-After, 503, or the backend process killed);
- the daemon: ``hark run --fake-audio`` (WAV-backed mic and speaker at ``--speed`` times
  real time) with an agent that has a tool, a hanging tool, a raising tool and a
  handoff; its button and mic driven through ``$HARK_FAKE_CONTROL``
  (``hark.testing.ControlSocket``); its STATUS, READY and WATCHDOG read from a notify
  socket of this harness, as systemd would (``WATCHDOG_USEC`` set).

Turn kinds: held button, tap (blocks of turns with ``trigger.button = "tap"``, switched
by a reload), hands-free, barge-in by voice and by button, tool call, handoff, and
"retry": after a failure, a user who finds the device not ready within ``RETRY_AFTER_S``
presses and speaks again (as people do; it also cuts a network backoff short).  A turn
"completed" when the daemon went through ``speaking`` and back; it is "hung" when it is
still listening, thinking or speaking ``HUNG_AFTER_S`` after it began.  Recovery of a
fault is the time from its injection to the end of the next completed turn.

It prints figures and never fails on them; the exit status says only whether it ran.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACTIVE = frozenset({"listening", "thinking", "speaking"})
SESSION_CAP_S = 420.0  # the daemon rotates 300 s before the cap: a new session every ~2 min
WATCHDOG_S = 10.0  # WATCHDOG_USEC: the daemon pings every 5 s
HUNG_AFTER_S = 60.0  # past response_timeout_s + max_turn_s of the config below
READY_WAIT_S = 200.0  # the longest a fault may keep the daemon from idle (401: 60 s slow retry)
RETRY_AFTER_S = 5.0  # not ready after a failure: the "user" tries again this often
BLOCK = 50  # turns between switches of the button mode (hold <-> tap)
TURN_KINDS = ("hold", "handsfree", "barge_voice", "barge_button", "tool", "handoff")
TURN_WEIGHTS = (5, 3, 1, 1, 1, 1)
FAULT_KINDS = (
    "drop_mid_reply",
    "drop_mid_upload",
    "stall",
    "delay",
    "malformed_json",
    "unknown_events",
    "server_error",
    "key_401",
    "key_429",
    "key_5xx",
    "backend_down",
    "mic_lost",
    "sighup_mid_turn",
    "tool_hangs",
    "tool_raises",
)
BACKEND_DOWN_S = 30.0

AGENT_MODULE = '''
"""The soak's agent: a tool, one that hangs, one that raises, a handoff and back."""
import asyncio

from hark.agent import RealtimeAgent, handoff
from hark.tools import function_tool


@function_tool
def lookup(city: str = "Paris") -> str:
    """Look up the weather in a city."""
    return f"sunny in {city}"


@function_tool
async def slow_tool() -> str:
    """A tool that never answers."""
    await asyncio.sleep(3600)
    return "never"


@function_tool
def broken_tool() -> str:
    """A tool that raises."""
    raise RuntimeError("the soak's tool broke, on purpose")


helper = RealtimeAgent(name="Helper", instructions="You help.", tools=[lookup])
agent = RealtimeAgent(
    name="Main",
    instructions="You answer briefly.",
    tools=[lookup, slow_tool, broken_tool],
    handoffs=[handoff(helper)],
)
helper.handoffs.append(agent)
'''


# --------------------------------------------------------------------------- what systemd sees


@dataclass
class Notices:
    """sd_notify datagrams the daemon sent, with the harness's clock."""

    statuses: list[tuple[float, str]] = field(default_factory=list)
    pings: list[float] = field(default_factory=list)
    ready: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def phase(self) -> str:
        with self.lock:
            line = self.statuses[-1][1] if self.statuses else ""
        return line.split(";")[0].strip()

    @property
    def status(self) -> str:
        with self.lock:
            return self.statuses[-1][1] if self.statuses else ""

    def phases_since(self, mark: int) -> list[str]:
        with self.lock:
            return [line.split(";")[0].strip() for _, line in self.statuses[mark:]]

    def mark(self) -> int:
        with self.lock:
            return len(self.statuses)


def _listen_notify(path: Path, notices: Notices, stop: threading.Event) -> threading.Thread:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)

    def loop() -> None:
        with sock:
            while not stop.is_set():
                try:
                    data = sock.recv(65536).decode("utf-8", "replace")
                except TimeoutError:
                    continue
                now = time.monotonic()
                with notices.lock:
                    for line in data.splitlines():
                        key, _, value = line.partition("=")
                        if key == "STATUS":
                            notices.statuses.append((now, value))
                        elif key == "WATCHDOG" and value == "1":
                            notices.pings.append(now)
                        elif key == "READY":
                            notices.ready.append(now)

    thread = threading.Thread(target=loop, name="soak-notify", daemon=True)
    thread.start()
    return thread


# --------------------------------------------------------------------------- the key backend


class FaultProxy:
    """HTTP in front of hark-backend: passes requests through, or answers a fault itself.

    ``mode``: ``pass``, ``401``, ``429`` (Retry-After: 2), ``503``; a request that cannot
    reach the backend (killed) gets its connection closed, as a dead host would.
    """

    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.mode = "pass"
        self.counts: Counter[str] = Counter()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, name="soak-proxy", daemon=True).start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            mode = self.mode
            self.counts[mode] += 1
            if mode == "pass":
                await self._forward(head, body, writer)
            else:
                status = {"401": "401 Unauthorized", "429": "429 Too Many Requests"}.get(
                    mode, "503 Service Unavailable"
                )
                payload = (
                    b'{"error": {"type": "soak", "code": "soak_fault", "message": "soak fault"}}'
                )
                extra = "Retry-After: 2\r\n" if mode in ("429", "503") else ""
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}"
                    f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def _forward(self, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
        except OSError:
            self.counts["unreachable"] += 1
            return  # the client sees its connection closed
        up_writer.write(head + body)
        await up_writer.drain()
        while chunk := await up_reader.read(65536):
            writer.write(chunk)
        await writer.drain()
        up_writer.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Backend:
    """A real ``hark-backend serve`` process on a fixed port (so it can come back there)."""

    def __init__(self, workdir: Path, sim: Any) -> None:
        from hark_backend.registry import Registry

        self.db_url = f"sqlite:///{workdir / 'devices.db'}"
        registry = Registry(self.db_url)
        registry.init_schema()
        self.token = registry.add("soak", group=None, now_s=time.time())
        registry.close()
        self.port = _free_port()
        self.log_path = workdir / "backend.log"
        self.sim = sim
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with self.log_path.open("a") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hark_backend", "serve", "--host", "127.0.0.1",
                 "--port", str(self.port), "--db", self.db_url,
                 "--openai-base-url", self.sim.base_url, "--log-level", "warning"],
                stdout=log_file, stderr=subprocess.STDOUT,
                env={**os.environ, "OPENAI_API_KEY": self.sim.api_key},
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"hark-backend exited: {self.log_path.read_text()[-1500:]}")
            time.sleep(0.05)
        raise RuntimeError("hark-backend did not start listening")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """``hark run --fake-audio`` as systemd would run it, plus its control socket."""

    def __init__(self, workdir: Path, env: dict[str, str], config: Path, *, pulse: bool) -> None:
        self.pulse = pulse
        self.workdir = workdir
        self.env = env
        self.config = config
        self.control_path = workdir / "control.sock"
        self.log_path = workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exits: list[int] = []

    def start(self) -> None:
        # pulse: the real sound card (PulseAudio), the button over the socket
        socket_only = ["--control-socket", str(self.control_path)]
        audio = socket_only if self.pulse else ["--fake-audio"]
        with self.log_path.open("a") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hark.cli", "run", *audio, "--config", str(self.config)],
                stdout=log_file, stderr=subprocess.STDOUT, env=self.env,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        """False once the process has exited (a crash: it is noted and started again)."""
        assert self.proc is not None
        code = self.proc.poll()
        if code is None:
            return True
        self.exits.append(code)
        self.start()
        return False

    def send(self, command: str, timeout_s: float = 10.0) -> str:
        """One control command; retried while the socket is being re-made (a reload)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(5)
                    sock.connect(str(self.control_path))
                    sock.sendall(command.encode() + b"\n")
                    answer = sock.makefile().readline().strip()
                if answer:
                    return answer
            except OSError:
                pass
            if time.monotonic() > deadline:
                return "error: no control socket"
            time.sleep(0.05)

    def reload(self) -> None:
        os.kill(self.pid, signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def sample(self) -> dict[str, float]:
        """Resident memory (MiB), open fds and threads of the daemon now."""
        fields: dict[str, float] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "VmRSS":
                fields["rss_mib"] = int(value.split()[0]) / 1024
            elif key == "Threads":
                fields["threads"] = int(value)
        fields["fds"] = sum(1 for _ in Path(f"/proc/{self.pid}/fd").iterdir())
        return fields


class FakeVoice:
    """Speaks through the daemon's WAV microphone (the control socket)."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    def say(self, wav: Path) -> None:
        self.d.send(f"say {wav}")

    def unplug(self, seconds: float) -> None:
        self.d.send(f"unplug {seconds}")


class PulseVoice:
    """Speaks into a private PulseAudio's microphone; unplugging kills the sound server
    (every device vanishes, as a USB card pulled out) and starts it again."""

    def __init__(self, rig: Any) -> None:
        self.rig = rig

    def say(self, wav: Path) -> None:
        self.rig.play_into_mic(wav)

    def unplug(self, seconds: float) -> None:
        self.rig.crash()
        timer = threading.Timer(seconds, self.rig.start)
        timer.daemon = True
        timer.start()


def _config_text(
    backend_url: str,
    sim: Any,
    workdir: Path,
    *,
    button: str = "hold",
    volume: float = 1.0,
    pulse: bool = False,
) -> str:
    audio = 'input_device = "pulse"\noutput_device = "pulse"' if pulse else ""
    return f"""
[backend]
url = "{backend_url}"
token_file = "{workdir / "token"}"
timeout_s = 5

[realtime]
url = "{sim.ws_url}"

[agent]
object = "soak_agent:agent"
tool_timeout_s = 2

[trigger]
mode = "both"
button = "{button}"

[audio]
volume = {volume}
{audio}

[session]
policy = "always"
response_timeout_s = 8
max_turn_s = 20

[history]
enabled = true
path = "{workdir / "history.jsonl"}"

[log]
level = "info"
"""


# --------------------------------------------------------------------------- the campaign


@dataclass
class Tally:
    turns: Counter[str] = field(default_factory=Counter)
    completed: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    hung: list[str] = field(default_factory=list)
    recovery_s: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    stale_errors: int = 0  # a completed turn ended idle with "last error" still in STATUS
    samples: dict[int, dict[str, float]] = field(default_factory=dict)
    not_ready: int = 0


class Campaign:
    def __init__(
        self, daemon: Daemon, notices: Notices, sim: Any, proxy: FaultProxy, backend: Backend,
        phrases: dict[str, Path], speed: float, rewrite: Callable[[str, float], None],
        voice: FakeVoice | PulseVoice,
    ) -> None:  # fmt: skip
        self.d = daemon
        self.voice = voice
        # Held past the phrase's end: paplay starts a few hundred ms late.
        self.tail_s = 0.15 if isinstance(voice, FakeVoice) else 0.6
        self.n = notices
        self.sim = sim
        self.proxy = proxy
        self.backend = backend
        self.phrases = phrases
        self.speed = speed
        self.rewrite = rewrite
        self.button = "hold"
        self.volume = 1.0
        self.agent = "main"  # who answers now: a handoff turn flips it, a reload resets it
        self.tally = Tally()
        self.pending: list[tuple[str, float]] = []  # faults awaiting a completed turn
        self.trace: Callable[[str], None] = lambda line: None
        self.key_seen = 0  # the proxy's count of the key fault's answers when it began
        self.key_since = 0.0

    # -- waiting on the daemon ------------------------------------------------------------

    def wait(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            if not self.d.alive():
                return False
            time.sleep(0.02)
        return predicate()

    def wait_idle(self) -> bool:
        """Like a user after a failure: wait a few seconds for the device to be ready,
        then press and speak again (which may cut a backoff short), until it is."""
        deadline = time.monotonic() + READY_WAIT_S
        while time.monotonic() < deadline:
            if self.wait(lambda: self.n.phase == "idle", RETRY_AFTER_S):
                return True
            if self.n.phase not in ACTIVE:
                self.turn("retry", None, settle_only=True)
        self.tally.not_ready += 1
        return False

    def say_s(self, name: str) -> float:
        import wave

        with wave.open(str(self.phrases[name])) as w:
            return float(w.getnframes() / w.getframerate() / self.speed)

    def settle(self, mark: int, began: float) -> tuple[bool, list[str]]:
        """Wait for the turn to end; (hung, phases seen)."""

        def ended() -> bool:
            phases = self.n.phases_since(mark)
            opened = any(p in ACTIVE for p in phases)
            if not opened:
                return time.monotonic() - began > 5.0  # the turn never opened (link down)
            return self.n.phase not in ACTIVE

        done = self.wait(ended, HUNG_AFTER_S)
        return (not done, self.n.phases_since(mark))

    # -- the turns ------------------------------------------------------------------------

    def button_turn(self, phrase: str = "short", during: Callable[[], None] | None = None) -> None:
        if self.button == "hold":
            self.d.send("press")
            self.voice.say(self.phrases[phrase])
            time.sleep(self.say_s(phrase) * 0.6)
            if during is not None:
                during()
            time.sleep(self.say_s(phrase) * 0.4 + self.tail_s)
            self.d.send("release")
        else:
            self.d.send("press")
            self.d.send("release")
            self.voice.say(self.phrases[phrase])
            if during is not None:
                time.sleep(self.say_s(phrase) * 0.6)
                during()

    def until_speaking(self, mark: int) -> bool:
        """Wait for the reply to start; False if the turn ended (or never opened) without."""

        def decided() -> bool:
            phases = self.n.phases_since(mark)
            return "speaking" in phases or (
                any(p in ACTIVE for p in phases) and self.n.phase not in ACTIVE
            )

        return self.wait(decided, 20) and "speaking" in self.n.phases_since(mark)

    def turn(self, kind: str, fault: str | None, *, settle_only: bool = False) -> None:
        t = self.tally
        t.turns[kind] += 1
        began = time.monotonic()
        mark = self.n.mark()
        during = self.inject(fault) if fault else None
        if kind in ("hold", "tool", "handoff", "retry"):
            if kind == "tool":
                self.sim.config.call_next.append(("lookup", '{"city": "Oslo"}'))
            elif kind == "handoff":
                target = "transfer_to_helper" if self.agent == "main" else "transfer_to_main"
                self.sim.config.call_next.append((target, "{}"))
            self.button_turn(during=during)
        elif kind == "handsfree":
            self.voice.say(self.phrases["short"])
            if during is not None:
                time.sleep(self.say_s("short") * 0.6)
                during()
        elif kind in ("barge_voice", "barge_button"):
            self.button_turn("long", during=during)
            if self.until_speaking(mark):
                if kind == "barge_voice":
                    self.voice.say(self.phrases["short"])
                else:
                    self.button_turn()
        hung, phases = self.settle(mark, began)
        self.trace(
            f"{time.monotonic() - began:6.1f} s {kind}/{fault} hung={hung} "
            f"{' > '.join(p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p)}"
        )
        if hung:
            t.hung.append(f"{kind}/{fault}: {' > '.join(phases[-8:])}")
            self.wait(lambda: self.n.phase not in ACTIVE, READY_WAIT_S)
        speaking = phases.count("speaking")
        ok = speaking >= (2 if kind.startswith("barge") else 1) and not hung
        if ok:
            t.completed[kind] += 1
            if kind == "handoff":
                self.agent = "helper" if self.agent == "main" else "main"
            now = time.monotonic()
            for kind_, at in self.pending:
                t.recovery_s[kind_].append(now - at)
            self.pending.clear()
            if self.wait(lambda: self.n.phase == "idle", 10) and "last error" in self.n.status:
                t.stale_errors += 1
        if not settle_only:
            self.after(fault)

    # -- the faults -----------------------------------------------------------------------

    def inject(self, fault: str) -> Callable[[], None] | None:
        """Set the fault up before the turn; what to do mid-turn, if anything."""
        self.tally.faults[fault] += 1
        self.pending.append((fault, time.monotonic()))
        faults = self.sim.faults
        if fault == "drop_mid_reply":
            faults.drop_after_audio_deltas = 2
        elif fault == "stall":
            faults.stall_after_audio_deltas = 2
        elif fault == "delay":
            faults.event_delay_s = 0.4
        elif fault == "malformed_json":
            faults.malformed_json = True
        elif fault == "unknown_events":
            faults.unknown_events = True
        elif fault == "server_error":
            faults.server_errors = True
        elif fault == "tool_hangs":
            self.sim.config.call_next.append(("slow_tool", "{}"))
        elif fault == "tool_raises":
            self.sim.config.call_next.append(("broken_tool", "{}"))
        elif fault == "drop_mid_upload":
            return self.drop_now
        elif fault == "mic_lost":
            return self.unplug_now
        elif fault == "sighup_mid_turn":
            return self.reload_now
        elif fault in ("key_401", "key_429", "key_5xx", "backend_down"):
            self.key_fault(fault)
        return None

    def key_fault(self, fault: str) -> None:
        """The key backend fails; the open session is dropped so the daemon needs a key."""
        self.key_since = time.monotonic()
        if fault == "backend_down":
            self.key_seen = self.proxy.counts["unreachable"]
            self.backend.kill()
        else:
            mode = {"key_401": "401", "key_429": "429", "key_5xx": "503"}[fault]
            self.key_seen = self.proxy.counts[mode]
            self.proxy.mode = mode
        self.sim.drop_connections()
        self.wait(lambda: self.n.phase != "idle", 5)

    def after(self, fault: str | None) -> None:
        faults = self.sim.faults
        if fault in ("key_401", "key_429", "key_5xx", "backend_down"):
            # The fault stands until the daemon has met it (its backoff decides when it
            # asks), and the backend stays down for BACKEND_DOWN_S.
            seen = "unreachable" if fault == "backend_down" else self.proxy.mode
            self.wait(lambda: self.proxy.counts[seen] > self.key_seen, 150)
            if fault == "backend_down":
                time.sleep(max(0.0, self.key_since + BACKEND_DOWN_S - time.monotonic()))
                self.backend.start()
            self.proxy.mode = "pass"
            # recovery counts from when the backend is back
            now = time.monotonic()
            self.pending = [(k, now) if k == fault else (k, a) for k, a in self.pending]
        faults.drop_after_audio_deltas = None
        faults.stall_after_audio_deltas = None
        faults.event_delay_s = 0.0
        faults.malformed_json = faults.unknown_events = faults.server_errors = False
        self.sim.config.call_next.clear()
        self.wait_idle()

    def drop_now(self) -> None:
        self.sim.drop_connections()

    def unplug_now(self) -> None:
        self.voice.unplug(1.5)

    def reload_now(self) -> None:
        self.agent = "main"
        self.volume = 0.9 if self.volume == 1.0 else 1.0
        self.rewrite(self.button, self.volume)
        self.d.reload()

    def switch_button(self) -> None:
        self.agent = "main"
        self.button = "tap" if self.button == "hold" else "hold"
        mark = len(self.n.ready)
        self.rewrite(self.button, self.volume)
        self.d.reload()
        self.wait(lambda: len(self.n.ready) > mark, 30)
        self.wait_idle()


def _schedule(turns: int, faults: int, seed: int) -> list[tuple[str, str | None]]:
    rng = random.Random(seed)
    kinds = rng.choices(TURN_KINDS, TURN_WEIGHTS, k=turns)
    plan: list[tuple[str, str | None]] = [(k, None) for k in kinds]
    first = min(20, turns // 5)
    slots = sorted(rng.sample(range(first, turns), min(faults, turns - first)))
    cycle: list[str] = []
    for slot in slots:
        if not cycle:
            cycle = rng.sample(FAULT_KINDS, len(FAULT_KINDS))
        fault = cycle.pop()
        kind = plan[slot][0]
        if fault in ("tool_hangs", "tool_raises", "drop_mid_upload", "mic_lost"):
            kind = "hold"  # these need a button turn to happen in
        plan[slot] = (kind, fault)
    return plan


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hark-soak-"))
    try:
        yield path
    finally:
        if os.environ.get("HARK_BENCH_KEEP"):
            print(f"   kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def run(
    turns: int, faults: int, speed: float, seed: int, trace: Path | None = None, pulse: bool = False
) -> bool:
    """The campaign; prints its figures; False when the daemon crashed or a turn hung."""
    from hark.testing import speech_wav
    from hark_sim import SimConfig, start_sim

    if pulse:
        speed = 1.0  # a sound server plays in real time
    sim_config = SimConfig(
        api_key="sk-sim-soak", realtime_factor=0.1 / speed, max_session_s=SESSION_CAP_S
    )
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(_workdir())
        sim = stack.enter_context(start_sim(sim_config))
        rig = None
        if pulse:
            from tests.audio_rig import PulseRig

            rig = stack.enter_context(PulseRig(work))
        (work / "soak_agent.py").write_text(AGENT_MODULE)
        rate = 48_000 if pulse else 24_000
        phrases = {
            "short": speech_wav("turn on the light", work / "short.wav", rate),
            "long": speech_wav(
                "tell me a long story about the mountains of the moon and the stars above",
                work / "long.wav",
                rate,
            ),
        }
        backend = Backend(work, sim)
        stack.callback(backend.stop)
        proxy = FaultProxy(backend.port)
        token_file = work / "token"
        token_file.write_text(backend.token + "\n")
        token_file.chmod(0o600)
        config = work / "hark.toml"
        url = f"http://127.0.0.1:{proxy.port}/v1/realtime/client_secrets"

        def rewrite(button: str, volume: float) -> None:
            tmp = config.with_suffix(".new")
            text = _config_text(url, sim, work, button=button, volume=volume, pulse=pulse)
            tmp.write_text(text)
            tmp.replace(config)

        rewrite("hold", 1.0)
        notices, stop = Notices(), threading.Event()
        _listen_notify(work / "notify.sock", notices, stop)
        stack.callback(stop.set)
        env = {
            **os.environ,
            **(rig.env if rig is not None else {}),
            "NOTIFY_SOCKET": str(work / "notify.sock"),
            "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6)),
            "PYTHONPATH": os.pathsep.join([str(work), os.environ.get("PYTHONPATH", "")]),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if rig is None:
            env |= {"HARK_FAKE_CONTROL": str(work / "control.sock"), "HARK_FAKE_SPEED": str(speed)}
        env.pop("WATCHDOG_PID", None)
        daemon = Daemon(work, env, config, pulse=pulse)
        voice = PulseVoice(rig) if rig is not None else FakeVoice(daemon)
        started = time.monotonic()
        daemon.start()
        stack.callback(daemon.stop)
        campaign = Campaign(
            daemon, notices, sim, proxy, backend, phrases, speed, rewrite, voice
        )  # fmt: skip
        if trace is not None:
            trace_file = stack.enter_context(trace.open("a", buffering=1))
            campaign.trace = lambda line: print(time.strftime("%H:%M:%S"), line, file=trace_file)
        if not campaign.wait(lambda: bool(notices.ready) and notices.phase == "idle", 60):
            print(f"   the daemon did not get ready: {daemon.log_path.read_text()[-2000:]}")
            return False
        plan = _schedule(turns, faults, seed)
        t = campaign.tally
        t.samples[0] = daemon.sample()
        for index, (kind, fault) in enumerate(plan, start=1):
            if index > 1 and (index - 1) % BLOCK == 0:
                campaign.switch_button()
            campaign.turn(kind, fault)
            if index % 100 == 0 or index == len(plan):
                with contextlib.suppress(OSError):
                    t.samples[index] = daemon.sample()
                if index % 100 == 0:
                    took = time.monotonic() - started
                    print(f"   ... {index} turns, {took:.0f} s", flush=True)
        history = work / "history.jsonl"
        _report(campaign, notices, daemon, sim, time.monotonic() - started, history)
        return not daemon.exits and not t.hung
    return False


def _report(c: Campaign, n: Notices, d: Daemon, sim: Any, elapsed_s: float, history: Path) -> None:
    t = c.tally
    total = sum(t.turns.values())
    print(f"   {total} turns, {sum(t.faults.values())} faults in {elapsed_s:.0f} s")
    by_kind = ", ".join(f"{k} {t.completed[k]}/{t.turns[k]}" for k in sorted(t.turns))
    print(f"   turns completed/driven by kind: {by_kind}")
    print(f"   faults by kind: {', '.join(f'{k} {v}' for k, v in sorted(t.faults.items()))}")
    print(f"   crashes (daemon exits): {len(d.exits)} {d.exits or ''}")
    print(f"   hung turns (active {HUNG_AFTER_S:.0f} s after they began): {len(t.hung)}")
    for line in t.hung[:10]:
        print(f"     {line}")
    gaps = [b - a for a, b in zip(n.pings, n.pings[1:], strict=False)]
    missed = sum(1 for g in gaps if g > WATCHDOG_S)
    print(
        f"   watchdog: {len(n.pings)} pings, longest gap {max(gaps, default=0):.1f} s,"
        f" {missed} gaps over WatchdogSec={WATCHDOG_S:.0f} s (systemd would have restarted)"
    )
    if t.samples:
        first, last = min(t.samples), max(t.samples)
        base = t.samples.get(100, t.samples[first])
        base_at = 100 if 100 in t.samples else first
        for key, unit in (("rss_mib", "MiB"), ("fds", ""), ("threads", "")):
            series = " ".join(f"{t.samples[i][key]:.1f}" for i in sorted(t.samples))
            grow = t.samples[last][key] - base[key]
            per100 = grow / max(1, (last - base_at) / 100)
            print(
                f"   {key}: start {t.samples[first][key]:.1f}, turn {base_at} {base[key]:.1f},"
                f" end {t.samples[last][key]:.1f} {unit}; growth {grow:+.1f} from turn"
                f" {base_at} ({per100:+.2f} per 100 turns); every 100: {series}"
            )
    size = history.stat().st_size if history.exists() else 0
    print(f"   history file: {size / 1024:.1f} KiB ({history.name})")
    print(
        f"   completed turns ending idle with an old error still in STATUS: {t.stale_errors};"
        f" final STATUS {n.status!r}"
    )
    recov = ", ".join(
        f"{k} {max(v):.1f} s" for k, v in sorted(t.recovery_s.items()) if v
    )  # fmt: skip
    print(f"   longest recovery (fault -> end of next completed turn): {recov}")
    unrecovered = Counter(k for k, _ in c.pending)
    if unrecovered:
        print(f"   faults not followed by a completed turn: {dict(unrecovered)}")
    print(
        f"   sim sessions: {len(sim.sessions)} (rotations and reconnects);"
        f" key proxy: {dict(c.proxy.counts)}; waits for idle that timed out: {t.not_ready}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__)
    parser.add_argument("--turns", type=int, default=40, help="turns to drive (default 40)")
    parser.add_argument("--faults", type=int, default=10, help="faults to inject (default 10)")
    parser.add_argument("--speed", type=float, default=4.0, help="fake audio pace (default 4)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trace", type=Path, help="append one line per turn to this file")
    parser.add_argument(
        "--audio",
        choices=["fake", "pulse"],
        default="fake",
        help="fake: WAV-backed mic and speaker; pulse: the real PyAudio through a private "
        "PulseAudio, in real time (default fake)",
    )
    parser.add_argument(
        "--backend-s",
        type=float,
        default=45.0,
        help="then the key backend's soak (bench/soak_backend.py: two replicas on "
        "PostgreSQL, one killed, the database restarted) for this long; 0 skips it "
        "(python -m bench.soak_backend --duration-s 600 is its long run)",
    )
    args = parser.parse_args(argv or [])
    if args.turns < 1 or args.faults < 0 or not 0 < args.speed <= 20:
        parser.error("--turns >= 1, --faults >= 0, 0 < --speed <= 20")
    how = f"--fake-audio at {args.speed:g}x real time" if args.audio == "fake" else "on PulseAudio"
    print(
        f"   hark run {how}, {args.turns} turns,"
        f" {args.faults} faults (seed {args.seed}); sim sessions capped at {SESSION_CAP_S:.0f} s"
    )
    if args.audio == "pulse":
        from tests.audio_rig import pulse_available

        if not pulse_available():
            print("   skipped: pulseaudio / ALSA pulse plugin missing")
            return
    ok = run(args.turns, args.faults, args.speed, args.seed, args.trace, args.audio == "pulse")
    print(f"   verdict: {'held' if ok else 'FAILED (crash or hung turn)'}")
    if args.backend_s > 0:
        from bench import soak_backend

        print(f"   -- the key backend, {args.backend_s:g} s (bench/soak_backend.py)", flush=True)
        try:
            held = soak_backend.run(duration_s=args.backend_s)
        except RuntimeError as exc:  # no PostgreSQL here
            print(f"   skipped: {exc}")
        else:
            print(f"   backend verdict: {'held' if held else 'FAILED'}")


if __name__ == "__main__":
    main(sys.argv[1:])
