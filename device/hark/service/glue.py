"""The agent layer hooked into a running app: handoffs, tool approval, end of conversation.

It also feeds every handled event but mic frames to the history, the tool runner and the guardrails.
It must not build adapters or the app (that is ``hark.service.wiring``); it only registers
callbacks, an interceptor and a listener on what it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hark.events import (
    ButtonLongPressed,
    ButtonPressed,
    ButtonReleased,
    MicFrame,
    ToolFinished,
)

if TYPE_CHECKING:
    from hark.agents.agent import PendingApproval, RealtimeAgent, ToolRunner
    from hark.agents.guardrails import GuardrailMonitor
    from hark.events import Command, Event, SessionConfig
    from hark.history import History
    from hark.service.loop import App

log = logging.getLogger(__name__)


class AgentGlue:
    """The agent layer around a built app: handoffs, button approvals, end of conversation,
    and the listener feeding history, runner and guardrails.

    A handoff updates the core's session (kept for reconnects and rotations) through the
    inbox, so its one ``session.update`` precedes the tool's output. While a tool waits
    for approval the core is told (``approval_pending``: it ignores the button and its
    response timeout), a short press (on release) approves and a long press refuses.
    """

    def __init__(
        self, app: App, runner: ToolRunner, history: History, guardrails: GuardrailMonitor
    ) -> None:
        self.app = app
        self.runner = runner
        self.history = history
        self.guardrails = guardrails
        self._waiting: list[str] = []  # call ids awaiting a decision, oldest first
        self._press: str | None = None  # the call a held button is deciding

    def install(self) -> None:
        """Become the runner's callbacks, an interceptor and a listener of the app."""
        self.runner.on_agent_changed = self._agent_changed
        self.runner.on_approval_required = self._approval_required
        self.runner.on_end_conversation = self._end_conversation
        self.app.add_interceptor(self.intercept)
        self.app.add_listener(self.observe)

    def _agent_changed(self, agent: RealtimeAgent, session: SessionConfig) -> None:
        # Queued in inbox order, so it precedes the tool's output (ToolRunner's
        # contract); the core keeps it for reconnects and rotations.
        self.app.update_session(session)

    def _approval_required(self, pending: PendingApproval) -> None:
        log.info("tool %s needs approval: press the button (hold to refuse)", pending.tool_name)
        self._waiting.append(pending.call_id)
        self._settle()

    def _settle(self) -> None:
        """Tell the core, in inbox order, whether a call still waits (LED, cue, timeout)."""
        conversation = self.app.conversation
        self.app.call(lambda now: conversation.set_approval_pending(bool(self._waiting), now))

    def _decide(self, call_id: str, approved: bool) -> None:
        if call_id in self._waiting:
            self._waiting.remove(call_id)
        if approved:
            self.runner.approve(call_id)
        else:
            self.runner.reject(call_id)
        self._settle()

    def _end_conversation(self, call_id: str) -> None:
        log.info("the agent ended the conversation")
        conversation = self.app.conversation
        self.app.call(lambda now: conversation.end_after_reply(now))

    def intercept(self, event: Event) -> bool:
        """Button events decide a waiting tool call; consumed before the core sees them."""
        if isinstance(event, ButtonPressed):
            if not self._waiting:
                return False
            self._press = self._waiting[0]
            return True
        if isinstance(event, ButtonLongPressed):
            call_id = self._press or (self._waiting[0] if self._waiting else None)
            if call_id is None:
                return False
            self._press = ""  # decided; swallow the release too
            self._decide(call_id, False)
            return True
        if isinstance(event, ButtonReleased) and self._press is not None:
            call_id, self._press = self._press, None
            if call_id:
                self._decide(call_id, True)
            return True
        return False

    def observe(self, event: Event, commands: Sequence[Command]) -> None:
        """Every handled event: history, runner (voice lock), guardrails, approval timeouts.

        Mic frames (50 a second) go to none of them: all three ignore audio input.
        """
        if isinstance(event, MicFrame):
            return
        self.history.observe(event)
        self.runner.observe(event)
        if isinstance(event, ToolFinished) and event.call_id in self._waiting:
            self._waiting.remove(event.call_id)  # the approval timed out
            self._settle()
        tripped = self.guardrails.feed(event)
        if tripped is not None:
            self.app.interrupt(say=tripped.fallback)
