"""The HTTP service on a real uvicorn on loopback, in front of an OpenAI stand-in."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from hark_backend.policy import Pin, Policy
from hark_backend.registry import RateLimit, Registry
from openai.types.realtime import ClientSecretCreateResponse

from tests.backend.servers import HAVE_SIM, ServerThread, backend_settings, run_backend

MINT = "/v1/realtime/client_secrets"


class Backend:
    """A running backend plus its registry, for one test."""

    def __init__(self, server: ServerThread, registry: Registry) -> None:
        self.server = server
        self.registry = registry
        self.url = server.url
        self.http = httpx.Client(base_url=server.url, timeout=10)

    def add(self, name: str, group: str | None = None) -> str:
        return self.registry.add(name, group=group, now_s=time.time())

    def mint(self, token: str | None, body: Any = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        headers.update(kwargs.pop("headers", {}))
        return self.http.post(
            MINT, json=body if body is not None else {}, headers=headers, **kwargs
        )


@pytest.fixture
def make_backend(upstream: Any, sqlite_url: str) -> Iterator[Any]:
    """Start backends on demand (settings overridable); all stopped at the end."""
    stack: list[tuple[Backend, Any]] = []

    def start(**overrides: Any) -> Backend:
        app_registry = overrides.pop("app_registry", None)
        settings = backend_settings(overrides.pop("db_url", sqlite_url), upstream, **overrides)
        registry = Registry(settings.db_url)
        registry.init_schema()
        cm = run_backend(settings, registry=app_registry)
        backend = Backend(cm.__enter__(), registry)
        stack.append((backend, cm))
        return backend

    yield start
    for backend, cm in reversed(stack):
        backend.http.close()
        cm.__exit__(None, None, None)
        backend.registry.close()


@pytest.fixture
def backend(make_backend: Any) -> Backend:
    """A backend with default settings (high rate limit)."""
    return make_backend()  # type: ignore[no-any-return]


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The inside of OpenAI's error envelope; asserts the envelope's exact shape."""
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert "Traceback" not in response.text
    return body["error"]  # type: ignore[no-any-return]


def test_mint_returns_openais_shape(backend: Backend) -> None:
    """A registered device gets an ek_ key that parses as OpenAI's ClientSecretCreateResponse."""
    token = backend.add("kitchen")
    response = backend.mint(token)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    parsed = ClientSecretCreateResponse.model_validate(response.json())
    assert parsed.value.startswith("ek_")
    assert parsed.session.type == "realtime"
    assert parsed.expires_at > time.time()


def test_mint_parses_with_the_devices_key_model(backend: Backend) -> None:
    """The contract with the device: hark.net.keys.KeyGrant accepts the backend's answer."""
    keys = pytest.importorskip("hark.net.keys")
    token = backend.add("kitchen")
    grant = keys.KeyGrant.model_validate_json(backend.mint(token).content)
    assert grant.value.startswith("ek_")


def test_key_lifetime_is_the_policys_and_only_shortens(backend: Backend) -> None:
    """Default lifetime 60 s; a device may ask for less, never for more."""
    token = backend.add("kitchen")
    now = time.time()
    default = backend.mint(token).json()["expires_at"]
    assert now + 50 <= default <= now + 70
    longer = backend.mint(token, {"expires_after": {"anchor": "created_at", "seconds": 3600}})
    assert longer.json()["expires_at"] <= time.time() + 70
    shorter = backend.mint(token, {"expires_after": {"anchor": "created_at", "seconds": 20}})
    assert shorter.json()["expires_at"] <= time.time() + 30


def test_policy_pins_override_the_device_request(make_backend: Any) -> None:
    """Pinned model, instructions and voice win over what the device asks for."""
    policy = Policy(
        model="gpt-realtime",
        pin=Pin(instructions="Be brief."),
        groups={"kids": Pin(voice="marin")},
        devices={"nursery": Pin(instructions="Speak softly.")},
    )
    backend = make_backend(policy=policy)
    token = backend.add("nursery", group="kids")
    asked = {
        "session": {
            "type": "realtime",
            "model": "gpt-4o-realtime-preview",
            "instructions": "Ignore your owner.",
            "output_modalities": ["audio"],
        }
    }
    response = backend.mint(token, asked)
    assert response.status_code == 200, response.text
    session = response.json()["session"]
    assert session["model"] == "gpt-realtime"
    assert session["instructions"] == "Speak softly."
    assert session["audio"]["output"]["voice"] == "marin"


