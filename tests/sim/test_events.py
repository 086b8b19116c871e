"""Client events: strict session.update, error handling, the buffer, items, responses."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hark_sim import SimHandle, audio

from tests.sim.helpers import (
    MANUAL_TURNS,
    Client,
    audio_of,
    b64,
    connect,
    manual_turn,
    types_of,
)


async def test_unknown_session_field_discards_whole_update(sim: SimHandle) -> None:
    """A nested unknown field is unknown_parameter with its path; nothing else is applied."""
    async with connect(sim) as c:
        await c.send(
            {
                "type": "session.update",
                "event_id": "evt_1",
                "session": {
                    "type": "realtime",
                    "instructions": "changed",
                    "audio": {"input": {"turn_detection": {"type": "server_vad", "bogus": 1}}},
                },
            }
        )
        err = await c.error()
        assert err["code"] == "unknown_parameter"
        assert err["param"] == "session.audio.input.turn_detection.bogus"
        assert err["event_id"] == "evt_1"
        await c.send({"type": "session.update", "session": {"type": "realtime"}})
        updated = (await c.until("session.updated"))[-1]
        assert updated["session"]["instructions"] != "changed"


async def test_session_update_applies_and_echoes_full_config(sim: SimHandle) -> None:
    """session.updated returns the full effective config, merged with what was sent."""
    async with connect(sim) as c:
        await c.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "instructions": "Be brief.",
                    "audio": {"output": {"voice": "marin"}, "input": {"turn_detection": None}},
                    "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
                },
            }
        )
        session = (await c.until("session.updated"))[-1]["session"]
    assert session["instructions"] == "Be brief."
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["input"]["turn_detection"] is None
    assert session["tools"][0]["name"] == "f"


async def test_session_type_and_rate_are_checked(sim: SimHandle) -> None:
    """type must be realtime; a PCM rate below 24000 is integer_below_min_value."""
    async with connect(sim) as c:
        await c.send({"type": "session.update", "session": {"type": "voice"}})
        assert (await c.error())["code"] == "invalid_value"
        await c.send({"type": "session.update", "session": {"instructions": "x"}})
        assert (await c.error())["code"] == "missing_required_parameter"
        await c.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}},
                },
            }
        )
        err = await c.error()
        assert err["code"] == "integer_below_min_value"
        assert err["param"] == "session.audio.input.format.rate"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("modalities", ["audio", "text"]),
        ("turn_detection", {"type": "server_vad"}),
        ("input_audio_format", "pcm16"),
        ("voice", "alloy"),
    ],
)
async def test_beta_session_fields_are_unknown_parameters(
    sim: SimHandle, field: str, value: object
) -> None:
    """A beta-era session field is unknown_parameter naming it, as GA answers; the socket stays.

    Close 4000 is for the OpenAI-Beta header (see test_handshake), not for a field.
    """
    async with connect(sim) as c:
        session = {"type": "realtime", "instructions": "changed", field: value}
        await c.send({"type": "session.update", "event_id": "beta", "session": session})
        err = await c.error()
        assert err["code"] == "unknown_parameter"
        assert err["param"] == f"session.{field}"
        assert err["message"] == f"Unknown parameter: 'session.{field}'."
        assert err["event_id"] == "beta"
        await c.send({"type": "session.update", "session": {"type": "realtime"}})
        updated = (await c.until("session.updated"))[-1]["session"]
        assert updated["instructions"] != "changed"  # the whole update was discarded
    assert sim.sessions[0].wait_closed()
    assert sim.sessions[0].closed_code == 1000  # closed by the client, not the server


async def test_bad_frames_are_not_fatal(sim: SimHandle) -> None:
    """Unknown type, bad JSON and binary frames give errors; the session stays usable."""
    async with connect(sim) as c:
        await c.send({"type": "nope", "event_id": "e7"})
        err = await c.error()
        assert (err["code"], err["param"], err["event_id"]) == ("invalid_value", "type", "e7")
        await c.ws.send("{not json")
        assert (await c.error())["code"] == "invalid_json"
        await c.ws.send(b"\x00\x01")
        assert (await c.error())["code"] == "invalid_event"
        await c.send({"type": "input_audio_buffer.clear"})
        assert (await c.recv())["type"] == "input_audio_buffer.cleared"
    assert sim.sessions[0].received[0] == {"type": "nope", "event_id": "e7"}


async def test_commit_needs_100_ms(sim: SimHandle) -> None:
    """Committing under 100 ms is input_audio_buffer_commit_empty; 100 ms is enough."""
    async with connect(sim) as c:
        await c.send({"type": "session.update", "session": MANUAL_TURNS})
        await c.until("session.updated")
        await c.send({"type": "input_audio_buffer.commit"})
        err = await c.error()
        assert err["code"] == "input_audio_buffer_commit_empty"
        assert "0.00ms" in err["message"]
        await c.send({"type": "input_audio_buffer.append", "audio": b64(audio.silence(99))})
        await c.send({"type": "input_audio_buffer.commit"})
        assert (await c.error())["code"] == "input_audio_buffer_commit_empty"
        await c.send({"type": "input_audio_buffer.append", "audio": b64(audio.silence(1))})
        await c.send({"type": "input_audio_buffer.commit"})
        assert (await c.recv())["type"] == "input_audio_buffer.committed"


async def test_clear_empties_the_buffer(sim: SimHandle) -> None:
    """After clear, a commit finds nothing."""
    async with connect(sim) as c:
        await c.send({"type": "session.update", "session": MANUAL_TURNS})
        await c.until("session.updated")
        await c.send({"type": "input_audio_buffer.append", "audio": b64(audio.silence(500))})
        await c.send({"type": "input_audio_buffer.clear"})
        await c.until("input_audio_buffer.cleared")
        await c.send({"type": "input_audio_buffer.commit"})
        assert (await c.error())["code"] == "input_audio_buffer_commit_empty"


async def test_items_create_retrieve_delete(sim: SimHandle) -> None:
    """Items are added (added/done), retrievable with their audio, and deletable."""
    pcm = audio.tone(200)
    async with connect(sim) as c:
        await c.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_audio", "audio": b64(pcm)}],
                },
            }
        )
        added, done = await c.recv(), await c.recv()
        assert (added["type"], done["type"]) == (
            "conversation.item.added",
            "conversation.item.done",
        )
        assert "audio" not in added["item"]["content"][0]
        item_id = added["item"]["id"]
        await c.send(
            {
                "type": "conversation.item.create",
                "previous_item_id": "root",
                "item": {
                    "type": "message",
                    "role": "system",
                    "content": [{"type": "input_text", "text": "s"}],
                },
            }
        )
        assert (await c.until("conversation.item.done"))[0]["previous_item_id"] is None
        await c.send({"type": "conversation.item.retrieve", "item_id": item_id})
        got = (await c.until("conversation.item.retrieved"))[-1]["item"]
        assert base64.b64decode(got["content"][0]["audio"]) == pcm
        await c.send({"type": "conversation.item.delete", "item_id": item_id})
        assert (await c.recv())["item_id"] == item_id
        await c.send({"type": "conversation.item.delete", "item_id": item_id})
        assert (await c.error())["param"] == "item_id"


async def test_assistant_audio_items_cannot_be_created(sim: SimHandle) -> None:
    """Assistant content must be output_text; function_call_output needs call_id and output."""
    async with connect(sim) as c:
        await c.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_audio"}],
                },
            }
        )
        assert (await c.error())["code"] == "invalid_value"
        await c.send({"type": "conversation.item.create", "item": {"type": "function_call_output"}})
        assert (await c.error())["code"] == "missing_required_parameter"


async def test_text_item_reply_in_text_mode(sim: SimHandle) -> None:
    """An input_text turn with output_modalities text gets output_text events only."""
    async with connect(sim) as c:
        await c.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hello"}],
                },
            }
        )
        await c.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        events = await c.until("response.done")
    kinds = types_of(events)
    assert "response.output_text.done" in kinds and "response.output_audio.delta" not in kinds
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "You said: hello"
    assert events[-1]["response"]["output"][0]["content"][0] == {
        "type": "output_text",
        "text": text,
    }


async def test_text_item_reply_in_audio_mode(sim: SimHandle) -> None:
    """An input_text turn with the audio default gets a tone and an echoing transcript."""
    async with connect(sim) as c:
        await c.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hi"}],
                },
            }
        )
        await c.send({"type": "response.create"})
        events = await c.until("response.done")
    assert audio_of(events)
    done = [e for e in events if e["type"] == "response.output_audio_transcript.done"]
    assert done[0]["transcript"] == "You said: hi"


async def test_out_of_band_response(sim: SimHandle) -> None:
    """conversation none: no conversation items, conversation_id null, metadata echoed."""
    async with connect(sim) as c:
        await c.send(
            {
                "type": "response.create",
                "response": {"conversation": "none", "metadata": {"k": "v"}},
            }
        )
        events = await c.until("response.done")
    assert "conversation.item.added" not in types_of(events)
    assert events[-1]["response"]["conversation_id"] is None
    assert events[-1]["response"]["metadata"] == {"k": "v"}


async def test_truncate_is_checked_against_audio_sent(sim: SimHandle) -> None:
    """Truncating past the audio sent errors with both lengths; negative is below minimum."""
    async with connect(sim) as c:
        await c.send({"type": "session.update", "session": MANUAL_TURNS})
        await c.until("session.updated")
        events = await manual_turn(c, audio.tone(1000))
        item_id = events[-1]["response"]["output"][0]["id"]
        trunc = {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0}
        await c.send({**trunc, "audio_end_ms": 1500})
        err = await c.error()
        assert err["message"] == "Audio content of 1000ms is already shorter than 1500ms"
        await c.send({**trunc, "audio_end_ms": -1})
        assert (await c.error())["code"] == "integer_below_min_value"
        await c.send({**trunc, "audio_end_ms": 400})
        truncated = (await c.until("conversation.item.truncated"))[-1]
        assert truncated["audio_end_ms"] == 400
        await c.send({"type": "conversation.item.retrieve", "item_id": item_id})
        item = (await c.until("conversation.item.retrieved"))[-1]["item"]
        assert len(base64.b64decode(item["content"][0]["audio"])) == 400 * audio.BYTES_PER_MS


async def test_response_while_active_and_cancel(sim: SimHandle) -> None:
    """A second response.create is refused; cancel ends it with client_cancelled."""
    sim.config.realtime_factor = 1.0
    async with connect(sim) as c:
        await c.send({"type": "session.update", "session": MANUAL_TURNS})
        await c.until("session.updated")
        await c.send({"type": "input_audio_buffer.append", "audio": b64(audio.tone(5000))})
        await c.send({"type": "input_audio_buffer.commit"})
        await c.send({"type": "response.create"})
        before = await c.until("response.output_audio.delta")
        await c.send({"type": "response.create", "event_id": "again"})
        err = await c.error()
        assert err["code"] == "conversation_already_has_active_response"
        assert err["event_id"] == "again"
        await c.send({"type": "response.cancel"})
        after = await c.until("response.done")
        done = after[-1]["response"]
        assert done["status"] == "cancelled"
        assert done["status_details"]["reason"] == "client_cancelled"
        assert done["output"][0]["status"] == "incomplete"
        assert "response.output_audio.done" in types_of(after)
        sent_ms = len(audio_of(before + after)) // audio.BYTES_PER_MS
        assert sent_ms < 5000
        item_id = done["output"][0]["id"]
        await c.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": sent_ms + 100,
            }
        )
        assert (await c.error())["message"].startswith(f"Audio content of {sent_ms}ms")
        await c.send({"type": "response.cancel"})
        assert (await c.error())["code"] == "response_cancel_not_active"


async def test_voice_is_fixed_after_first_audio(sim: SimHandle) -> None:
    """The voice may change before the first assistant audio, not after it."""
    voice = {"type": "realtime", "audio": {"output": {"voice": "marin"}}}
    async with connect(sim) as c:
        await c.send({"type": "session.update", "session": voice})
        await c.until("session.updated")
        await c.send({"type": "session.update", "session": MANUAL_TURNS})
        await c.until("session.updated")
        await manual_turn(c, audio.tone(200))
        voice["audio"]["output"]["voice"] = "cedar"  # type: ignore[index]
        await c.send({"type": "session.update", "session": voice})
        assert (await c.error())["code"] == "cannot_update_voice"


async def _first_of(c: Client, *kinds: str) -> dict[str, Any]:
    while True:
        event = await c.recv()
        if event["type"] in kinds:
            return event


async def test_truncate_while_the_reply_streams(sim: SimHandle) -> None:
    """The Agents SDK's interrupt(): truncate the item still streaming, then cancel.

    The assistant item has its audio content part from content_part.added on, so the
    truncate is checked against the audio written so far and is accepted; audio the
    reply sends after the cut is not kept, and the transcript stays cleared.
    """
    sim.config.realtime_factor = 1.0
    async with connect(sim) as c:
        await c.send({"type": "session.update", "session": MANUAL_TURNS})
        await c.until("session.updated")
        await c.send({"type": "input_audio_buffer.append", "audio": b64(audio.tone(5000))})
        await c.send({"type": "input_audio_buffer.commit"})
        await c.send({"type": "response.create"})
        for _ in range(3):
            delta = await _first_of(c, "response.output_audio.delta")
        item_id = delta["item_id"]
        await c.send(
            {
                "type": "conversation.item.truncate",
                "event_id": "cut",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": 150,
            }
        )
        answer = await _first_of(c, "conversation.item.truncated", "error")
        assert answer["type"] == "conversation.item.truncated", answer
        assert (answer["item_id"], answer["audio_end_ms"]) == (item_id, 150)
        await c.send({"type": "response.cancel"})
        done = (await c.until("response.done"))[-1]["response"]
        assert done["status"] == "cancelled"
        await c.send({"type": "conversation.item.retrieve", "item_id": item_id})
        item = (await c.until("conversation.item.retrieved"))[-1]["item"]
    part = item["content"][0]
    assert part["type"] == "output_audio" and part["transcript"] == ""
    assert len(base64.b64decode(part["audio"])) == 150 * audio.BYTES_PER_MS


async def test_content_streams_into_the_item(sim: SimHandle) -> None:
    """While a reply streams, retrieving its item shows the part and the transcript so far."""
    sim.config.realtime_factor = 1.0
    async with connect(sim) as c:
        await c.send({"type": "session.update", "session": MANUAL_TURNS})
        await c.until("session.updated")
        await c.send({"type": "input_audio_buffer.append", "audio": b64(audio.tone(3000))})
        await c.send({"type": "input_audio_buffer.commit"})
        await c.send({"type": "response.create"})
        added = await _first_of(c, "response.output_item.added")
        assert added["item"]["content"] == []  # as captured: empty when the item begins
        first = await _first_of(c, "response.output_audio_transcript.delta")
        await c.send({"type": "conversation.item.retrieve", "item_id": first["item_id"]})
        item = (await c.until("conversation.item.retrieved"))[-1]["item"]
        assert item["status"] == "in_progress"
        assert item["content"][0]["type"] == "output_audio"
        assert item["content"][0]["transcript"].startswith(first["delta"])
        await c.send({"type": "response.cancel"})
        await c.until("response.done")


async def test_session_close_lets_the_reply_finish_then_closes(sim: SimHandle) -> None:
    """session.close is a supported client event: the reply in flight ends, then close 1000."""
    async with connect(sim) as c:
        await c.send({"type": "session.update", "session": MANUAL_TURNS})
        await c.until("session.updated")
        await c.send({"type": "input_audio_buffer.append", "audio": b64(audio.tone(1000))})
        await c.send({"type": "input_audio_buffer.commit"})
        await c.send({"type": "response.create"})
        await c.send({"type": "session.close", "event_id": "bye"})
        events = await c.until("rate_limits.updated")
        assert "error" not in types_of(events)
        assert events[-2]["response"]["status"] == "completed"
        assert await c.close_code() == 1000
    assert sim.sessions[0].wait_closed()
    assert sim.sessions[0].closed_code == 1000


async def test_session_close_when_idle(sim: SimHandle) -> None:
    """session.close with nothing in flight closes at once with 1000."""
    async with connect(sim) as c:
        await c.send({"type": "session.close"})
        assert await c.close_code() == 1000


async def test_unknown_type_lists_session_close(sim: SimHandle) -> None:
    """The supported types the server lists include session.close, as the real one's do."""
    async with connect(sim) as c:
        await c.send({"type": "session.nope"})
        assert "'session.close'" in (await c.error())["message"]
