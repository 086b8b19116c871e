"""The device's configuration: pydantic models of one TOML file, its loader, and the token file.

This module only reads and validates; it must not import anything else from the
package, open devices or sockets, or log the device token (the token lives in its
own file, never in the TOML, and is only ever returned to the caller).
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hark import defaults

DEFAULT_PATH = Path("/etc/hark/hark.toml")
DEFAULT_TOKEN_FILE = Path("/etc/hark/device-token")
BuiltinTool = Literal["time", "volume", "end_conversation"]
BUILTIN_TOOLS: tuple[BuiltinTool, ...] = ("time", "volume", "end_conversation")
WAKE_WORDS = ("okay_nabu", "hey_jarvis", "hey_mycroft", "alexa")
"""The wake words pymicro-wakeword ships (``hark.audio.wake.SHIPPED``, checked by a test)."""
TriggerMode = Literal["button", "vad", "both", "wake", "wake+button"]
BUTTON_MODES: tuple[TriggerMode, ...] = ("button", "both", "wake+button")
WAKE_MODES: tuple[TriggerMode, ...] = ("wake", "wake+button")

# Validators use fullmatch: "$" would also match before a trailing newline.
_OBJECT_REF = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")  # visible ASCII: it goes into an HTTP header
_URL_USERINFO = re.compile(r"\A([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")
_FIELD_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


class ConfigError(Exception):
    """The configuration (or the token file) cannot be used; ``problems`` has one line each.

    Each line starts with the dotted path of the field at fault (``trigger.mode: …``)
    so an owner can find it in the file; the CLI prints them and exits 78 (EX_CONFIG).
    """

    def __init__(self, problems: list[str], source: str = "<string>") -> None:
        self.problems = problems
        self.source = source
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


# --------------------------------------------------------------------------- field types


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Relative paths are relative to the config file's folder, not the daemon's cwd."""
    base = (info.context or {}).get("base_dir")
    if not value.is_absolute() and base is not None:
        return Path(base) / value
    return value


