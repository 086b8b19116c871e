"""The conversation carried across sessions: the transcript log, what to replay, when to rotate.

A Realtime session cannot be resumed, so the link remembers who said what (from the
events it passes on) and replays it as text items into each new session; it rotates
only at a quiet moment. Everything here is pure (time is passed in) and must not do
I/O or import websockets.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from hark import events as ev


@dataclass(slots=True)
class Entry:
    """One remembered turn: who said what (``text`` None until its transcript arrives)."""

    item_id: str
    role: Literal["user", "assistant"]
    text: str | None = None
    truncated: bool = False


def select_replay(entries: Iterable[Entry], budget_chars: int) -> list[Entry]:
    """The newest entries with text whose total fits the budget, oldest first."""
    chosen: list[Entry] = []
    used = 0
    for entry in reversed(list(entries)):
        if not entry.text:
            continue
        if used + len(entry.text) > budget_chars:
            break
        used += len(entry.text)
        chosen.append(entry)
    chosen.reverse()
    return chosen


class TranscriptLog:
    """A bounded log of user and assistant transcripts in conversation order."""

    def __init__(self, max_items: int = 200) -> None:
        self.max_items = max_items
        self._entries: collections.OrderedDict[str, Entry] = collections.OrderedDict()

    @property
    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def _put(self, item_id: str, role: Literal["user", "assistant"], text: str | None) -> None:
        entry = self._entries.get(item_id)
        if entry is None:
            self._entries[item_id] = Entry(item_id, role, text or None)
            while len(self._entries) > self.max_items:
                self._entries.popitem(last=False)
        elif text and not entry.truncated:
            entry.text = text

    def seed(self, items: Iterable[ev.Item]) -> None:
        """Preload persisted history (before anything this run has seen)."""
        seeded: list[tuple[str, Entry]] = []
        for n, item in enumerate(items):
            if item.type == "message" and item.role in ("user", "assistant") and item.text:
                item_id = item.id or f"seed{n}"
                seeded.append((item_id, Entry(item_id, item.role, item.text)))
        rest = [(k, v) for k, v in self._entries.items() if k not in dict(seeded)]
        self._entries = collections.OrderedDict(seeded + rest)
        while len(self._entries) > self.max_items:
            self._entries.popitem(last=False)

    def observe(self, event: ev.Event) -> None:
        """Learn from one posted event (items, transcripts, truncations, deletions)."""
        match event:
            case ev.ItemAdded(item=item) | ev.ItemDone(item=item):
                if item.type == "message" and item.role in ("user", "assistant"):
                    self._put(item.id, item.role, item.text)  # type: ignore[arg-type]
            case ev.UserTranscript(item_id=item_id, transcript=text):
                self._put(item_id, "user", text)
            case ev.TranscriptDone(item_id=item_id, transcript=text):
                self._put(item_id, "assistant", text)
            case ev.ItemTruncated(item_id=item_id):
                # The server drops the transcript of a truncated item (protocol §5.1):
                # the unheard rest must not come back through replay either.
                entry = self._entries.get(item_id)
                if entry is not None:
                    entry.text, entry.truncated = None, True
            case ev.ItemDeleted(item_id=item_id):
                self._entries.pop(item_id, None)
            case _:
                pass

    def replay(self, budget_chars: int) -> list[ev.Item]:
        """Text items to recreate the conversation in a fresh session, oldest first."""
        return [
            ev.Item(id="", type="message", role=e.role, text=e.text)
            for e in select_replay(self._entries.values(), budget_chars)
        ]


# --------------------------------------------------------------------------- rotation


class TurnTracker:
    """Whether a turn is under way, from the commands sent and the events received."""

    def __init__(self) -> None:
        self.manual_turns = False
        self.reset(0.0)

    def reset(self, now_s: float) -> None:
        self.responses: set[str] = set()
        self.response_requested = False
        self.speaking = False
        self.audio_pending = False
        self.pending_calls: set[str] = set()
        self.last_activity_s = now_s

    def on_sent(self, command: ev.WireCommand, now_s: float) -> None:
        match command:
            case ev.SendAudio():
                # With server VAD the mic may stream all the time; only speech counts then.
                if self.manual_turns:
                    self.audio_pending = True
                    self.last_activity_s = now_s
                return
            case ev.CommitAudio() | ev.ClearAudio():
                self.audio_pending = False
            case ev.CreateResponse():
                self.response_requested = True
            case ev.CreateItem(item=item) if item.type == "function_call_output":
                self.pending_calls.discard(item.call_id or "")
            case ev.UpdateSession(config=config):
                self.manual_turns = config.turn_detection is None
        self.last_activity_s = now_s

    def on_event(self, event: ev.Event, now_s: float) -> None:
        match event:
            case ev.ResponseCreated(response_id=rid):
                self.responses.add(rid)
                self.response_requested = False
            case ev.ResponseDone(response_id=rid):
                self.responses.discard(rid)
                self.response_requested = False
            case ev.SpeechStarted():
                self.speaking = True
            case ev.SpeechStopped() | ev.AudioCommitted() | ev.AudioCleared():
                self.speaking = False
            case ev.FunctionCallRequested(call_id=call_id):
                self.pending_calls.add(call_id)
            case ev.ServerError() | ev.ProtocolError() | ev.SessionUpdated():
                return
            case _:
                pass
        self.last_activity_s = now_s

    def quiet(self, now_s: float, quiet_s: float) -> bool:
        """No response, speech, unsent turn or tool call, and nothing happened for ``quiet_s``."""
        return (
            not self.responses
            and not self.response_requested
            and not self.speaking
            and not self.audio_pending
            and not self.pending_calls
            and now_s - self.last_activity_s >= quiet_s
        )


def rotation_due(
    now_s: float,
    opened_s: float,
    deadline_s: float | None,
    rotate_before_expiry_s: float,
    max_age_s: float,
) -> bool:
    """Rotate at ``max_age_s`` of age or ``rotate_before_expiry_s`` before the session cap."""
    if now_s - opened_s >= max_age_s:
        return True
    return deadline_s is not None and deadline_s - now_s <= rotate_before_expiry_s
