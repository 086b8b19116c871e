"""The GA Realtime wire format: wire commands to JSON text, server JSON text to typed events.

Sans-I/O: this module must not import asyncio, websockets or anything that touches
the network, and it never raises on server input (bad input becomes
``events.ProtocolError``). Names are the GA ones (``response.output_audio.delta``,
``conversation.item.added``/``.done``); beta names are unknown types here.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from hark import events as ev

log = logging.getLogger(__name__)

AUDIO_FORMAT: dict[str, Any] = {"type": "audio/pcm", "rate": 24000}
"""PCM16 mono little-endian at 24 kHz, the only rate the API takes (protocol §3.2)."""

RAW_KEEP_CHARS = 500
"""How much of a bad frame a ``ProtocolError`` keeps, so a huge frame is not held."""


# --------------------------------------------------------------------------- encoding


def _dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def turn_detection_json(td: ev.TurnDetection | None) -> dict[str, Any] | None:
    """`audio.input.turn_detection`: null for manual turns; only fields valid for the type."""
    if td is None:
        return None
    out: dict[str, Any] = {
        "type": td.type,
        "create_response": td.create_response,
        "interrupt_response": td.interrupt_response,
    }
    if td.type == "server_vad":
        optional: dict[str, Any] = {
            "threshold": td.threshold,
            "prefix_padding_ms": td.prefix_padding_ms,
            "silence_duration_ms": td.silence_duration_ms,
            "idle_timeout_ms": td.idle_timeout_ms,
        }
    else:
        optional = {"eagerness": td.eagerness}
    out.update((k, v) for k, v in optional.items() if v is not None)
    return out


def session_json(config: ev.SessionConfig) -> dict[str, Any]:
    """The whole GA `session` object for `session.update` (and a key request's `session`)."""
    transcription: dict[str, Any] | None = None
    if config.transcription_model:
        transcription = {"model": config.transcription_model}
        if config.transcription_language:
            transcription["language"] = config.transcription_language
        if config.transcription_prompt:
            transcription["prompt"] = config.transcription_prompt
        if config.transcription_keywords:
            transcription["keywords"] = list(config.transcription_keywords)
    output: dict[str, Any] = {"format": dict(AUDIO_FORMAT)}
    if config.voice is not None:
        # A custom voice is an object ({"id": "voice_…"}); the built-in ones are names.
        custom = config.voice.startswith("voice_")
        output["voice"] = {"id": config.voice} if custom else config.voice
    if config.speed is not None:
        output["speed"] = config.speed
    session: dict[str, Any] = {
        "type": "realtime",
        "model": config.model,
        "instructions": config.instructions,
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": dict(AUDIO_FORMAT),
                "turn_detection": turn_detection_json(config.turn_detection),
                "transcription": transcription,
            },
            "output": output,
        },
        "tools": [
            {
                "type": "function",
                "name": tool.name,
                "description": tool.description,
                "parameters": dict(tool.parameters),
            }
            for tool in config.tools
        ],
        "tool_choice": config.tool_choice,
    }
    if config.noise_reduction is not None:  # "off" is the wire's null; None: not sent
        reduction = None if config.noise_reduction == "off" else {"type": config.noise_reduction}
        session["audio"]["input"]["noise_reduction"] = reduction
    if config.max_output_tokens is not None:
        session["max_output_tokens"] = config.max_output_tokens
    if config.truncation is not None:
        session["truncation"] = truncation_json(config.truncation)
    if config.reasoning_effort is not None:
        session["reasoning"] = {"effort": config.reasoning_effort}
    return session


def truncation_json(truncation: str | ev.Truncation) -> str | dict[str, Any]:
    """`truncation`: "auto", "disabled", or a retention ratio with optional token limit."""
    if isinstance(truncation, str):
        return truncation
    out: dict[str, Any] = {
        "type": "retention_ratio",
        "retention_ratio": truncation.retention_ratio,
    }
    if truncation.post_instructions_tokens is not None:
        out["token_limits"] = {"post_instructions": truncation.post_instructions_tokens}
    return out


def item_json(item: ev.Item) -> dict[str, Any]:
    """A `conversation.item.create` item; messages carry their text as one content part."""
    out: dict[str, Any] = {"type": item.type}
    if item.id:
        out["id"] = item.id
    if item.type == "message":
        if item.role is None:
            raise ValueError("a message item needs a role")
        part_type = "output_text" if item.role == "assistant" else "input_text"
        out["role"] = item.role
        out["content"] = [{"type": part_type, "text": item.text or ""}]
    elif item.type == "function_call":
        if not item.call_id or not item.name:
            raise ValueError("a function_call item needs call_id and name")
        out.update(call_id=item.call_id, name=item.name, arguments=item.arguments or "")
    else:
        if not item.call_id:
            raise ValueError("a function_call_output item needs call_id")
        out.update(call_id=item.call_id, output=item.output or "")
    return out


