"""The server-side key policy: which model, how long a key lives, what a session is pinned to.

It must not trust the device: whatever the device asks for is filtered to an allow-list of
session fields and then overridden by every pinned field, the model is always the policy's,
and the key lifetime can only be shortened by the device, never lengthened.  It does no I/O
apart from reading the policy file once at start.

Merge rule (documented in docs/backend.md): the device's requested ``session`` is merged
*under* the policy.  Fields in ``device_fields`` that the device sets are kept; a pinned
field (global ``[pin]``, then the device's group under ``[groups.NAME]``, then the device
under ``[devices.NAME]``, later wins) replaces the device's value.  ``device_session =
"ignore"`` drops the device's request entirely.  OpenAI lets a client override a secret's
session config with ``session.update`` once connected, so pins bound what a *key request*
yields and what a well-behaved device runs; the hard limits are the model, the lifetime and
revocation.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Session fields a device may choose itself unless pinned (OpenAI's RealtimeSessionCreateRequest
# minus ``type`` and ``model``, which only the policy sets).
DEFAULT_DEVICE_FIELDS: tuple[str, ...] = (
    "audio",
    "include",
    "instructions",
    "max_output_tokens",
    "output_modalities",
    "tool_choice",
    "tools",
    "truncation",
)

OPENAI_MIN_TTL_S = 10  # client_secrets: expires_after.seconds is 10..7200
OPENAI_MAX_TTL_S = 7200


OPENAI_MAX_OUTPUT_TOKENS = 4096
# ``reasoning`` is for the gpt-realtime-2 family (gpt-realtime-2, -2.1, -2.1-mini and
# dated snapshots), per openai's types/realtime ("reasoning-capable Realtime models").
_REASONING_MODEL = re.compile(r"gpt-realtime-2(\.\d+)?(-mini)?(-\d{4}-\d{2}-\d{2})?")
KEYWORD_TRANSCRIBERS = ("gpt-transcribe", "gpt-live-transcribe")


class PinnedTurnDetection(BaseModel):
    """``audio.input.turn_detection`` as pinned: server_vad or semantic_vad and its knobs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(default=None, ge=0)
    silence_duration_ms: int | None = Field(default=None, ge=0)
    idle_timeout_ms: int | None = Field(default=None, ge=5000, le=30000)
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None

    @model_validator(mode="after")
    def _fields_of_the_type(self) -> PinnedTurnDetection:
        server_only = ("threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms")
        if self.type == "semantic_vad" and any(getattr(self, f) is not None for f in server_only):
            raise ValueError(f"semantic_vad takes eagerness, not {', '.join(server_only)}")
        if self.type == "server_vad" and self.eagerness is not None:
            raise ValueError("eagerness is only for semantic_vad")
        return self


