"""The HTTP service: ``POST /v1/realtime/client_secrets`` for devices, ``GET /healthz``, errors.

It must not log or echo a device token, the owner's key or a minted key; it must not answer
anything but OpenAI's error envelope ``{"error": {"message", "type", "code", "param"}}`` on
failure (never a traceback); and it keeps no per-device state in the process, so several
replicas can share one database behind a load balancer.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from hark_backend import logsafe
from hark_backend.authlimit import FailedAuthLimiter, address_key
from hark_backend.policy import OPENAI_MAX_TTL_S, OPENAI_MIN_TTL_S, Policy
from hark_backend.registry import (
    TOKEN_PREFIX,
    Admission,
    RateLimit,
    Registry,
    RegistryUnavailableError,
)
from hark_backend.upstream import KeyMinter, UpstreamError

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_TOKEN_CHARS = 256


@dataclass(frozen=True)
class Settings:
    """Everything the service needs; built by the CLI (or a test)."""

    db_url: str
    openai_base_url: str
    openai_api_key: str = field(repr=False)
    policy: Policy = field(default_factory=Policy)
    rate_limit: RateLimit = field(default_factory=lambda: RateLimit(20, 60.0))
    auth_fail_limit: RateLimit = field(default_factory=lambda: RateLimit(30, 60.0))
    max_body_bytes: int = 16 * 1024
    upstream_timeout_s: float = 10.0
    upstream_connections: int = 32


# -- wire models (for validation and the OpenAPI schema) ----------------------------------


class ExpiresAfter(BaseModel):
    """OpenAI's ``expires_after``; the policy may only shorten what the device asks for."""

    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"] = "created_at"
    seconds: int = Field(ge=OPENAI_MIN_TTL_S, le=OPENAI_MAX_TTL_S)


class ClientSecretRequest(BaseModel):
    """The body OpenAI's endpoint takes; both fields optional, the session merged under policy."""

    model_config = ConfigDict(extra="forbid")

    expires_after: ExpiresAfter | None = None
    session: dict[str, Any] | None = None


class ClientSecretResponse(BaseModel):
    """OpenAI's ``ClientSecretCreateResponse``: the ``ek_`` key, its expiry, the session."""

    value: str
    expires_at: int = Field(description="Expiry of the key, seconds since the epoch.")
    session: dict[str, Any]


class ErrorBody(BaseModel):
    """The inside of OpenAI's error envelope."""

    message: str
    type: str
    code: str | None
    param: str | None


class ErrorEnvelope(BaseModel):
    """``{"error": {...}}``: every failure, so a device parses one shape."""

    error: ErrorBody


_REQUEST_REF = "#/components/schemas/ClientSecretRequest"


def _non_finite_at(value: Any, path: str) -> str | None:
    """The dotted path of the first NaN or Infinity in a parsed JSON value, else None.

    Iterative, not recursive: the parser already bounds the depth, this must not add a limit.
    """
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return where
        elif isinstance(item, dict):
            stack.extend((f"{where}.{key}", sub) for key, sub in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((f"{where}.{i}", sub) for i, sub in reversed(list(enumerate(item))))
    return None


def _parse_body(raw: bytes) -> ClientSecretRequest | None:
    """The optional JSON body; any defect is a 400 naming the first bad field.

    The JSON parser accepts ``NaN``, ``Infinity`` and ``1e999`` (as non-finite floats), which
    no JSON encoder will send on to OpenAI: they are refused here, at the edge.
    """
    if not raw.strip():
        return None
    try:
        body = ClientSecretRequest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first.get("loc", ()))
        message = f"Invalid request: {first.get('msg', 'malformed body')}"
        if loc:
            message += f" (at {loc})"
        raise ApiError(400, "invalid_request", message, param=loc or None) from None
    if body.session and (where := _non_finite_at(body.session, "session")) is not None:
        raise ApiError(
            400,
            "invalid_request",
            f"Invalid request: numbers must be finite, not NaN or Infinity (at {where})",
            param=where,
        )
    return body


class Health(BaseModel):
    """The health answer."""

    status: Literal["ok"]


