"""hark.realtime: every client event validates against the openai SDK; server events parse."""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any

import pydantic
import pytest
from hark import events as ev
from hark import realtime
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent

CLIENT_EVENT = pydantic.TypeAdapter(
    Annotated[RealtimeClientEvent, pydantic.Field(discriminator="type")]
)
SERVER_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RealtimeServerEvent)

TIMER_TOOL = ev.ToolSpec(
    name="set_timer",
    description="Start a kitchen timer.",
    parameters={
        "type": "object",
        "properties": {"seconds": {"type": "integer"}},
        "required": ["seconds"],
    },
)

CONFIGS = [
    ev.SessionConfig(),
    ev.SessionConfig(
        instructions="Be brief.",
        voice="marin",
        speed=1.1,
        tools=(TIMER_TOOL,),
        tool_choice="required",
        turn_detection=ev.TurnDetection(
            threshold=0.6,
            prefix_padding_ms=300,
            silence_duration_ms=500,
            idle_timeout_ms=15000,
        ),
        transcription_model="gpt-4o-mini-transcribe",
        transcription_language="en",
        noise_reduction="far_field",
    ),
    ev.SessionConfig(
        turn_detection=ev.TurnDetection(type="semantic_vad", eagerness="high"),
        transcription_model="whisper-1",
        noise_reduction="near_field",
    ),
    # Every session option the config can set (docs/config.md, [realtime]).
    ev.SessionConfig(
        model="gpt-realtime-2.1-mini",
        voice="voice_1234",
        speed=0.25,
        transcription_model="gpt-transcribe",
        transcription_language="de",
        transcription_prompt="Kitchen words.",
        transcription_keywords=("Spätzle", "Maultaschen"),
        noise_reduction="off",
        max_output_tokens=4096,
        truncation=ev.Truncation(0.8, 8000),
        reasoning_effort="xhigh",
    ),
    ev.SessionConfig(
        model="gpt-realtime-mini",
        max_output_tokens="inf",
        truncation="disabled",
        noise_reduction="far_field",
    ),
    ev.SessionConfig(truncation=ev.Truncation(0.5), max_output_tokens=1, speed=1.5),
]

COMMANDS: list[ev.WireCommand] = [
    *(ev.UpdateSession(c) for c in CONFIGS),
    ev.SendAudio(b"\x00\x00\x01\x00\xff\xff"),
    ev.SendAudio(b""),
    ev.CommitAudio(),
    ev.ClearAudio(),
    ev.CreateItem(ev.Item(id="", type="message", role="user", text="What time is it?")),
    ev.CreateItem(ev.Item(id="it1", type="message", role="assistant", text="Noon."), "root"),
    ev.CreateItem(ev.Item(id="", type="message", role="system", text="Be terse.")),
    ev.CreateItem(ev.Item(id="", type="function_call_output", call_id="call_1", output="{}")),
    ev.CreateItem(
        ev.Item(id="", type="function_call", call_id="call_1", name="set_timer", arguments="{}")
    ),
    ev.DeleteItem("item_1"),
    ev.Truncate("item_1", 1870),
    ev.CreateResponse(),
    ev.CreateResponse(instructions="Greet the user."),
    ev.CancelResponse(),
    ev.CancelResponse("resp_1"),
]


def assert_no_extras(model: Any, path: str = "") -> None:
    """The SDK models allow unknown fields; fail on any, at any depth."""
    if isinstance(model, pydantic.BaseModel):
        assert not model.model_extra, f"unknown fields at {path or 'top'}: {model.model_extra}"
        for name in type(model).model_fields:
            assert_no_extras(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, list | tuple):
        for n, value in enumerate(model):
            assert_no_extras(value, f"{path}[{n}]")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("event_id", [None, "evt_1"])
