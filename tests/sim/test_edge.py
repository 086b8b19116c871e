"""Hostile input at the edge: non-finite numbers, deep nesting, misaligned PCM.

Each must be an error in OpenAI's envelope naming what was wrong, never a 500, a
traceback or a dropped socket, and the session must stay usable afterwards.
"""

from __future__ import annotations

import httpx
import pytest
from hark_sim import SimHandle, audio

from tests.sim.helpers import MANUAL_TURNS, b64, connect

DEEP = 3000


def _post_raw(sim: SimHandle, body: str) -> httpx.Response:
    return httpx.post(
        sim.base_url + "/realtime/client_secrets",
        content=body.encode(),
        headers={"Authorization": f"Bearer {sim.api_key}", "Content-Type": "application/json"},
    )


def _envelope(resp: httpx.Response) -> dict[str, object]:
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    err: dict[str, object] = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    return err


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            '{"session": {"type": "realtime", "max_output_tokens": NaN}}',
            "session.max_output_tokens",
        ),
        (
            '{"session": {"type": "realtime", "audio": {"output": {"speed": Infinity}}}}',
            "session.audio.output.speed",
        ),
        (
            '{"session": {"type": "realtime", "audio": {"input": {"turn_detection": '
            '{"type": "server_vad", "threshold": -Infinity}}}}}',
            "session.audio.input.turn_detection.threshold",
        ),
        ('{"expires_after": {"anchor": "created_at", "seconds": 1e999}}', "expires_after.seconds"),
        (
            '{"session": {"type": "realtime", "tools": [{"type": "function", "name": "f", '
            '"parameters": {"maximum": NaN}}]}}',
            "session.tools[0].parameters.maximum",
        ),
    ],
)
def test_client_secrets_refuses_non_finite_numbers(sim: SimHandle, body: str, param: str) -> None:
    """NaN, ±Infinity and overflowing numbers are a 400 invalid_json naming the field."""
    resp = _post_raw(sim, body)
    assert resp.status_code == 400
    err = _envelope(resp)
    assert err["code"] == "invalid_json"
    assert err["param"] == param
    assert param in str(err["message"])
    assert not sim.state.keys  # nothing was minted


def test_client_secrets_refuses_deep_nesting(sim: SimHandle) -> None:
    """A 3000-deep body is a 400 invalid_json in the envelope, not a plain-text 500."""
    for body in (
        "[" * DEEP + "]" * DEEP,
        '{"session": ' + '{"a": ' * DEEP + "1" + "}" * DEEP + "}",
    ):
        resp = _post_raw(sim, body)
        assert resp.status_code == 400
        err = _envelope(resp)
        assert err["code"] == "invalid_json"
        assert "nested" in str(err["message"])
    assert _post_raw(sim, "{}").status_code == 200  # still serving


def test_brackets_inside_strings_are_not_nesting(sim: SimHandle) -> None:
    """Only structure counts toward the nesting cap: brackets in a string are text."""
    text = "[{" * DEEP + '\\"' + "]}" * DEEP
    body = '{"session": {"type": "realtime", "instructions": "' + text + '"}}'
    resp = _post_raw(sim, body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["session"]["instructions"] == text.replace('\\"', '"')


async def test_session_update_refuses_non_finite_numbers(sim: SimHandle) -> None:
    """NaN in a session.update is an invalid_json error naming the field; the socket stays."""
    async with connect(sim) as c:
        await c.ws.send(
            '{"type": "session.update", "event_id": "evt_nan", "session": '
            '{"type": "realtime", "audio": {"output": {"speed": NaN}}}}'
        )
        err = await c.error()
        assert err["code"] == "invalid_json"
        assert err["param"] == "session.audio.output.speed"
        assert err["event_id"] == "evt_nan"
        await c.send({"type": "session.update", "session": {"type": "realtime"}})
        updated = (await c.until("session.updated"))[-1]
        assert updated["session"]["audio"]["output"]["speed"] == 1.0
    assert sim.sessions[0].received[-1]["type"] == "session.update"


async def test_deep_event_is_an_error_not_a_dropped_socket(sim: SimHandle) -> None:
    """A 3000-deep event is answered with invalid_json and the session stays usable."""
    async with connect(sim) as c:
        await c.ws.send('{"type": "session.update", "session": ' + "[" * DEEP + "]" * DEEP + "}")
        err = await c.error()
        assert err["code"] == "invalid_json"
        assert "nested" in err["message"]
        await c.send({"type": "input_audio_buffer.clear"})
        assert (await c.recv())["type"] == "input_audio_buffer.cleared"
    assert sim.sessions[0].wait_closed()
    assert sim.sessions[0].closed_code == 1000


async def test_odd_length_pcm_is_refused(sim: SimHandle) -> None:
    """An append that splits a PCM16 sample is an error and appends nothing."""
    async with connect(sim) as c:
        await c.send({"type": "session.update", "session": MANUAL_TURNS})
        await c.until("session.updated")
        pcm = audio.silence(100)
        await c.send(
            {"type": "input_audio_buffer.append", "event_id": "odd", "audio": b64(pcm + b"\x00")}
        )
        err = await c.error()
        assert (err["code"], err["param"], err["event_id"]) == ("invalid_value", "audio", "odd")
        await c.send({"type": "input_audio_buffer.commit"})
        assert (await c.error())["code"] == "input_audio_buffer_commit_empty"
        await c.send({"type": "input_audio_buffer.append", "audio": b64(pcm)})
        await c.send({"type": "input_audio_buffer.commit"})
        assert (await c.recv())["type"] == "input_audio_buffer.committed"


async def test_g711_takes_any_length(sim: SimHandle) -> None:
    """G.711 has one byte per sample: an odd length is a whole number of samples."""
    session = {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}
    async with connect(sim) as c:
        await c.send({"type": "session.update", "session": session})
        await c.until("session.updated")
        await c.send({"type": "input_audio_buffer.append", "audio": b64(b"\xff" * 801)})
        await c.send({"type": "input_audio_buffer.commit"})
        assert (await c.recv())["type"] == "input_audio_buffer.committed"
