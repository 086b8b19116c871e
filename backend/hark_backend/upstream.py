"""Minting ephemeral keys at OpenAI (or any stand-in) and classifying what goes wrong there.

It must not log or forward the owner's key, the minted ``ek_`` key, or an upstream 401/403
message (OpenAI echoes a masked key in those); it must not retry on its own beyond one
connection retry, since the device owns attempt-level retries.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
from openai import AsyncOpenAI, DefaultAioHttpClient, DefaultAsyncHttpxClient

from hark_backend.logsafe import prose

log = logging.getLogger(__name__)

_MAX_FORWARDED_MESSAGE = 300
POOL_SIZE = 8  # connections per SDK client (see KeyMinter)


@dataclass
class UpstreamError(Exception):
    """An upstream failure already mapped to what the device is told (status, code).

    Not frozen: the interpreter and contextlib assign ``__traceback__`` on exceptions.
    """

    status: int
    code: str
    message: str
    type: str = "upstream_error"
    retry_after_s: int | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def _retry_after(exc: openai.APIStatusError) -> int | None:
    value = exc.response.headers.get("retry-after")
    try:
        return max(1, int(float(value))) if value is not None else None
    except ValueError:
        return None


def _refused(exc: BaseException) -> bool:
    """True if a connection error (not a timeout) sits in the cause chain.

    The SDK's aiohttp transport reports a refused connection as a connect *timeout*.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def classify(exc: Exception) -> UpstreamError:
    """Map an ``openai`` exception to the device-facing failure (see docs/backend.md)."""
    if isinstance(exc, openai.AuthenticationError):
        # Loud on purpose: every key request fails until the operator fixes the key.
        log.error(
            "UPSTREAM REFUSED THE OWNER'S OPENAI KEY (HTTP 401): every key request will fail "
            "until OPENAI_API_KEY / --openai-key-file holds a valid key"
        )
        return UpstreamError(
            502, "upstream_unauthorized", "The backend's OpenAI key was refused by OpenAI."
        )
    if isinstance(exc, openai.PermissionDeniedError):
        log.error("upstream refused the owner's OpenAI key for this model or endpoint (HTTP 403)")
        return UpstreamError(
            502, "upstream_forbidden", "The backend's OpenAI key may not mint Realtime keys."
        )
    if isinstance(exc, openai.RateLimitError):
        log.warning("upstream rate-limited the owner's account (HTTP 429)")
        return UpstreamError(
            503,
            "upstream_rate_limited",
            "OpenAI is rate-limiting the backend's account; retry later.",
            retry_after_s=_retry_after(exc) or 5,
        )
    if isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError):
        upstream_message = str(getattr(exc, "message", ""))[:_MAX_FORWARDED_MESSAGE]
        # The message echoes the device's input (e.g. an unknown field's name): escaped.
        log.warning(
            "upstream rejected the session config (HTTP %d): %s",
            exc.status_code,
            prose(upstream_message),
        )
        return UpstreamError(
            400,
            "upstream_rejected_session",
            f"OpenAI rejected the session configuration: {upstream_message}",
            type="invalid_request_error",
        )
    if isinstance(exc, openai.APIStatusError):
        log.warning("upstream failed (HTTP %d)", exc.status_code)
        return UpstreamError(
            502, "upstream_error", f"OpenAI answered HTTP {exc.status_code}; retry later."
        )
    if isinstance(exc, openai.APITimeoutError) and not _refused(exc):
        log.warning("upstream timed out")
        return UpstreamError(
            503, "upstream_timeout", "OpenAI did not answer in time; retry later.", retry_after_s=1
        )
    if isinstance(exc, openai.APIConnectionError):
        log.warning("upstream unreachable (%s)", type(exc).__name__)
        return UpstreamError(
            503,
            "upstream_unavailable",
            "OpenAI could not be reached; retry later.",
            retry_after_s=1,
        )
    raise exc


def _http_clients(connections: int, timeout_s: float) -> list[httpx2.AsyncClient]:
    """The SDK's HTTP clients: aiohttp if installed (``openai[aiohttp]``), else httpx2 shards.

    aiohttp costs about a third less CPU per key.  The httpx2 pool probes every idle
    connection (one poll() each) on every request and response, so one pool of 100
    connections (the SDK's default) costs more CPU per key than the rest of the request;
    shards of at most ``POOL_SIZE`` connections keep the total while bounding each scan.
    """
    try:
        import aiohttp  # noqa: F401  (only to choose the transport)
    except ImportError:
        pass
    else:
        limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
        return [DefaultAioHttpClient(limits=limits, timeout=timeout_s)]
    shards = max(1, -(-connections // POOL_SIZE))
    per_shard = max(1, -(-connections // shards))
    limits = httpx2.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
    return [DefaultAsyncHttpxClient(limits=limits, timeout=timeout_s) for _ in range(shards)]


class KeyMinter:
    """Mints client secrets through ``AsyncOpenAI`` (one or a few clients, used in turn)."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        timeout_s: float = 10.0,
        max_retries: int = 1,
        connections: int = 32,
    ) -> None:
        self._clients = [
            AsyncOpenAI(
                api_key=api_key,
                base_url=base_url,
                timeout=timeout_s,
                max_retries=max_retries,
                http_client=http_client,
            )
            for http_client in _http_clients(connections, timeout_s)
        ]
        self._next = itertools.cycle(self._clients)
        for client in self._clients:
            # The SDK loads resources and their types lazily: pay that at start, not on
            # the first device's request.
            _ = client.realtime.client_secrets.with_raw_response

    async def mint(self, *, ttl_s: int, session: dict[str, Any]) -> bytes:
        """Return the upstream's JSON answer verbatim, after checking its shape."""
        try:
            client = next(self._next)
            # The same request as create(expires_after=..., session=...), passed as
            # extra_body: the realtime param types declare no aliases or formats, so the
            # SDK's per-request TypedDict transform is an identity that costs ~0.3 ms of CPU
            # per key (measured, a tenth of the whole request).
            raw = await client.realtime.client_secrets.with_raw_response.create(
                extra_body={
                    "expires_after": {"anchor": "created_at", "seconds": ttl_s},
                    "session": session,
                }
            )
        except openai.APIError as exc:
            raise classify(exc) from None
        body = raw.content
        try:
            doc = json.loads(body)
            ok = (
                isinstance(doc, dict)
                and isinstance(doc.get("value"), str)
                and isinstance(doc.get("expires_at"), int)
                and isinstance(doc.get("session"), dict)
            )
        except ValueError:
            ok = False
        if not ok:
            log.warning("upstream answered 2xx without value/expires_at/session")
            raise UpstreamError(502, "upstream_bad_response", "OpenAI's answer was malformed.")
        return body

    async def aclose(self) -> None:
        """Close the pooled HTTP connections."""
        for client in self._clients:
            await client.close()