class ApiError(Exception):
    """A failure to answer with the envelope; ``code`` is what the device classifies on."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type_
        self.param = param
        self.headers = headers or {}


def envelope(
    status: int,
    code: str,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """One error response in OpenAI's envelope."""
    body = {"error": {"message": message, "type": type_, "code": code, "param": param}}
    return JSONResponse(
        body, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})}
    )


async def send_envelope(
    send: Send, status: int, code: str, message: str, *, type_: str = "invalid_request_error"
) -> None:
    """Answer with the envelope straight through ASGI (from middleware, outside the router)."""
    response = envelope(status, code, message, type_=type_)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def _where(exc: BaseException) -> str:
    """Where an exception was raised (``folder/file.py:line``), without its message.

    The message is not logged: it may quote anything, a header or a token included.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    path = Path(frames[-1].filename)
    return f"{path.parent.name}/{path.name}:{frames[-1].lineno}"


def _set_outcome(request: Request, outcome: str, device: str | None = None) -> None:
    request.state.outcome = outcome
    if device is not None:
        request.state.device = device


class OutageLog:
    """Says a registry outage in a few lines: when it starts, every ``every_s`` while it
    lasts, and when it ends (with how long and how many requests got 503).

    One ERROR line per refused request would be dozens a second during a database restart
    (the soak bench counted 40/s), and the driver's message spans lines; this keeps the log
    readable and each line one line.
    """

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self.since: float | None = None  # monotonic start of the outage, None while healthy
        self.refused = 0
        self._last_logged = 0.0

    def failed(self, exc: BaseException, now: float) -> None:
        """A request found the registry unavailable."""
        self.refused += 1
        if self.since is None:
            self.since = self._last_logged = now
            log.error(
                "device registry unavailable, answering 503 until it is back: %s",
                logsafe.prose(str(exc)),
            )
        elif now - self._last_logged >= self.every_s:
            self._last_logged = now
            log.error(
                "device registry still unavailable after %.0f s (%d requests refused): %s",
                now - self.since,
                self.refused,
                logsafe.prose(str(exc)),
            )

    def answered(self, now: float) -> None:
        """The registry answered; ends an outage if one was under way (one test otherwise)."""
        if self.since is not None:
            log.warning(
                "device registry available again after %.1f s (%d requests refused with 503)",
                now - self.since,
                self.refused,
            )
            self.since = None
            self.refused = 0


# -- ASGI middleware -----------------------------------------------------------------------


class RequestLog:
    """One structured line per request: method, path, status, device, outcome, duration.

    The client-controlled fields are escaped (``logsafe.field``): one request, one line.
    An exception nothing else handled (a bug) is answered here with a 500 in the envelope
    and one ERROR line saying where; it is not re-raised, because the server would then
    print its traceback, message and all, and drop the client's connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        started = time.perf_counter()
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            state["outcome"] = "internal_error"
            log.error(
                "unhandled %s at %s while serving %s %s",
                type(exc).__name__,
                _where(exc),
                logsafe.field(str(scope.get("method", "-"))),
                logsafe.field(str(scope.get("path", "-"))),
            )
            if not status:  # else the answer is under way: the server closes the connection
                await send_envelope(
                    send_wrapper,
                    500,
                    "internal_error",
                    "Internal error in the backend.",
                    type_="server_error",
                )
        finally:
            log.info(
                "request method=%s path=%s status=%d device=%s outcome=%s duration_ms=%.1f",
                logsafe.field(str(scope.get("method", "-"))),
                logsafe.field(str(scope.get("path", "-"))),
                status,
                logsafe.field(str(state.get("device", "-"))),
                state.get("outcome", "ok" if 200 <= status < 400 else "error"),
                (time.perf_counter() - started) * 1000,
            )


