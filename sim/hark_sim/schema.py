"""Strict checking of what clients send: the ``session`` object, items and response params.

It must not apply anything or touch connection state: it only says yes, or raises a
``ProtocolError`` carrying the code, message and param the GA server would use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hark_sim.protocol import BETA_MESSAGE


class ProtocolError(Exception):
    """A client mistake; ``close_code`` set means the server closes after the error event."""

    def __init__(
        self,
        message: str,
        code: str | None,
        param: str | None = None,
        close_code: int | None = None,
        event_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.close_code = close_code
        self.event_id = event_id  # the failing client event's, when it is known here


_JSON_NAMES = {bool: "a boolean", int: "an integer", float: "a decimal", str: "a string"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _bad_type(path: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError(
        f"Invalid type for '{path}': expected {expected}, but got {_kind(value)} instead.",
        "invalid_type",
        path,
    )


class Spec:
    def check(self, value: Any, path: str) -> None:
        raise NotImplementedError


@dataclass
class Anything(Spec):
    def check(self, value: Any, path: str) -> None:
        return None


@dataclass
class Str(Spec):
    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, str):
            raise _bad_type(path, "a string", value)


@dataclass
class Bool(Spec):
    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, bool):
            raise _bad_type(path, "a boolean", value)


@dataclass
class Num(Spec):
    low: float | None = None
    high: float | None = None
    integer: bool = False

    def check(self, value: Any, path: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad_type(path, "an integer" if self.integer else "a decimal", value)
        if self.integer and not isinstance(value, int):
            raise _bad_type(path, "an integer", value)
        kind = "integer" if self.integer else "decimal"
        if self.low is not None and value < self.low:
            raise ProtocolError(
                f"Invalid '{path}': {kind} below minimum value. Expected a value >= "
                f"{_n(self.low)}, but got {value} instead.",
                f"{kind}_below_min_value",
                path,
            )
        if self.high is not None and value > self.high:
            raise ProtocolError(
                f"Invalid '{path}': {kind} above maximum value. Expected a value <= "
                f"{_n(self.high)}, but got {value} instead.",
                f"{kind}_above_max_value",
                path,
            )


def _n(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass
class Enum(Spec):
    values: tuple[Any, ...]

    def check(self, value: Any, path: str) -> None:
        if value not in self.values or isinstance(value, bool) != isinstance(self.values[0], bool):
            listed = ", ".join(f"'{v}'" for v in self.values)
            raise ProtocolError(
                f"Invalid value: '{value}'. Supported values are: {listed}.", "invalid_value", path
            )


@dataclass
class Nullable(Spec):
    inner: Spec

    def check(self, value: Any, path: str) -> None:
        if value is not None:
            self.inner.check(value, path)


@dataclass
class ListOf(Spec):
    inner: Spec
    max_len: int | None = None

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, list):
            raise _bad_type(path, "an array", value)
        if self.max_len is not None and len(value) > self.max_len:
            raise ProtocolError(
                f"Invalid '{path}': array too long. Expected at most {self.max_len} items.",
                "array_above_max_length",
                path,
            )
        for i, v in enumerate(value):
            self.inner.check(v, f"{path}[{i}]")


@dataclass
class Obj(Spec):
    fields: Mapping[str, Spec]
    required: Sequence[str] = ()
    open_keys: bool = False

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, Mapping):
            raise _bad_type(path, "an object", value)
        for key in value:
            if key not in self.fields and not self.open_keys:
                raise ProtocolError(
                    f"Unknown parameter: '{path}.{key}'.", "unknown_parameter", f"{path}.{key}"
                )
        for key in self.required:
            if key not in value:
                raise ProtocolError(
                    f"Missing required parameter: '{path}.{key}'.",
                    "missing_required_parameter",
                    f"{path}.{key}",
                )
        for key, v in value.items():
            if key in self.fields:
                self.fields[key].check(v, f"{path}.{key}")


@dataclass
class Tagged(Spec):
    """An object whose ``type`` (or other tag) picks the spec; ``alt`` checks non-objects."""

    variants: Mapping[str, Spec]
    tag: str = "type"
    alt: Spec | None = None

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, Mapping):
            if self.alt is None:
                raise _bad_type(path, "an object", value)
            self.alt.check(value, path)
            return
        if self.tag not in value:
            raise ProtocolError(
                f"Missing required parameter: '{path}.{self.tag}'.",
                "missing_required_parameter",
                f"{path}.{self.tag}",
            )
        Enum(tuple(self.variants)).check(value[self.tag], f"{path}.{self.tag}")
        self.variants[value[self.tag]].check(value, path)


AUDIO_FORMAT = Tagged(
    {
        "audio/pcm": Obj({"type": Str(), "rate": Num(24000, 24000, integer=True)}),
        "audio/pcmu": Obj({"type": Str()}),
        "audio/pcma": Obj({"type": Str()}),
    }
)
SERVER_VAD = Obj(
    {
        "type": Str(),
        "threshold": Num(0.0, 1.0),
        "prefix_padding_ms": Num(0, None, integer=True),
        "silence_duration_ms": Num(0, None, integer=True),
        "create_response": Bool(),
        "interrupt_response": Bool(),
        "idle_timeout_ms": Nullable(Num(5000, 30000, integer=True)),
    }
)
SEMANTIC_VAD = Obj(
    {
        "type": Str(),
        "eagerness": Enum(("low", "medium", "high", "auto")),
        "create_response": Bool(),
        "interrupt_response": Bool(),
    }
)


class Voice(Spec):
    """A voice name, or a custom voice ``{"id": "voice_…"}``."""

    def check(self, value: Any, path: str) -> None:
        if isinstance(value, Mapping):
            Obj({"id": Str()}, required=("id",)).check(value, path)
        elif not isinstance(value, str):
            raise _bad_type(path, "a string or an object", value)


VOICE = Voice()
REASONING_EFFORTS = ("minimal", "low", "medium", "high", "xhigh")
TRANSCRIPTION = Obj(
    {
        "model": Str(),
        "language": Str(),
        "languages": ListOf(Str()),
        "prompt": Str(),
        "keywords": ListOf(Str()),
        "delay": Enum(("minimal", "low", "medium", "high", "xhigh")),
    }
)
FUNCTION_TOOL = Obj(
    {"type": Str(), "name": Str(), "description": Str(), "parameters": Anything()},
    required=("name",),
)
TOOLS = ListOf(Tagged({"function": FUNCTION_TOOL, "mcp": Obj({}, open_keys=True)}))
TOOL_CHOICE = Tagged(
    {
        "function": Obj({"type": Str(), "name": Str()}, required=("name",)),
        "mcp": Obj({"type": Str(), "server_label": Str(), "name": Str()}),
    },
    alt=Enum(("auto", "none", "required")),
)
OUTPUT_MODALITIES = ListOf(Enum(("audio", "text")), max_len=1)
OUTPUT_AUDIO = Obj({"format": AUDIO_FORMAT, "voice": VOICE, "speed": Num(0.25, 1.5)})

SESSION = Obj(
    {
        "type": Enum(("realtime",)),
        "model": Str(),
        "instructions": Str(),
        "output_modalities": OUTPUT_MODALITIES,
        "audio": Obj(
            {
                "input": Obj(
                    {
                        "format": AUDIO_FORMAT,
                        "transcription": Nullable(TRANSCRIPTION),
                        "noise_reduction": Nullable(
                            Obj(
                                {
                                    "type": Enum(("near_field", "far_field")),
                                    "strength": Num(),
                                }
                            )
                        ),
                        "turn_detection": Nullable(
                            Tagged({"server_vad": SERVER_VAD, "semantic_vad": SEMANTIC_VAD})
                        ),
                    }
                ),
                "output": OUTPUT_AUDIO,
            }
        ),
        "tools": TOOLS,
        "tool_choice": TOOL_CHOICE,
        "tracing": Anything(),
        "max_output_tokens": Anything(),
        "truncation": Anything(),
        "include": Nullable(ListOf(Enum(("item.input_audio_transcription.logprobs",)))),
        "prompt": Nullable(Obj({"id": Str(), "version": Nullable(Str()), "variables": Anything()})),
        "parallel_tool_calls": Bool(),
        "reasoning": Obj({"effort": Enum(REASONING_EFFORTS)}),
    },
    required=("type",),
)

# Fields only the retired beta shape had at the top of ``session``. In a GA
# ``session.update`` they are just unknown parameters (``unknown_parameter`` naming
# ``session.<field>``, non-fatal); only ``client_secrets`` bodies shaped like the beta
# ``/v1/realtime/sessions`` request (these fields at the top level) are refused as beta.
BETA_SESSION_FIELDS = frozenset(
    {
        "modalities",
        "voice",
        "input_audio_format",
        "output_audio_format",
        "turn_detection",
        "input_audio_transcription",
        "input_audio_noise_reduction",
        "temperature",
        "max_response_output_tokens",
        "speed",
    }
)


def beta_error() -> ProtocolError:
    return ProtocolError(BETA_MESSAGE, "beta_api_shape_disabled", None, close_code=4000)


def check_max_output_tokens(value: Any, path: str) -> None:
    if value != "inf":
        Num(1, 4096, integer=True).check(value, path)


# Models that take ``reasoning`` ("reasoning-capable Realtime models such as
# gpt-realtime-2"; the gpt-realtime-2 family), and the transcription models that take
# ``keywords`` ("Supported by gpt-transcribe and gpt-live-transcribe") or no ``prompt``
# ("not supported with gpt-realtime-whisper"), per openai's types/realtime docstrings.
REASONING_MODELS = frozenset({"gpt-realtime-2", "gpt-realtime-2.1", "gpt-realtime-2.1-mini"})
KEYWORD_TRANSCRIBERS = frozenset({"gpt-transcribe", "gpt-live-transcribe"})


def check_model_fit(session: Mapping[str, Any], model: str, path: str = "session") -> None:
    """Fields that only some models take. UNCONFIRMED: the wording and code the real
    server uses for these (no capture shows one); ``invalid_value`` naming the field is
    what it answers for other values it does not take."""
    if "reasoning" in session and model not in REASONING_MODELS:
        raise ProtocolError(
            f"Invalid 'reasoning': model '{model}' does not support reasoning.",
            "invalid_value",
            f"{path}.reasoning",
        )
    audio_in = (session.get("audio") or {}).get("input") or {}
    transcription = audio_in.get("transcription") or {}
    where = f"{path}.audio.input.transcription"
    transcriber = str(transcription.get("model") or "")
    if "keywords" in transcription and transcriber not in KEYWORD_TRANSCRIBERS:
        raise ProtocolError(
            f"Invalid 'keywords': not supported with transcription model '{transcriber}'.",
            "invalid_value",
            f"{where}.keywords",
        )
    if "prompt" in transcription and transcriber == "gpt-realtime-whisper":
        raise ProtocolError(
            "Invalid 'prompt': not supported with transcription model 'gpt-realtime-whisper'.",
            "invalid_value",
            f"{where}.prompt",
        )


def check_session(session: Any, path: str = "session") -> None:
    """Raise ``ProtocolError`` unless ``session`` is a valid GA realtime session config."""
    SESSION.check(session, path)
    if "max_output_tokens" in session:
        check_max_output_tokens(session["max_output_tokens"], f"{path}.max_output_tokens")
    trunc = session.get("truncation", "auto")
    if isinstance(trunc, str):
        Enum(("auto", "disabled")).check(trunc, f"{path}.truncation")
    else:
        Obj(
            {
                "type": Enum(("retention_ratio",)),
                "retention_ratio": Num(0, 1),
                "token_limits": Anything(),
            },
            required=("type", "retention_ratio"),
        ).check(trunc, f"{path}.truncation")
    tracing = session.get("tracing")
    if isinstance(tracing, str):
        Enum(("auto",)).check(tracing, f"{path}.tracing")
    elif tracing is not None:
        Obj({"workflow_name": Str(), "group_id": Str(), "metadata": Anything()}).check(
            tracing, f"{path}.tracing"
        )


_TEXT = Obj({"type": Str(), "text": Str()}, required=("text",))
USER_CONTENT = Tagged(
    {
        "input_text": _TEXT,
        "input_audio": Obj({"type": Str(), "audio": Str(), "transcript": Nullable(Str())}),
        "input_image": Obj({"type": Str(), "image_url": Str(), "detail": Str()}),
    }
)
_ITEM_COMMON = {
    "id": Str(),
    "object": Enum(("realtime.item",)),
    "type": Str(),
    "status": Enum(("completed", "incomplete", "in_progress")),
}
MESSAGE = Tagged(
    {
        "user": Obj(
            {**_ITEM_COMMON, "role": Str(), "content": ListOf(USER_CONTENT)}, required=("content",)
        ),
        "system": Obj(
            {**_ITEM_COMMON, "role": Str(), "content": ListOf(Tagged({"input_text": _TEXT}))},
            required=("content",),
        ),
        "assistant": Obj(
            {**_ITEM_COMMON, "role": Str(), "content": ListOf(Tagged({"output_text": _TEXT}))},
            required=("content",),
        ),
    },
    tag="role",
)
ITEM = Tagged(
    {
        "message": MESSAGE,
        "function_call": Obj(
            {**_ITEM_COMMON, "call_id": Str(), "name": Str(), "arguments": Str()},
            required=("name", "arguments"),
        ),
        "function_call_output": Obj(
            {**_ITEM_COMMON, "call_id": Str(), "output": Str()}, required=("call_id", "output")
        ),
    }
)

RESPONSE_PARAMS = Obj(
    {
        "output_modalities": OUTPUT_MODALITIES,
        "instructions": Str(),
        "audio": Obj({"output": Obj({"format": AUDIO_FORMAT, "voice": VOICE})}),
        "tools": TOOLS,
        "tool_choice": TOOL_CHOICE,
        "max_output_tokens": Anything(),
        "metadata": Nullable(Obj({}, open_keys=True)),
        "conversation": Anything(),
        "input": ListOf(Obj({}, open_keys=True)),
        "prompt": Anything(),
    }
)


def check_response_params(params: Any) -> None:
    RESPONSE_PARAMS.check(params, "response")
    if "max_output_tokens" in params:
        check_max_output_tokens(params["max_output_tokens"], "response.max_output_tokens")
    if "conversation" in params:
        Enum(("auto", "none")).check(params["conversation"], "response.conversation")
