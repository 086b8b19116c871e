"""Session options hark can set: the sim checks them like the API and honours what it can.

Honoured: max_output_tokens (the reply is cut and ends ``incomplete``), audio.output.speed
(the reply's audio is 1/speed as long), the voice (an espeak-ng variant per voice),
server_vad/semantic_vad timing (tests/sim/test_vad.py and the eagerness test here).
Accepted only: noise_reduction, truncation, reasoning, transcription prompt/keywords.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hark_sim import SimHandle, audio

from tests.sim.helpers import Client, audio_of, b64, connect, types_of

TEXT = "please repeat this rather long sentence back to me slowly"


async def _update(c: Client, session: dict[str, Any]) -> dict[str, Any]:
    await c.send({"type": "session.update", "session": {"type": "realtime", **session}})
    events = await c.until("session.updated")
    return dict(events[-1]["session"])


async def _refused(c: Client, session: dict[str, Any]) -> dict[str, Any]:
    await c.send({"type": "session.update", "session": {"type": "realtime", **session}})
    return await c.error()


async def _text_turn(c: Client, text: str = TEXT) -> list[dict[str, Any]]:
    """A typed user turn and its reply (the parrot answers with a tone as long as the text)."""
    await c.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": text}],
            },
        }
    )
    await c.send({"type": "response.create"})
    return await c.until("response.done")


EVERY_OPTION: dict[str, Any] = {
    "max_output_tokens": 4096,
    "truncation": {
        "type": "retention_ratio",
        "retention_ratio": 0.8,
        "token_limits": {"post_instructions": 8000},
    },
    "reasoning": {"effort": "xhigh"},
    "audio": {
        "input": {
            "noise_reduction": {"type": "far_field"},
            "transcription": {
                "model": "gpt-transcribe",
                "language": "de",
                "prompt": "Kitchen words.",
                "keywords": ["Spätzle"],
            },
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.7,
                "prefix_padding_ms": 200,
                "silence_duration_ms": 900,
                "idle_timeout_ms": 8000,
                "create_response": True,
                "interrupt_response": False,
            },
        },
        "output": {"voice": "cedar", "speed": 1.25},
    },
}


async def test_every_option_is_accepted_and_echoed(sim: SimHandle) -> None:
    """A reasoning model takes every option; session.updated shows them all applied."""
    async with connect(sim, model="gpt-realtime-2.1-mini") as c:
        session = await _update(c, EVERY_OPTION)
    assert session["max_output_tokens"] == 4096
    assert session["truncation"]["retention_ratio"] == 0.8
    assert session["reasoning"] == {"effort": "xhigh"}
    audio_in = session["audio"]["input"]
    assert audio_in["noise_reduction"] == {"type": "far_field"}
    assert audio_in["transcription"]["keywords"] == ["Spätzle"]
    assert audio_in["turn_detection"]["silence_duration_ms"] == 900
    assert session["audio"]["output"]["speed"] == 1.25


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        ({"reasoning": {"effort": "max"}}, "invalid_value", "session.reasoning.effort"),
        ({"reasoning": {"level": "low"}}, "unknown_parameter", "session.reasoning.level"),
        ({"max_output_tokens": 0}, "integer_below_min_value", "session.max_output_tokens"),
        ({"max_output_tokens": 5000}, "integer_above_max_value", "session.max_output_tokens"),
        ({"max_output_tokens": "max"}, "invalid_type", "session.max_output_tokens"),
        ({"truncation": "never"}, "invalid_value", "session.truncation"),
        (
            {"truncation": {"type": "retention_ratio", "retention_ratio": 2}},
            "decimal_above_max_value",
            "session.truncation.retention_ratio",
        ),
        (
            {"audio": {"input": {"noise_reduction": {"type": "mid_field"}}}},
            "invalid_value",
            "session.audio.input.noise_reduction.type",
        ),
        (
            {"audio": {"input": {"noise_reduction": {"type": "far_field", "strength": "a"}}}},
            "invalid_type",
            "session.audio.input.noise_reduction.strength",
        ),
        (
            {"audio": {"input": {"transcription": {"model": "whisper-1", "delay": "now"}}}},
            "invalid_value",
            "session.audio.input.transcription.delay",
        ),
        (
            {"audio": {"input": {"transcription": {"model": "whisper-1", "keywords": "a"}}}},
            "invalid_type",
            "session.audio.input.transcription.keywords",
        ),
        (
            {"audio": {"input": {"turn_detection": {"type": "semantic_vad", "threshold": 1}}}},
            "unknown_parameter",
            "session.audio.input.turn_detection.threshold",
        ),
        (
            {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 1.5}}}},
            "decimal_above_max_value",
            "session.audio.input.turn_detection.threshold",
        ),
        (
            {"audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 1}}}},
            "integer_below_min_value",
            "session.audio.input.turn_detection.idle_timeout_ms",
        ),
        (
            {"audio": {"output": {"speed": 2.0}}},
            "decimal_above_max_value",
            "session.audio.output.speed",
        ),
        ({"audio": {"output": {"voice": 7}}}, "invalid_type", "session.audio.output.voice"),
        (
            {"audio": {"output": {"voice": {}}}},
            "missing_required_parameter",
            "session.audio.output.voice.id",
        ),
    ],
)
async def test_bad_option_values_are_refused(
    sim: SimHandle, session: dict[str, Any], code: str, param: str
) -> None:
    """Each bad value is a non-fatal error naming the field, as the API answers."""
    async with connect(sim, model="gpt-realtime-2") as c:
        err = await _refused(c, session)
    assert (err["code"], err["param"]) == (code, param)


@pytest.mark.parametrize("model", ["gpt-realtime", "gpt-realtime-mini", "gpt-realtime-1.5"])
async def test_reasoning_needs_a_reasoning_model(sim: SimHandle, model: str) -> None:
    """reasoning is for the gpt-realtime-2 family; other models refuse it."""
    async with connect(sim, model=model) as c:
        err = await _refused(c, {"reasoning": {"effort": "low"}})
        assert (err["code"], err["param"]) == ("invalid_value", "session.reasoning")
        await _update(c, {"instructions": "still usable"})


async def test_transcription_options_need_their_models(sim: SimHandle) -> None:
    """keywords only with gpt-transcribe/gpt-live-transcribe; no prompt for gpt-realtime-whisper."""
    where = "session.audio.input.transcription"
    async with connect(sim) as c:
        for model in ("whisper-1", "gpt-4o-mini-transcribe"):
            bad = {"transcription": {"model": model, "keywords": ["x"]}}
            err = await _refused(c, {"audio": {"input": bad}})
            assert err["param"] == f"{where}.keywords"
        bad = {"transcription": {"model": "gpt-realtime-whisper", "prompt": "x"}}
        assert (await _refused(c, {"audio": {"input": bad}}))["param"] == f"{where}.prompt"
        for model in ("gpt-transcribe", "gpt-live-transcribe"):
            ok = {"transcription": {"model": model, "keywords": ["x"], "prompt": "y"}}
            await _update(c, {"audio": {"input": ok}})


def test_client_secrets_check_the_options_too(sim: SimHandle) -> None:
    """A key request with reasoning for a model that does not reason is a 400."""
    url = sim.base_url + "/realtime/client_secrets"
    auth = {"Authorization": f"Bearer {sim.api_key}"}
    body = {
        "session": {"type": "realtime", "model": "gpt-realtime", "reasoning": {"effort": "low"}}
    }
    resp = httpx.post(url, json=body, headers=auth)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "session.reasoning"
    body["session"]["model"] = "gpt-realtime-2"
    resp = httpx.post(url, json=body, headers=auth)
    assert resp.status_code == 200
    assert resp.json()["session"]["reasoning"] == {"effort": "low"}


async def test_max_output_tokens_cuts_the_reply(sim: SimHandle) -> None:
    """A reply over max_output_tokens stops there: status incomplete, reason max_output_tokens."""
    async with connect(sim) as c:
        full = await _text_turn(c)
        await _update(c, {"max_output_tokens": 12})
        cut = await _text_turn(c)
    assert full[-1]["response"]["status"] == "completed"
    done = cut[-1]["response"]
    assert done["status"] == "incomplete"
    assert done["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert done["max_output_tokens"] == 12
    assert done["usage"]["output_tokens"] <= 12
    assert 0 < len(audio_of(cut)) < len(audio_of(full)) / 2
    assert done["output"][0]["status"] == "incomplete"


async def test_max_output_tokens_of_one_response(sim: SimHandle) -> None:
    """response.create's own max_output_tokens wins over the session's for that reply."""
    async with connect(sim) as c:
        await _update(c, {"max_output_tokens": 5})
        await c.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": TEXT}],
                },
            }
        )
        await c.send({"type": "response.create", "response": {"max_output_tokens": "inf"}})
        events = await c.until("response.done")
    assert events[-1]["response"]["status"] == "completed"


@pytest.mark.parametrize("speed", [0.5, 1.5])
async def test_speed_sets_the_length_of_the_reply(sim: SimHandle, speed: float) -> None:
    """audio.output.speed: the same reply lasts 1/speed as long."""
    async with connect(sim) as c:
        normal = len(audio_of(await _text_turn(c)))
        await _update(c, {"audio": {"output": {"speed": speed}}})
        fast = len(audio_of(await _text_turn(c)))
    assert abs(fast / normal - 1 / speed) < 0.01


def test_each_voice_is_an_espeak_variant() -> None:
    """Voices map to distinct espeak-ng variants; a scenario's own variant or a custom voice
    keeps the scenario's."""
    variants = {audio.espeak_voice("en", v) for v in audio.VOICE_VARIANTS}
    assert len(variants) == len(audio.VOICE_VARIANTS)
    assert audio.espeak_voice("en", "cedar") == "en+m1"
    assert audio.espeak_voice("en+m7", "cedar") == "en+m7"
    assert audio.espeak_voice("de", {"id": "voice_1"}) == "de"


