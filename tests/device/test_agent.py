"""Agents: session configs, dynamic instructions, the tool runner, handoffs, approval, config."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hark import config as hark_config
from hark.agents.agent import (
    AgentLoadError,
    PendingApproval,
    RealtimeAgent,
    ToolRunner,
    agent_from_config,
    handoff,
    load_object,
)
from hark.agents.tools import EndConversation, RunContext, function_tool
from hark.events import AudioDelta, SessionConfig, SessionCreated, ToolSpec, TurnDetection
from hark.testing import NullSpeaker, RecordingSwitch

ROOT = Path(__file__).resolve().parents[2]


@function_tool
def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
        a: First.
        b: Second.
    """
    return a + b


@function_tool(needs_approval=True)
def open_garage() -> str:
    """Open the garage door."""
    return "opened"


@function_tool
def goodbye() -> EndConversation:
    """End the chat."""
    return EndConversation()


BASE = SessionConfig(
    model="gpt-realtime", voice="marin", turn_detection=TurnDetection(type="semantic_vad")
)


def make_pair() -> tuple[RealtimeAgent, RealtimeAgent]:
    billing = RealtimeAgent(
        name="Billing Desk",
        instructions="You handle bills.",
        handoff_description="Questions about invoices.",
        tools=[open_garage],
        voice="cedar",
    )
    triage = RealtimeAgent(
        name="Triage", instructions="You route calls.", tools=[add], handoffs=[billing]
    )
    return triage, billing


def test_session_config_carries_instructions_voice_and_tools() -> None:
    """The agent's config keeps the base (model, turns) and sets instructions, voice, tools."""
    triage, _ = make_pair()
    config = triage.session_config(RunContext(), BASE)
    assert config.model == "gpt-realtime"
    assert config.turn_detection == BASE.turn_detection
    assert config.instructions == "You route calls."
    assert config.voice == "marin"  # no agent voice: the base voice stays
    assert [t.name for t in config.tools] == ["add", "transfer_to_billing_desk"]
    transfer = config.tools[1]
    assert transfer == ToolSpec(
        "transfer_to_billing_desk",
        "Handoff to the Billing Desk agent to handle the request. Questions about invoices.",
        {"type": "object", "properties": {}, "additionalProperties": False},
    )


def test_dynamic_instructions_see_context_and_agent() -> None:
    """Callable instructions are evaluated with (ctx, agent) each time the session is built."""

    def instructions(ctx: RunContext[dict[str, str]], agent: RealtimeAgent) -> str:
        assert ctx.context is not None
        return f"{agent.name} speaks to {ctx.context['user']}."

    agent = RealtimeAgent(name="Host", instructions=instructions)
    assert agent.session_config(RunContext({"user": "Ada"})).instructions == "Host speaks to Ada."


def test_bad_agent_definitions_fail_early() -> None:
    """Async instructions, non-tools and duplicate tool names are refused clearly."""

    async def slow(ctx: RunContext[Any], agent: RealtimeAgent) -> str:
        return ""

    with pytest.raises(TypeError, match="instructions"):
        RealtimeAgent(name="x", instructions=slow)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="function_tool"):
        RealtimeAgent(name="x", tools=[print])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="two tools"):
        RealtimeAgent(name="x", tools=[add, add]).session_config()


def test_handoff_overrides() -> None:
    """handoff() accepts a tool name and description override."""
    _, billing = make_pair()
    h = handoff(billing, tool_name_override="to_bills", tool_description_override="Bills.")
    agent = RealtimeAgent(name="a", handoffs=[h])
    assert [(s.name, s.description) for s in agent.session_config().tools] == [
        ("to_bills", "Bills.")
    ]


async def test_tool_call_end_to_end_through_the_runner() -> None:
    """The runner dispatches to the current agent's tool and returns its output."""
    triage, _ = make_pair()
    runner = ToolRunner(triage, base=BASE)
    assert await runner.run("call_1", "add", '{"a": 2, "b": 40}') == "42"
    bad = json.loads(await runner.run("call_2", "add", '{"a": "two"}'))
    assert "invalid arguments for add" in bad["error"]
    unknown = json.loads(await runner.run("call_3", "subtract", "{}"))
    assert "no tool named 'subtract'" in unknown["error"]
    assert "add, transfer_to_billing_desk" in unknown["error"]


