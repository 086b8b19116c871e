"""The agent layer end to end: app, core, link and hark_sim's script brain, with typed turns.

The glue here (``AgentRig``) is the one the daemon needs: the runner is the app's tool
runner, a handoff updates the core's session and queues one ``session.update`` before
the tool output, every handled event feeds the history, the runner and the guardrail
monitor, and a tripped guardrail calls ``app.interrupt(say=fallback)``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hark.agents.agent import RealtimeAgent, ToolRunner
from hark.agents.guardrails import GuardrailMonitor
from hark.agents.tools import function_tool
from hark.conversation import Conversation, Settings
from hark.events import (
    AudioDelta,
    ButtonPressed,
    ButtonReleased,
    Event,
    ItemTruncated,
    LinkUp,
    PlaybackStopped,
    SessionConfig,
    TextRequested,
    UpdateSession,
)
from hark.history import History
from hark.net.keys import Backoff
from hark.net.link import WebSocketLink
from hark.service.loop import App
from hark.testing import NullMicrophone, RecordingIndicator, WavSpeaker, until
from hark_sim import SimConfig, SimHandle, start_sim

from tests.device.test_agent import load_example

pytestmark = pytest.mark.slow


@dataclasses.dataclass
class SimRun:
    sim: SimHandle

    def received(self, session: int = 0) -> list[dict[str, Any]]:
        return list(self.sim.sessions[session].received)

    def outputs(self, session: int = 0) -> list[str]:
        return [
            e["item"]["output"]
            for e in self.received(session)
            if e["type"] == "conversation.item.create"
            and e["item"]["type"] == "function_call_output"
        ]


@pytest.fixture
def scenario(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(textwrap.dedent(request.param))
    return path


def sim_for(script: Path, realtime_factor: float = 0.0) -> SimHandle:
    return start_sim(
        SimConfig(
            api_key="sk-sim-test",
            brain="script",
            script=script,
            realtime_factor=realtime_factor,
        )
    )


class AgentRig:
    """The daemon's agent glue around a real app, core and link (fake mic, LED)."""

    def __init__(
        self,
        sim: SimHandle,
        agent: RealtimeAgent,
        *,
        history: History | None = None,
        speaker_speed: float = 0.0,
        debounce_chars: int = 100,
        on_approval: Callable[[ToolRunner, str], None] | None = None,
    ) -> None:
        self.history = history or History()
        self.link = WebSocketLink(
            backend_url=sim.base_url + "/realtime/client_secrets",
            device_token=sim.api_key,
            realtime_url=sim.ws_url,
            backoff=Backoff(initial_s=0.02, max_s=0.1, slow_s=0.1),
            replay=self.history.replay,
        )
        self.events: list[Event] = []
        self.runner = ToolRunner(
            agent,
            base=SessionConfig(voice="marin"),
            on_agent_changed=self._agent_changed,
            on_approval_required=lambda p: on_approval and on_approval(self.runner, p.call_id),
        )
        self.conversation = Conversation(Settings(session=self.runner.session_config()))
        # The core owns the effective session (turn detection); handoffs keep it.
        self.runner.base = self.conversation.session_config
        self.speaker = WavSpeaker(None, speed=speaker_speed)
        self.app = App(
            self.conversation,
            self.link,
            NullMicrophone(),
            self.speaker,
            RecordingIndicator(),
            tools=self.runner,
        )
        self.guardrails = GuardrailMonitor(
            lambda: self.runner.agent,
            debounce_chars=debounce_chars,
            fallback="Let's keep it friendly.",
        )
        self.app.add_listener(self._observe)

    def _agent_changed(self, agent: RealtimeAgent, config: SessionConfig) -> None:
        self.conversation.session_config = config  # the link opens later sessions with it
        self.link.send(UpdateSession(config))  # queued before the tool's output

    def _observe(self, event: Event, commands: Any) -> None:
        self.events.append(event)
        self.history.observe(event)
        self.runner.observe(event)
        tripped = self.guardrails.feed(event)
        if tripped is not None:
            self.app.interrupt(say=tripped.fallback)

    async def __aenter__(self) -> AgentRig:
        await self.app.start()
        await until(lambda: any(isinstance(e, LinkUp) for e in self.events))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.app.shutdown()

    async def say(self, text: str, timeout_s: float = 30.0) -> None:
        """A typed turn (``hark say``); returns once the reply has finished playing."""
        seen = self.conversation.turns_completed
        self.app.post(TextRequested(text))
        await until(lambda: self.conversation.turns_completed > seen, timeout_s)