class BodyLimit:
    """Refuse bodies over ``max_bytes`` with 413 before the app reads them (also chunked ones)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, scope: Scope, send: Send, status: int, code: str, msg: str) -> None:
        scope.setdefault("state", {})["outcome"] = code
        await send_envelope(send, status, code, msg)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"Request body larger than {self.max_bytes} bytes."
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._refuse(scope, send, 400, "invalid_request", "Bad Content-Length.")
                    return
                if declared > self.max_bytes:
                    await self._refuse(scope, send, 413, "request_too_large", too_large)
                    return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunk = bytes(message.get("body", b""))
            total += len(chunk)
            if total > self.max_bytes:
                await self._refuse(scope, send, 413, "request_too_large", too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# -- the application -----------------------------------------------------------------------


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorEnvelope,
        "description": "Malformed request, or OpenAI refused the session.",
    },
    401: {"model": ErrorEnvelope, "description": "Missing, unknown or revoked device token."},
    413: {"model": ErrorEnvelope, "description": "Request body too large."},
    429: {
        "model": ErrorEnvelope,
        "description": "Device rate limit, or too many failed authentications from this"
        " address; see Retry-After.",
    },
    500: {"model": ErrorEnvelope, "description": "Backend bug."},
    502: {"model": ErrorEnvelope, "description": "OpenAI refused or failed (upstream_*)."},
    503: {"model": ErrorEnvelope, "description": "OpenAI or the registry unavailable; retry."},
}


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _refuse_blocked_address(request: Request) -> None:
    """429 if this client's address failed to authenticate too often (see ``authlimit``)."""
    limiter: FailedAuthLimiter = request.app.state.auth_limiter
    client = request.client.host if request.client else None
    wait_s = limiter.retry_after_s(address_key(client), time.monotonic())
    if wait_s > 0:
        retry_after_s = max(1, int(wait_s + 0.999))
        raise ApiError(
            429,
            "auth_rate_limited",
            f"Too many failed authentications from this address; retry in {retry_after_s} s.",
            type_="rate_limit_error",
            headers={"Retry-After": str(retry_after_s)},
        )


def _count_failure(request: Request) -> None:
    """Count a 401 against the client's address; say so once when it goes over the limit."""
    limiter: FailedAuthLimiter = request.app.state.auth_limiter
    key = address_key(request.client.host if request.client else None)
    if limiter.failed(key, time.monotonic()):
        log.warning(
            "too many failed authentications from client=%s (%d in %g s): refusing its"
            " requests with 429 until the window ends",
            logsafe.field(key),
            limiter.limit.count,
            limiter.limit.window_s,
        )