# Models are strict (a TOML "yes" or 1 is not a bool, true is not a number), except
# where TOML has no such type: paths come as strings, tuples as arrays.
ConfigPath = Annotated[Path, Strict(False), AfterValidator(_resolve_path)]
Pin = Annotated[int, Field(ge=0, le=53)]
"""A BCM GPIO number (the `GPIO17` in pinout diagrams, not the header pin)."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _valid_host(host: str, bracketed: bool) -> bool:
    """An IP literal ([v6] in brackets) or a DNS name of 1-63 character labels."""
    if bracketed:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    name = host.removesuffix(".")
    labels = name.split(".")
    if all(label.isdigit() for label in labels):  # looks like IPv4: must be one
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return False
        return True
    return len(name) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _check_url(value: str, secure: str, plain: str) -> str:
    """A whole URL: ``secure`` (https/wss) except ``plain`` on loopback (tests, the demo).

    Checked before anything uses it: urllib and websockets would strip, reject or send
    a space, CR/LF or a bad port only when the daemon first connects.
    """
    shown = _URL_USERINFO.sub(r"\1***@", value)  # a password never reaches a log
    bad = next((c for c in value if not "\x21" <= c <= "\x7e"), None)
    if bad is not None:
        what = (
            "a space"
            if bad == " "
            else "a non-ASCII character (percent-encode it)"
            if ord(bad) > 0x7E
            else f"a control character ({bad!r})"
        )
        raise ValueError(f"must not contain {what} (got {shown!r})")
    try:
        parts = urlsplit(value)
    except ValueError as exc:  # an unbalanced [IPv6] bracket
        raise ValueError(f"is not a valid URL: {exc} (got {shown!r})") from None
    if parts.scheme not in (secure, plain):
        raise ValueError(f"must be a {secure}:// URL (got {shown!r})")
    hostport = parts.netloc.rpartition("@")[2]
    host = parts.hostname or ""
    if not host or not _valid_host(host, hostport.startswith("[")):
        raise ValueError(f"has no valid host name or IP address (got {shown!r})")
    after_host = hostport.rpartition("]")[2]  # the ":port" part, if any
    _, colon, port = after_host.partition(":")
    if colon and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"port must be 1-65535 (got {shown!r})")
    if "#" in value:
        raise ValueError(f"must not have a #fragment (got {shown!r})")
    if parts.scheme == plain and not _is_loopback(host):
        raise ValueError(
            f"must use {secure}:// ({plain}:// is only allowed on loopback, got {shown!r})"
        )
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# --------------------------------------------------------------------------- sections


class BackendConfig(_Section):
    """Where the device fetches a fresh ephemeral Realtime key before every connect."""

    url: str = Field(
        description="URL of the key endpoint (POST, answers like OpenAI's client_secrets), "
        "e.g. https://keys.example.com/v1/realtime/client_secrets; http:// only on loopback.",
    )
    token_file: ConfigPath = Field(
        default=DEFAULT_TOKEN_FILE,
        description="File holding this device's bearer token (one line, mode 0600 or 0400).",
    )
    timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="Key request timeout, seconds."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(value, "https", "http")


# What the installed ``openai`` package's ``types/realtime`` allows (the API's own limits).
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
_CUSTOM_VOICE = re.compile(r"voice_[A-Za-z0-9_-]+")
_MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9.:_-]*")
# Reasoning (``session.reasoning``) is for the gpt-realtime-2 family only: gpt-realtime-2,
# -2.1, -2.1-mini and their dated snapshots; not gpt-realtime(-mini), -1.5 or gpt-audio-*.
_REASONING_MODEL = re.compile(r"gpt-realtime-2(\.\d+)?(-mini)?(-\d{4}-\d{2}-\d{2})?")
# ``transcription.keywords`` is "supported by gpt-transcribe and gpt-live-transcribe";
# ``transcription.prompt`` "is not supported with gpt-realtime-whisper".
KEYWORD_TRANSCRIBERS = ("gpt-transcribe", "gpt-live-transcribe")
_ISO_639_1 = re.compile(r"[a-z]{2}")
MAX_OUTPUT_TOKENS = 4096


def reasoning_model(model: str) -> bool:
    """True for the models that take ``reasoning.effort``."""
    return _REASONING_MODEL.fullmatch(model) is not None


class TurnDetectionConfig(_Section):
    """Server-side turn detection, used when ``trigger.end_of_turn = "server"``.

    ``create_response``/``interrupt_response`` are not options: the device always lets the
    server answer at the end of speech and does barge-in itself (echo gate, truncation).
    """

    type: Literal["server_vad", "semantic_vad"] = Field(
        default="server_vad",
        description="'server_vad' (silence-based) or 'semantic_vad' (a model judges "
        "whether you finished).",
    )
    threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="server_vad: activation threshold 0 to 1 (server default 0.5); higher "
        "needs louder speech.",
    )
    prefix_padding_ms: int | None = Field(
        default=None,
        ge=0,
        le=10000,
        description="server_vad: audio kept before detected speech, ms (server default 300).",
    )
    silence_duration_ms: int | None = Field(
        default=None,
        ge=0,
        le=10000,
        description="server_vad: silence that ends your turn, ms (server default 500).",
    )
    idle_timeout_ms: int | None = Field(
        default=None,
        ge=5000,
        le=30000,
        description="server_vad: after a reply has played, this much silence makes the model "
        "prompt you, ms (5000-30000; default never).",
    )
    eagerness: Literal["low", "medium", "high", "auto"] | None = Field(
        default=None,
        description="semantic_vad: how soon the model answers: low (waits up to 8 s), "
        "medium (4 s), high (2 s), auto (= medium, the server default).",
    )

    @model_validator(mode="after")
    def _fields_of_the_type(self) -> TurnDetectionConfig:
        server_only = ("threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms")
        if self.type == "semantic_vad":
            wrong = [f for f in server_only if getattr(self, f) is not None]
            if wrong:
                raise ValueError(
                    f"{wrong[0]}: only for type 'server_vad' (type is 'semantic_vad'; "
                    "it takes eagerness)"
                )
        elif self.eagerness is not None:
            raise ValueError("eagerness: only for type 'semantic_vad' (type is 'server_vad')")
        return self


class TruncationConfig(_Section):
    """Truncation by retention ratio: drop old turns down to a fraction when the context is full."""

    retention_ratio: float = Field(
        ge=0.0,
        le=1.0,
        description="Fraction of the conversation (after instructions) kept, 0 to 1.",
    )
    post_instructions_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Truncate when the conversation after the instructions exceeds this, "
        "tokens; default the model's limit.",
    )


class RealtimeConfig(_Section):
    """The Realtime endpoint, its transport and the session's model settings."""

    url: str = Field(
        default="wss://api.openai.com/v1/realtime",
        description="Realtime WebSocket URL (?model= is added); ws:// only on loopback. "
        "WebRTC offers go to <url>/calls over https (http on loopback).",
    )
    transport: Literal["websocket", "webrtc"] = Field(
        default="websocket",
        description='"websocket" (base64 PCM in JSON) or "webrtc" (Opus over UDP; needs '
        "the hark-voice[webrtc] extra: aiortc).",
    )
    ice_servers: tuple[str, ...] = Field(
        default=(),
        strict=False,
        description='STUN servers for "webrtc", e.g. ["stun:stun.example.com:3478"]; none by '
        "default (OpenAI's endpoint needs none from the client).",
    )
    model: str = Field(
        default="gpt-realtime",
        min_length=1,
        description="Realtime model, e.g. gpt-realtime, gpt-realtime-mini, gpt-realtime-2, "
        "gpt-realtime-2.1-mini.",
    )
    reasoning_effort: Literal["minimal", "low", "medium", "high", "xhigh"] | None = Field(
        default=None,
        description="Reasoning effort, gpt-realtime-2 family only (server default low); "
        "more costs latency and tokens.",
    )
    max_output_tokens: int | Literal["inf"] | None = Field(
        default=None,
        description='Longest reply, tokens (1-4096, or "inf" for the model\'s maximum, the '
        "server default); a reply hitting it is cut off.",
    )
    truncation: Literal["auto", "disabled"] | TruncationConfig | None = Field(
        default=None,
        description='When the context is full: "auto" (the server default) drops the oldest '
        'turns, "disabled" makes the reply fail instead, or a table '
        "{retention_ratio, post_instructions_tokens}.",
    )
    noise_reduction: Literal["near_field", "far_field", "off"] | None = Field(
        default=None,
        description="The server's input noise reduction: near_field (close-talking mic), "
        "far_field (a speaker-phone or Pi mic across the room) or off; unset: not sent "
        "(OpenAI's default, off, or what the key backend pinned).",
    )
    speed: float | None = Field(
        default=None,
        ge=0.25,
        le=1.5,
        description="Speaking speed of replies, a multiple of normal (0.25-1.5; default 1.0).",
    )
    turn_detection: TurnDetectionConfig | None = Field(
        default=None,
        description="[realtime.turn_detection]: the server's end-of-turn detection, used when "
        'trigger.end_of_turn = "server".',
    )
    transcription_model: str | None = Field(
        default="gpt-4o-mini-transcribe",
        description="Model transcribing the user's speech (for history and replay), e.g. "
        'gpt-4o-mini-transcribe, gpt-4o-transcribe, gpt-transcribe, whisper-1; "" turns '
        "transcription off.",
    )
    language: str | None = Field(
        default=None, description="ISO-639-1 language hint for transcription, e.g. 'en'."
    )
    transcription_prompt: str | None = Field(
        default=None,
        description="Text guiding transcription (style, expected topics; whisper-1: a list of "
        "words); not with gpt-realtime-whisper.",
    )
    transcription_keywords: tuple[str, ...] = Field(
        default=(),
        strict=False,
        description="Words or phrases to listen for (names, places); gpt-transcribe and "
        "gpt-live-transcribe only.",
    )
    connect_timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="WebSocket open timeout, seconds."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(value, "wss", "ws")

    @field_validator("ice_servers")
    @classmethod
    def _stun_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            host = url.removeprefix("stun:")
            if not url.startswith("stun:") or not host or any(c.isspace() for c in url):
                raise ValueError(f"each entry must be a stun:host[:port] URL (got {url!r})")
        return value

    @field_validator("transcription_model", "language", "transcription_prompt")
    @classmethod
    def _empty_is_off(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("model", "transcription_model")
    @classmethod
    def _model_name(cls, value: str | None) -> str | None:
        if value is not None and not _MODEL_NAME.fullmatch(value):
            raise ValueError(
                f"must be a model name like 'gpt-realtime' (lower case, no spaces; got {value!r})"
            )
        return value

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        if value is not None and not _ISO_639_1.fullmatch(value):
            raise ValueError(
                f"must be a two-letter ISO-639-1 code in lower case, e.g. 'en' (got {value!r})"
            )
        return value

    @field_validator("max_output_tokens", mode="before")
    @classmethod
    def _max_output_tokens(cls, value: object) -> object:
        ok_int = isinstance(value, int) and not isinstance(value, bool)
        if value is None or value == "inf" or (ok_int and 1 <= value <= MAX_OUTPUT_TOKENS):  # type: ignore[operator]
            return value
        raise ValueError(f'must be an integer 1-{MAX_OUTPUT_TOKENS} or "inf" (got {value!r})')

    @field_validator("truncation", mode="before")
    @classmethod
    def _truncation(cls, value: object) -> object:
        if (
            value is None
            or isinstance(value, dict | TruncationConfig)
            or value in ("auto", "disabled")
        ):
            return value
        raise ValueError(
            f'must be "auto", "disabled" or a table with retention_ratio (got {value!r})'
        )

    @field_validator("transcription_keywords")
    @classmethod
    def _keywords(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not k.strip() for k in value):
            raise ValueError("keywords must not be empty strings")
        return value

    @model_validator(mode="after")
    def _model_takes_it(self) -> RealtimeConfig:
        if self.reasoning_effort is not None and not reasoning_model(self.model):
            raise ValueError(
                f"reasoning_effort: model {self.model!r} does not reason; only the "
                "gpt-realtime-2 family (gpt-realtime-2, gpt-realtime-2.1, "
                "gpt-realtime-2.1-mini) takes it"
            )
        transcriber = self.transcription_model
        if self.transcription_keywords and transcriber not in KEYWORD_TRANSCRIBERS:
            raise ValueError(
                f"transcription_keywords: only {' and '.join(KEYWORD_TRANSCRIBERS)} take "
                f"keywords (transcription_model is {transcriber!r}); use transcription_prompt"
            )
        if self.transcription_prompt and transcriber == "gpt-realtime-whisper":
            raise ValueError("transcription_prompt: gpt-realtime-whisper takes no prompt")
        if transcriber is None and (self.language or self.transcription_prompt):
            raise ValueError(
                "transcription_model: transcription is off, so language and "
                "transcription_prompt would be ignored; set a transcription_model"
            )
        return self


class OutputConfig(_Section):
    """A GPIO output (relay, lamp) the agent may switch through a tool named after it."""

    name: str = Field(min_length=1, description="Name the model uses, e.g. 'kitchen light'.")
    pin: Pin = Field(description="BCM GPIO number driving the output.")
    active_high: bool = Field(
        default=True, description="True if the device is on when the pin is high."
    )
    initial: bool = Field(default=False, description="State at start-up (true = on).")
    description: str | None = Field(
        default=None, description="Extra words for the tool description shown to the model."
    )


class AgentConfig(_Section):
    """The agent: declared here (name, instructions, voice, tools) or a Python object."""

    name: str = Field(default="hark", min_length=1, description="Agent name.")
    instructions: str = Field(
        default="You are a helpful voice assistant on a small speaker. Answer briefly.",
        description="System instructions for the model.",
    )
    voice: str = Field(
        default="marin",
        min_length=1,
        description="Output voice: alloy, ash, ballad, coral, echo, sage, shimmer, verse, "
        "marin or cedar (marin and cedar sound best), or a custom voice id 'voice_…'.",
    )
    tools: tuple[BuiltinTool, ...] = Field(
        default=BUILTIN_TOOLS,
        strict=False,
        description="Built-in device tools to offer: 'time', 'volume', 'end_conversation'.",
    )
    timezone: str | None = Field(
        default=None,
        description="IANA time zone for the 'time' tool, e.g. 'Europe/Berlin'; "
        "default the system's.",
    )
    object: str | None = Field(
        default=None,
        description="Instead of declaring the agent here, load this Python object "
        "('package.module:attribute', a RealtimeAgent).",
    )
    tool_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="A tool running longer is abandoned, seconds."
    )
    outputs: tuple[OutputConfig, ...] = Field(
        default=(),
        strict=False,
        description="GPIO outputs ([[agent.outputs]]), each becoming a tool.",
    )

    @field_validator("voice")
    @classmethod
    def _voice(cls, value: str) -> str:
        if value not in VOICES and not _CUSTOM_VOICE.fullmatch(value):
            raise ValueError(
                f"unknown voice {value!r} (built-in: {', '.join(VOICES)}; or a custom "
                "voice id 'voice_…')"
            )
        return value

    @field_validator("tools")
    @classmethod
    def _tools_once(cls, value: tuple[BuiltinTool, ...]) -> tuple[BuiltinTool, ...]:
        twice = sorted({t for t in value if value.count(t) > 1})
        if twice:
            raise ValueError(f"each tool once ({', '.join(map(repr, twice))} listed twice)")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is not None:
            import zoneinfo

            try:
                zoneinfo.ZoneInfo(value)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r} (see /usr/share/zoneinfo)") from None
        return value

    @field_validator("object")
    @classmethod
    def _object(cls, value: str | None) -> str | None:
        if value is not None and not _OBJECT_REF.fullmatch(value):
            raise ValueError(f"must look like 'package.module:attribute' (got {value!r})")
        return value

    @model_validator(mode="after")
    def _either_or(self) -> AgentConfig:
        declared = self.model_fields_set & {"name", "instructions", "voice", "tools"}
        if self.object is not None and declared:
            raise ValueError(
                "object: give either agent.object or "
                f"{', '.join(sorted(f'agent.{d}' for d in declared))}, not both"
            )
        names = [o.name.casefold() for o in self.outputs]
        if len(set(names)) != len(names):
            raise ValueError("outputs: output names must be unique")
        return self