KITCHEN = """
    [[turns]]
    say = "Adding eggs."
    calls = [{ name = "add_to_shopping_list", arguments = { item = "eggs", quantity = 6 } }]
    after = "Done: {output}"

    [[turns]]
    calls = [
        { name = "convert_weight", arguments = { amount = -1, from_unit = "lb", to_unit = "g" } },
    ]
    after = "Sorry: {output}"

    [[turns]]
    calls = [{ name = "transfer_to_recipe_helper", arguments = {} }]
    after = "Recipe helper here."
"""


@pytest.mark.parametrize("scenario", [KITCHEN], indirect=True)
async def test_kitchen_example_tools_and_handoff_against_the_sim(scenario: Path) -> None:
    """The README example: a tool call, a bad-argument call and a handoff, over the real stack."""
    example = load_example()
    with sim_for(scenario) as sim:
        async with AgentRig(sim, example.agent) as rig:
            await rig.say("Put six eggs on the list.")
            await rig.say("Convert minus one pound to grams.")
            await rig.say("Help me bake bread.")
            items = [(i.type, i.role, i.text or i.output) for i in rig.history.items]
        run = SimRun(sim)
        outputs = run.outputs()
        assert outputs[0] == "added; the list has 1 entries"
        assert "invalid arguments for convert_weight" in json.loads(outputs[1])["error"]
        assert json.loads(outputs[2]) == {"assistant": "Recipe helper"}
        assert example.shopping_list == ["6 x eggs"]

        # The reply continued after each output, speaking it.
        spoken = [text for kind, role, text in items if role == "assistant"]
        assert spoken[:2] == ["Adding eggs.", "Done: added; the list has 1 entries"]
        assert spoken[-1] == "Recipe helper here."
        assert any("Sorry:" in (s or "") and "invalid arguments" in (s or "") for s in spoken)

        # The handoff: ONE session.update with the new agent, before the transfer's output.
        received = run.received()
        transfer_at = next(
            n
            for n, e in enumerate(received)
            if e["type"] == "conversation.item.create"
            and e["item"].get("output") == '{"assistant": "Recipe helper"}'
        )
        previous_output = max(
            n
            for n, e in enumerate(received[:transfer_at])
            if e["type"] == "conversation.item.create"
        )
        updates = [
            e for e in received[previous_output:transfer_at] if e["type"] == "session.update"
        ]
        assert len(updates) == 1
        session = updates[0]["session"]
        assert session["instructions"].startswith("You guide a cook through a recipe")
        assert [t["name"] for t in session["tools"]] == ["convert_weight", "transfer_to_kitchen"]
        assert session["audio"]["output"]["voice"] == "marin"  # the model had spoken already
        assert rig.conversation.session_config.instructions == session["instructions"]
        assert received[transfer_at + 1]["type"] == "response.create"


@function_tool(needs_approval=True)
def unlock_door() -> str:
    """Unlock the front door."""
    return "unlocked"


APPROVAL = """
    [[turns]]
    calls = [{ name = "unlock_door", arguments = {} }]
    after = "Result: {output}"

    [[turns]]
    calls = [{ name = "unlock_door", arguments = {} }]
    after = "Result: {output}"
"""


@pytest.mark.parametrize("scenario", [APPROVAL], indirect=True)
async def test_tool_needing_approval_approved_then_refused(scenario: Path) -> None:
    """The first call is approved (runs), the second refused (the model hears it was declined)."""
    agent = RealtimeAgent(name="Door", instructions="You guard the door.", tools=[unlock_door])
    decisions = iter([True, False])

    def press(runner: ToolRunner, call_id: str) -> None:
        decide = runner.approve if next(decisions) else runner.reject
        asyncio.get_running_loop().call_soon(decide, call_id)  # the owner's button press

    with sim_for(scenario) as sim:
        async with AgentRig(sim, agent, on_approval=press) as rig:
            await rig.say("Open the door.")
            await rig.say("Open it again.")
            spoken = [i.text for i in rig.history.items if i.role == "assistant"]
        outputs = SimRun(sim).outputs()
    assert outputs[0] == "unlocked"
    assert json.loads(outputs[1]) == {
        "error": "the user declined to run unlock_door; it was not run"
    }
    assert spoken[0] == "Result: unlocked"
    assert spoken[1] is not None and "declined" in spoken[1]


