"""Shapes of the GA Realtime wire format as the simulator emits them: ids, errors, defaults.

It must not hold connection state or do I/O; everything here is a pure function of its
arguments, so the session and the HTTP route build identical shapes.
"""

from __future__ import annotations

import copy
import secrets
import string
from typing import Any

JSON = dict[str, Any]

DEFAULT_MODEL_NAME = "gpt-realtime"
_ALPHABET = string.ascii_letters + string.digits

DEFAULT_INSTRUCTIONS = (
    "Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI. "
    "(This is hark_sim, an offline stand-in; it does not understand you.)"
)

# The client event types the GA server accepts (its own invalid_value message lists them;
# it also lists session.input_audio_buffer.append, which only translation sessions use).
CLIENT_EVENT_TYPES = (
    "session.update",
    "session.close",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "response.create",
    "response.cancel",
)
BETA_EVENT_TYPES = frozenset({"transcription_session.update"})

BETA_MESSAGE = (
    "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
)
MISSING_AUTH_MESSAGE = "Missing bearer or basic authentication in header"


def new_id(prefix: str) -> str:
    """An OpenAI-looking id such as ``event_Ct1OVqJmiaDhg4nkh3JWr``."""
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(21))


def error_body(message: str, code: str | None, param: str | None = None) -> JSON:
    """The REST error envelope of the OpenAI API."""
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }


def error_event(
    message: str,
    code: str | None,
    *,
    param: str | None = None,
    client_event_id: str | None = None,
    error_type: str = "invalid_request_error",
) -> JSON:
    """An ``error`` server event; ``client_event_id`` echoes the failing client event."""
    return {
        "type": "error",
        "error": {
            "type": error_type,
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        },
    }


def default_format() -> JSON:
    return {"type": "audio/pcm", "rate": 24000}


def default_server_vad() -> JSON:
    return {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 200,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }


def default_semantic_vad() -> JSON:
    return {
        "type": "semantic_vad",
        "eagerness": "auto",
        "create_response": True,
        "interrupt_response": True,
    }


def default_session(model: str) -> JSON:
    """The effective config of a fresh session, as ``session.created`` shows it."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": new_id("sess"),
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": 0,
        "audio": {
            "input": {
                "format": default_format(),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": default_server_vad(),
            },
            "output": {"format": default_format(), "voice": "alloy", "speed": 1.0},
        },
        "include": None,
    }


def deep_merge(base: JSON, update: JSON) -> JSON:
    """``base`` with ``update`` applied: nested objects merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            if "type" in value and value["type"] != out[key].get("type"):
                # Another member of a tagged union (a format, a turn detection):
                # nothing of the old one carries over.
                fresh = key == "turn_detection"
                out[key] = _fresh_turn_detection(value) if fresh else copy.deepcopy(value)
            else:
                out[key] = deep_merge(out[key], value)
        elif key == "turn_detection" and isinstance(value, dict):
            out[key] = _fresh_turn_detection(value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _fresh_turn_detection(value: JSON) -> JSON:
    base = default_semantic_vad() if value.get("type") == "semantic_vad" else default_server_vad()
    base.update(copy.deepcopy(value))
    return base


def usage(
    input_audio_ms: int, input_text_chars: int, output_audio_ms: int, output_chars: int
) -> JSON:
    """Plausible token counts: 1 audio token per 100 ms, 1 text token per 4 characters."""
    in_audio = input_audio_ms // 100
    in_text = 20 + input_text_chars // 4
    out_audio = output_audio_ms // 100
    out_text = output_chars // 4
    return {
        "total_tokens": in_audio + in_text + out_audio + out_text,
        "input_tokens": in_audio + in_text,
        "output_tokens": out_audio + out_text,
        "input_token_details": {
            "text_tokens": in_text,
            "audio_tokens": in_audio,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio},
    }


def transcription_usage(model: str, audio_ms: int, transcript: str) -> JSON:
    """Input transcription usage: whisper-1 is billed by duration, the gpt-4o transcribe
    models in tokens (captured: ``{"type": "tokens", ...}`` from gpt-4o-mini-transcribe)."""
    if model == "whisper-1":
        return {"type": "duration", "seconds": round(audio_ms / 1000, 3)}
    audio_tokens = max(1, audio_ms // 100)
    text_tokens = max(1, len(transcript) // 4)
    return {
        "type": "tokens",
        "total_tokens": audio_tokens + text_tokens,
        "input_tokens": audio_tokens,
        "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
        "output_tokens": text_tokens,
    }


def rate_limits_event(tokens_used: int) -> JSON:
    """As captured: one limit, ``tokens`` (the SDK also allows ``requests``; never seen)."""
    return {
        "type": "rate_limits.updated",
        "rate_limits": [
            {
                "name": "tokens",
                "limit": 40000,
                "remaining": max(0, 40000 - tokens_used),
                "reset_seconds": round(tokens_used * 0.0015, 3),
            },
        ],
    }


def public_item(item: JSON) -> JSON:
    """An item as ``conversation.item.*`` events show it: without audio bytes."""
    out = copy.deepcopy(item)
    for part in out.get("content", []) or []:
        part.pop("audio", None)
    return out
