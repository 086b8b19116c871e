"""Fault injection: refused keys, added latency, dropped connections, junk frames."""

from __future__ import annotations

import asyncio
import json

import httpx
import pydantic
import pytest
import websockets
from hark_sim import SimHandle, audio
from hark_sim.outbox import UNKNOWN_EVENT_TYPE

from tests.sim.helpers import MANUAL_TURNS, Client, b64, check_server_event, connect


async def test_refuse_keys(sim: SimHandle) -> None:
    """refuse_keys: client_secrets answers 401 and the WebSocket invalid_api_key + close 3000."""
    sim.faults.refuse_keys = True
    async with httpx.AsyncClient() as http:
        resp = await http.post(
            sim.base_url + "/realtime/client_secrets",
            headers={"Authorization": f"Bearer {sim.api_key}"},
            json={},
        )
    assert resp.status_code == 401
    async with connect(sim, read_created=False) as c:
        assert (await c.error())["code"] == "invalid_api_key"
        assert await c.close_code() == 3000


async def test_event_delay(sim: SimHandle) -> None:
    """event_delay_s holds every event back: nothing arrives early, everything arrives in order."""
    sim.faults.event_delay_s = 1.5
    async with connect(sim, read_created=False) as c:
        with pytest.raises(TimeoutError):
            await c.recv(timeout_s=0.3)
        assert (await c.recv())["type"] == "session.created"
        sim.faults.event_delay_s = 0.0
        await c.send({"type": "input_audio_buffer.clear"})
        assert (await c.recv())["type"] == "input_audio_buffer.cleared"


async def test_drop_mid_response(sim: SimHandle) -> None:
    """drop_after_audio_deltas: the socket dies without a close frame after N audio deltas."""
    sim.faults.drop_after_audio_deltas = 3
    deltas = 0
    async with connect(sim) as c:
        await c.send({"type": "session.update", "session": MANUAL_TURNS})
        await c.until("session.updated")
        await c.send({"type": "input_audio_buffer.append", "audio": b64(audio.tone(2000))})
        await c.send({"type": "input_audio_buffer.commit"})
        await c.send({"type": "response.create"})
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            while True:
                event = await c.recv()
                deltas += event["type"] == "response.output_audio.delta"
        assert closed.value.rcvd is None  # no close frame: an abrupt drop
    assert deltas == 3
    assert sim.sessions[0].wait_closed()
    assert sim.sessions[0].closed_code == 1006


async def test_malformed_json_frames(sim: SimHandle) -> None:
    """malformed_json: a non-JSON frame follows session.created and precedes response.created."""
    sim.faults.malformed_json = True
    async with connect(sim, read_created=False) as c:
        assert json.loads(await c.ws.recv())["type"] == "session.created"
        with pytest.raises(json.JSONDecodeError):
            json.loads(await c.ws.recv())
        await c.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        with pytest.raises(json.JSONDecodeError):
            json.loads(await c.ws.recv())
        assert json.loads(await c.ws.recv())["type"] == "response.created"
        await c.until("response.done")
    assert len(sim.sessions[0].raw_sent) == 2


async def test_unknown_event_types(sim: SimHandle) -> None:
    """unknown_events: an event of a type openai's models do not know is sent."""
    sim.faults.unknown_events = True
    async with connect(sim, validate=False) as c:
        event = await c.recv()
    assert event["type"] == UNKNOWN_EVENT_TYPE
    with pytest.raises(pydantic.ValidationError):
        check_server_event(event)


async def test_server_error_events(sim: SimHandle) -> None:
    """server_errors: a valid ``error`` event of type server_error, then the response."""
    sim.faults.server_errors = True
    async with connect(sim) as c:
        event = await c.recv()
        assert event["type"] == "error"
        assert event["error"]["type"] == "server_error"
        await c.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        seen = [e["type"] for e in await c.until("response.done")]
    assert seen.index("error") < seen.index("response.created")


async def test_call_next_steers_one_response(sim: SimHandle) -> None:
    """call_next: the next response calls that tool; the one after asks the brain again."""
    sim.config.call_next.append(("get_current_time", "{}"))
    async with connect(sim) as c:
        await c.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        done = (await c.until("response.done"))[-1]
        (item,) = done["response"]["output"]
        assert (item["type"], item["name"], item["arguments"]) == (
            "function_call",
            "get_current_time",
            "{}",
        )
        await c.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        done = (await c.until("response.done"))[-1]
    assert [i["type"] for i in done["response"]["output"]] == ["message"]
    assert sim.config.call_next == []


async def test_faults_apply_to_running_sessions(sim: SimHandle) -> None:
    """A fault set while a session is open applies to its next response."""
    async with connect(sim) as c:
        sim.faults.drop_after_audio_deltas = 1
        await c.send({"type": "session.update", "session": MANUAL_TURNS})
        await c.until("session.updated")
        await c.send({"type": "input_audio_buffer.append", "audio": b64(audio.tone(500))})
        await c.send({"type": "input_audio_buffer.commit"})
        await c.send({"type": "response.create"})
        with pytest.raises(websockets.ConnectionClosedError):
            await c.until("response.done")
    await asyncio.sleep(0)


async def test_stall_mid_response(sim: SimHandle) -> None:
    """stall_after_audio_deltas: the server goes silent, so the client's keepalive gives up."""
    sim.faults.stall_after_audio_deltas = 2
    async with websockets.connect(
        sim.ws_url + "?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {sim.api_key}"},
        ping_interval=0.2,
        ping_timeout=0.5,
        close_timeout=0.5,
    ) as ws:
        c = Client(ws)
        await c.until("session.created")
        await c.send({"type": "session.update", "session": MANUAL_TURNS})
        await c.until("session.updated")
        await c.send({"type": "input_audio_buffer.append", "audio": b64(audio.tone(2000))})
        await c.send({"type": "input_audio_buffer.commit"})
        await c.send({"type": "response.create"})
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            while True:
                await c.recv(timeout_s=30)
    assert closed.value.sent is not None and closed.value.sent.code == 1011
    assert [e["type"] for e in c.events].count("response.output_audio.delta") == 2


async def test_drop_connections_now(sim: SimHandle) -> None:
    """drop_connections() aborts every open socket at once, between responses too."""
    async with connect(sim) as c:
        dropped = await asyncio.to_thread(sim.drop_connections)
        assert dropped == 1
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await c.recv()
        assert closed.value.rcvd is None
    assert sim.sessions[0].wait_closed()
    assert sim.sessions[0].closed_code == 1006


async def test_unknown_session_fields(sim: SimHandle) -> None:
    """unknown_session_fields: an update carrying one is unknown_parameter; the socket stays."""
    sim.faults.unknown_session_fields = {"tool_choice", "audio.input.noise_reduction"}
    async with connect(sim) as c:
        nr = {"type": "realtime", "audio": {"input": {"noise_reduction": None}}}
        await c.send({"type": "session.update", "session": nr})
        err = await c.error()
        assert (err["code"], err["param"]) == (
            "unknown_parameter",
            "session.audio.input.noise_reduction",
        )
        update = {"type": "realtime", "instructions": "changed", "tool_choice": "auto"}
        await c.send({"type": "session.update", "session": update})
        assert (await c.error())["param"] == "session.tool_choice"
        await c.send({"type": "session.update", "session": {"type": "realtime"}})
        session = (await c.until("session.updated"))[-1]["session"]
        assert session["instructions"] != "changed"
