"""Conformance of hark_sim, judged by the openai package: its models and its own client."""

from __future__ import annotations

import base64
import json
from typing import Any

import openai
import pydantic
import pytest
from hark_sim import SimHandle, audio

from tests.sim.helpers import (
    MANUAL_TURNS,
    check_client_secret,
    check_server_event,
    connect,
    manual_turn,
    types_of,
)


def test_validator_rejects_undeclared_fields() -> None:
    """The strict check catches a junk field that openai's permissive models would accept."""
    event = {"type": "input_audio_buffer.cleared", "event_id": "event_1", "junk": 1}
    with pytest.raises(AssertionError, match="junk"):
        check_server_event(event)


def test_validator_rejects_beta_names() -> None:
    """A beta event name is not a GA server event."""
    with pytest.raises(pydantic.ValidationError):
        check_server_event({"type": "response.audio.delta", "event_id": "event_1"})


def _sdk_clients(sim: SimHandle) -> tuple[openai.OpenAI, str]:
    ws_base = f"ws://127.0.0.1:{sim.port}/v1"
    return (
        openai.OpenAI(api_key=sim.api_key, base_url=sim.base_url, websocket_base_url=ws_base),
        ws_base,
    )


def test_openai_sdk_spoken_turn_with_ephemeral_key(sim: SimHandle) -> None:
    """The openai SDK mints an ek_ key, connects with it and gets its audio back byte for byte."""
    client, ws_base = _sdk_clients(sim)
    raw = client.realtime.client_secrets.with_raw_response.create(
        expires_after={"anchor": "created_at", "seconds": 600},
        session={"type": "realtime", "model": "gpt-realtime"},
    )
    check_client_secret(raw.http_response.json())
    secret = raw.parse()
    assert secret.value.startswith("ek_")
    ek_client = openai.OpenAI(
        api_key=secret.value, base_url=sim.base_url, websocket_base_url=ws_base
    )
    pcm = audio.tone(730, 300.0)
    received: list[dict[str, Any]] = []
    with ek_client.realtime.connect(model="gpt-realtime") as conn:

        def recv() -> dict[str, Any]:
            event: dict[str, Any] = json.loads(conn.recv_bytes())
            check_server_event(event)
            received.append(event)
            return event

        assert recv()["type"] == "session.created"
        conn.session.update(
            session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        )
        assert recv()["type"] == "session.updated"
        conn.input_audio_buffer.append(audio=base64.b64encode(pcm).decode("ascii"))
        conn.input_audio_buffer.commit()
        conn.response.create()
        while recv()["type"] != "response.done":
            pass
    reply = b"".join(
        base64.b64decode(e["delta"]) for e in received if e["type"] == "response.output_audio.delta"
    )
    assert reply == pcm
    done = received[-1]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0]["transcript"] == "You spoke for 0.73 seconds."
    assert sim.sessions[-1].key_kind == "ephemeral"


async def test_response_lifecycle_order(sim: SimHandle) -> None:
    """A spoken response follows the GA order, with interleaved deltas and rate limits last."""
    async with connect(sim) as c:
        await c.send({"type": "session.update", "session": MANUAL_TURNS})
        await c.until("session.updated")
        events = await manual_turn(c, audio.tone(1000))
        events += await c.until("rate_limits.updated")
    kinds = [t for t in types_of(events) if not t.endswith(".delta")]
    assert kinds == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "conversation.item.done",
        "response.output_item.done",
        "response.done",
        "rate_limits.updated",
    ]
    deltas = [t for t in types_of(events) if t.endswith(".delta")]
    first_audio = deltas.index("response.output_audio.delta")
    assert "response.output_audio_transcript.delta" in deltas[first_audio:]
    usage = events[-2]["response"]["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_session_created_shape(sim: SimHandle) -> None:
    """session.created carries the full default session, its id and an expiry an hour out."""
    async with connect(sim, read_created=False) as c:
        created = await c.recv()
    session = created["session"]
    assert session["object"] == "realtime.session" and session["id"].startswith("sess_")
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert 3500 < session["expires_at"] - sim.sessions[0].started_at <= 3601