def encode_audio_append(pcm: bytes, event_id: str | None = None) -> str:
    """`input_audio_buffer.append`, built by concatenation: base64 needs no JSON escaping."""
    audio = base64.b64encode(pcm).decode("ascii")
    if event_id is None:
        return '{"type":"input_audio_buffer.append","audio":"' + audio + '"}'
    return (
        '{"type":"input_audio_buffer.append","event_id":'
        + json.dumps(event_id)
        + ',"audio":"'
        + audio
        + '"}'
    )


def command_json(command: ev.WireCommand) -> dict[str, Any]:
    """The client event for a wire command, as a dict (without ``event_id``)."""
    match command:
        case ev.UpdateSession(config=config):
            return {"type": "session.update", "session": session_json(config)}
        case ev.SendAudio(pcm=pcm):
            return {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}
        case ev.CommitAudio():
            return {"type": "input_audio_buffer.commit"}
        case ev.ClearAudio():
            return {"type": "input_audio_buffer.clear"}
        case ev.CreateItem(item=item, previous_item_id=previous):
            out: dict[str, Any] = {"type": "conversation.item.create", "item": item_json(item)}
            if previous is not None:
                out["previous_item_id"] = previous
            return out
        case ev.DeleteItem(item_id=item_id):
            return {"type": "conversation.item.delete", "item_id": item_id}
        case ev.Truncate(item_id=item_id, audio_end_ms=end_ms, content_index=index):
            return {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": index,
                "audio_end_ms": max(0, end_ms),  # negative → integer_below_min_value (§8)
            }
        case ev.CreateResponse(instructions=instructions):
            if instructions is None:
                return {"type": "response.create"}
            return {"type": "response.create", "response": {"instructions": instructions}}
        case ev.CancelResponse(response_id=response_id):
            if response_id is None:
                return {"type": "response.cancel"}
            return {"type": "response.cancel", "response_id": response_id}
    raise TypeError(f"not a wire command: {command!r}")


def encode(command: ev.WireCommand, event_id: str | None = None) -> str:
    """One client event as JSON text, ready for a TEXT frame."""
    if type(command) is ev.SendAudio:  # the hot path: ~50 per second while listening
        return encode_audio_append(command.pcm, event_id)
    obj = command_json(command)
    if event_id is not None:
        obj = {"type": obj["type"], "event_id": event_id, **obj}
    return _dumps(obj)


# --------------------------------------------------------------------------- decoding


class BadEventError(Exception):
    """A known event type with a missing or ill-typed field (becomes ``ProtocolError``)."""


