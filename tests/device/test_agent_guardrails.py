"""Output guardrails on the streaming transcript: debounce, one trip per reply, handoff-aware."""

from __future__ import annotations

from typing import Any

import pytest
from hark.agents.agent import RealtimeAgent
from hark.agents.guardrails import (
    GuardrailFunctionOutput,
    GuardrailMonitor,
    GuardrailTripped,
    OutputGuardrail,
    output_guardrail,
)
from hark.agents.tools import RunContext
from hark.events import TranscriptDelta, TranscriptDone

checked: list[str] = []


@output_guardrail
def no_secret(ctx: RunContext[Any], agent: Any, text: str) -> GuardrailFunctionOutput:
    checked.append(text)
    return GuardrailFunctionOutput("secret" in text, output_info={"len": len(text)})


@output_guardrail(name="no_shouting")
def shouting(ctx: RunContext[Any], agent: Any, text: str) -> bool:
    return "!!!" in text


def delta(text: str, item: str = "item_1") -> TranscriptDelta:
    return TranscriptDelta("resp_1", item, text)


@pytest.fixture(autouse=True)
def _clear() -> None:
    checked.clear()


def test_trip_mid_reply_is_debounced() -> None:
    """Checks run every N new characters on the whole text; the trip names the guardrail once."""
    agent = RealtimeAgent(name="a", output_guardrails=[no_secret, shouting])
    monitor = GuardrailMonitor(lambda: agent, debounce_chars=10, fallback="Let's change topic.")
    results = [monitor.feed(delta(part)) for part in ["Hello ", "there, ", "the secret ", "is 42"]]
    # 6 chars: no check; 13: check (no trip); 24: check, trips; later deltas: nothing.
    assert checked == ["Hello there, ", "Hello there, the secret "]
    assert results[:2] == [None, None] and results[3] is None
    trip = results[2]
    assert isinstance(trip, GuardrailTripped)
    assert trip.names == ("no_secret",)
    assert (trip.response_id, trip.item_id) == ("resp_1", "item_1")
    assert trip.fallback == "Let's change topic."
    assert trip.infos == ({"len": 24},)
    assert monitor.feed(TranscriptDone("resp_1", "item_1", "Hello there, the secret is 42")) is None
    assert monitor.trips == 1


def test_final_transcript_is_checked_once_more() -> None:
    """A short reply below the debounce is still checked at TranscriptDone."""
    agent = RealtimeAgent(name="a", output_guardrails=[no_secret, shouting])
    monitor = GuardrailMonitor(lambda: agent)  # default 100 characters
    assert monitor.feed(delta("Stop!!!")) is None
    trip = monitor.feed(TranscriptDone("resp_1", "item_1", "Stop!!!"))
    assert trip is not None and trip.names == ("no_shouting",)


def test_replies_are_separate_and_clean_text_passes() -> None:
    """Each reply item has its own buffer; harmless text never trips."""
    agent = RealtimeAgent(name="a", output_guardrails=[no_secret])
    monitor = GuardrailMonitor(lambda: agent, debounce_chars=5)
    assert monitor.feed(delta("a secr", "item_1")) is None
    assert monitor.feed(delta("et", "item_2")) is None  # not joined with item_1
    assert monitor.feed(TranscriptDone("resp_1", "item_1", "a secr")) is None
    assert monitor.trips == 0


def test_guardrails_follow_the_current_agent() -> None:
    """The monitor asks for the agent at each check, so a handoff switches guardrails."""
    strict = RealtimeAgent(name="strict", output_guardrails=[shouting])
    lax = RealtimeAgent(name="lax")
    current = [lax]
    monitor = GuardrailMonitor(lambda: current[0], debounce_chars=1)
    assert monitor.feed(delta("hey!!!", "i1")) is None
    current[0] = strict
    assert monitor.feed(delta("hey!!!", "i2")) is not None


def test_a_crashing_guardrail_does_not_trip() -> None:
    """An exception in a guardrail is logged and counts as not tripped."""

    def broken(ctx: RunContext[Any], agent: Any, text: str) -> bool:
        raise RuntimeError("bug")

    agent = RealtimeAgent(name="a", output_guardrails=[OutputGuardrail(broken)])
    assert GuardrailMonitor(lambda: agent, debounce_chars=1).feed(delta("x")) is None


def test_async_guardrails_are_refused() -> None:
    """A coroutine guardrail cannot run at each debounce step on the loop: refused at definition."""

    async def slow(ctx: RunContext[Any], agent: Any, text: str) -> bool:
        return False

    with pytest.raises(TypeError, match="plain function"):
        OutputGuardrail(slow)  # type: ignore[arg-type]