async def authenticate(request: Request) -> Admission:
    """Identify the device by its token and count the request against its rate window.

    Parsed by hand rather than through FastAPI's dependency solver, which cost a tenth of
    the backend's CPU per key; the OpenAPI schema declares the scheme (see ``create_app``).
    An address with too many failed attempts is refused before any database work; while
    no address is, that check is one test of an empty dict.
    """
    if request.app.state.auth_limiter.blocked:
        _refuse_blocked_address(request)
    token = _bearer_token(request)
    if token is None:
        _count_failure(request)
        raise ApiError(
            401,
            "missing_device_token",
            "Send the device token as 'Authorization: Bearer hark_dt_...'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    reg: Registry = request.app.state.registry
    settings: Settings = request.app.state.settings
    if token.startswith(TOKEN_PREFIX) and len(token) <= MAX_TOKEN_CHARS:
        admission = await reg.call(reg.admit, token, now_s=time.time(), limit=settings.rate_limit)
        request.app.state.outage_log.answered(time.monotonic())
    else:
        admission = Admission("unknown_token")
    if admission.device is not None:
        request.state.device = admission.device
    if admission.outcome in ("revoked", "unknown_token"):
        _count_failure(request)
    if admission.outcome == "revoked":
        raise ApiError(
            401,
            "device_revoked",
            "This device has been revoked by the backend's owner.",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    if admission.outcome == "unknown_token":
        raise ApiError(
            401,
            "invalid_device_token",
            "Unknown device token (never issued, or replaced by 'device rotate').",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    if admission.outcome == "rate_limited":
        retry_after_s = max(1, int(admission.retry_after_s + 0.999))
        raise ApiError(
            429,
            "rate_limited",
            f"Too many key requests from this device; retry in {retry_after_s} s.",
            type_="rate_limit_error",
            headers={"Retry-After": str(retry_after_s)},
        )
    return admission


def create_app(settings: Settings, *, registry: Registry | None = None) -> FastAPI:
    """Build the service; the registry and the OpenAI client open in the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reg = registry or Registry(settings.db_url)
        await reg.call(reg.init_schema)
        minter = KeyMinter(
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            timeout_s=settings.upstream_timeout_s,
            connections=settings.upstream_connections,
        )
        app.state.registry = reg
        app.state.minter = minter
        app.state.settings = settings
        log.info(
            "backend ready: db=%s upstream=%s model=%s key_ttl_s=%d rate_limit=%d/%gs"
            " auth_fail_limit=%d/%gs",
            "postgresql" if reg.postgres else "sqlite",
            settings.openai_base_url,
            settings.policy.model,
            settings.policy.key_ttl_s,
            settings.rate_limit.count,
            settings.rate_limit.window_s,
            settings.auth_fail_limit.count,
            settings.auth_fail_limit.window_s,
        )
        try:
            yield
        finally:
            await minter.aclose()
            if registry is None:
                reg.close()

    app = FastAPI(
        title="hark-backend",
        version="0.1.0",
        summary="Mints short-lived OpenAI Realtime keys for registered hark devices.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )

    @app.post(
        "/v1/realtime/client_secrets",
        response_model=ClientSecretResponse,
        responses=_ERROR_RESPONSES,
        summary="Mint an ephemeral Realtime key (same shape as OpenAI's endpoint).",
        operation_id="createClientSecret",
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": {"$ref": _REQUEST_REF}}},
            },
            "security": [{"DeviceToken": []}],
        },
    )
    async def create_client_secret(request: Request) -> Response:
        admission = await authenticate(request)
        body = _parse_body(await request.body())
        policy = settings.policy
        requested_ttl_s = body.expires_after.seconds if body and body.expires_after else None
        session = policy.session_for(
            admission.device, admission.group, body.session if body else None
        )
        minter: KeyMinter = request.app.state.minter
        answer = await minter.mint(ttl_s=policy.ttl_s(requested_ttl_s), session=session)
        _set_outcome(request, "minted")
        return Response(
            answer, media_type="application/json", headers={"Cache-Control": "no-store"}
        )

    @app.get("/healthz", response_model=Health, responses={503: _ERROR_RESPONSES[503]})
    async def healthz(request: Request) -> dict[str, str]:
        """Liveness and database reachability (does not call OpenAI)."""
        reg: Registry = request.app.state.registry
        await reg.call(reg.ping)
        request.app.state.outage_log.answered(time.monotonic())
        return {"status": "ok"}

    # -- errors: always the envelope --------------------------------------------------------

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        _set_outcome(request, exc.code)
        return envelope(
            exc.status, exc.code, exc.message, type_=exc.type, param=exc.param, headers=exc.headers
        )

    @app.exception_handler(UpstreamError)
    async def on_upstream(request: Request, exc: UpstreamError) -> JSONResponse:
        _set_outcome(request, exc.code)
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
        return envelope(exc.status, exc.code, exc.message, type_=exc.type, headers=headers)

    @app.exception_handler(RegistryUnavailableError)
    async def on_registry(request: Request, exc: RegistryUnavailableError) -> JSONResponse:
        request.app.state.outage_log.failed(exc, time.monotonic())
        _set_outcome(request, "registry_unavailable")
        return envelope(
            503,
            "registry_unavailable",
            "The device registry is unavailable; retry later.",
            type_="server_error",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(loc) or None
        message = f"Invalid request: {first.get('msg', 'malformed body')}"
        if param:
            message += f" (at {param})"
        _set_outcome(request, "invalid_request")
        return envelope(400, "invalid_request", message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, f"http_{exc.status_code}")
        _set_outcome(request, code)
        return envelope(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        # Only for a failure outside RequestLog, which answers the others itself.
        log.error("unhandled %s at %s", type(exc).__name__, _where(exc))
        _set_outcome(request, "internal_error")
        return envelope(
            500, "internal_error", "Internal error in the backend.", type_="server_error"
        )

    def openapi() -> dict[str, Any]:
        # Validation failures answer 400 in OpenAI's envelope, not FastAPI's 422.
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    operation.get("responses", {}).pop("422", None)
            components = schema.setdefault("components", {})
            schemas = components.setdefault("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            request_schema = ClientSecretRequest.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            schemas.update(request_schema.pop("$defs", {}))
            schemas["ClientSecretRequest"] = request_schema
            components.setdefault("securitySchemes", {})["DeviceToken"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "The device token from `hark-backend device add` (hark_dt_...).",
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.auth_limiter = FailedAuthLimiter(settings.auth_fail_limit)
    app.state.outage_log = OutageLog()
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestLog)
    return app