def test_every_command_validates_against_the_sdk(command: ev.WireCommand, event_id: str | None):
    """Each encoded command is a valid GA client event with no field the SDK does not know."""
    text = realtime.encode(command, event_id)
    data = json.loads(text)
    model = CLIENT_EVENT.validate_python(data)
    assert_no_extras(model)
    assert data.get("event_id") == event_id
    assert data == {
        **realtime.command_json(command),
        **({"event_id": event_id} if event_id else {}),
    }


def test_manual_turns_send_null_turn_detection():
    """turn_detection=None is the wire's null (manual turns), and the format is 24 kHz PCM."""
    data = json.loads(realtime.encode(ev.UpdateSession(ev.SessionConfig())))
    audio_in = data["session"]["audio"]["input"]
    assert audio_in["turn_detection"] is None
    assert audio_in["format"] == {"type": "audio/pcm", "rate": 24000}
    assert audio_in["transcription"] is None
    assert data["session"]["type"] == "realtime"
    assert data["session"]["output_modalities"] == ["audio"]


def test_every_session_option_reaches_the_wire():
    """Each option lands where the SDK's session model has it; unset ones are not sent."""
    from openai.types.realtime import RealtimeSessionCreateRequest

    full = realtime.session_json(CONFIGS[3])
    sdk = RealtimeSessionCreateRequest.model_validate(full)
    assert_no_extras(sdk)
    assert sdk.model == "gpt-realtime-2.1-mini"
    assert sdk.reasoning is not None and sdk.reasoning.effort == "xhigh"
    assert sdk.max_output_tokens == 4096
    assert sdk.truncation is not None and not isinstance(sdk.truncation, str)
    assert sdk.truncation.retention_ratio == 0.8
    assert sdk.truncation.token_limits is not None
    assert sdk.truncation.token_limits.post_instructions == 8000
    assert sdk.audio is not None and sdk.audio.input is not None and sdk.audio.output is not None
    assert full["audio"]["input"]["noise_reduction"] is None  # "off" is the wire's null
    transcription = sdk.audio.input.transcription
    assert transcription is not None
    assert (transcription.model, transcription.language) == ("gpt-transcribe", "de")
    assert transcription.prompt == "Kitchen words."
    assert transcription.keywords == ["Spätzle", "Maultaschen"]
    assert full["audio"]["output"]["voice"] == {"id": "voice_1234"}
    assert sdk.audio.output.speed == 0.25
    mini = realtime.session_json(CONFIGS[4])
    assert (mini["max_output_tokens"], mini["truncation"]) == ("inf", "disabled")
    assert mini["audio"]["input"]["noise_reduction"] == {"type": "far_field"}
    assert realtime.session_json(CONFIGS[5])["truncation"] == {
        "type": "retention_ratio",
        "retention_ratio": 0.5,
    }
    plain = realtime.session_json(ev.SessionConfig())
    for unset in ("max_output_tokens", "truncation", "reasoning"):
        assert unset not in plain  # left to the server, or to the key backend's pins
    assert "noise_reduction" not in plain["audio"]["input"]
    assert "speed" not in plain["audio"]["output"]


def test_vad_fields_follow_the_vad_type():
    """server_vad gets its tuning fields; semantic_vad only eagerness."""
    full = json.loads(realtime.encode(ev.UpdateSession(CONFIGS[1])))["session"]
    assert full["audio"]["input"]["turn_detection"] == {
        "type": "server_vad",
        "create_response": True,
        "interrupt_response": True,
        "threshold": 0.6,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "idle_timeout_ms": 15000,
    }
    assert full["audio"]["output"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "voice": "marin",
        "speed": 1.1,
    }
    assert full["tools"][0]["name"] == "set_timer"
    semantic = json.loads(realtime.encode(ev.UpdateSession(CONFIGS[2])))["session"]
    assert semantic["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad",
        "create_response": True,
        "interrupt_response": True,
        "eagerness": "high",
    }


def test_audio_append_round_trips_bytes():
    """The fast append path carries the exact PCM as base64."""
    pcm = bytes(range(256)) * 8
    data = json.loads(realtime.encode(ev.SendAudio(pcm)))
    assert data["type"] == "input_audio_buffer.append"
    assert base64.b64decode(data["audio"]) == pcm


