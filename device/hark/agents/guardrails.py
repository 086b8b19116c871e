"""Output guardrails: checks on the assistant's transcript as it streams, debounced by length.

As in the Agents SDK, each guardrail sees the whole transcript of the reply so far,
every ``debounce_chars`` new characters and once more at the end; the first trip of a
reply is reported once, with the names of the guardrails that tripped, so the caller
can stop playback, cancel and truncate, and say a fallback line.  This module must not
do any of that itself: it only decides; it imports no adapter and never blocks (the
checks are synchronous and must be cheap, they run on the event loop).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from hark.agents.tools import RunContext
from hark.events import Event, TranscriptDelta, TranscriptDone

log = logging.getLogger(__name__)

DEFAULT_DEBOUNCE_CHARS = 100
DEFAULT_FALLBACK = "Sorry, I can't help with that."
_MAX_REPLIES = 16


@dataclass(frozen=True)
class GuardrailFunctionOutput:
    """What a guardrail function returns: did it trip, and anything worth logging."""

    tripwire_triggered: bool
    output_info: Any = None


GuardrailFn = Callable[[RunContext[Any], Any, str], "GuardrailFunctionOutput | bool"]
"""``fn(ctx, agent, transcript_so_far) -> GuardrailFunctionOutput | bool``."""


@dataclass
class OutputGuardrail:
    """A named check on the assistant's output text (SDK: ``OutputGuardrail``)."""

    guardrail_function: GuardrailFn
    name: str | None = None

    def __post_init__(self) -> None:
        if inspect.iscoroutinefunction(self.guardrail_function):
            raise TypeError(
                f"guardrail {self.get_name()}: must be a plain function; it runs on the "
                "event loop at every debounce step, so an async (LLM) check does not fit"
            )

    def get_name(self) -> str:
        return self.name or str(getattr(self.guardrail_function, "__name__", "guardrail"))

    def run(self, ctx: RunContext[Any], agent: Any, text: str) -> GuardrailFunctionOutput:
        """Run the check; a crashing guardrail is logged and counts as not tripped."""
        try:
            result = self.guardrail_function(ctx, agent, text)
        except Exception:
            log.exception("guardrail %s raised; treating it as not tripped", self.get_name())
            return GuardrailFunctionOutput(False)
        if isinstance(result, GuardrailFunctionOutput):
            return result
        return GuardrailFunctionOutput(bool(result))


@overload
def output_guardrail(func: GuardrailFn, /) -> OutputGuardrail: ...


@overload
def output_guardrail(*, name: str | None = None) -> Callable[[GuardrailFn], OutputGuardrail]: ...


def output_guardrail(
    func: GuardrailFn | None = None, /, *, name: str | None = None
) -> OutputGuardrail | Callable[[GuardrailFn], OutputGuardrail]:
    """Decorator form: ``@output_guardrail`` or ``@output_guardrail(name="no_prices")``."""

    def wrap(f: GuardrailFn) -> OutputGuardrail:
        return OutputGuardrail(f, name=name)

    return wrap(func) if func is not None else wrap


@dataclass(frozen=True)
class GuardrailTripped:
    """A reply tripped guardrails: stop it, cut it to what was heard, say ``fallback``."""

    response_id: str
    item_id: str
    names: tuple[str, ...]
    text: str
    fallback: str
    infos: tuple[Any, ...] = ()


@dataclass
class _Reply:
    text: str = ""
    checked_len: int = 0
    tripped: bool = False


@dataclass
class GuardrailMonitor:
    """Feeds transcript events to the current agent's output guardrails.

    ``agent`` is read at each check (``agent_provider``) so a handoff switches the
    guardrails too.  ``feed`` returns a ``GuardrailTripped`` at most once per reply item.
    """

    agent_provider: Callable[[], Any]
    context: RunContext[Any] = field(default_factory=RunContext)
    debounce_chars: int = DEFAULT_DEBOUNCE_CHARS
    fallback: str = DEFAULT_FALLBACK
    extra_guardrails: Sequence[OutputGuardrail] = ()
    _replies: dict[str, _Reply] = field(default_factory=dict)
    trips: int = 0

    def feed(self, event: Event) -> GuardrailTripped | None:
        """Accumulate a delta (or the final transcript) and check when due."""
        if isinstance(event, TranscriptDelta):
            if event.item_id not in self._replies and len(self._replies) >= _MAX_REPLIES:
                # A cancelled reply never sees its TranscriptDone: forget the oldest.
                self._replies.pop(next(iter(self._replies)))
            reply = self._replies.setdefault(event.item_id, _Reply())
            reply.text += event.delta
            if len(reply.text) - reply.checked_len < self.debounce_chars:
                return None
        elif isinstance(event, TranscriptDone):
            reply = self._replies.pop(event.item_id, _Reply())
            reply.text = event.transcript or reply.text
            if reply.checked_len == len(reply.text) and reply.checked_len:
                return None
        else:
            return None
        if reply.tripped:
            return None
        reply.checked_len = len(reply.text)
        return self._check(event.response_id, event.item_id, reply)

    def _check(self, response_id: str, item_id: str, reply: _Reply) -> GuardrailTripped | None:
        agent = self.agent_provider()
        guardrails = [*getattr(agent, "output_guardrails", ()), *self.extra_guardrails]
        names: list[str] = []
        infos: list[Any] = []
        for guardrail in guardrails:
            result = guardrail.run(self.context, agent, reply.text)
            if result.tripwire_triggered:
                names.append(guardrail.get_name())
                infos.append(result.output_info)
        if not names:
            return None
        reply.tripped = True
        self.trips += 1
        log.info("guardrail tripped on %s: %s", item_id, ", ".join(names))
        return GuardrailTripped(
            response_id=response_id,
            item_id=item_id,
            names=tuple(names),
            text=reply.text,
            fallback=self.fallback,
            infos=tuple(infos),
        )

    def forget(self, item_id: str) -> None:
        """Drop a reply's buffer (it was deleted or the session rotated)."""
        self._replies.pop(item_id, None)

    def reset(self) -> None:
        self._replies.clear()