async def test_handoff_switches_instructions_tools_and_voice_before_the_output() -> None:
    """A transfer call announces ONE new config (then returns {"assistant": name})."""
    triage, billing = make_pair()
    changes: list[tuple[str, SessionConfig]] = []
    handed: list[str] = []
    triage.handoffs = [handoff(billing, on_handoff=lambda ctx: handed.append(str(ctx.context)))]
    runner = ToolRunner(
        triage,
        base=BASE,
        context="ctx",
        on_agent_changed=lambda agent, config: changes.append((agent.name, config)),
    )
    output = await runner.run("call_h", "transfer_to_billing_desk", "{}")
    assert json.loads(output) == {"assistant": "Billing Desk"}
    assert handed == ["ctx"]
    assert len(changes) == 1
    name, config = changes[0]
    assert name == "Billing Desk" and runner.agent is billing
    assert config.instructions == "You handle bills."
    assert [t.name for t in config.tools] == ["open_garage"]
    assert config.voice == "cedar"
    assert config.turn_detection == BASE.turn_detection  # the base is kept
    assert runner.session_config() == config
    # The old agent's tools are gone with it.
    gone = json.loads(await runner.run("call_4", "add", '{"a": 1, "b": 1}'))
    assert "no tool named 'add'" in gone["error"]


async def test_voice_stays_once_the_model_has_spoken() -> None:
    """After audio in a session a handoff keeps the voice; a new session frees it again."""
    triage, _ = make_pair()
    changes: list[SessionConfig] = []
    runner = ToolRunner(triage, base=BASE, on_agent_changed=lambda a, c: changes.append(c))
    runner.observe(AudioDelta("resp_1", "item_1", 0, b"\0\0"))
    await runner.run("call_h", "transfer_to_billing_desk", "{}")
    assert changes[-1].voice == "marin"
    runner.observe(SessionCreated("sess_2", None))
    assert runner.session_config().voice == "cedar"


async def test_approval_approved_refused_and_timed_out() -> None:
    """A needs_approval tool waits: approve runs it, reject and timeout refuse with an output."""
    _, billing = make_pair()
    asked: list[PendingApproval] = []
    runner = ToolRunner(billing, approval_timeout_s=30, on_approval_required=asked.append)

    task = asyncio.create_task(runner.run("call_a", "open_garage", "{}"))
    while not runner.pending_approvals():
        await asyncio.sleep(0)
    assert asked == [PendingApproval("call_a", "open_garage", "{}")]
    assert runner.approve()  # the oldest pending call (a button press)
    assert await task == "opened"
    assert runner.pending_approvals() == ()
    assert not runner.approve("call_a")  # nothing waits any more

    task = asyncio.create_task(runner.run("call_r", "open_garage", "{}"))
    while not runner.pending_approvals():
        await asyncio.sleep(0)
    assert runner.reject("call_r")
    refused = json.loads(await task)
    assert refused == {"error": "the user declined to run open_garage; it was not run"}

    runner.approval_timeout_s = 0.01
    timed_out = json.loads(await runner.run("call_t", "open_garage", "{}"))
    assert "did not approve open_garage within 0.01 s" in timed_out["error"]
    assert runner.pending_approvals() == ()


async def test_end_conversation_is_reported() -> None:
    """A tool returning EndConversation triggers on_end_conversation with its call id."""
    ended: list[str] = []
    agent = RealtimeAgent(name="a", tools=[goodbye])
    runner = ToolRunner(agent, on_end_conversation=ended.append)
    output = await runner.run("call_e", "goodbye", "{}")
    assert json.loads(output)["conversation"] == "ending"
    assert ended == ["call_e"]


# --------------------------------------------------------------------------- from config


def test_declared_agent_from_the_config_model() -> None:
    """[agent] with name/instructions/voice/tools/outputs becomes an agent with device tools."""
    cfg = hark_config.parse(
        textwrap.dedent(
            """
            [backend]
            url = "http://127.0.0.1:1/v1/realtime/client_secrets"
            [agent]
            name = "Pantry"
            instructions = "Be brief."
            voice = "cedar"
            tools = ["time", "volume"]
            timezone = "Europe/Berlin"
            [[agent.outputs]]
            name = "kitchen light"
            pin = 22
            """
        )
    )
    switch = RecordingSwitch()
    agent = agent_from_config(cfg.agent, volume=NullSpeaker(volume=0.5), switches=[switch])
    config = agent.session_config(base=BASE)
    assert (agent.name, config.instructions, config.voice) == ("Pantry", "Be brief.", "cedar")
    assert [t.name for t in config.tools] == ["get_current_time", "set_volume", "set_kitchen_light"]