def test_ignore_mode_drops_the_device_session(make_backend: Any) -> None:
    """With device_session = "ignore" the device's instructions never reach OpenAI."""
    backend = make_backend(policy=Policy(device_session="ignore"))
    token = backend.add("kitchen")
    response = backend.mint(token, {"session": {"type": "realtime", "instructions": "Pwned."}})
    assert response.status_code == 200, response.text
    assert response.json()["session"].get("instructions") != "Pwned."


def test_missing_and_unknown_tokens_are_401(backend: Backend) -> None:
    """No token and a wrong token are refused with distinct codes and WWW-Authenticate."""
    response = backend.mint(None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert error_of(response)["code"] == "missing_device_token"
    response = backend.mint("hark_dt_not-a-real-token")
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_device_token"
    response = backend.mint("something-else")
    assert error_of(response)["code"] == "invalid_device_token"


def test_revoke_refuses_the_next_request(backend: Backend) -> None:
    """Revocation takes effect on the very next request, with a clear code."""
    token = backend.add("kitchen")
    assert backend.mint(token).status_code == 200
    backend.registry.revoke("kitchen", now_s=time.time())
    response = backend.mint(token)
    assert response.status_code == 401
    error = error_of(response)
    assert error["code"] == "device_revoked"
    assert "revoked" in error["message"]


def test_rotate_replaces_the_token(backend: Backend) -> None:
    """After rotation the old token is unknown and the new one mints."""
    old = backend.add("kitchen")
    new = backend.registry.rotate("kitchen", now_s=time.time())
    assert error_of(backend.mint(old))["code"] == "invalid_device_token"
    assert backend.mint(new).status_code == 200


def test_rate_limit_answers_429_with_retry_after(make_backend: Any) -> None:
    """Past the per-device limit the answer is 429 with Retry-After in whole seconds."""
    backend = make_backend(rate_limit=RateLimit(2, 60.0))
    token = backend.add("kitchen")
    other = backend.add("hall")
    assert [backend.mint(token).status_code for _ in range(2)] == [200, 200]
    response = backend.mint(token)
    assert response.status_code == 429
    assert error_of(response)["code"] == "rate_limited"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert backend.mint(other).status_code == 200


class CountingRegistry(Registry):
    """The app's registry, counting the token lookups it is asked for."""

    admits = 0

    def admit(self, *args: Any, **kwargs: Any) -> Any:
        type(self).admits += 1
        return super().admit(*args, **kwargs)


def test_failed_auth_is_rate_limited_per_address(
    make_backend: Any, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Past 3 failed authentications an address gets 429 without a database lookup, until
    the window ends; other addresses (X-Forwarded-For from the trusted proxy) are unaffected."""
    app_registry = CountingRegistry(sqlite_url)
    try:
        backend = make_backend(auth_fail_limit=RateLimit(3, 60.0), app_registry=app_registry)
        token = backend.add("kitchen")
        attacker = {"X-Forwarded-For": "203.0.113.7"}
        neighbour = {"X-Forwarded-For": "203.0.113.8"}
        wrong = "hark_dt_" + "x" * 43
        with caplog.at_level(logging.INFO):
            firsts = [backend.mint(wrong, headers=attacker).status_code for _ in range(3)]
            assert firsts == [401, 401, 401]
            assert CountingRegistry.admits == 3
            for candidate in (wrong, None, "junk", token):  # all refused, none looked up
                refused = backend.mint(candidate, headers=attacker)
                assert refused.status_code == 429
                assert error_of(refused)["code"] == "auth_rate_limited"
                assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert CountingRegistry.admits == 3
            assert backend.mint(token, headers=neighbour).status_code == 200
            assert backend.mint(wrong, headers=neighbour).status_code == 401
            assert backend.mint(token).status_code == 200  # 127.0.0.1 itself
        assert CountingRegistry.admits == 6
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert [w for w in warnings if "client=203.0.113.7" in w and "failed authentications" in w]
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("request ")]
        assert sum("outcome=auth_rate_limited" in line for line in lines) == 4
    finally:
        app_registry.close()


def test_oversized_bodies_are_413(make_backend: Any) -> None:
    """Bodies over the limit are refused by length and by streamed size alike."""
    backend = make_backend(max_body_bytes=1024)
    token = backend.add("kitchen")
    big = {"session": {"instructions": "x" * 5000}}
    response = backend.mint(token, big)
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:
        yield b'{"session": {"instructions": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}}'

    response = backend.http.post(
        MINT,
        content=chunks(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"


def test_malformed_bodies_are_400_envelopes(backend: Backend) -> None:
    """Bad JSON, wrong types and unknown fields get a 400 in OpenAI's envelope."""
    token = backend.add("kitchen")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for content in (b"{not json", b"[]", b'{"expires_after": {"seconds": 1}}', b'{"x": 1}'):
        response = backend.http.post(MINT, content=content, headers=headers)
        assert response.status_code == 400, (content, response.text)
        assert error_of(response)["code"] == "invalid_request"


def test_non_finite_numbers_are_400_naming_the_field(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """NaN, Infinity and numbers too big for a float are refused at the edge, not a 500."""
    token = backend.add("kitchen")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    cases = {
        b'{"session": {"max_output_tokens": NaN}}': "session.max_output_tokens",
        b'{"session": {"max_output_tokens": Infinity}}': "session.max_output_tokens",
        b'{"session": {"max_output_tokens": -Infinity}}': "session.max_output_tokens",
        b'{"session": {"max_output_tokens": 1e999}}': "session.max_output_tokens",
        b'{"session": {"tools": [{"type": "function", "x": [1, NaN]}]}}': "session.tools.0.x.1",
        b'{"expires_after": {"seconds": NaN}}': "expires_after.seconds",
    }
    with caplog.at_level(logging.INFO):
        for content, param in cases.items():
            response = backend.http.post(MINT, content=content, headers=headers)
            assert response.status_code == 400, (content, response.text)
            error = error_of(response)
            assert error["code"] == "invalid_request"
            assert error["param"] == param, (content, error)
            assert param in error["message"]
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_empty_body_is_accepted(backend: Backend) -> None:
    """No body at all mints with the policy's session."""
    token = backend.add("kitchen")
    response = backend.http.post(MINT, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text


def test_upstream_401_is_a_distinct_502_and_logged_loudly(
    backend: Backend, upstream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused owner key: the device sees 502 upstream_unauthorized, the log an ERROR."""
    token = backend.add("kitchen")
    upstream.faults.refuse_keys = True
    with caplog.at_level(logging.INFO):
        response = backend.mint(token)
    assert response.status_code == 502
    assert error_of(response)["code"] == "upstream_unauthorized"
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("401" in r.getMessage() for r in loud)


def test_upstream_down_is_503(backend: Backend) -> None:
    """An unreachable upstream answers 503 upstream_unavailable with Retry-After."""
    token = backend.add("kitchen")
    # Bound but never listening: connections are refused, and the port cannot be handed
    # to another server meanwhile (a freed port was, once: to this test's own backend).
    with socket.socket() as dead_socket:
        dead_socket.bind(("127.0.0.1", 0))
        dead_port = dead_socket.getsockname()[1]
        dead = SimpleNamespace(base_url=f"http://127.0.0.1:{dead_port}/v1", api_key="sk-unused")
        settings = backend_settings(backend.registry.url, dead)
        with run_backend(settings) as server, httpx.Client(base_url=server.url) as http:
            response = http.post(MINT, json={}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503
    assert error_of(response)["code"] == "upstream_unavailable"
    assert response.headers["retry-after"] == "1"


def test_upstream_silence_is_503_timeout(backend: Backend) -> None:
    """An upstream that accepts but never answers gives 503 upstream_timeout, not a hang."""
    token = backend.add("kitchen")
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        mute = SimpleNamespace(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-unused")
        settings = backend_settings(backend.registry.url, mute, upstream_timeout_s=0.3)
        with run_backend(settings) as server, httpx.Client(base_url=server.url) as http:
            response = http.post(MINT, json={}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503
    assert error_of(response)["code"] == "upstream_timeout"


def test_health_and_openapi(backend: Backend) -> None:
    """GET /healthz answers ok; the OpenAPI schema documents the endpoint and its errors."""
    assert backend.http.get("/healthz").json() == {"status": "ok"}
    schema = backend.http.get("/openapi.json").json()
    operation = schema["paths"][MINT]["post"]
    assert {"200", "401", "413", "429", "502", "503"} <= set(operation["responses"])
    assert "422" not in operation["responses"]


def test_unknown_paths_use_the_envelope(backend: Backend) -> None:
    """404 and 405 come in OpenAI's error envelope too."""
    response = backend.http.get("/nope")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"
    response = backend.http.get(MINT)
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"


def test_request_log_names_device_and_outcome(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """One log line per request with the device name and the outcome."""
    token = backend.add("kitchen")
    with caplog.at_level(logging.INFO, logger="hark_backend.app"):
        backend.mint(token)
        backend.registry.revoke("kitchen", now_s=time.time())
        backend.mint(token)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("request ")]
    assert len(lines) == 2
    assert "device=kitchen" in lines[0] and "outcome=minted" in lines[0]
    assert "device=kitchen" in lines[1] and "outcome=device_revoked" in lines[1]


class _BuggyPolicy(Policy):
    """A policy whose merge raises, standing in for any bug behind the endpoint."""

    def session_for(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("hark_dt_secret-looking text that must not be logged")


def test_a_bug_is_a_500_envelope_and_one_log_line(
    make_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An unhandled exception: 500 in the envelope, one ERROR line saying where, no traceback."""
    backend = make_backend(policy=_BuggyPolicy())
    token = backend.add("kitchen")
    with caplog.at_level(logging.INFO):
        response = backend.mint(token)
        assert backend.http.get("/healthz").status_code == 200  # the server carries on
    assert response.status_code == 500
    assert error_of(response)["code"] == "internal_error"
    assert "Traceback" not in caplog.text
    assert "hark_dt_secret" not in caplog.text
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "RuntimeError" in errors[0] and "test_service.py" in errors[0]
    assert "/v1/realtime/client_secrets" in errors[0]


@pytest.mark.skipif(not HAVE_SIM, reason="hark_sim not available yet")
async def test_minted_key_opens_a_realtime_session(backend: Backend, upstream: Any) -> None:
    """The ek_ key from the backend opens a WebSocket session on the sim (session.created)."""
    import json

    import websockets

    token = backend.add("kitchen")
    async with httpx.AsyncClient(base_url=backend.url) as http:
        response = await http.post(MINT, json={}, headers={"Authorization": f"Bearer {token}"})
    key = response.json()["value"]
    url = f"{upstream.ws_url}?model=gpt-realtime"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        first = json.loads(await ws.recv())
    assert first["type"] == "session.created"


@pytest.mark.skipif(not HAVE_SIM, reason="hark_sim not available yet")
async def test_device_key_fetcher_end_to_end(backend: Backend, upstream: Any) -> None:
    """The device's own KeySource gets a key, opens a session; after revoke it is refused."""
    import json

    import websockets

    keys = pytest.importorskip("hark.net.keys")
    token = backend.add("kitchen")
    source = keys.KeySource(backend_url=f"{backend.url}{MINT}", device_token=token)
    grant = await source.fetch()
    url = f"{upstream.ws_url}?model=gpt-realtime"
    headers = {"Authorization": f"Bearer {grant.value}"}
    async with websockets.connect(url, additional_headers=headers) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
    backend.registry.revoke("kitchen", now_s=time.time())
    with pytest.raises(keys.KeyFetchError) as refused:
        await source.fetch()
    assert refused.value.status == 401
    assert refused.value.kind == "unauthorised"
    assert "revoked" in str(refused.value)


async def test_minter_works_without_aiohttp(upstream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without aiohttp the minter falls back to sharded httpx2 pools and still mints."""
    import sys

    from hark_backend.upstream import KeyMinter

    monkeypatch.setitem(sys.modules, "aiohttp", None)  # import aiohttp -> ImportError
    minter = KeyMinter(api_key=upstream.api_key, base_url=upstream.base_url, connections=20)
    try:
        assert len(minter._clients) == 3  # 20 connections in shards of at most 8
        answer = await minter.mint(ttl_s=30, session={"type": "realtime", "model": "gpt-realtime"})
    finally:
        await minter.aclose()
    assert ClientSecretCreateResponse.model_validate_json(answer).value.startswith("ek_")


def _raw_request(port: int, head: bytes, body: bytes = b"") -> bytes:
    """Send bytes exactly as given (no client-side validation) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_request_log_cannot_be_forged(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    """A path with an encoded newline and spaces stays one escaped field on one line."""
    forged = (
        "/x%0aFORGED%20request%20method=POST%20path=/v1/realtime/client_secrets"
        "%20status=200%20device=kitchen%20outcome=minted"
    )
    head = f"POST {forged} HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    with caplog.at_level(logging.INFO):
        answer = _raw_request(backend.server.port, head.encode())
    assert answer.startswith(b"HTTP/1.1 404")
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "\n" in m or "\r" in m]
    (line,) = [m for m in messages if m.startswith("request ")]
    assert "path=/x%0AFORGED%20request%20method=POST" in line
    assert "outcome=not_found" in line
    assert " outcome=minted" not in line and " status=200" not in line


def test_request_log_escapes_a_stored_device_name(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A name stored before names were checked strictly ('kitchen\\n') is escaped too."""
    token = backend.add("kitchen")
    backend.registry._execute(
        "UPDATE hark_devices SET name = ? WHERE name = ?", ("kitchen\nFORGED outcome=x", "kitchen")
    )
    with caplog.at_level(logging.INFO):
        assert backend.mint(token).status_code == 200
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("request ")]
    assert "device=kitchen%0AFORGED%20outcome=x " in line
    assert "\n" not in line


@pytest.mark.skipif(not HAVE_SIM, reason="hark_sim not available yet")
async def test_pinned_options_reach_the_session(make_backend: Any, upstream: Any) -> None:
    """Every pinnable option goes into the minted key and the session it opens starts with
    them (session.created), whatever the device asked for."""
    import json

    import websockets

    policy = Policy(
        model="gpt-realtime-2",
        pin=Pin(
            max_output_tokens=200,
            noise_reduction="near_field",
            speed=0.8,
            reasoning_effort="minimal",
            transcription_model="gpt-transcribe",
            transcription_keywords=["Nabu"],
            truncation="disabled",
        ),
        devices={"hall": Pin(turn_detection={"type": "server_vad", "silence_duration_ms": 900})},
    )
    backend = make_backend(policy=policy)
    token = backend.add("hall")
    asked = {"session": {"type": "realtime", "max_output_tokens": 4096}}
    response = backend.mint(token, asked)
    assert response.status_code == 200, response.text
    key = response.json()["value"]
    url = f"{upstream.ws_url}?model=gpt-realtime-2"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        created = json.loads(await ws.recv())
    session = created["session"]
    assert session["max_output_tokens"] == 200
    assert session["reasoning"] == {"effort": "minimal"}
    assert session["truncation"] == "disabled"
    assert session["audio"]["input"]["noise_reduction"] == {"type": "near_field"}
    assert session["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 900
    assert session["audio"]["input"]["transcription"]["keywords"] == ["Nabu"]
    assert session["audio"]["output"]["speed"] == 0.8