def test_message_content_part_types():
    """User and system text is input_text; assistant text is output_text (never output_audio)."""
    parts = {
        role: realtime.item_json(ev.Item(id="", type="message", role=role, text="x"))["content"]
        for role in ("user", "assistant", "system")
    }
    assert parts["user"] == [{"type": "input_text", "text": "x"}]
    assert parts["system"] == [{"type": "input_text", "text": "x"}]
    assert parts["assistant"] == [{"type": "output_text", "text": "x"}]


def test_truncate_never_sends_negative_ms():
    """A negative audio_end_ms (integer_below_min_value on the server) is clamped to 0."""
    data = json.loads(realtime.encode(ev.Truncate("item_1", -5)))
    assert data["audio_end_ms"] == 0


def test_misuse_raises():
    """Our own bugs raise at once: a message without a role, a call output without call_id."""
    with pytest.raises(ValueError):
        realtime.encode(ev.CreateItem(ev.Item(id="", type="message", text="x")))
    with pytest.raises(ValueError):
        realtime.encode(ev.CreateItem(ev.Item(id="", type="function_call_output")))


# --------------------------------------------------------------------------- decoding
# Server examples from the protocol reference (captured GA shapes), ids shortened.

SESSION_CREATED = {
    "type": "session.created",
    "event_id": "event_1",
    "session": {
        "type": "realtime",
        "object": "realtime.session",
        "id": "sess_Ct1OVZ9vNW62W3cUpSCqj",
        "model": "gpt-realtime",
        "output_modalities": ["audio"],
        "instructions": "You are a helpful, witty, and friendly AI.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": 1767233035,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {"type": "server_vad", "threshold": 0.5},
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"},
        },
        "include": None,
    },
}

RESPONSE_DONE = {
    "type": "response.done",
    "event_id": "event_2",
    "response": {
        "object": "realtime.response",
        "id": "resp_A",
        "status": "completed",
        "status_details": None,
        "output": [
            {
                "id": "item_B",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_audio", "transcript": "Sure! Here we go."}],
            }
        ],
        "conversation_id": "conv_C",
        "usage": {"total_tokens": 320, "input_tokens": 132, "output_tokens": 188},
        "metadata": None,
    },
}

