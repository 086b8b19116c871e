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
    b64,
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


def test_validator_rejects_shapes_real_traffic_lacks() -> None:
    """Items with object and a requests rate limit pass openai's models but not the captures."""
    item = {
        "id": "item_1",
        "type": "message",
        "role": "user",
        "content": [],
        "object": "realtime.item",
    }
    added = {"type": "conversation.item.added", "event_id": "event_1", "item": item}
    with pytest.raises(AssertionError, match="object"):
        check_server_event(added)
    limits = {
        "type": "rate_limits.updated",
        "event_id": "event_2",
        "rate_limits": [
            {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.01},
            {"name": "tokens", "limit": 40000, "remaining": 39000, "reset_seconds": 1.5},
        ],
    }
    with pytest.raises(AssertionError, match="requests"):
        check_server_event(limits)


async def test_turn_shapes_match_real_traffic(sim: SimHandle) -> None:
    """Every item of a turn comes without object; rate_limits.updated carries tokens only."""
    async with connect(sim) as c:
        await c.send({"type": "session.update", "session": MANUAL_TURNS})
        await c.until("session.updated")
        await c.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "object": "realtime.item",  # clients may send it; it is not echoed
                    "content": [{"type": "input_text", "text": "hi"}],
                },
            }
        )
        events = await manual_turn(c, audio.tone(300))
        events += await c.until("rate_limits.updated")
        item_id = events[-2]["response"]["output"][0]["id"]
        await c.send({"type": "conversation.item.retrieve", "item_id": item_id})
        events += await c.until("conversation.item.retrieved")
    items = [e["item"] for e in events if "item" in e]
    items += [i for e in events if e["type"] == "response.done" for i in e["response"]["output"]]
    assert len(items) >= 8
    assert not [i for i in items if "object" in i]
    limits = [e for e in events if e["type"] == "rate_limits.updated"][-1]["rate_limits"]
    assert [limit["name"] for limit in limits] == ["tokens"]


@pytest.mark.parametrize(
    ("model", "usage_type"),
    [
        ("gpt-4o-mini-transcribe", "tokens"),
        ("gpt-4o-transcribe", "tokens"),
        ("whisper-1", "duration"),
    ],
)
async def test_transcription_usage_by_model(sim: SimHandle, model: str, usage_type: str) -> None:
    """gpt-4o(-mini)-transcribe is billed in tokens, as captured; whisper-1 by duration."""
    session = {
        "type": "realtime",
        "audio": {"input": {"turn_detection": None, "transcription": {"model": model}}},
    }
    async with connect(sim) as c:
        await c.send({"type": "session.update", "session": session})
        await c.until("session.updated")
        await c.send({"type": "input_audio_buffer.append", "audio": b64(audio.tone(1500))})
        await c.send({"type": "input_audio_buffer.commit"})
        done = (await c.until("conversation.item.input_audio_transcription.completed"))[-1]
    usage = done["usage"]
    assert usage["type"] == usage_type
    if usage_type == "tokens":
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        assert usage["input_token_details"]["audio_tokens"] > 0
        assert set(usage) == {
            "type",
            "total_tokens",
            "input_tokens",
            "input_token_details",
            "output_tokens",
        }
    else:
        assert usage == {"type": "duration", "seconds": 1.5}
