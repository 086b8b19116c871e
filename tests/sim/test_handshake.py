"""The WebSocket handshake: authentication, model and beta checks, with their close codes."""

from __future__ import annotations

import asyncio
import time

import httpx
import websockets
from hark_sim import SimConfig, SimHandle, start_sim

from tests.sim.helpers import connect


async def test_missing_key_gets_null_code_and_close_3000(sim: SimHandle) -> None:
    """No Authorization: error with code null and the documented message, then close 3000."""
    async with connect(sim, key=None, read_created=False) as c:
        err = await c.error()
        assert err["code"] is None
        assert err["message"] == "Missing bearer or basic authentication in header"
        assert await c.close_code() == 3000
    assert sim.sessions[0].closed_code == 3000


async def test_bad_key_gets_invalid_api_key_and_close_3000(sim: SimHandle) -> None:
    """A wrong key: invalid_api_key, then close 3000 (after a 101 upgrade)."""
    async with connect(sim, key="sk-wrong", read_created=False) as c:
        assert (await c.error())["code"] == "invalid_api_key"
        assert await c.close_code() == 3000


async def test_beta_header_is_fatal(sim: SimHandle) -> None:
    """OpenAI-Beta: realtime=v1 gets beta_api_shape_disabled and close 4000."""
    async with connect(sim, headers={"OpenAI-Beta": "realtime=v1"}, read_created=False) as c:
        assert (await c.error())["code"] == "beta_api_shape_disabled"
        assert await c.close_code() == 4000


async def test_missing_model(sim: SimHandle) -> None:
    """No ?model=: missing_model and close 4000."""
    async with connect(sim, model=None, read_created=False) as c:
        assert (await c.error())["code"] == "missing_model"
        assert await c.close_code() == 4000


async def test_unknown_model(sim: SimHandle) -> None:
    """An unknown model: invalid_model and close 4000."""
    async with connect(sim, model="gpt-nope", read_created=False) as c:
        assert (await c.error())["code"] == "invalid_model"
        assert await c.close_code() == 4000


async def test_key_in_subprotocol(sim: SimHandle) -> None:
    """The browser form (openai-insecure-api-key.<key>) works and is answered with 'realtime'."""
    protos = ["realtime", f"openai-insecure-api-key.{sim.api_key}"]
    async with connect(sim, subprotocols=protos) as c:
        assert c.ws.subprotocol == "realtime"


async def test_minted_key_opens_several_sessions(sim: SimHandle) -> None:
    """One ek_ key opens more than one session until it expires."""
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            sim.base_url + "/realtime/client_secrets",
            headers={"Authorization": f"Bearer {sim.api_key}"},
            json={"session": {"type": "realtime", "instructions": "Be brief."}},
        )
    key = resp.json()["value"]
    for _ in range(2):
        async with connect(sim, key=key, read_created=False) as c:
            created = await c.recv()
            assert created["session"]["instructions"] == "Be brief."
    assert [r.key_kind for r in sim.sessions] == ["ephemeral", "ephemeral"]


async def test_expired_minted_key_is_refused(sim: SimHandle) -> None:
    """A minted key past its expires_at is an invalid key."""
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            sim.base_url + "/realtime/client_secrets",
            headers={"Authorization": f"Bearer {sim.api_key}"},
            json={"expires_after": {"anchor": "created_at", "seconds": 10}},
        )
    key = resp.json()["value"]
    sim.state.keys[key].expires_at = int(time.time()) - 1
    async with connect(sim, key=key, read_created=False) as c:
        assert (await c.error())["code"] == "invalid_api_key"
        assert await c.close_code() == 3000


async def test_ping_is_sent(sim_config: SimConfig) -> None:
    """The server pings idle connections at the configured interval."""
    sim_config.ping_interval_s = 0.2
    with start_sim(sim_config) as sim:
        async with websockets.connect(
            sim.ws_url + "?model=gpt-realtime",
            additional_headers={"Authorization": f"Bearer {sim.api_key}"},
        ) as ws:
            await ws.recv()  # session.created
            pings = 0
            original = ws.protocol.receive_data

            def spy(data: bytes) -> None:
                nonlocal pings
                if data[:1] == b"\x89":  # FIN + opcode 9 (ping)
                    pings += 1
                original(data)

            ws.protocol.receive_data = spy  # type: ignore[method-assign]
            deadline = time.monotonic() + 10
            while pings == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert pings >= 1
