"""The ASGI app: ``POST /v1/realtime/client_secrets``, the ``/v1/realtime`` WebSocket and
``POST /v1/realtime/calls`` (WebRTC, in ``hark_sim.webrtc``).

It must not contain protocol logic beyond the handshake (auth, model, beta checks,
expiry); per-event behaviour lives in ``RealtimeSession``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from hark_sim import jsonin, protocol
from hark_sim.brains import make_brain
from hark_sim.config import KNOWN_MODELS, SimConfig
from hark_sim.outbox import Droppable, Link, Outbox, SessionRecord
from hark_sim.protocol import JSON, error_body, error_event, new_id
from hark_sim.schema import (
    BETA_SESSION_FIELDS,
    Num,
    ProtocolError,
    check_model_fit,
    check_session,
)
from hark_sim.session import RealtimeSession

log = logging.getLogger(__name__)

INSECURE_KEY_PREFIX = "openai-insecure-api-key."
PROTOCOL_KEY = "hark_sim.protocol"
NO_KEY_REST = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
BAD_KEY = "Incorrect API key provided. You can find your API key in your account settings."


@dataclass
class MintedKey:
    expires_at: int
    session: JSON


@dataclass
class SimState:
    """Shared by every request of one simulator instance."""

    config: SimConfig
    sessions: list[SessionRecord] = field(default_factory=list)
    keys: dict[str, MintedKey] = field(default_factory=dict)
    live: dict[str, Droppable] = field(default_factory=dict)  # open connections by session id


def _bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return None


def _fail(status: int, message: str, code: str | None, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, code, param), status_code=status)


async def client_secrets(request: Request) -> JSONResponse:
    """Mint an ``ek_`` key valid for ``expires_after.seconds`` (10–7200, default 600)."""
    state: SimState = request.app.state.sim
    key = _bearer(request.headers.get("authorization"))
    if key is None:
        return _fail(401, NO_KEY_REST, None)
    if key != state.config.api_key or state.config.faults.refuse_keys:
        return _fail(401, BAD_KEY, "invalid_api_key")
    if request.headers.get("openai-beta"):
        return _fail(400, protocol.BETA_MESSAGE, "beta_api_shape_disabled")
    raw = await request.body()
    try:
        body: Any = jsonin.parse(raw) if raw.strip() else {}
    except ProtocolError as err:
        return _fail(400, err.message, err.code, err.param)
    if not isinstance(body, dict):
        return _fail(400, "Invalid body: expected a JSON object.", "invalid_type")
    if BETA_SESSION_FIELDS & set(body) or {"model", "instructions"} & set(body):
        return _fail(400, protocol.BETA_MESSAGE, "beta_api_shape_disabled")
    try:
        seconds, session = _check_secret_request(body)
    except ProtocolError as err:
        return _fail(400, err.message, err.code, err.param)
    model = str(session.get("model", protocol.DEFAULT_MODEL_NAME))
    now = int(time.time())
    value = "ek_" + secrets.token_hex(16)
    state.keys[value] = MintedKey(now + seconds, session)
    effective = protocol.deep_merge(protocol.default_session(model), session)
    effective["expires_at"] = 0
    log.info("client secret minted (expires in %d s)", seconds)
    return JSONResponse({"value": value, "expires_at": now + seconds, "session": effective})


def _check_secret_request(body: JSON) -> tuple[int, JSON]:
    for key in body:
        if key not in ("expires_after", "session"):
            raise ProtocolError(f"Unknown parameter: '{key}'.", "unknown_parameter", key)
    seconds = 600
    expires = body.get("expires_after")
    if expires is not None:
        if not isinstance(expires, dict):
            raise ProtocolError(
                "Invalid type for 'expires_after'.", "invalid_type", "expires_after"
            )
        for key in expires:
            if key not in ("anchor", "seconds"):
                raise ProtocolError(
                    f"Unknown parameter: 'expires_after.{key}'.",
                    "unknown_parameter",
                    f"expires_after.{key}",
                )
        if expires.get("anchor", "created_at") != "created_at":
            raise ProtocolError(
                f"Invalid value: '{expires.get('anchor')}'. Supported values are: 'created_at'.",
                "invalid_value",
                "expires_after.anchor",
            )
        if "seconds" in expires:
            Num(10, 7200, integer=True).check(expires["seconds"], "expires_after.seconds")
            seconds = int(expires["seconds"])
    session = body.get("session") or {"type": "realtime"}
    if isinstance(session, dict) and session.get("type") == "transcription":
        raise ProtocolError(
            "hark_sim supports only realtime sessions.", "invalid_value", "session.type"
        )
    check_session(session)
    if "model" in session and session["model"] not in KNOWN_MODELS:
        raise ProtocolError(
            f"Invalid model: '{session['model']}'.", "invalid_value", "session.model"
        )
    check_model_fit(session, str(session.get("model", protocol.DEFAULT_MODEL_NAME)))
    return seconds, {k: v for k, v in session.items() if k != "type"}


async def realtime_calls(request: Request) -> Response:
    """``POST /v1/realtime/calls``: a WebRTC session (``hark_sim.webrtc``, the webrtc extra)."""
    try:
        webrtc = importlib.import_module("hark_sim.webrtc")
    except ImportError as exc:
        message = (
            "hark_sim answers WebRTC offers only with the webrtc extra installed "
            f"(missing: {exc.name})."
        )
        return _fail(501, message, "not_implemented")
    answer: Response = await webrtc.answer(request)
    return answer


async def beta_sessions(request: Request) -> JSONResponse:
    """The retired beta ``POST /v1/realtime/sessions``."""
    return _fail(400, protocol.BETA_MESSAGE, "beta_api_shape_disabled")


def _offered_key(ws: WebSocket) -> tuple[str | None, bool]:
    """The key from ``Authorization`` or the insecure subprotocol; and whether one was offered."""
    for proto in ws.scope.get("subprotocols", []):
        if proto.startswith(INSECURE_KEY_PREFIX):
            return proto[len(INSECURE_KEY_PREFIX) :], True
    header = ws.headers.get("authorization")
    return _bearer(header), header is not None


def _key_kind(state: SimState, key: str) -> str | None:
    if state.config.faults.refuse_keys:
        return None
    if secrets.compare_digest(key, state.config.api_key):
        return "standard"
    minted = state.keys.get(key)
    if minted is not None and time.time() < minted.expires_at:
        return "ephemeral"
    return None


async def realtime_ws(ws: WebSocket) -> None:
    """One Realtime session over a WebSocket."""
    state: SimState = ws.app.state.sim
    cfg = state.config
    record = SessionRecord(id=new_id("sess"))
    state.sessions.append(record)
    offered = ws.scope.get("subprotocols", [])
    await ws.accept(subprotocol="realtime" if offered else None)
    link = Link(ws.scope.get(PROTOCOL_KEY), record)
    state.live[record.id] = link
    holder: list[RealtimeSession] = []

    def on_audio(item_id: str, pcm: bytes) -> None:
        if holder:
            holder[0].on_audio_written(item_id, pcm)

    out = Outbox(ws, record, cfg.faults, link, on_audio)
    writer = asyncio.create_task(out.run())
    expiry: asyncio.Task[None] | None = None
    session: RealtimeSession | None = None
    try:
        refusal = _handshake_error(state, ws, record)
        if refusal is not None:
            event, code, reason = refusal
            out.put(event)
            log.info("session %s: refused (%s)", record.id, reason)
            await out.close(code, reason)
            return
        model = str(ws.query_params["model"])
        config = protocol.default_session(model)
        config["id"] = record.id
        minted = state.keys.get(_offered_key(ws)[0] or "")
        if minted is not None:
            config = protocol.deep_merge(config, minted.session)
            config["model"] = model
        config["expires_at"] = int(time.time() + cfg.max_session_s)
        session = RealtimeSession(cfg, record, out, make_brain(cfg.brain, cfg.script), config)
        holder.append(session)
        log.info("session %s: connected model=%s key=%s", record.id, model, record.key_kind)
        out.put({"type": "session.created", "session": dict(config)})
        out.inject_faults()
        expiry = asyncio.create_task(_expire(session, cfg.max_session_s))
        await _receive_loop(ws, session, record)
    finally:
        try:
            state.live.pop(record.id, None)
            if expiry is not None:
                expiry.cancel()
            if session is not None:
                await session.shutdown()
            writer.cancel()  # a server-side close has flushed already; a client close drops
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            log.info("session %s: closed code=%s", record.id, record.closed_code)
        finally:
            record.ended.set()


def _handshake_error(
    state: SimState, ws: WebSocket, record: SessionRecord
) -> tuple[JSON, int, str] | None:
    key, offered = _offered_key(ws)
    if key is None or not offered:
        return error_event(protocol.MISSING_AUTH_MESSAGE, None), 3000, "invalid_request_error"
    record.key_kind = _key_kind(state, key)
    if record.key_kind is None:
        event = error_event(BAD_KEY, "invalid_api_key")
        return event, 3000, "invalid_request_error.invalid_api_key"
    if ws.headers.get("openai-beta"):
        event = error_event(protocol.BETA_MESSAGE, "beta_api_shape_disabled")
        return event, 4000, "invalid_request_error.beta_api_shape_disabled"
    model = ws.query_params.get("model")
    record.model = model
    if not model:
        if ws.query_params.get("intent") or ws.query_params.get("call_id"):
            msg = "hark_sim supports only ?model= sessions."
            return error_event(msg, "invalid_value", param="intent"), 4000, "invalid_request_error"
        event = error_event("Missing required parameter: 'model'.", "missing_model", param="model")
        return event, 4000, "invalid_request_error.missing_model"
    if model not in KNOWN_MODELS:
        event = error_event(
            f"The model '{model}' does not exist or you do not have access to it.",
            "invalid_model",
            param="model",
        )
        return event, 4000, "invalid_request_error.invalid_model"
    return None


async def _receive_loop(ws: WebSocket, session: RealtimeSession, record: SessionRecord) -> None:
    while True:
        try:
            message = await ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            break
        if message["type"] == "websocket.disconnect":
            if record.closed_code is None:
                record.closed_code = int(message.get("code") or 1005)
            break
        text = message.get("text")
        if text is None:
            session.out.put(
                error_event(
                    "Expected a text WebSocket message; binary frames are not supported.",
                    "invalid_event",
                )
            )
            continue
        try:
            event = jsonin.parse(text, "Invalid JSON: the message could not be parsed.")
        except ProtocolError as err:
            session.emit_error(err, err.event_id)
            continue
        record.received.append(event)
        await session.handle(event)
        if session.closing is not None:
            await session.out.close(*session.closing)
            break


async def _expire(session: RealtimeSession, max_session_s: float) -> None:
    await asyncio.sleep(max_session_s)
    await session.cancel_response("client_cancelled")
    minutes = max_session_s / 60
    span = f"{minutes:g} minutes" if minutes >= 1 else f"{max_session_s:g} seconds"
    session.out.put(
        error_event(f"Your session hit the maximum duration of {span}.", "session_expired")
    )
    log.info("session %s: expired after %g s", session.record.id, max_session_s)
    await session.out.close(1001, "session_expired")


class _ExposeTransport:
    """Puts uvicorn's protocol object in the scope, so the faults can reach the transport."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[PROTOCOL_KEY] = getattr(send, "__self__", None)
        await self.app(scope, receive, send)


def create_app(state: SimState) -> ASGIApp:
    """The simulator's ASGI app for ``state``."""
    app = Starlette(
        routes=[
            Route("/v1/realtime/client_secrets", client_secrets, methods=["POST"]),
            Route("/v1/realtime/sessions", beta_sessions, methods=["POST"]),
            Route("/v1/realtime/calls", realtime_calls, methods=["POST"]),
            WebSocketRoute("/v1/realtime", realtime_ws),
        ]
    )
    app.state.sim = state
    return _ExposeTransport(app)