async def test_plain_mapping_and_the_volume_tool_skipped_without_speaker() -> None:
    """A mapping works as well as the model; without a speaker there is no volume tool."""
    agent = agent_from_config({"name": "x", "tools": ["volume", "end_conversation"]})
    assert [t.name for t in agent.tools] == ["end_conversation"]


def test_object_agent_is_loaded_and_gets_output_tools(tmp_path: Path) -> None:
    """agent.object imports 'module:attr'; configured outputs are added as tools."""
    (tmp_path / "my_house_agent.py").write_text(
        textwrap.dedent(
            """
            from hark.agents.agent import RealtimeAgent
            agent = RealtimeAgent(name="House", instructions="Hi.")
            def make():
                return RealtimeAgent(name="Made", instructions="Made.")
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    try:
        agent = agent_from_config(
            {"object": "my_house_agent:agent", "outputs": [{"name": "porch", "pin": 5}]},
            switches=[RecordingSwitch()],
        )
        assert agent.name == "House"
        assert [t.name for t in agent.tools] == ["set_porch"]
        assert agent_from_config({"object": "my_house_agent:make"}).name == "Made"
        with pytest.raises(AgentLoadError, match="has no attribute 'nothing'"):
            agent_from_config({"object": "my_house_agent:nothing"})
        with pytest.raises(AgentLoadError, match="not a hark RealtimeAgent"):
            agent_from_config({"object": "my_house_agent:RealtimeAgent.__name__"})
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_house_agent", None)


def test_load_errors_name_the_path() -> None:
    """A missing module or a malformed reference gives an error naming agent.object."""
    with pytest.raises(
        AgentLoadError, match=r"agent.object 'no_such_pkg.mod:agent': cannot import"
    ):
        load_object("no_such_pkg.mod:agent")
    with pytest.raises(AgentLoadError, match="must look like"):
        load_object("just_a_module")


# --------------------------------------------------------------------------- the example


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location(
        "kitchen_agent_example", ROOT / "examples" / "kitchen_agent.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_kitchen_example_session_and_tools() -> None:
    """The README example: its config, tool schema, handoff both ways and guardrail."""
    example = load_example()
    agent = example.agent
    config = agent.session_config(base=BASE)
    assert config.voice == "marin"
    assert "shopping list is currently: empty" in config.instructions
    assert [t.name for t in config.tools] == [
        "convert_weight",
        "add_to_shopping_list",
        "transfer_to_recipe_helper",
    ]
    params = config.tools[0].parameters
    assert params["required"] == ["amount", "from_unit", "to_unit"]
    assert params["properties"]["to_unit"]["enum"] == ["g", "kg", "oz", "lb"]

    runner = ToolRunner(agent, base=BASE)
    out = await runner.run("c1", "add_to_shopping_list", '{"item": "eggs", "quantity": 6}')
    assert out == "added; the list has 1 entries"
    assert "6 x eggs" in runner.session_config().instructions  # dynamic instructions
    assert json.loads(
        await runner.run("c2", "convert_weight", '{"amount": 1, "from_unit": "lb", "to_unit": "g"}')
    ) == {"amount": 453.6, "unit": "g"}
    await runner.run("c3", "transfer_to_recipe_helper", "{}")
    assert runner.agent.name == "Recipe helper"
    assert [t.name for t in runner.session_config().tools] == [
        "convert_weight",
        "transfer_to_kitchen",
    ]
    assert [g.get_name() for g in runner.agent.output_guardrails] == ["family_friendly"]


async def test_always_approve_skips_later_prompts() -> None:
    """approve(always=True) lets later calls of that tool run without asking."""
    _, billing = make_pair()
    asked: list[PendingApproval] = []
    runner = ToolRunner(billing, on_approval_required=asked.append)
    task = asyncio.create_task(runner.run("call_1", "open_garage", "{}"))
    while not runner.pending_approvals():
        await asyncio.sleep(0)
    assert runner.approve("call_1", always=True)
    assert await task == "opened"
    assert await runner.run("call_2", "open_garage", "{}") == "opened"
    assert [p.call_id for p in asked] == ["call_1"]


def test_the_names_owners_import_are_the_agents_package() -> None:
    """hark.agent, hark.tools and hark.guardrails (README, examples) re-export hark.agents."""
    import hark.agent
    import hark.guardrails
    import hark.tools
    from hark.agents import agent, guardrails, tools

    for shim, real in ((hark.agent, agent), (hark.tools, tools), (hark.guardrails, guardrails)):
        assert shim.__all__
        for name in shim.__all__:
            assert getattr(shim, name) is getattr(real, name), f"{shim.__name__}.{name}"