LONG_REPLY = (
    "Well that is a damn fine question and I could talk about it for quite a long while yet "
    "because there is so much to say about bread"
)
GUARDRAIL = f"""
    [[turns]]
    say = "{LONG_REPLY}"

    [[turns]]
    say = "Let's keep it friendly."
"""


@pytest.mark.parametrize("scenario", [GUARDRAIL], indirect=True)
async def test_guardrail_trips_mid_reply(scenario: Path) -> None:
    """A tripped guardrail stops playback, cancels, truncates to what was heard, says a fallback."""
    example = load_example()
    with sim_for(scenario, realtime_factor=1.0) as sim:
        async with AgentRig(sim, example.agent, speaker_speed=1.0, debounce_chars=20) as rig:
            await rig.say("Tell me about bread.")
            await until(lambda: any(i.text == "Let's keep it friendly." for i in rig.history.items))
            assert rig.guardrails.trips == 1
        received = SimRun(sim).received()
    kinds = [e["type"] for e in received]
    cancel_at = kinds.index("response.cancel")
    truncate = next(e for e in received if e["type"] == "conversation.item.truncate")
    fallback = [
        e
        for e in received[cancel_at:]
        if e["type"] == "response.create" and "instructions" in e.get("response", {})
    ]
    assert fallback[0]["response"]["instructions"].endswith("Let's keep it friendly.")
    cut = rig.history.find(truncate["item_id"])
    assert cut is not None and cut.heard_ms == truncate["audio_end_ms"]
    assert cut.status == "incomplete"
    assert cut.text is not None and cut.text.endswith("…")
    assert len(cut.text) < 100  # only what was heard, not the whole sentence


GREETER = """
    fallback = "Hello."
"""


@pytest.mark.parametrize("scenario", [GREETER], indirect=True)
async def test_history_survives_rotation_and_restart(scenario: Path, tmp_path: Path) -> None:
    """Items persist across a session rotation and a daemon restart, and are replayed."""
    path = tmp_path / "history.jsonl"
    agent = RealtimeAgent(name="Host", instructions="Greet people.")
    with sim_for(scenario) as sim:
        async with AgentRig(sim, agent, history=History(path=path)) as rig:
            await rig.say("I am Ada.")
            links_up = sum(isinstance(e, LinkUp) for e in rig.events)
            rig.link.rotate()
            await until(lambda: sum(isinstance(e, LinkUp) for e in rig.events) > links_up)
            await rig.say("Are you there?")
            rig.history.close()
        texts = [i.text for i in History(path=path).items]
        assert texts == ["I am Ada.", "Hello.", "Are you there?", "Hello."]
        # Restart: a new daemon loads the file and replays it into its first session.
        restarted = History(path=path)
        async with AgentRig(sim, agent, history=restarted) as rig:
            await rig.say("Remember me?")
            rig.history.close()
        replayed = [
            e["item"]["content"][0]["text"]
            for e in sim.sessions[-1].received
            if e["type"] == "conversation.item.create" and e["item"]["type"] == "message"
        ]
        assert replayed[:4] == texts
        assert [i.text for i in History(path=path).items][-2:] == ["Remember me?", "Hello."]


@pytest.mark.parametrize("scenario", [GUARDRAIL], indirect=True)
async def test_barge_in_keeps_the_reply_as_heard(scenario: Path) -> None:
    """A button barge-in mid-reply: the history keeps the words heard, marked as cut off."""
    agent = RealtimeAgent(name="Talker", instructions="Talk.")
    with sim_for(scenario, realtime_factor=1.0) as sim:
        async with AgentRig(sim, agent, speaker_speed=1.0) as rig:
            rig.app.post(TextRequested("Tell me about bread."))
            await until(lambda: sum(isinstance(e, AudioDelta) for e in rig.events) >= 8)
            rig.app.post(ButtonPressed())
            await until(lambda: any(isinstance(e, PlaybackStopped) for e in rig.events))
            rig.app.post(ButtonReleased(0.5))
            await until(lambda: any(isinstance(e, ItemTruncated) for e in rig.events))
            truncated = next(e for e in rig.events if isinstance(e, ItemTruncated))
            cut = rig.history.find(truncated.item_id)
    assert cut is not None and cut.role == "assistant"
    assert cut.heard_ms == truncated.audio_end_ms and cut.status == "incomplete"
    assert cut.text is not None and cut.text.endswith("…")
    assert LONG_REPLY.startswith(cut.text[:-1])
    assert len(cut.text) < len(LONG_REPLY)
