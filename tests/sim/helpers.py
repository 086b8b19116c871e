"""Test helpers for hark_sim: strict conformance checks and a small WebSocket client.

Validation is judged by the ``openai`` package's own models (code nobody here wrote);
because those models tolerate unknown fields, every extra key is also reported, and only
the extras the protocol notes document as observed on the wire are allowed.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import pydantic
import websockets
from hark_sim import SimHandle
from openai import BaseModel
from openai.types.realtime import ClientSecretCreateResponse, RealtimeServerEvent
from pydantic import Field, TypeAdapter

SERVER_EVENT = TypeAdapter(Annotated[RealtimeServerEvent, Field(discriminator="type")])

# (event type or "*", dotted path inside the event) of extras seen on the real wire.
ALLOWED_EXTRAS = {
    ("*", "obfuscation"),
    ("session.created", "session.id"),
    ("session.created", "session.object"),
    ("session.created", "session.expires_at"),
    ("session.updated", "session.id"),
    ("session.updated", "session.object"),
    ("session.updated", "session.expires_at"),
}


def _extras(value: Any, path: str) -> list[str]:
    """Dotted paths of every field a model did not declare, anywhere below ``value``."""
    found: list[str] = []
    if isinstance(value, pydantic.BaseModel):
        for key in value.model_extra or {}:
            found.append(f"{path}.{key}" if path else key)
        for name in type(value).model_fields:
            found += _extras(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, list):
        for item in value:
            found += _extras(item, path)
    return found


def undeclared_fields(event_type: str, model: BaseModel) -> list[str]:
    return [
        p
        for p in _extras(model, "")
        if ("*", p) not in ALLOWED_EXTRAS and (event_type, p) not in ALLOWED_EXTRAS
    ]


def unlike_captures(event: dict[str, Any]) -> list[str]:
    """Where ``event`` differs from real GA traffic in ways openai's models allow.

    The models declare ``object`` on items and any rate-limit ``name``; the captures in
    the protocol notes show items without ``object`` and one rate limit, ``tokens``.
    """
    found: list[str] = []
    response = event.get("response")
    items = [event.get("item")]
    if isinstance(response, dict):
        items += list(response.get("output") or [])
    for item in items:
        if isinstance(item, dict) and "object" in item:
            found.append(f"an item with object={item['object']!r}")
    names = [limit.get("name") for limit in event.get("rate_limits") or []]
    if event["type"] == "rate_limits.updated" and names != ["tokens"]:
        found.append(f"rate limits {names}, not ['tokens']")
    return found


def check_server_event(event: dict[str, Any]) -> None:
    """Fail unless ``event`` is a valid GA server event with no undeclared fields,
    shaped like real traffic."""
    model = SERVER_EVENT.validate_python(event)
    extra = undeclared_fields(event["type"], model)
    assert not extra, f"{event['type']} has undeclared fields {extra}"
    assert str(event["event_id"]).startswith("event_")
    unlike = unlike_captures(event)
    assert not unlike, f"{event['type']} is unlike real traffic: {unlike}"


def check_client_secret(body: dict[str, Any]) -> None:
    model = ClientSecretCreateResponse.model_validate(body)
    allowed = {"session.expires_at"}  # declared; kept for clarity
    extra = [p for p in _extras(model, "") if p not in allowed]
    assert not extra, f"client secret has undeclared fields {extra}"


def b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode("ascii")


class Client:
    """A raw WebSocket client that checks every server event it receives."""

    def __init__(self, ws: websockets.ClientConnection, validate: bool = True) -> None:
        self.ws = ws
        self.validate = validate
        self.events: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def recv(self, timeout_s: float = 10.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout_s)
        event: dict[str, Any] = json.loads(raw)
        if self.validate:
            check_server_event(event)
        self.events.append(event)
        return event

    async def until(self, event_type: str, timeout_s: float = 15.0) -> list[dict[str, Any]]:
        """Events received up to and including the first of ``event_type``."""
        seen: list[dict[str, Any]] = []
        while True:
            event = await self.recv(timeout_s)
            seen.append(event)
            if event["type"] == event_type:
                return seen

    async def error(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """The next ``error`` event's ``error`` object."""
        return (await self.until("error", timeout_s))[-1]["error"]  # type: ignore[no-any-return]

    async def close_code(self, timeout_s: float = 10.0) -> int | None:
        """Read until the server closes; the close code it sent (None: no close frame)."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout_s)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None


@asynccontextmanager
async def connect(
    sim: SimHandle,
    key: str | None = "standard",
    model: str | None = "gpt-realtime",
    headers: dict[str, str] | None = None,
    subprotocols: list[str] | None = None,
    validate: bool = True,
    read_created: bool = True,
) -> AsyncIterator[Client]:
    """Open a session; ``key="standard"`` means the sim's own key, None means no header."""
    hdrs = dict(headers or {})
    if key == "standard":
        key = sim.api_key
    if key is not None and subprotocols is None:
        hdrs["Authorization"] = f"Bearer {key}"
    url = sim.ws_url + (f"?model={model}" if model is not None else "")
    async with websockets.connect(
        url,
        additional_headers=hdrs,
        subprotocols=[websockets.Subprotocol(s) for s in subprotocols] if subprotocols else None,
        max_size=None,
    ) as ws:
        client = Client(ws, validate)
        if read_created:
            created = await client.recv()
            assert created["type"] == "session.created"
        yield client


MANUAL_TURNS = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}


async def manual_turn(client: Client, pcm: bytes) -> list[dict[str, Any]]:
    """Append ``pcm``, commit, ask for a response; the events up to ``response.done``."""
    await client.send({"type": "input_audio_buffer.append", "audio": b64(pcm)})
    await client.send({"type": "input_audio_buffer.commit"})
    await client.send({"type": "response.create"})
    return await client.until("response.done")


def audio_of(events: list[dict[str, Any]]) -> bytes:
    return b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]