class TriggerConfig(_Section):
    """What opens and ends a turn."""

    mode: TriggerMode = Field(
        default="button",
        description="'button' (push to talk), 'vad' (any voice opens a turn), 'both' "
        "(button and vad), 'wake' (the wake word opens a turn), 'wake+button'.",
    )
    button: Literal["hold", "tap"] = Field(
        default="hold",
        description="'hold': talk while held, release sends; 'tap': a tap opens a turn "
        "that ends on silence.",
    )
    long_press_s: float = Field(
        default=2.0, ge=0.3, le=30, description="Holding this long cancels the turn, seconds."
    )
    no_speech_timeout_s: float = Field(
        default=defaults.NO_SPEECH_TIMEOUT_S,
        gt=0,
        le=60,
        description="A tap turn with no speech at all closes after, s.",
    )
    end_of_turn: Literal["local", "server"] = Field(
        default="local",
        description="Who decides the user finished (vad, wake word and tap turns): local VAD "
        "silence or the server's VAD.",
    )
    wake_word: str = Field(
        default="okay_nabu",
        min_length=1,
        description="wake modes: a wake word pymicro-wakeword ships ('okay_nabu', "
        "'hey_jarvis', 'hey_mycroft', 'alexa') or the path of a microWakeWord model's "
        ".json (its .tflite beside it; relative to this file).",
    )
    wake_threshold: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Wake word probability cutoff (0-1, higher: fewer false wakes, more "
        "missed words); default the model's own.",
    )
    wake_refractory_s: float = Field(
        default=2.0,
        ge=0,
        le=60,
        description="After a wake or stop word, the same word is not heard again for, s.",
    )
    stop_word: bool = Field(
        default=False,
        description="Saying 'stop' while a reply plays cuts it short (any mode; needs the "
        "wake extra).",
    )
    stop_threshold: float = Field(
        default=0.7,
        gt=0,
        lt=1,
        description="Stop word probability cutoff (the model's own 0.5 cuts replies on "
        "'top' and 'stock' twice as often; bench/bench_wake.py).",
    )
    follow_up_s: float = Field(
        default=0.0,
        ge=0,
        le=60,
        description="After a reply the mic stays open this long for an answer without the "
        "wake word or button (voice opens the turn, silence ends the window), s; 0 = off.",
    )

    @field_validator("wake_word")
    @classmethod
    def _wake_word(cls, value: str, info: ValidationInfo) -> str:
        if "/" in value or value.endswith(".json"):
            return str(_resolve_path(Path(value), info))
        if value not in WAKE_WORDS:
            hint = difflib.get_close_matches(value, WAKE_WORDS, n=1)
            more = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ValueError(
                f"unknown wake word {value!r}{more} (shipped: {', '.join(WAKE_WORDS)}; or the "
                "path of a model's .json)"
            )
        return value


