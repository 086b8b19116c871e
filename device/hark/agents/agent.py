"""Agents on the device: ``RealtimeAgent``, handoffs, the tool runner, and agents from config.

Mirrors the Agents SDK's realtime concepts (an agent has a name, instructions, tools,
handoffs, a voice and output guardrails; a handoff is a ``transfer_to_<agent>`` tool
that switches the live session with one ``session.update``) without its import cost.
This module must not touch adapters or the wire: the ``ToolRunner`` returns outputs
and reports agent switches, approvals and the end of a conversation through
callbacks; the app and the conversation core act on them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hark.agents.guardrails import OutputGuardrail
from hark.agents.tools import (
    DEFAULT_TIMEOUT_S,
    FunctionTool,
    RunContext,
    ToolContext,
    error_output,
)
from hark.events import AudioDelta, Event, LinkUp, SessionConfig, SessionCreated, ToolSpec

if TYPE_CHECKING:
    from hark.ports import Switch, VolumeControl

log = logging.getLogger(__name__)

InstructionsFn = Callable[[RunContext[Any], "RealtimeAgent"], str]
"""Dynamic instructions: ``(ctx, agent) -> str``, evaluated whenever the session is built."""


def _snake(name: str) -> str:
    """SDK's ``transform_string_function_style``: 'Recipe Helper' -> 'recipe_helper'."""
    return re.sub(r"[^a-z0-9_]", "_", name.strip().replace(" ", "_").lower())


@dataclass(eq=False)  # identity: agents hand off to each other in cycles
class RealtimeAgent:
    """An agent: who the model is (instructions, voice) and what it can do (tools, handoffs).

    ``instructions`` may be a function ``(ctx, agent) -> str`` evaluated each time the
    session is configured (dynamic instructions).  ``voice`` None keeps the base voice.
    """

    name: str
    instructions: str | InstructionsFn = ""
    handoff_description: str | None = None
    tools: list[FunctionTool] = field(default_factory=list)
    handoffs: list[RealtimeAgent | Handoff] = field(default_factory=list)
    voice: str | None = None
    output_guardrails: list[OutputGuardrail] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("RealtimeAgent needs a name")
        if callable(self.instructions) and inspect.iscoroutinefunction(self.instructions):
            raise TypeError(
                f"agent {self.name}: instructions must be a str or a plain function "
                "(ctx, agent) -> str; the session is configured synchronously"
            )
        for tool in self.tools:
            if not isinstance(tool, FunctionTool):
                raise TypeError(
                    f"agent {self.name}: {tool!r} is not a tool; decorate it with @function_tool"
                )

    def get_instructions(self, ctx: RunContext[Any]) -> str:
        if callable(self.instructions):
            return str(self.instructions(ctx, self))
        return self.instructions

    def get_handoffs(self) -> list[Handoff]:
        return [h if isinstance(h, Handoff) else handoff(h) for h in self.handoffs]

    def all_tool_specs(self) -> tuple[ToolSpec, ...]:
        """Function tools, then one ``transfer_to_<agent>`` tool per handoff."""
        specs = [t.spec() for t in self.tools] + [h.spec() for h in self.get_handoffs()]
        seen: set[str] = set()
        for spec in specs:
            if spec.name in seen:
                raise ValueError(f"agent {self.name}: two tools are named {spec.name!r}")
            seen.add(spec.name)
        return tuple(specs)

    def session_config(
        self, ctx: RunContext[Any] | None = None, base: SessionConfig | None = None
    ) -> SessionConfig:
        """The session this agent wants: ``base`` (model, audio, turns) with its own parts."""
        base = base or SessionConfig()
        return dataclasses.replace(
            base,
            instructions=self.get_instructions(ctx or RunContext()),
            voice=self.voice or base.voice,
            tools=self.all_tool_specs(),
        )

    def clone(self, **changes: Any) -> RealtimeAgent:
        """A copy with some fields replaced (SDK: ``agent.clone``)."""
        return dataclasses.replace(self, **changes)


@dataclass
class Handoff:
    """A way to hand the conversation to another agent, offered to the model as a tool."""

    agent: RealtimeAgent
    tool_name: str
    tool_description: str
    on_handoff: Callable[[RunContext[Any]], Any] | None = None

    def spec(self) -> ToolSpec:
        empty = {"type": "object", "properties": {}, "additionalProperties": False}
        return ToolSpec(self.tool_name, self.tool_description, empty)


def handoff(
    agent: RealtimeAgent,
    *,
    tool_name_override: str | None = None,
    tool_description_override: str | None = None,
    on_handoff: Callable[[RunContext[Any]], Any] | None = None,
) -> Handoff:
    """Describe a handoff to ``agent`` (default tool ``transfer_to_<snake name>``)."""
    description = f"Handoff to the {agent.name} agent to handle the request."
    if agent.handoff_description:
        description = f"{description} {agent.handoff_description}"
    return Handoff(
        agent=agent,
        tool_name=tool_name_override or f"transfer_to_{_snake(agent.name)}",
        tool_description=tool_description_override or description,
        on_handoff=on_handoff,
    )


