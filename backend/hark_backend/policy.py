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
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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


class Pin(BaseModel):
    """Session fields pinned for everyone, a group or one device; unset fields are not pinned."""

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

    def effective_pin(self, device: str | None, group: str | None) -> dict[str, Any]:
        """The pinned fields for this device: global, then group, then device (later wins)."""
        pinned: dict[str, Any] = {}
        layers = [self.pin, self.groups.get(group or ""), self.devices.get(device or "")]
        for layer in layers:
            if layer is not None:
                pinned.update(layer.model_dump(exclude_none=True))
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
        pinned = self.effective_pin(device, group)
        voice = pinned.pop("voice", None)
        session.update(pinned)
        if voice is not None:
            audio = session.get("audio")
            audio = dict(audio) if isinstance(audio, dict) else {}
            output = audio.get("output")
            output = dict(output) if isinstance(output, dict) else {}
            output["voice"] = voice
            audio["output"] = output
            session["audio"] = audio
        session["type"] = "realtime"
        session["model"] = self.model
        return session


def load_policy(path: Path | None, **overrides: Any) -> Policy:
    """Read a TOML policy file (or the defaults), then apply non-None command-line overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        with path.open("rb") as f:
            data = tomllib.load(f)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return Policy.model_validate(data)