class GpioConfig(_Section):
    """Pins (BCM numbers) for the button and the LED(s)."""

    button_pin: Pin | None = Field(
        default=17, description="Talk button pin (BCM); none for a button-less device."
    )
    button_pull_up: bool = Field(
        default=True, description="True: button connects the pin to ground (internal pull-up)."
    )
    bounce_s: float = Field(default=0.03, ge=0, le=1, description="Debounce time, seconds.")
    led_pin: Pin | None = Field(default=None, description="Status LED pin (BCM); none for none.")
    led_pwm: bool = Field(default=True, description="Drive the LED with PWM (breathing patterns).")
    led_active_high: bool = Field(default=True, description="True if the LED lights on high.")
    rgb_pins: tuple[Pin, Pin, Pin] | None = Field(
        default=None, strict=False, description="Optional RGB LED pins [red, green, blue] (BCM)."
    )


class AudioConfig(_Section):
    """Sound devices, rates, volume and cues."""

    input_device: str | int | None = Field(
        default=None,
        description="Microphone: a name substring or a PortAudio index (see `hark devices`); "
        "default the system default.",
    )
    output_device: str | int | None = Field(
        default=None, description="Speaker: a name substring or index; default the system's."
    )
    capture_rate_hz: int | None = Field(
        default=None,
        ge=8000,
        le=192000,
        description=(
            "Capture rate, Hz; default the device's own if a multiple of 8 kHz, "
            "else the first of 48, 24, 16, 32, 44.1 kHz it takes."
        ),
    )
    output_rate_hz: int | None = Field(
        default=None,
        ge=8000,
        le=192000,
        description=(
            "Playback rate, Hz; default the device's own if a multiple of 8 kHz, "
            "else the first of 48, 24, 32, 16, 44.1 kHz it takes."
        ),
    )
    buffer_ms: int = Field(
        default=20,
        ge=5,
        le=200,
        description="Playback buffer (one speaker callback), ms: a barge-in stops within one.",
    )
    capture_buffer_ms: int = Field(
        default=40,
        ge=10,
        le=200,
        description="Capture buffer (one microphone callback), ms: longer costs less CPU, "
        "and voice is noticed up to that much later.",
    )
    volume: float = Field(
        default=1.0, ge=0.0, le=1.5, description="Software gain for replies and cues (0 to 1.5)."
    )
    cues_enabled: bool = Field(default=True, description="Play the listening/done/error cues.")
    cue_listening: ConfigPath | None = Field(
        default=None, description="WAV file for 'listening'; default a generated tone."
    )
    cue_done: ConfigPath | None = Field(
        default=None, description="WAV file for 'done'; default a generated tone."
    )
    cue_error: ConfigPath | None = Field(
        default=None, description="WAV file for 'error'; default a generated tone."
    )

    @field_validator("input_device", "output_device", mode="before")
    @classmethod
    def _device(cls, value: object) -> object:
        # One line for the owner, not one per member of the union.
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
            raise ValueError(
                f"must be a device name (a string) or index (an integer) (got {value!r})"
            )
        return value