@pytest.mark.skipif(not audio.have_espeak(), reason="espeak-ng is not installed")
async def test_the_voice_changes_synthesised_speech(sim: SimHandle, tmp_path: Any) -> None:
    """A scripted reply sounds different in another voice (another espeak-ng variant)."""
    script = tmp_path / "s.toml"
    script.write_text('[[turns]]\nsay = "Good morning, the kettle is on."\n')
    sim.config.brain, sim.config.script = "script", script
    replies = []
    for voice in ("marin", "cedar"):
        async with connect(sim) as c:
            await _update(c, {"audio": {"output": {"voice": voice}}})
            replies.append(audio_of(await _text_turn(c, "hello")))
    assert replies[0] and replies[1] and replies[0] != replies[1]


async def _speech_stop_ms(sim: SimHandle, eagerness: str) -> int:
    speech = audio.speak("Hello there, what is the weather like today?")
    signal = audio.silence(300) + speech + audio.silence(2600)
    async with connect(sim) as c:
        td = {"type": "semantic_vad", "eagerness": eagerness, "create_response": False}
        await _update(c, {"audio": {"input": {"turn_detection": td}}})
        step = 40 * audio.BYTES_PER_MS
        for i in range(0, len(signal), step):
            await c.send({"type": "input_audio_buffer.append", "audio": b64(signal[i : i + step])})
        events = await c.until("input_audio_buffer.speech_stopped")
    assert "input_audio_buffer.speech_started" in types_of(events)
    return int(events[-1]["audio_end_ms"])


async def test_semantic_eagerness_sets_how_long_the_server_waits(sim: SimHandle) -> None:
    """semantic_vad, roughly: low waits longest after speech, high answers soonest."""
    low = await _speech_stop_ms(sim, "low")
    high = await _speech_stop_ms(sim, "high")
    assert low - high >= 1000