DECODED: list[tuple[dict[str, Any], ev.ServerEvent]] = [
    (SESSION_CREATED, ev.SessionCreated("sess_Ct1OVZ9vNW62W3cUpSCqj", 1767233035.0)),
    ({**SESSION_CREATED, "type": "session.updated"}, ev.SessionUpdated()),
    (
        {
            "type": "input_audio_buffer.speech_started",
            "event_id": "e",
            "audio_start_ms": 1236,
            "item_id": "item_U",
        },
        ev.SpeechStarted(1236, "item_U"),
    ),
    (
        {
            "type": "input_audio_buffer.speech_stopped",
            "event_id": "e",
            "audio_end_ms": 3808,
            "item_id": "item_U",
        },
        ev.SpeechStopped(3808, "item_U"),
    ),
    (
        {
            "type": "input_audio_buffer.committed",
            "event_id": "e",
            "previous_item_id": None,
            "item_id": "item_U",
        },
        ev.AudioCommitted("item_U", None),
    ),
    ({"type": "input_audio_buffer.cleared", "event_id": "e"}, ev.AudioCleared()),
    (
        {
            "type": "input_audio_buffer.timeout_triggered",
            "event_id": "e",
            "audio_start_ms": 13000,
            "audio_end_ms": 28000,
            "item_id": "item_X3",
        },
        ev.InputTimedOut("item_X3"),
    ),
    (
        {
            "type": "conversation.item.added",
            "event_id": "e",
            "previous_item_id": None,
            "item": {
                "id": "item_U",
                "type": "message",
                "status": "completed",
                "role": "user",
                "content": [{"type": "input_audio", "transcript": None}],
            },
        },
        ev.ItemAdded(ev.Item("item_U", "message", "user", "completed", None), None),
    ),
    (
        {
            "type": "conversation.item.done",
            "event_id": "e",
            "previous_item_id": "item_U",
            "item": {
                "id": "item_B",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_audio", "transcript": "Sure! Here we go."}],
            },
        },
        ev.ItemDone(
            ev.Item("item_B", "message", "assistant", "completed", "Sure! Here we go."), "item_U"
        ),
    ),
    (
        {
            "type": "conversation.item.done",
            "event_id": "e",
            "previous_item_id": None,
            "item": {
                "id": "item_T",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "What time is it?"}],
            },
        },
        ev.ItemDone(ev.Item("item_T", "message", "user", None, "What time is it?"), None),
    ),
    (
        {
            "type": "conversation.item.added",
            "event_id": "e",
            "previous_item_id": None,
            "item": {
                "id": "item_F",
                "type": "function_call",
                "status": "completed",
                "call_id": "call_ABC",
                "name": "set_timer",
                "arguments": '{"seconds": 300}',
            },
        },
        ev.ItemAdded(
            ev.Item(
                "item_F",
                "function_call",
                status="completed",
                call_id="call_ABC",
                name="set_timer",
                arguments='{"seconds": 300}',
            ),
            None,
        ),
    ),
    (
        {
            "type": "conversation.item.done",
            "event_id": "e",
            "previous_item_id": "item_F",
            "item": {
                "id": "item_O",
                "type": "function_call_output",
                "call_id": "call_ABC",
                "output": '{"ok": true}',
            },
        },
        ev.ItemDone(
            ev.Item("item_O", "function_call_output", call_id="call_ABC", output='{"ok": true}'),
            "item_F",
        ),
    ),
    (
        {
            "type": "conversation.item.truncated",
            "event_id": "e",
            "item_id": "item_B",
            "content_index": 0,
            "audio_end_ms": 1870,
        },
        ev.ItemTruncated("item_B", 1870),
    ),
    ({"type": "conversation.item.deleted", "event_id": "e", "item_id": "i"}, ev.ItemDeleted("i")),
    (
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "event_id": "e",
            "item_id": "item_U",
            "content_index": 0,
            "transcript": "Hello from the Gateway Probe.",
            "usage": {"type": "tokens", "total_tokens": 24, "input_tokens": 16, "output_tokens": 8},
        },
        ev.UserTranscript("item_U", "Hello from the Gateway Probe."),
    ),
    (
        {
            "type": "response.created",
            "event_id": "e",
            "response": {"object": "realtime.response", "id": "resp_A", "status": "in_progress"},
        },
        ev.ResponseCreated("resp_A"),
    ),
    (
        {
            "type": "response.output_audio.delta",
            "event_id": "e",
            "response_id": "resp_A",
            "item_id": "item_B",
            "output_index": 0,
            "content_index": 0,
            "delta": "AAAAAP//AQA=",
        },
        ev.AudioDelta("resp_A", "item_B", 0, b"\x00\x00\x00\x00\xff\xff\x01\x00"),
    ),
    (
        {
            "type": "response.output_audio.done",
            "event_id": "e",
            "response_id": "resp_A",
            "item_id": "item_B",
            "output_index": 0,
            "content_index": 0,
        },
        ev.AudioDone("resp_A", "item_B"),
    ),
    (
        {
            "type": "response.output_audio_transcript.delta",
            "event_id": "e",
            "response_id": "resp_A",
            "item_id": "item_B",
            "output_index": 0,
            "content_index": 0,
            "delta": "Sure",
            "obfuscation": "z9A9dJucSf1J",
        },
        ev.TranscriptDelta("resp_A", "item_B", "Sure"),
    ),
    (
        {
            "type": "response.output_audio_transcript.done",
            "event_id": "e",
            "response_id": "resp_A",
            "item_id": "item_B",
            "output_index": 0,
            "content_index": 0,
            "transcript": "Sure! Here we go.",
        },
        ev.TranscriptDone("resp_A", "item_B", "Sure! Here we go."),
    ),
    (
        {
            "type": "response.output_text.delta",
            "event_id": "e",
            "response_id": "resp_R1",
            "item_id": "item_I1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hi",
        },
        ev.TranscriptDelta("resp_R1", "item_I1", "Hi"),
    ),
    (
        {
            "type": "response.output_text.done",
            "event_id": "e",
            "response_id": "resp_R1",
            "item_id": "item_I1",
            "output_index": 0,
            "content_index": 0,
            "text": "Hi there, friend!",
        },
        ev.TranscriptDone("resp_R1", "item_I1", "Hi there, friend!"),
    ),
    (
        {
            "type": "response.output_item.done",
            "event_id": "e",
            "response_id": "resp_F",
            "output_index": 0,
            "item": {
                "id": "item_F",
                "type": "function_call",
                "status": "completed",
                "call_id": "call_ABC",
                "name": "set_timer",
                "arguments": '{"seconds": 300}',
            },
        },
        ev.FunctionCallRequested("resp_F", "item_F", "call_ABC", "set_timer", '{"seconds": 300}'),
    ),
    (
        {
            "type": "response.done",
            "event_id": "e",
            "response": {
                "object": "realtime.response",
                "id": "resp_X",
                "status": "failed",
                "status_details": {
                    "type": "failed",
                    "error": {
                        "type": "server_error",
                        "code": "internal_error",
                        "message": "The server had an error while processing your request.",
                    },
                },
                "output": [],
                "usage": None,
            },
        },
        ev.ResponseDone(
            "resp_X",
            "failed",
            error=ev.ResponseError(
                "server_error",
                "internal_error",
                "The server had an error while processing your request.",
            ),
        ),
    ),
    (RESPONSE_DONE, ev.ResponseDone("resp_A", "completed", None, 188, 132)),
    (
        {
            "type": "response.done",
            "event_id": "e",
            "response": {
                "object": "realtime.response",
                "id": "resp_R2",
                "status": "cancelled",
                "status_details": {"type": "cancelled", "reason": "turn_detected"},
                "output": [],
                "usage": None,
            },
        },
        ev.ResponseDone("resp_R2", "cancelled", "turn_detected", 0, 0),
    ),
    (
        {
            "type": "error",
            "event_id": "e",
            "error": {
                "type": "invalid_request_error",
                "code": "unknown_parameter",
                "message": "Unknown parameter: 'session.bogus_field'.",
                "param": "session.bogus_field",
                "event_id": None,
            },
        },
        ev.ServerError(
            "unknown_parameter",
            "Unknown parameter: 'session.bogus_field'.",
            "invalid_request_error",
            "session.bogus_field",
            None,
        ),
    ),
]