class VadConfig(_Section):
    """Local voice activity detection (webrtcvad), hysteresis and echo gate."""

    aggressiveness: int = Field(
        default=2, ge=0, le=3, description="webrtcvad mode, 0 (lenient) to 3 (strict)."
    )
    start_ms: int = Field(
        default=80, ge=10, le=2000, description="Voiced audio needed to open a turn, ms."
    )
    barge_in_ms: int = Field(
        default=160,
        ge=10,
        le=2000,
        description="Voiced audio needed to interrupt a reply (stricter: echo), ms.",
    )
    stop_silence_ms: int = Field(
        default=700, ge=100, le=10000, description="Silence that ends a turn (local), ms."
    )
    pre_roll_ms: int = Field(
        default=300, ge=0, le=2000, description="Audio kept from before the turn opened, ms."
    )
    echo_gate: bool = Field(
        default=True,
        description="While the speaker plays, only count the mic as voiced when it is "
        "clearly louder than our own (known) output.",
    )
    echo_margin_db: float = Field(
        default=0.0,
        ge=0,
        le=40,
        description="How much louder than our expected echo the user's voice (what a copy of "
        "our output leaves unexplained) must be, dB.",
    )
    echo_delay_max_ms: int = Field(
        default=350,
        ge=0,
        le=1000,
        description="Longest speaker-to-mic delay considered (acoustic + buffering), ms.",
    )


