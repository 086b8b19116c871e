"""POST /v1/realtime/client_secrets: the GA response shape, expiry bounds and error bodies."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from hark_sim import SimHandle

from tests.sim.helpers import check_client_secret


def _post(
    sim: SimHandle, body: Any = None, key: str | None = "standard", **headers: str
) -> httpx.Response:
    hdrs = dict(headers)
    if key is not None:
        hdrs["Authorization"] = f"Bearer {sim.api_key if key == 'standard' else key}"
    return httpx.post(sim.base_url + "/realtime/client_secrets", json=body, headers=hdrs)


def test_default_expiry_is_600_s(sim: SimHandle) -> None:
    """Without expires_after the key lives 600 s; the body fits ClientSecretCreateResponse."""
    before = int(time.time())
    resp = _post(sim, {})
    assert resp.status_code == 200
    body = resp.json()
    check_client_secret(body)
    assert body["value"].startswith("ek_")
    assert before + 600 <= body["expires_at"] <= int(time.time()) + 600
    assert body["session"]["id"].startswith("sess_")
    assert body["session"]["object"] == "realtime.session"


def test_expires_after_is_honoured(sim: SimHandle) -> None:
    """expires_after.seconds sets expires_at; the session config given is echoed back."""
    body = _post(
        sim,
        {
            "expires_after": {"anchor": "created_at", "seconds": 7200},
            "session": {"type": "realtime", "model": "gpt-realtime", "instructions": "Hi."},
        },
    ).json()
    check_client_secret(body)
    assert body["expires_at"] - time.time() > 7000
    assert body["session"]["instructions"] == "Hi."


@pytest.mark.parametrize(
    ("seconds", "code"), [(9, "integer_below_min_value"), (7201, "integer_above_max_value")]
)
def test_expiry_bounds(sim: SimHandle, seconds: int, code: str) -> None:
    """seconds outside 10–7200 is a 400 with the OpenAI error envelope."""
    resp = _post(sim, {"expires_after": {"anchor": "created_at", "seconds": seconds}})
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["code"] == code and err["param"] == "expires_after.seconds"
    assert set(err) == {"message", "type", "param", "code"}


def test_bad_anchor(sim: SimHandle) -> None:
    """Only anchor created_at is supported."""
    resp = _post(sim, {"expires_after": {"anchor": "now", "seconds": 60}})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_value"


def test_unknown_session_field(sim: SimHandle) -> None:
    """An unknown session field is a 400 unknown_parameter naming it."""
    resp = _post(sim, {"session": {"type": "realtime", "bogus": 1}})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "session.bogus"


def test_missing_and_wrong_key(sim: SimHandle) -> None:
    """No bearer or a wrong one is a 401."""
    assert _post(sim, {}, key=None).status_code == 401
    resp = _post(sim, {}, key="sk-wrong")
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"


def test_ephemeral_key_cannot_mint(sim: SimHandle) -> None:
    """Only the standard key may mint keys."""
    ek = _post(sim, {}).json()["value"]
    assert _post(sim, {}, key=ek).status_code == 401


def test_beta_shapes_are_refused(sim: SimHandle) -> None:
    """A beta-shaped body, the beta header or the beta endpoint get beta_api_shape_disabled."""
    resp = _post(sim, {"model": "gpt-realtime", "voice": "alloy", "modalities": ["audio"]})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "beta_api_shape_disabled"
    resp = _post(sim, {}, **{"OpenAI-Beta": "realtime=v1"})
    assert resp.json()["error"]["code"] == "beta_api_shape_disabled"
    resp = httpx.post(
        sim.base_url + "/realtime/sessions",
        json={"model": "gpt-realtime"},
        headers={"Authorization": f"Bearer {sim.api_key}"},
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "beta_api_shape_disabled"


def test_bad_json_body(sim: SimHandle) -> None:
    """A body that is not JSON is a 400."""
    resp = httpx.post(
        sim.base_url + "/realtime/client_secrets",
        content=b"{nope",
        headers={"Authorization": f"Bearer {sim.api_key}", "Content-Type": "application/json"},
    )
    assert resp.status_code == 400
