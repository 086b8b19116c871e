"""Session length cap, the embedding API and the hark-sim command line."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
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