class FrontEndConfig(_Section):
    """The audio front end: in-process echo cancellation, noise suppression, automatic gain.

    Each stage is off by default and switched on here; what reaches the model (and the
    VAD) is the cleaned signal. With a stage on, the microphone is processed at 16 kHz.
    """

    echo_cancel: Literal["off", "speex", "webrtc"] = Field(
        default="off",
        description="In-process echo canceller: 'speex' (libspeexdsp1, light), 'webrtc' "
        "(WebRTC AEC3 through the livekit package: best, ~42 MB of memory) or 'off' "
        "(the echo gate alone).",
    )
    echo_tail_ms: int = Field(
        default=200,
        ge=50,
        le=500,
        description="speex: the longest echo (room reverberation) the canceller models, ms; "
        "longer costs CPU.",
    )
    noise_suppression: int = Field(
        default=0,
        ge=0,
        le=4,
        description="WebRTC noise suppression level, 0 (off) to 4 (strongest) "
        "(webrtc-noise-gain package).",
    )
    auto_gain_dbfs: int = Field(
        default=0,
        ge=0,
        le=31,
        description="WebRTC automatic gain: target level, dB below full scale (e.g. 3); 0 = off.",
    )


class SessionPolicyConfig(_Section):
    """When to be connected, and for how long."""

    policy: Literal["always", "on_demand"] = Field(
        default="always",
        description="'always': stay connected (fastest reply); 'on_demand': connect when a "
        "turn starts, disconnect after idle_disconnect_s.",
    )
    idle_disconnect_s: float = Field(
        default=defaults.IDLE_DISCONNECT_S,
        gt=0,
        le=86400,
        description="on_demand: idle time before hanging up, s.",
    )
    rotate_after_s: float = Field(
        default=defaults.ROTATE_AFTER_S,
        ge=60,
        le=3600,
        description="Replace the session at a quiet moment after this age, seconds "
        "(the server ends sessions at 60 minutes; hark also rotates 5 minutes before the "
        "cap the server announces).",
    )
    replay_budget_chars: int = Field(
        default=4000,
        ge=0,
        le=200000,
        description="Transcript characters carried into a new session, characters.",
    )
    response_timeout_s: float = Field(
        default=defaults.RESPONSE_TIMEOUT_S,
        gt=0,
        le=300,
        description="Give up waiting for a reply after, seconds.",
    )
    max_turn_s: float = Field(
        default=defaults.MAX_TURN_S,
        gt=0,
        le=600,
        description="Longest user turn before it is sent, seconds.",
    )


