"""The server refuses hark's session.update: the device says so, fails closed, never hangs.

A Realtime server that does not know a field hark sends (as the GA switch did to every
beta client) answers ``unknown_parameter`` and keeps the socket open, with the session
still on the server's defaults. hark_sim's ``unknown_session_fields`` fault plays that
server; the real app, core and link run against it.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest
from hark.conversation import Conversation, Settings
from hark.events import SessionConfig, TextRequested
from hark.net.keys import Backoff
from hark.net.link import WebSocketLink
from hark.service.loop import App
from hark.testing import (
    NullMicrophone,
    RecordingIndicator,
    RecordingNotifier,
    WavSpeaker,
    until,
)
from hark_sim import SimConfig, start_sim

from tests.device.test_agent import load_example
from tests.device.test_agent_sim import AgentRig, sim_for

pytestmark = pytest.mark.slow


async def test_refused_session_settings_fail_closed(caplog: pytest.LogCaptureFixture) -> None:
    """unknown_parameter on the settings a session opens with: the device never talks
    through a session on the server's defaults (none of the agent's instructions, tools or
    voice). The link closes it as a config failure; the log names the field, the LED shows
    the error, the status line says so; a typed turn meanwhile never reaches the server."""
    caplog.set_level(logging.INFO)
    sim_cfg = SimConfig(api_key="sk-sim-test", realtime_factor=0.0)
    sim_cfg.faults.unknown_session_fields = {"tool_choice"}
    with start_sim(sim_cfg) as sim:
        link = WebSocketLink(
            backend_url=sim.base_url + "/realtime/client_secrets",
            device_token=sim.api_key,
            realtime_url=sim.ws_url,
            backoff=Backoff(initial_s=0.02, max_s=0.1, slow_s=0.1),
        )
        settings = Settings(session=SessionConfig(voice="marin"), error_hold_s=0.2)
        conversation = Conversation(settings)
        led, status = RecordingIndicator(), RecordingNotifier()
        app = App(
            conversation, link, NullMicrophone(), WavSpeaker(None, speed=0.0), led, notifier=status
        )
        await app.start()
        try:
            await until(lambda: "error" in led.shown)
            await until(lambda: any("session.tool_choice" in line for line in status.statuses))
            error = conversation.last_error or ""
            assert "refused the session settings" in error and "session.tool_choice" in error
            warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert any("session.tool_choice" in r.getMessage() for r in warned)
            app.post(TextRequested("Are you there?"))
            await until(lambda: len(sim.sessions) >= 3)  # retried (slowly, in real life)
            assert not conversation.connected
            assert conversation.turns_completed == 0
        finally:
            await app.shutdown()
    for session in sim.sessions:
        assert {e["type"] for e in session.received} <= {"session.update"}  # (or nothing yet)
        assert not any(e["type"] == "session.updated" for e in session.sent)


HANDOFF = """
    [[turns]]
    calls = [{ name = "transfer_to_recipe_helper", arguments = {} }]
    after = "Recipe helper here."

    [[turns]]
    say = "Still here."
"""


async def test_refused_handoff_update_mid_turn_does_not_hang(tmp_path: Path) -> None:
    """A handoff's session.update refused mid-turn: the error shows, the turn ends, and the
    next turn is answered."""
    script = tmp_path / "handoff.toml"
    script.write_text(textwrap.dedent(HANDOFF))
    with sim_for(script) as sim:
        async with AgentRig(sim, load_example().agent) as rig:
            led = rig.app.indicator
            assert isinstance(led, RecordingIndicator)
            sim.faults.unknown_session_fields = {"tool_choice"}  # from the handoff on
            rig.app.post(TextRequested("Help me bake bread."))
            await until(lambda: "session.tool_choice" in (rig.conversation.last_error or ""))
            await until(lambda: rig.conversation.phase.value in ("idle", "error"))
            assert "error" in led.shown
            sim.faults.unknown_session_fields = set()
            await rig.say("Are you still there?")  # returns once the reply has played
            assert led.shown[-1] == "idle"
    refused = [e for e in sim.sessions[0].sent if e["type"] == "error"]
    assert [e["error"]["param"] for e in refused][:1] == ["session.tool_choice"]