# --------------------------------------------------------------------------- the runner


@dataclass(frozen=True)
class PendingApproval:
    """A tool call waiting for the owner's yes (button press) or no (long press)."""

    call_id: str
    tool_name: str
    arguments: str


class ToolRunner:
    """Runs the current agent's tools for the app: ``await run(call_id, name, arguments)``.

    Callbacks (all optional, called on the loop):
    - ``on_agent_changed(agent, config)`` right after a handoff and *before* ``run``
      returns; it must queue ``UpdateSession(config)`` on the link synchronously so the
      ``session.update`` precedes the ``function_call_output``;
    - ``on_approval_required(pending)`` when a ``needs_approval`` tool waits;
    - ``on_end_conversation(call_id)`` when a tool returned ``EndConversation``.
    """

    def __init__(
        self,
        agent: RealtimeAgent,
        *,
        base: SessionConfig | None = None,
        context: Any = None,
        default_timeout_s: float = DEFAULT_TIMEOUT_S,
        approval_timeout_s: float = 30.0,
        on_agent_changed: Callable[[RealtimeAgent, SessionConfig], None] | None = None,
        on_approval_required: Callable[[PendingApproval], None] | None = None,
        on_end_conversation: Callable[[str], None] | None = None,
    ) -> None:
        self._agent = agent
        self.base = base or SessionConfig()
        self.context = context
        self.default_timeout_s = default_timeout_s
        self.approval_timeout_s = approval_timeout_s
        self.on_agent_changed = on_agent_changed
        self.on_approval_required = on_approval_required
        self.on_end_conversation = on_end_conversation
        self._pending: dict[str, tuple[PendingApproval, asyncio.Future[bool]]] = {}
        self._locked_voice: str | None = None
        self._always_approved: set[str] = set()
        self.calls = 0

    @property
    def agent(self) -> RealtimeAgent:
        return self._agent

    def session_config(self) -> SessionConfig:
        """The current agent's session; the voice stays put once the model has spoken."""
        config = self._agent.session_config(RunContext(self.context), self.base)
        if self._locked_voice is not None and config.voice != self._locked_voice:
            # The API refuses a voice change after the first audio of a session.
            config = dataclasses.replace(config, voice=self._locked_voice)
        return config

    def observe(self, event: Event) -> None:
        """Feed every event: audio locks the voice for this session; a new session frees it."""
        if isinstance(event, AudioDelta) and self._locked_voice is None:
            self._locked_voice = self.session_config().voice
        elif isinstance(event, SessionCreated | LinkUp):
            self._locked_voice = None

    def set_agent(self, agent: RealtimeAgent) -> SessionConfig:
        """Switch agents (SDK: ``update_agent``) and announce the new session config."""
        log.info("agent: %s -> %s", self._agent.name, agent.name)
        self._agent = agent
        config = self.session_config()
        if self.on_agent_changed is not None:
            self.on_agent_changed(agent, config)
        return config

    async def run(self, call_id: str, name: str, arguments: str) -> str:
        """Run one call; always returns the output string for the model."""
        self.calls += 1
        ctx: ToolContext[Any] = ToolContext(self.context, tool_name=name, tool_call_id=call_id)
        for h in self._agent.get_handoffs():
            if h.tool_name == name:
                return self._take_handoff(h, ctx)
        tool = next((t for t in self._agent.tools if t.name == name), None)
        if tool is None:
            names = ", ".join(s.name for s in self._agent.all_tool_specs()) or "none"
            log.warning("model called unknown tool %r (agent %s)", name, self._agent.name)
            return error_output(f"no tool named {name!r}; available: {names}")
        if tool.needs_approval and name not in self._always_approved:
            refusal = await self._await_approval(call_id, name, arguments)
            if refusal is not None:
                return refusal
        result = await tool.invoke(ctx, arguments, self.default_timeout_s)
        if result.end_conversation and self.on_end_conversation is not None:
            self.on_end_conversation(call_id)
        return result.output

    def _take_handoff(self, h: Handoff, ctx: ToolContext[Any]) -> str:
        if h.on_handoff is not None:
            try:
                h.on_handoff(ctx)
            except Exception:
                log.exception("on_handoff for %s raised; handing off anyway", h.agent.name)
        self.set_agent(h.agent)
        return json.dumps({"assistant": h.agent.name})

    # ------------------------------------------------------------------ approval

    async def _await_approval(self, call_id: str, name: str, arguments: str) -> str | None:
        """None once approved, else the refusal output for the model."""
        pending = PendingApproval(call_id, name, arguments)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = (pending, future)
        log.info("tool %s waits for approval (%s)", name, call_id)
        if self.on_approval_required is not None:
            self.on_approval_required(pending)
        try:  # asyncio.timeout, not wait_for: 3.11 drops a cancel that lands with a result
            async with asyncio.timeout(self.approval_timeout_s):
                approved = await future
        except TimeoutError:
            log.info("tool %s: no approval within %.0f s", name, self.approval_timeout_s)
            return error_output(
                f"the user did not approve {name} within {self.approval_timeout_s:g} s; "
                "it was not run"
            )
        finally:
            self._pending.pop(call_id, None)
        if not approved:
            return error_output(f"the user declined to run {name}; it was not run")
        return None

    def pending_approvals(self) -> tuple[PendingApproval, ...]:
        """Calls waiting for a decision, oldest first."""
        return tuple(p for p, _ in self._pending.values())

    def approve(self, call_id: str | None = None, always: bool = False) -> bool:
        """Approve ``call_id`` (or the oldest pending call); False if nothing was waiting.

        ``always`` approves later calls of the same tool too, for this runner's life.
        """
        entry = self._entry(call_id)
        if entry is not None and always:
            self._always_approved.add(entry[0].tool_name)
        return self._decide(call_id, True)

    def reject(self, call_id: str | None = None) -> bool:
        """Refuse ``call_id`` (or the oldest pending call); the model is told it was declined."""
        return self._decide(call_id, False)

    def _entry(self, call_id: str | None) -> tuple[PendingApproval, asyncio.Future[bool]] | None:
        if call_id is None:
            call_id = next(iter(self._pending), None)
        return self._pending.get(call_id) if call_id is not None else None

    def _decide(self, call_id: str | None, approved: bool) -> bool:
        entry = self._entry(call_id)
        if entry is None or entry[1].done():
            return False
        entry[1].set_result(approved)
        log.info("tool %s %s", entry[0].tool_name, "approved" if approved else "refused")
        return True