class HistoryConfig(_Section):
    """The conversation history kept on the device."""

    enabled: bool = Field(default=True, description="Keep history (false for privacy).")
    path: ConfigPath = Field(
        default=Path("/var/lib/hark/history.jsonl"), description="JSON-lines history file."
    )
    max_items: int = Field(default=200, ge=1, le=100000, description="Items kept, count.")


class LogConfig(_Section):
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Least severe level logged: debug, info, warning, error."
    )

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class Config(_Section):
    """The whole file. Only ``[backend] url`` is required."""

    backend: BackendConfig = Field(description="The key backend.")
    realtime: RealtimeConfig = Field(default_factory=RealtimeConfig, description="Realtime API.")
    agent: AgentConfig = Field(default_factory=AgentConfig, description="The agent.")
    trigger: TriggerConfig = Field(default_factory=TriggerConfig, description="Triggers.")
    gpio: GpioConfig = Field(default_factory=GpioConfig, description="GPIO pins.")
    audio: AudioConfig = Field(default_factory=AudioConfig, description="Sound devices.")
    vad: VadConfig = Field(default_factory=VadConfig, description="Voice activity detection.")
    frontend: FrontEndConfig = Field(
        default_factory=FrontEndConfig, description="Audio front end (AEC, NS, AGC)."
    )
    session: SessionPolicyConfig = Field(
        default_factory=SessionPolicyConfig, description="Session policy."
    )
    history: HistoryConfig = Field(default_factory=HistoryConfig, description="History.")
    log: LogConfig = Field(default_factory=LogConfig, description="Logging.")

    @model_validator(mode="after")
    def _cross_check(self) -> Config:
        problems: list[str] = []
        if self.trigger.mode in BUTTON_MODES and self.gpio.button_pin is None:
            problems.append(f"gpio.button_pin: required when trigger.mode is {self.trigger.mode!r}")
        if self.realtime.turn_detection is not None and (
            self.trigger.end_of_turn != "server" or self.trigger.mode == "button"
        ):
            problems.append(
                "realtime.turn_detection: only used when the server ends turns "
                '(trigger.end_of_turn = "server" and trigger.mode "vad" or "both")'
            )
        if self.vad.pre_roll_ms < max(self.vad.start_ms, self.vad.barge_in_ms):
            problems.append(
                "vad.pre_roll_ms: must be at least vad.start_ms and vad.barge_in_ms "
                f"({max(self.vad.start_ms, self.vad.barge_in_ms)}), or the first syllable is lost"
            )
        used: dict[int, str] = {}
        pins: list[tuple[str, int | None]] = [
            ("gpio.button_pin", self.gpio.button_pin),
            ("gpio.led_pin", self.gpio.led_pin),
        ]
        pins += [(f"gpio.rgb_pins.{i}", p) for i, p in enumerate(self.gpio.rgb_pins or ())]
        pins += [(f"agent.outputs.{i}.pin", o.pin) for i, o in enumerate(self.agent.outputs)]
        for path, pin in pins:
            if pin is None:
                continue
            if pin in used:
                problems.append(f"{path}: pin {pin} is already used by {used[pin]}")
            else:
                used[pin] = path
        if problems:
            raise ValueError("\n".join(problems))
        return self


# --------------------------------------------------------------------------- loading


def parse(text: str, source: str = "<string>", base_dir: Path | None = None) -> Config:
    """Validate TOML text; relative paths resolve against ``base_dir`` when given."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"TOML syntax error: {exc}"], source) from None
    try:
        return Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_problems(exc), source) from None


def load(path: Path | str = DEFAULT_PATH) -> Config:
    """Read and validate the config file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read the config file: {exc.strerror}"], str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text: {exc.reason}"], str(path)) from None
    return parse(text, str(path), base_dir=path.resolve().parent)