@pytest.mark.parametrize(
    ("frame", "expected"), DECODED, ids=[f"{n}-{f['type']}" for n, (f, _) in enumerate(DECODED)]
)
def test_decode_examples(frame: dict[str, Any], expected: ev.ServerEvent):
    """Each server event we act on becomes its typed event (and is one the SDK knows)."""
    SERVER_EVENT.validate_python(frame)
    assert realtime.decode(json.dumps(frame)) == expected


def test_a_failed_response_says_why():
    """`status_details.error` reaches the event whole; its text names type, code and message."""
    error = ev.ResponseError("server_error", "internal_error", "The server had an error.")
    assert str(error) == "server_error (internal_error): The server had an error."
    assert str(ev.ResponseError(message="Just this.")) == "Just this."
    assert str(ev.ResponseError(code="rate")) == "(rate)"
    assert str(ev.ResponseError()) == "no details"
    partial = {
        "type": "response.done",
        "response": {
            "id": "r",
            "status": "failed",
            "status_details": {"type": "failed", "error": {"code": "oops"}},
        },
    }
    event = realtime.decode(json.dumps(partial))
    assert event == ev.ResponseDone("r", "failed", error=ev.ResponseError(code="oops"))
    partial["response"]["status_details"]["error"] = "broken"  # type: ignore[index]
    assert isinstance(realtime.decode(json.dumps(partial)), ev.ProtocolError)


