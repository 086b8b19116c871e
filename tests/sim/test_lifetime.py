"""Session length cap, the embedding API and the hark-sim command line."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from hark_sim import SimConfig, start_sim

from tests.sim.helpers import check_server_event, connect

ROOT = Path(__file__).resolve().parents[2]


async def test_session_expiry() -> None:
    """At max_session_s the session gets session_expired and the server closes (1001)."""
    cfg = SimConfig(api_key="sk-sim-test", max_session_s=0.5, realtime_factor=0.0)
    with start_sim(cfg) as sim:
        async with connect(sim, read_created=False) as c:
            created = await c.recv()
            assert created["session"]["expires_at"] <= time.time() + 1.5
            err = await c.error()
            assert err["code"] == "session_expired"
            assert "maximum duration" in err["message"]
            assert await c.close_code() == 1001
        assert sim.sessions[0].wait_closed()
        assert sim.sessions[0].closed_code == 1001
        for event in sim.sessions[0].sent:
            check_server_event(event)


async def test_start_sim_from_async_code_and_urls() -> None:
    """start_sim works inside a running event loop and exposes consistent URLs."""
    with start_sim(SimConfig(api_key="k", realtime_factor=0.0)) as sim:
        assert sim.base_url == sim.http_url + "/v1"
        assert sim.ws_url == f"ws://127.0.0.1:{sim.port}/v1/realtime"
        async with connect(sim):
            await asyncio.sleep(0)
        assert sim.sessions[0].wait_closed()
        assert sim.sessions[0].closed_code == 1000


def test_cli_help_shows_defaults() -> None:
    """hark-sim --help lists every option with its default."""
    out = subprocess.run(
        [sys.executable, "-m", "hark_sim", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in (
        "--host",
        "--port",
        "--api-key",
        "--brain",
        "--script",
        "--max-session-s",
        "--realtime-factor",
    ):
        assert flag in out
    assert "default: 8765" in out and "default: 3600.0" in out


def test_cli_serves_client_secrets() -> None:
    """hark-sim runs in the foreground and mints keys with the given API key."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hark_sim", "--port", str(port), "--api-key", "sk-cli"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/realtime/client_secrets"
        deadline = time.monotonic() + 20
        while True:
            try:
                resp = httpx.post(url, headers={"Authorization": "Bearer sk-cli"}, json={})
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        assert resp.status_code == 200
        assert resp.json()["value"].startswith("ek_")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_script_brain_needs_a_file() -> None:
    """--brain script without --script is a usage error."""
    result = subprocess.run(
        [sys.executable, "-m", "hark_sim", "--brain", "script"], capture_output=True, text=True
    )
    assert result.returncode == 2


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--port", "99999"], "--port"),
        (["--port", "-1"], "--port"),
        (["--port", "http"], "--port"),
        (["--max-session-s", "0"], "--max-session-s"),
        (["--max-session-s", "nan"], "--max-session-s"),
        (["--realtime-factor", "-1"], "--realtime-factor"),
        (["--realtime-factor", "inf"], "--realtime-factor"),
        (["--ping-interval-s", "-0.5"], "--ping-interval-s"),
        (["--log-level", "LOUD"], "--log-level"),
        (["--ssl-certfile", "/nonexistent/cert.pem"], "--ssl-certfile"),
    ],
)
def test_cli_refuses_bad_arguments_in_one_line(args: list[str], named: str) -> None:
    """A bad flag is one line naming it, exit code 2, and the simulator never starts."""
    result = subprocess.run(
        [sys.executable, "-m", "hark_sim", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hark-sim: ") and named in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_port_0_logs_the_port_it_got() -> None:
    """--port 0 listens on a free port and logs that port, not 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hark_sim", "--port", "0", "--api-key", "sk-cli"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = ""
        for line in proc.stdout:  # the process ends (EOF) if it fails to start
            if "hark-sim on" in line:
                break
        match = re.search(r"hark-sim on http://127\.0\.0\.1:(\d+)/v1", line)
        assert match, line
        port = int(match.group(1))
        assert port != 0
        resp = httpx.post(
            f"http://127.0.0.1:{port}/v1/realtime/client_secrets",
            headers={"Authorization": "Bearer sk-cli"},
            json={},
        )
        assert resp.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_port_in_use_is_a_clear_error() -> None:
    """A port already taken: a last line naming it, no traceback, exit code 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "hark_sim", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("hark-sim: cannot listen on ") and f"127.0.0.1:{port}" in last