def read_token(path: Path | str) -> str:
    """Return the device token from its own file, refusing one others could read.

    The token is a bearer credential for the key backend: a mode that grants group
    or other access (anything but 0600 or 0400) is refused with the ``chmod`` that
    fixes it. The token itself never appears in an error message.
    """
    path = Path(path)
    where = f"backend.token_file: {path}"
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(
            [f"{where} does not exist (write the device token there, then chmod 600 {path})"],
            str(path),
        ) from None
    except PermissionError:
        raise ConfigError(
            [f"{where}: permission denied (run as root or as the service user)"], str(path)
        ) from None
    except OSError as exc:
        raise ConfigError([f"{where}: {exc.strerror}"], str(path)) from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError([f"{where} is not a regular file"], str(path))
    mode = stat.S_IMODE(info.st_mode)
    if mode not in (0o600, 0o400):
        raise ConfigError(
            [f"{where} has mode {mode:04o}, must be 0600 or 0400; run: chmod 600 {path}"],
            str(path),
        )
    try:
        token = path.read_text(encoding="utf-8").strip()
    except PermissionError:
        raise ConfigError(
            [f"{where}: permission denied (run as root or as the service user)"], str(path)
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{where}: cannot read ({type(exc).__name__})"], str(path)) from None
    if not token:
        raise ConfigError([f"{where} is empty (write the device token there)"], str(path))
    if not _TOKEN_CHARS.fullmatch(token):
        raise ConfigError(
            [f"{where} must hold one token on one line (no spaces or control characters)"],
            str(path),
        )
    return token


def _strip_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = "***@" + parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc))


def redacted(config: Config) -> dict[str, Any]:
    """The effective config as plain data, safe to print: URL credentials masked.

    The token is never part of the config (only its path is), so nothing else is secret.
    """
    data = config.model_dump(mode="json")
    data["backend"]["url"] = _strip_credentials(config.backend.url)
    data["realtime"]["url"] = _strip_credentials(config.realtime.url)
    return data


# --------------------------------------------------------------------------- messages


def _section_fields(loc: tuple[int | str, ...]) -> list[str]:
    """The field names allowed at ``loc`` (a path to a model), for 'did you mean'."""
    model: type[BaseModel] = Config
    for part in loc:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        if info is None:
            return []
        annotation = info.annotation
        inner = getattr(annotation, "__args__", None)
        candidates = [annotation, *(inner or ())]
        found = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if found is None:
            return []
        model = found
    return list(model.model_fields)


def _required_fields(loc: tuple[int | str, ...]) -> list[str]:
    """A missing section is reported as its required fields (``backend.url``)."""
    parent = _section_fields(loc[:-1])
    if not parent or not isinstance(loc[-1], str):
        return []
    model: type[BaseModel] = Config
    for part in loc:
        if isinstance(part, str):
            annotation = model.model_fields[part].annotation
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return []
            model = annotation
    return [name for name, info in model.model_fields.items() if info.is_required()]


def _problems(exc: ValidationError) -> list[str]:
    """One line per error: dotted path, what is wrong, what was given."""
    out: list[str] = []
    for err in exc.errors(include_url=False):
        kind = err["type"]
        ctx = err.get("ctx") or {}
        given = err.get("input")
        if kind == "literal_error" and isinstance(given, dict):
            continue  # a table given for "word | table": the table member says what is wrong
        # Union members show up in the path ("literal['auto','disabled']", a class name).
        loc = tuple(p for p in err["loc"] if not isinstance(p, str) or _FIELD_NAME.fullmatch(p))
        path = ".".join(str(p) for p in loc)
        if kind == "extra_forbidden":
            allowed = _section_fields(loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            more = f"; did you mean {hint[0]!r}?" if hint else ""
            out.append(f"{path}: unknown key{more} (allowed: {', '.join(allowed)})")
            continue
        if kind in ("value_error", "assertion_error"):
            message = str(err["msg"]).removeprefix("Value error, ")
            for line in message.splitlines():
                # Validators spanning fields name the field first: "object: …".
                field, sep, rest = line.partition(": ")
                if sep and re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)*", field) and "." in field:
                    out.append(line)
                elif sep and re.fullmatch(r"[a-z_]+", field):
                    out.append(f"{path}.{field}: {rest}" if path else line)
                else:
                    out.append(f"{path}: {line}" if path else line)
            continue
        if kind == "missing" and (required := _required_fields(loc)):
            out += [f"{path}.{name}: required" for name in required]
            continue
        out.append(f"{path}: {_describe(kind, str(err['msg']), ctx, given)}")
    return out


_TYPE_WORDS = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "path_type": "must be a path (a string)",
    "tuple_type": "must be a list",
    "model_type": "must be a table",
    "dict_type": "must be a table",
}


def _describe(kind: str, msg: str, ctx: dict[str, Any], given: object) -> str:
    got = f" (got {given!r})"
    if kind == "missing":
        return "required"
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        head, _, last = expected.rpartition(" or ")
        options = f"{head}, {last}" if head else expected
        return f"must be one of {options}{got}"
    if kind in _TYPE_WORDS:
        return _TYPE_WORDS[kind] + got
    bounds = {
        "greater_than_equal": ("≥", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("≤", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        sign, key = bounds[kind]
        return f"must be {sign} {ctx.get(key)}{got}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "too_short" or kind == "too_long":
        return msg.lower() + got
    return f"{msg}{got}"
