"""End to end: session options set in hark.toml reach hark_sim's session and take effect.

The daemon is built from a config (``build_with_fake_audio``) against hark_sim on loopback;
what counts is the session the sim ends up with (its last ``session.updated``) and the
replies it then gives.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hark.config import parse
from hark.demo import build_with_fake_audio
from hark.service.wiring import Daemon
from hark.testing import until
from hark_sim import SimConfig, SimHandle, start_sim

from tests.device.test_daemon import Running

pytestmark = pytest.mark.slow

HANDS_FREE = '[trigger]\nmode = "vad"\n'  # no button: no GPIO needed
EVERY_OPTION = """
    [trigger]
    mode = "vad"
    end_of_turn = "server"
    [agent]
    voice = "cedar"
    [realtime]
    model = "gpt-realtime-2.1-mini"
    reasoning_effort = "low"
    max_output_tokens = 8
    truncation = { retention_ratio = 0.75, post_instructions_tokens = 5000 }
    noise_reduction = "far_field"
    speed = 1.25
    transcription_model = "gpt-transcribe"
    language = "en"
    transcription_prompt = "A kitchen."
    transcription_keywords = ["Nabu"]
    [realtime.turn_detection]
    threshold = 0.7
    prefix_padding_ms = 250
    silence_duration_ms = 800
    idle_timeout_ms = 9000
"""


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimHandle]:
    script = tmp_path / "scenario.toml"
    script.write_text('fallback = "The kettle is on and the tea will be ready in a minute."\n')
    config = SimConfig(api_key="sk-test-options", brain="script", script=script, realtime_factor=0)
    with start_sim(config) as handle:
        yield handle


def build(sim: SimHandle, extra: str) -> Daemon:
    """The daemon from ``extra`` TOML, pointed at the sim (its [realtime] gets the sim's url)."""
    extra = textwrap.dedent(extra)
    here = f'[realtime]\nurl = "{sim.ws_url}"\n'
    extra = extra.replace("[realtime]\n", here, 1) if "[realtime]\n" in extra else here + extra
    config = parse(
        f'[backend]\nurl = "{sim.base_url}/realtime/client_secrets"\n'
        f"[history]\nenabled = false\n{extra}"
    )
    return build_with_fake_audio(config, sim.api_key, None)


async def applied(sim: SimHandle) -> dict[str, Any]:
    """The session the sim runs now: its last session.updated (recorded once written)."""

    def updated() -> list[dict[str, Any]]:
        return [e for e in sim.sessions[-1].sent if e["type"] == "session.updated"]

    await until(lambda: bool(updated()))
    return dict(updated()[-1]["session"])


def responses(sim: SimHandle) -> list[dict[str, Any]]:
    return [e["response"] for e in sim.sessions[-1].sent if e["type"] == "response.done"]


async def test_every_configured_option_reaches_the_session(sim: SimHandle) -> None:
    """Each [realtime] option is in the sim's session, and the reply honours them."""
    async with Running(build(sim, EVERY_OPTION)) as running:
        session = await applied(sim)
        await running.say("Is the kettle on?")
    assert sim.sessions[-1].model == "gpt-realtime-2.1-mini"
    assert session["reasoning"] == {"effort": "low"}
    assert session["max_output_tokens"] == 8
    assert session["truncation"] == {
        "type": "retention_ratio",
        "retention_ratio": 0.75,
        "token_limits": {"post_instructions": 5000},
    }
    audio_in = session["audio"]["input"]
    assert audio_in["noise_reduction"] == {"type": "far_field"}
    assert audio_in["transcription"] == {
        "model": "gpt-transcribe",
        "language": "en",
        "prompt": "A kitchen.",
        "keywords": ["Nabu"],
    }
    detection = audio_in["turn_detection"]
    assert detection["type"] == "server_vad"
    assert (detection["threshold"], detection["prefix_padding_ms"]) == (0.7, 250)
    assert (detection["silence_duration_ms"], detection["idle_timeout_ms"]) == (800, 9000)
    assert detection["interrupt_response"] is False  # the device does barge-in itself
    assert session["audio"]["output"]["voice"] == "cedar"
    assert session["audio"]["output"]["speed"] == 1.25
    reply = responses(sim)[-1]
    assert reply["status"] == "incomplete"  # 8 tokens: the reply was cut
    assert reply["status_details"]["reason"] == "max_output_tokens"


async def test_unset_options_are_left_to_the_server(sim: SimHandle) -> None:
    """A plain config sends none of the optional fields: the session keeps its defaults
    (or what a key backend pinned)."""
    async with Running(build(sim, HANDS_FREE)) as running:
        await running.say("Is the kettle on?")
    sent = [e for e in sim.sessions[-1].received if e["type"] == "session.update"][-1]["session"]
    for field in ("max_output_tokens", "truncation", "reasoning"):
        assert field not in sent
    assert "noise_reduction" not in sent["audio"]["input"]
    assert "speed" not in sent["audio"]["output"]
    session = await applied(sim)
    assert (session["max_output_tokens"], session["truncation"]) == ("inf", "auto")
    assert responses(sim)[-1]["status"] == "completed"


async def test_speed_shortens_the_reply_the_device_plays(sim: SimHandle) -> None:
    """speed = 1.5: the same scripted reply reaches the speaker in 2/3 of the audio."""
    lengths = []
    for extra in (HANDS_FREE, HANDS_FREE + "[realtime]\nspeed = 1.5\n"):
        async with Running(build(sim, extra)) as running:
            await running.say("Is the kettle on?")
        deltas = [e for e in sim.sessions[-1].sent if e["type"] == "response.output_audio.delta"]
        lengths.append(sum(len(e["delta"]) for e in deltas))
    assert abs(lengths[1] / lengths[0] - 2 / 3) < 0.02