def tool_call_frames(
    response_id: str,
    call_id: str,
    arguments: str,
    *,
    item_status: str = "completed",
    status: str = "completed",
    reason: str | None = None,
) -> list[dict[str, Any]]:
    """A response whose only output is one function call, as the server streams it.

    The server sends `response.function_call_arguments.done` whatever became of the
    call; only `response.output_item.done`'s item status says whether the arguments
    are whole.
    """
    item_id = f"item_{call_id}"
    item = {"id": item_id, "type": "function_call", "call_id": call_id, "name": "set_timer"}
    ids = {"response_id": response_id, "item_id": item_id, "output_index": 0, "call_id": call_id}
    details = {"type": status, "reason": reason} if reason else None
    frames: list[dict[str, Any]] = [
        {
            "type": "response.created",
            "event_id": "event_1",
            "response": {"object": "realtime.response", "id": response_id, "status": "in_progress"},
        },
        {
            "type": "response.output_item.added",
            "event_id": "event_2",
            "response_id": response_id,
            "output_index": 0,
            "item": {**item, "status": "in_progress", "arguments": ""},
        },
        {
            "type": "response.function_call_arguments.delta",
            "event_id": "event_3",
            **ids,
            "delta": arguments,
        },
        {
            "type": "response.function_call_arguments.done",
            "event_id": "event_4",
            **ids,
            "name": "set_timer",
            "arguments": arguments,
        },
        {
            "type": "response.output_item.done",
            "event_id": "event_5",
            "response_id": response_id,
            "output_index": 0,
            "item": {**item, "status": item_status, "arguments": arguments},
        },
        {
            "type": "response.done",
            "event_id": "event_6",
            "response": {
                "object": "realtime.response",
                "id": response_id,
                "status": status,
                "status_details": details,
                "output": [{**item, "status": item_status, "arguments": arguments}],
                "usage": None,
            },
        },
    ]
    for frame in frames:
        SERVER_EVENT.validate_python(frame)
    return frames


CUT_OFF_CALLS = [
    pytest.param(
        {"item_status": "incomplete", "status": "incomplete", "reason": "max_output_tokens"},
        id="incomplete",
    ),
    pytest.param(
        {"item_status": "incomplete", "status": "cancelled", "reason": "turn_detected"},
        id="cancelled",
    ),
    pytest.param(
        {"item_status": "incomplete", "status": "cancelled", "reason": "client_cancelled"},
        id="client-cancelled",
    ),
    pytest.param(
        {"item_status": "in_progress", "status": "failed", "reason": None}, id="failed-in-progress"
    ),
]


@pytest.mark.parametrize("ending", CUT_OFF_CALLS)
def test_a_cut_off_tool_call_is_never_requested(ending: dict[str, Any]):
    """Only a function call item that ended `completed` becomes a FunctionCallRequested;
    a call cut off by an incomplete, cancelled or failed response never does."""
    decoder = realtime.Decoder()
    frames = tool_call_frames("resp_1", "call_1", '{"seconds": 3', **ending)
    events = [decoder.decode(json.dumps(f)) for f in frames]
    assert not [e for e in events if isinstance(e, ev.FunctionCallRequested)]
    assert not [e for e in events if isinstance(e, ev.ProtocolError)]
    assert decoder.ignored_counts["response.function_call_arguments.done"] == 1
    done = events[-1]
    assert isinstance(done, ev.ResponseDone)
    assert (done.status, done.reason) == (ending["status"], ending["reason"])