class PinnedTruncation(BaseModel):
    """``truncation`` by retention ratio."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retention_ratio: float = Field(ge=0.0, le=1.0)
    post_instructions_tokens: int | None = Field(default=None, ge=1)


class Pin(BaseModel):
    """Session fields pinned for everyone, a group or one device; unset fields are not pinned.

    Each value is checked as the API checks it; it lands at its place in the GA session
    (``voice`` → ``audio.output.voice``, ``noise_reduction`` → ``audio.input.noise_reduction``…).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    instructions: str | None = Field(
        default=None, description="System instructions for the session."
    )
    voice: str | None = Field(
        default=None, description="Output voice (session.audio.output.voice)."
    )
    tools: list[dict[str, Any]] | None = Field(
        default=None, description="The complete tool list; [] forbids every tool."
    )
    tool_choice: str | None = Field(default=None, description="auto, none or required.")
    output_modalities: list[str] | None = Field(default=None, description='e.g. ["audio"].')
    speed: float | None = Field(
        default=None, ge=0.25, le=1.5, description="Reply speed, 0.25-1.5 (audio.output.speed)."
    )
    noise_reduction: Literal["near_field", "far_field", "off"] | None = Field(
        default=None, description="audio.input.noise_reduction: near_field, far_field or off."
    )
    turn_detection: PinnedTurnDetection | Literal["off"] | None = Field(
        default=None,
        description='audio.input.turn_detection: a table (type server_vad/semantic_vad) or "off".',
    )
    max_output_tokens: int | Literal["inf"] | None = Field(
        default=None, description='Longest reply, tokens: 1-4096 or "inf".'
    )
    truncation: Literal["auto", "disabled"] | PinnedTruncation | None = Field(
        default=None,
        description='"auto", "disabled" or {retention_ratio, post_instructions_tokens}.',
    )
    reasoning_effort: Literal["minimal", "low", "medium", "high", "xhigh"] | None = Field(
        default=None, description="reasoning.effort; the policy's model must reason."
    )
    transcription_model: str | None = Field(
        default=None, description="audio.input.transcription.model, e.g. gpt-4o-transcribe."
    )
    transcription_language: str | None = Field(
        default=None, description="audio.input.transcription.language (ISO-639-1, e.g. en)."
    )
    transcription_prompt: str | None = Field(
        default=None, description="audio.input.transcription.prompt."
    )
    transcription_keywords: list[str] | None = Field(
        default=None, description="audio.input.transcription.keywords (gpt-transcribe models)."
    )

    @field_validator("max_output_tokens")
    @classmethod
    def _max_output_tokens(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and not 1 <= value <= OPENAI_MAX_OUTPUT_TOKENS:
            raise ValueError(f'must be 1-{OPENAI_MAX_OUTPUT_TOKENS} or "inf" (got {value})')
        return value

    @field_validator("transcription_language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z]{2}", value):
            raise ValueError(f"must be a two-letter ISO-639-1 code like 'en' (got {value!r})")
        return value

    @model_validator(mode="after")
    def _keywords_need_their_model(self) -> Pin:
        # Keywords without a model that takes them would make OpenAI refuse every key.
        if self.transcription_keywords and self.transcription_model not in KEYWORD_TRANSCRIBERS:
            raise ValueError(
                "transcription_keywords needs transcription_model "
                f"{' or '.join(KEYWORD_TRANSCRIBERS)} pinned alongside"
            )
        return self

    def session_fields(self) -> dict[str, Any]:
        """The pinned fields as a partial GA session (nested where the API nests them)."""
        out: dict[str, Any] = {}
        flat = self.model_dump(
            include={"instructions", "tools", "tool_choice", "output_modalities"},
            exclude_none=True,
        )
        out.update(flat)
        if self.max_output_tokens is not None:
            out["max_output_tokens"] = self.max_output_tokens
        if isinstance(self.truncation, str):
            out["truncation"] = self.truncation
        elif self.truncation is not None:
            trunc: dict[str, Any] = {
                "type": "retention_ratio",
                "retention_ratio": self.truncation.retention_ratio,
            }
            if self.truncation.post_instructions_tokens is not None:
                limits = {"post_instructions": self.truncation.post_instructions_tokens}
                trunc["token_limits"] = limits
            out["truncation"] = trunc
        if self.reasoning_effort is not None:
            out["reasoning"] = {"effort": self.reasoning_effort}
        audio_in: dict[str, Any] = {}
        if self.noise_reduction is not None:
            off = self.noise_reduction == "off"
            audio_in["noise_reduction"] = None if off else {"type": self.noise_reduction}
        if self.turn_detection == "off":
            audio_in["turn_detection"] = None
        elif isinstance(self.turn_detection, PinnedTurnDetection):
            audio_in["turn_detection"] = self.turn_detection.model_dump(exclude_none=True)
        transcription = {
            key: value
            for key, value in (
                ("model", self.transcription_model),
                ("language", self.transcription_language),
                ("prompt", self.transcription_prompt),
                ("keywords", self.transcription_keywords),
            )
            if value is not None
        }
        if transcription:
            audio_in["transcription"] = transcription
        audio_out = {
            key: value for key, value in (("voice", self.voice), ("speed", self.speed)) if value
        }
        audio = {k: v for k, v in (("input", audio_in), ("output", audio_out)) if v}
        if audio:
            out["audio"] = audio
        return out


class Policy(BaseModel):
    """The whole policy file (TOML); every field has a safe default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        default="gpt-realtime", description="Realtime model every key is minted for."
    )
    key_ttl_s: int = Field(
        default=60,
        ge=OPENAI_MIN_TTL_S,
        le=OPENAI_MAX_TTL_S,
        description="Key lifetime in seconds; a key only has to open one session.",
    )
    device_session: Literal["merge", "ignore"] = Field(
        default="merge", description="merge: device fields under the pins; ignore: pins only."
    )
    device_fields: tuple[str, ...] = Field(
        default=DEFAULT_DEVICE_FIELDS, description="Session fields a device may set."
    )
    pin: Pin = Field(default_factory=Pin, description="Pinned for every device.")
    groups: dict[str, Pin] = Field(default_factory=dict, description="Pinned per group.")
    devices: dict[str, Pin] = Field(default_factory=dict, description="Pinned per device.")

    @model_validator(mode="after")
    def _pins_fit_the_model(self) -> Policy:
        layers = [("pin", self.pin)]
        layers += [(f"groups.{n}", p) for n, p in self.groups.items()]
        layers += [(f"devices.{n}", p) for n, p in self.devices.items()]
        for where, pin in layers:
            if pin.reasoning_effort is not None and not _REASONING_MODEL.fullmatch(self.model):
                raise ValueError(
                    f"{where}.reasoning_effort: model {self.model!r} does not reason (only "
                    "the gpt-realtime-2 family: gpt-realtime-2, -2.1, -2.1-mini)"
                )
        return self

    def effective_pin(self, device: str | None, group: str | None) -> dict[str, Any]:
        """The pinned fields for this device as a partial session: global, then group, then
        device (later wins, field by field, also inside ``audio``)."""
        pinned: dict[str, Any] = {}
        layers = [self.pin, self.groups.get(group or ""), self.devices.get(device or "")]
        for layer in layers:
            if layer is not None:
                pinned = _merge(pinned, layer.session_fields())
        return pinned

    def ttl_s(self, requested_s: int | None) -> int:
        """The key lifetime: the policy's, or shorter if the device asks (never below 10 s)."""
        if requested_s is None:
            return self.key_ttl_s
        return max(OPENAI_MIN_TTL_S, min(int(requested_s), self.key_ttl_s))

    def session_for(
        self, device: str | None, group: str | None, requested: dict[str, Any] | None
    ) -> dict[str, Any]:
        """The session config to mint with: the device's allowed fields under the pins."""
        session: dict[str, Any] = {}
        if self.device_session == "merge" and requested:
            allowed = set(self.device_fields)
            session = {k: copy.deepcopy(v) for k, v in requested.items() if k in allowed}
        session = _merge(session, self.effective_pin(device, group))
        session["type"] = "realtime"
        session["model"] = self.model
        return session


def _merge(base: dict[str, Any], pins: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``pins`` laid over it: tables merge key by key, anything else replaces
    (a device's non-table where a pin needs a table is dropped)."""
    out = dict(base)
    for key, value in pins.items():
        if isinstance(value, dict) and not _tagged(value):
            below = out.get(key)
            out[key] = _merge(below if isinstance(below, dict) else {}, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _tagged(value: dict[str, Any]) -> bool:
    """A member of a tagged union (turn detection, noise reduction, truncation): replaced
    whole, never merged with what the device asked."""
    return "type" in value


def load_policy(path: Path | None, **overrides: Any) -> Policy:
    """Read a TOML policy file (or the defaults), then apply non-None command-line overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        with path.open("rb") as f:
            data = tomllib.load(f)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return Policy.model_validate(data)