def _obj(parent: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise BadEventError(f"{key!r} must be an object")
    return value


def _str(parent: Mapping[str, Any], key: str) -> str:
    value = parent.get(key)
    if not isinstance(value, str):
        raise BadEventError(f"{key!r} must be a string")
    return value


def _opt_str(parent: Mapping[str, Any], key: str) -> str | None:
    value = parent.get(key)
    if value is not None and not isinstance(value, str):
        raise BadEventError(f"{key!r} must be a string or null")
    return value


def _int(parent: Mapping[str, Any], key: str) -> int:
    value = parent.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadEventError(f"{key!r} must be an integer")
    return value


def _opt_int(parent: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = parent.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadEventError(f"{key!r} must be an integer")
    return value


_PART_TEXT_KEY = {
    "input_audio": "transcript",
    "input_text": "text",
    "output_audio": "transcript",
    "output_text": "text",
}


def parse_item(raw: Mapping[str, Any]) -> ev.Item | None:
    """A GA `realtime.item` as an ``events.Item``; None for item types we do not model (MCP)."""
    item_type = _str(raw, "type")
    item_id = _str(raw, "id")
    status = _opt_str(raw, "status")
    if item_type == "message":
        role = _str(raw, "role")
        if role not in ("user", "assistant", "system"):
            raise BadEventError(f"unknown role {role!r}")
        content = raw.get("content", [])
        if not isinstance(content, list):
            raise BadEventError("'content' must be a list")
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict):
                raise BadEventError("content parts must be objects")
            key = _PART_TEXT_KEY.get(part.get("type", ""))
            if key is not None:
                text = _opt_str(part, key)
                if text:
                    texts.append(text)
        return ev.Item(
            id=item_id,
            type="message",
            role=role,  # type: ignore[arg-type]  # checked against the literal above
            status=status,
            text=" ".join(texts) if texts else None,
        )
    if item_type == "function_call":
        return ev.Item(
            id=item_id,
            type="function_call",
            status=status,
            call_id=_opt_str(raw, "call_id"),
            name=_opt_str(raw, "name"),
            arguments=_opt_str(raw, "arguments"),
        )
    if item_type == "function_call_output":
        return ev.Item(
            id=item_id,
            type="function_call_output",
            status=status,
            call_id=_opt_str(raw, "call_id"),
            output=_opt_str(raw, "output"),
        )
    return None


def _audio_delta(d: Mapping[str, Any]) -> ev.AudioDelta:
    try:
        pcm = base64.b64decode(_str(d, "delta"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadEventError(f"'delta' is not base64: {exc}") from None
    return ev.AudioDelta(
        _str(d, "response_id"), _str(d, "item_id"), _opt_int(d, "content_index"), pcm
    )


def _session_created(d: Mapping[str, Any]) -> ev.SessionCreated:
    session = _obj(d, "session")
    expires_at = session.get("expires_at")
    if expires_at is not None and (
        not isinstance(expires_at, int | float) or isinstance(expires_at, bool)
    ):
        raise BadEventError("'session.expires_at' must be a number")
    # The key endpoint shows `expires_at: 0` for "not set"; treat it as unknown.
    return ev.SessionCreated(_str(session, "id"), float(expires_at) if expires_at else None)


def _item_event(d: Mapping[str, Any], done: bool) -> ev.ItemAdded | ev.ItemDone | None:
    item = parse_item(_obj(d, "item"))
    if item is None:
        return None
    previous = _opt_str(d, "previous_item_id")
    return ev.ItemDone(item, previous) if done else ev.ItemAdded(item, previous)


def _response_done(d: Mapping[str, Any]) -> ev.ResponseDone:
    response = _obj(d, "response")
    details = response.get("status_details")
    reason = None
    error = None
    if isinstance(details, dict):
        reason = _opt_str(details, "reason")
        raw_error = details.get("error")
        if isinstance(raw_error, dict):
            error = ev.ResponseError(
                _opt_str(raw_error, "type"),
                _opt_str(raw_error, "code"),
                _opt_str(raw_error, "message"),
            )
        elif raw_error is not None:
            raise BadEventError("'status_details.error' must be an object or null")
    elif details is not None:
        raise BadEventError("'status_details' must be an object or null")
    usage = response.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise BadEventError("'usage' must be an object or null")
    usage = usage or {}
    return ev.ResponseDone(
        response_id=_str(response, "id"),
        status=_str(response, "status"),
        reason=reason,
        output_tokens=_opt_int(usage, "output_tokens"),
        input_tokens=_opt_int(usage, "input_tokens"),
        error=error,
    )


def _output_item_done(d: Mapping[str, Any]) -> ev.FunctionCallRequested | None:
    """A finished function call is the one place a tool run is requested.

    `response.function_call_arguments.done` also comes when a response is cancelled,
    interrupted or cut short, with whatever arguments had streamed; only an item that
    ended `completed` carries whole arguments. Other item types (messages) are not used.
    """
    item = d.get("item")
    if not isinstance(item, dict) or item.get("type") != "function_call":
        return None  # messages and MCP items: the events above carry what we need
    response_id = _str(d, "response_id")
    status = _opt_str(item, "status")
    if status != "completed":
        log.info(
            "tool call %r in %s ended %s: not run",
            _opt_str(item, "name"),
            response_id,
            status or "without a status",
        )
        return None
    return ev.FunctionCallRequested(
        response_id,
        _str(item, "id"),
        _str(item, "call_id"),
        _str(item, "name"),
        _str(item, "arguments"),
    )


def _error(d: Mapping[str, Any]) -> ev.ServerError:
    error = _obj(d, "error")
    return ev.ServerError(
        code=_opt_str(error, "code"),
        message=_opt_str(error, "message") or "",
        type=_opt_str(error, "type") or "invalid_request_error",
        param=_opt_str(error, "param"),
        event_id=_opt_str(error, "event_id"),
    )


def _transcript_done(key: str) -> Callable[[Mapping[str, Any]], ev.ServerEvent | None]:
    return lambda d: ev.TranscriptDone(_str(d, "response_id"), _str(d, "item_id"), _str(d, key))


_Parser = Callable[[Mapping[str, Any]], ev.ServerEvent | None]

PARSERS: dict[str, _Parser] = {
    "response.output_audio.delta": _audio_delta,
    "session.created": _session_created,
    "session.updated": lambda d: ev.SessionUpdated(),
    "input_audio_buffer.speech_started": lambda d: ev.SpeechStarted(
        _int(d, "audio_start_ms"), _str(d, "item_id")
    ),
    "input_audio_buffer.speech_stopped": lambda d: ev.SpeechStopped(
        _int(d, "audio_end_ms"), _str(d, "item_id")
    ),
    "input_audio_buffer.committed": lambda d: ev.AudioCommitted(
        _str(d, "item_id"), _opt_str(d, "previous_item_id")
    ),
    "input_audio_buffer.cleared": lambda d: ev.AudioCleared(),
    "input_audio_buffer.timeout_triggered": lambda d: ev.InputTimedOut(_str(d, "item_id")),
    "conversation.item.added": lambda d: _item_event(d, done=False),
    "conversation.item.created": lambda d: _item_event(d, done=False),  # legacy name
    "conversation.item.done": lambda d: _item_event(d, done=True),
    "conversation.item.truncated": lambda d: ev.ItemTruncated(
        _str(d, "item_id"), _int(d, "audio_end_ms")
    ),
    "conversation.item.deleted": lambda d: ev.ItemDeleted(_str(d, "item_id")),
    "conversation.item.input_audio_transcription.completed": lambda d: ev.UserTranscript(
        _str(d, "item_id"), _str(d, "transcript")
    ),
    "response.created": lambda d: ev.ResponseCreated(_str(_obj(d, "response"), "id")),
    "response.output_audio.done": lambda d: ev.AudioDone(
        _str(d, "response_id"), _str(d, "item_id")
    ),
    "response.output_audio_transcript.delta": lambda d: ev.TranscriptDelta(
        _str(d, "response_id"), _str(d, "item_id"), _str(d, "delta")
    ),
    "response.output_text.delta": lambda d: ev.TranscriptDelta(
        _str(d, "response_id"), _str(d, "item_id"), _str(d, "delta")
    ),
    "response.output_audio_transcript.done": _transcript_done("transcript"),
    "response.output_text.done": _transcript_done("text"),
    "response.output_item.done": _output_item_done,
    "response.done": _response_done,
    "error": _error,
}
"""Every server event the device acts on, by GA type."""

IGNORED: frozenset[str] = frozenset(
    {
        "conversation.created",
        "conversation.item.retrieved",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.failed",
        "conversation.item.input_audio_transcription.segment",
        "response.output_item.added",
        "response.content_part.added",
        "response.content_part.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",  # also for cut-off calls: see _output_item_done
        "rate_limits.updated",
        "output_audio_buffer.started",
        "output_audio_buffer.stopped",
        "output_audio_buffer.cleared",
    }
)
"""Known GA events the device does not need (the same facts arrive in the events above)."""


def _bad(message: str, text: str) -> ev.ProtocolError:
    return ev.ProtocolError(message, raw=text[:RAW_KEEP_CHARS])


def decode_typed(text: str | bytes) -> tuple[ev.ServerEvent | None, str | None]:
    """Decode one frame; also return its ``type`` when it is a type we do not parse."""
    if isinstance(text, bytes | bytearray):
        return _bad("binary frame (the server only sends text)", repr(bytes(text[:100]))), None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return _bad(f"invalid JSON: {exc}", text), None
    if not isinstance(data, dict):
        return _bad("event is not a JSON object", text), None
    event_type = data.get("type")
    if not isinstance(event_type, str):
        return _bad("event has no string 'type'", text), None
    parser = PARSERS.get(event_type)
    if parser is None:
        return None, event_type
    try:
        return parser(data), None
    except BadEventError as exc:
        return _bad(f"{event_type}: {exc}", text), None
    except Exception as exc:  # a parser bug must not kill the receive loop
        log.exception("parser for %s failed", event_type)
        return _bad(f"{event_type}: {type(exc).__name__}: {exc}", text), None


def decode(text: str | bytes) -> ev.ServerEvent | None:
    """One server frame as a typed event; None for types we ignore; never raises."""
    return decode_typed(text)[0]


class Decoder:
    """``decode`` plus counters: unknown types and known-but-ignored types, per type."""

    def __init__(self) -> None:
        self.unknown_counts: Counter[str] = Counter()
        self.ignored_counts: Counter[str] = Counter()
        self.protocol_errors = 0

    def decode(self, text: str | bytes) -> ev.ServerEvent | None:
        event, skipped = decode_typed(text)
        if skipped is not None:
            if skipped in IGNORED:
                self.ignored_counts[skipped] += 1
            else:
                if skipped not in self.unknown_counts:
                    log.info("ignoring unknown server event type %r", skipped[:80])
                self.unknown_counts[skipped] += 1
        elif isinstance(event, ev.ProtocolError):
            self.protocol_errors += 1
            log.warning("protocol error: %s", event.message)
        return event
