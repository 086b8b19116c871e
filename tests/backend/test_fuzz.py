"""Schema-driven fuzzing (schemathesis) of the served OpenAPI schema: no 500s, no tracebacks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hark_backend.registry import RateLimit, Registry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.backend.servers import (
    HAVE_SIM,
    UPSTREAM_KEY,
    FakeUpstream,
    ServerThread,
    backend_settings,
    run_backend,
)

MAX_EXAMPLES = 25


def no_traceback(ctx: Any, response: Any, case: Any) -> bool | None:
    """No answer ever carries a Python traceback or a file path of ours."""
    text = response.text or ""
    assert "Traceback" not in text
    assert "hark_backend/" not in text
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    no_traceback,
]


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A backend (SQLite, generous limits) in front of an upstream; yields (url, token)."""
    db_url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / Path('devices.db')}"
    registry = Registry(db_url)
    registry.init_schema()
    token = registry.add("fuzzer", group=None, now_s=time.time())
    registry.close()

    def serve(upstream: Any) -> Iterator[tuple[str, str]]:
        settings_ = backend_settings(
            db_url, upstream, rate_limit=RateLimit(100_000, 60.0), max_body_bytes=4096
        )
        with run_backend(settings_) as server:
            yield server.url, token

    if HAVE_SIM:
        from hark_sim import SimConfig, start_sim

        with start_sim(SimConfig(api_key=UPSTREAM_KEY, brain="parrot", realtime_factor=0.0)) as sim:
            yield from serve(sim)
        return
    fake = FakeUpstream()
    with ServerThread(fake.app()) as upstream_server:
        fake.base_url = f"{upstream_server.url}/v1"
        yield from serve(fake)


def _fuzz(base_url: str, headers: dict[str, str]) -> None:
    """Drive positive and negative cases for every operation through the real server.

    (schemathesis' pytest loader does not work with pytest 9, so ``@given`` is used directly.)
    """
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    cases = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )

    @given(case=cases)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()


def test_fuzz_without_a_device_token(fuzz_target: tuple[str, str]) -> None:
    """Whatever the schema allows (or nearly), an anonymous caller never causes a 5xx bug."""
    _fuzz(fuzz_target[0], {})


def test_fuzz_with_a_device_token(fuzz_target: tuple[str, str]) -> None:
    """With a valid token, fuzzed bodies reach policy and upstream; still no 500, no traceback."""
    _fuzz(fuzz_target[0], {"Authorization": f"Bearer {fuzz_target[1]}"})
