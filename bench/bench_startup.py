"""Daemon start-up and footprint: exec → READY=1 for `hark run`, idle RSS, CLI import costs.

`hark run --fake-audio` (WAV-backed silence in, nothing out; GPIO on gpiozero's mock
pins) against `hark_sim` on loopback, with a real NOTIFY_SOCKET and the unit file's
Environment= settings. Targets (issue 4):
exec → READY=1 ≤ 0.5 s, idle resident memory ≤ 50 MiB. Prints figures, asserts nothing.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 5
IDLE_S = 3.0


def _memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (what the target means) and its private part, RssAnon, from /proc/PID/status."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 1024
    return out


def _unit_environment() -> dict[str, str]:
    """systemd/hark.service's Environment= settings (those without %-specifiers)."""
    unit = Path(__file__).resolve().parents[1] / "systemd" / "hark.service"
    env: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment=") and "%" not in line:
            for assignment in line.removeprefix("Environment=").split():
                key, _, value = assignment.partition("=")
                env[key] = value
    return env


def _run_once(
    config: Path, tmp: Path, measure_rss: bool, extra_env: dict[str, str] | None = None
) -> tuple[float, float, dict[str, float]]:
    """One start: (exec → READY s, exec → session open s, idle RSS MiB)."""
    path = tmp / f"notify-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    env = dict(os.environ, **_unit_environment())
    env.update(NOTIFY_SOCKET=str(path), GPIOZERO_PIN_FACTORY="mock", **(extra_env or {}))
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hark.cli", "run", "--fake-audio", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ready_s = linked_s = float("nan")
    rss: dict[str, float] = {}
    try:
        while True:
            message = sock.recv(4096).decode()
            now = time.perf_counter() - started
            if message == "READY=1" and ready_s != ready_s:
                ready_s = now
            if message.startswith("STATUS=idle"):
                linked_s = now
                break
        if measure_rss:
            time.sleep(IDLE_S)
            rss = _memory_mib(proc.pid)
    finally:
        stop_started = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        rss["stop_s"] = time.perf_counter() - stop_started
        sock.close()
    return ready_s, linked_s, rss


LIBRARIES = (
    "asyncio, ssl, numpy, soxr, pyaudio, websockets.asyncio.client, pydantic.main, webrtcvad, "
    "systemd.daemon, systemd.journal, gpiozero, urllib.request"
)
"""What `hark run` imports from outside hark: the floor under its resident memory."""


def _import_rss_mib(modules: str | None) -> float:
    """VmRSS of a fresh interpreter after importing ``modules`` (None: nothing)."""
    code = (f"import {modules}\n" if modules else "") + (
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout) / 1024


def _compiled_copy(tmp: Path) -> Path:
    """A copy of the hark package with its bytecode written next to it, as a wheel installs
    it (first on PYTHONPATH, it shadows the editable checkout)."""
    import compileall
    import shutil

    import hark

    site = tmp / "site"
    shutil.copytree(Path(hark.__file__).parent, site / "hark")
    compileall.compile_dir(site, quiet=1)
    return site


def _time_cmd(argv: list[str], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    from hark_sim import SimConfig, start_sim

    py = sys.executable
    print(f"   python startup (python -c pass):       {_time_cmd([py, '-c', 'pass']):6.3f} s")
    version_s = _time_cmd([py, "-m", "hark.cli", "--version"])
    print(f"   hark --version:                        {version_s:6.3f} s")
    for module in ("hark.config", "hark.service.loop", "hark.net.link", "hark.audio.soundcard"):
        t = _time_cmd([py, "-c", f"import {module}"])
        print(f"   import {module:<31} {t:6.3f} s")

    with (
        tempfile.TemporaryDirectory() as tmp_name,
        start_sim(SimConfig(api_key="sk-bench", realtime_factor=0)) as sim,
    ):
        tmp = Path(tmp_name)
        token = tmp / "token"
        token.write_text("sk-bench\n")
        token.chmod(0o600)
        config = tmp / "hark.toml"
        config.write_text(
            f'[backend]\nurl = "{sim.base_url}/realtime/client_secrets"\ntoken_file = "token"\n'
            f'[realtime]\nurl = "{sim.ws_url}"\n[history]\nenabled = false\n'
        )
        results = [_run_once(config, tmp, measure_rss=(i == RUNS - 1)) for i in range(RUNS)]
        compiled = {"PYTHONPATH": str(_compiled_copy(tmp))}
        installed_runs = [_run_once(config, tmp, i == RUNS - 1, compiled) for i in range(RUNS)]
    installed = [r[0] for r in installed_runs]
    installed_rss = installed_runs[-1][2]
    ready = [r[0] for r in results]
    linked = [r[1] for r in results]
    rss = results[-1][2]
    stops = [r[2]["stop_s"] for r in results]
    print(
        f"   hark run: exec -> READY=1              median {statistics.median(ready):.3f} s, "
        f"min {min(ready):.3f} s over {RUNS} (target <= 0.5 s)"
    )
    print(
        f"   hark run: exec -> READY=1, bytecode    median {statistics.median(installed):.3f} s "
        "(hark's modules compiled, as pip installs them; the line above compiles them at "
        "each start, PYTHONDONTWRITEBYTECODE=1 being set here)"
    )
    print(f"   hark run: exec -> session open (idle)  median {statistics.median(linked):.3f} s")
    print(
        f"   hark run: idle VmRSS after {IDLE_S:.0f} s        {rss.get('VmRSS', 0):.1f} MiB "
        f"(anon {rss.get('RssAnon', 0):.1f}, file {rss.get('RssFile', 0):.1f}; target <= 50 MiB)"
    )
    print(
        f"   hark run: idle VmRSS, bytecode        {installed_rss.get('VmRSS', 0):.1f} MiB "
        f"(anon {installed_rss.get('RssAnon', 0):.1f}, file {installed_rss.get('RssFile', 0):.1f})"
    )
    bare, libraries = _import_rss_mib(None), _import_rss_mib(LIBRARIES)
    print(
        f"   floor: python alone {bare:.1f} MiB; + the libraries hark run imports "
        f"(numpy, pydantic, websockets, gpiozero, ...; none of hark) {libraries:.1f} MiB"
    )
    print(
        f"   hark run: SIGTERM -> exit              median {statistics.median(stops):.3f} s, "
        f"max {max(stops):.3f} s (must be < 5 s)"
    )
    load = os.getloadavg()
    print(f"   load average while measuring: {load[0]:.2f} on {os.cpu_count()} CPUs")