# --------------------------------------------------------------------------- from config


class AgentLoadError(Exception):
    """``agent.object`` could not be loaded; the message names the path and why."""


def load_object(path: str) -> Any:
    """Import ``'package.module:attribute.sub'`` and return the object."""
    module_name, sep, attr_path = path.partition(":")
    if not sep or not module_name or not attr_path:
        raise AgentLoadError(f"agent.object {path!r}: must look like 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise AgentLoadError(
            f"agent.object {path!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AgentLoadError(
                f"agent.object {path!r}: module {module_name!r} has no attribute {attr_path!r}"
            ) from None
    return obj


def check_object(path: str) -> None:
    """What ``check-config`` and ``doctor`` verify without building the agent (no factory
    is called, no pin opened): the module imports and names an agent or a function."""
    obj = load_object(path)
    if not isinstance(obj, RealtimeAgent) and not callable(obj):
        raise AgentLoadError(
            f"agent.object {path!r}: is a {type(obj).__name__}, "
            "not a hark RealtimeAgent or a function returning one"
        )


def _get(section: Any, key: str, default: Any = None) -> Any:
    if isinstance(section, Mapping):
        return section.get(key, default)
    return getattr(section, key, default)


def agent_from_config(
    section: Any,
    *,
    volume: VolumeControl | None = None,
    switches: Sequence[Switch] | None = None,
    pin_factory: Any = None,
) -> RealtimeAgent:
    """Build the agent from ``[agent]`` (``hark.config.AgentConfig`` or a plain mapping).

    Either loads ``object`` (a ``RealtimeAgent``, or a zero-argument function returning
    one) or declares one from name/instructions/voice/tools.  GPIO ``outputs`` become
    ``set_<name>`` tools on either; ``switches`` (one per output, in order) replace the
    real GPIO devices, e.g. in tests.  ``volume`` is the speaker (a
    ``ports.VolumeControl``) for the volume tool.
    """
    from hark.agents import builtin as builtin_tools  # late: it pulls in GPIO

    outputs = list(_get(section, "outputs", ()) or ())
    if switches is None:
        switches = builtin_tools.open_outputs(outputs, pin_factory=pin_factory)
    output_tools = [
        builtin_tools.output_tool(_get(o, "name"), switch, description=_get(o, "description"))
        for o, switch in zip(outputs, switches, strict=True)
    ]
    ref = _get(section, "object")
    if ref:
        obj = load_object(ref)
        if not isinstance(obj, RealtimeAgent) and callable(obj):
            obj = obj()
        if not isinstance(obj, RealtimeAgent):
            raise AgentLoadError(
                f"agent.object {ref!r}: is a {type(obj).__name__}, not a hark RealtimeAgent"
            )
        return obj.clone(tools=[*obj.tools, *output_tools]) if output_tools else obj
    tools = builtin_tools.device_tools(
        _get(section, "tools", builtin_tools.BUILTIN_NAMES),
        timezone=_get(section, "timezone"),
        volume=volume,
    )
    return RealtimeAgent(
        name=_get(section, "name", "hark"),
        instructions=_get(section, "instructions", ""),
        voice=_get(section, "voice"),
        tools=[*tools, *output_tools],
    )