def test_a_completed_tool_call_is_requested_once():
    """The completed call is requested once, from its `response.output_item.done`."""
    frames = tool_call_frames("resp_1", "call_1", '{"seconds": 300}')
    events = [realtime.decode(json.dumps(f)) for f in frames]
    assert [e for e in events if isinstance(e, ev.FunctionCallRequested)] == [
        ev.FunctionCallRequested("resp_1", "item_call_1", "call_1", "set_timer", '{"seconds": 300}')
    ]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        '{"type": "error"',
        "[1, 2]",
        '"session.created"',
        "{}",
        '{"type": 7}',
        '{"type": "input_audio_buffer.speech_started", "item_id": "i"}',
        '{"type": "input_audio_buffer.speech_started", "audio_start_ms": "5", "item_id": "i"}',
        '{"type": "input_audio_buffer.speech_started", "audio_start_ms": true, "item_id": "i"}',
        '{"type": "response.output_audio.delta", "response_id": "r", "item_id": "i",'
        ' "delta": "@@"}',
        '{"type": "response.output_audio.delta", "response_id": "r", "item_id": "i", "delta": 5}',
        '{"type": "session.created", "session": null}',
        '{"type": "session.created", "session": {"id": "s", "expires_at": "soon"}}',
        '{"type": "conversation.item.added", "item": {"id": "i", "type": "message"}}',
        '{"type": "conversation.item.added", "item": {"id": "i", "type": "message", "role": "x"}}',
        '{"type": "conversation.item.done", "item": {"id": "i", "type": "message", "role": "user",'
        ' "content": "text"}}',
        '{"type": "response.done", "response": {"id": "r", "status": "completed", "usage": 3}}',
        '{"type": "error", "error": "boom"}',
        "[" * 100000,
    ],
)
def test_malformed_frames_become_protocol_errors(text: str):
    """Bad JSON or a known type with bad fields is a ProtocolError event, never an exception."""
    decoder = realtime.Decoder()
    event = decoder.decode(text)
    assert isinstance(event, ev.ProtocolError)
    assert len(event.raw) <= realtime.RAW_KEEP_CHARS
    assert decoder.protocol_errors == 1


def test_binary_frame_is_a_protocol_error():
    """The server only sends text; a binary frame is reported, not raised."""
    assert isinstance(realtime.decode(b"\x00\x01"), ev.ProtocolError)


def test_unknown_and_ignored_types_are_counted():
    """Unknown types (including beta names) are None and counted; known extras are ignored."""
    decoder = realtime.Decoder()
    for text in (
        '{"type": "response.audio.delta", "delta": "AAAA"}',
        '{"type": "response.audio.delta"}',
        '{"type": "brand.new.event"}',
        '{"type": "rate_limits.updated", "rate_limits": []}',
        '{"type": "response.output_item.added"}',
    ):
        assert decoder.decode(text) is None
    assert decoder.unknown_counts == {"response.audio.delta": 2, "brand.new.event": 1}
    assert decoder.ignored_counts == {"rate_limits.updated": 1, "response.output_item.added": 1}


def test_mcp_items_are_skipped():
    """Item types the device does not model (MCP) are not events."""
    frame = {
        "type": "conversation.item.added",
        "previous_item_id": None,
        "item": {"id": "i", "type": "mcp_call", "server_label": "x"},
    }
    assert realtime.decode(json.dumps(frame)) is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
FIELD_NAMES = st.sampled_from(
    [
        "item_id",
        "response_id",
        "delta",
        "audio_start_ms",
        "audio_end_ms",
        "session",
        "item",
        "response",
        "error",
        "transcript",
        "text",
        "call_id",
        "name",
        "arguments",
        "previous_item_id",
        "content_index",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_decode_never_raises_on_text(text: str):
    """Arbitrary text decodes to an event or None, never an exception."""
    realtime.Decoder().decode(text)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(sorted(realtime.PARSERS)),
    st.dictionaries(FIELD_NAMES, JSON | st.dictionaries(FIELD_NAMES, JSON, max_size=6)),
)
def test_decode_never_raises_on_known_types(event_type: str, fields: dict[str, Any]):
    """A known type with arbitrary field values decodes to its event or a ProtocolError."""
    event = realtime.decode(json.dumps({**fields, "type": event_type}))
    assert event is None or isinstance(event, ev.ServerEvent)
