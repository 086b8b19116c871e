"""The conversation history: ordered items built from events, listeners, a bounded JSON-lines file.

Items are user and assistant messages (with transcripts), tool calls and their
outputs; an interrupted reply is kept as it was heard (its transcript cut in
proportion to the audio really played).  It is the device's one memory of the
conversation: the link replays it into every new session (``replay``), the demo and
``hark say`` print from it.  The file is append-only while running and
rewritten atomically (temp file, fsync, ``os.replace``) when it grows past twice the
item bound, so a restart or a session rotation continues the conversation.  This
module must not import asyncio or any adapter; with retention off it never touches
the disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import IO, Any, Literal

from hark.durations import bytes_to_ms
from hark.events import (
    AudioDelta,
    Event,
    FunctionCallRequested,
    Item,
    ItemAdded,
    ItemDeleted,
    ItemDone,
    ItemTruncated,
    ToolFinished,
    TranscriptDelta,
    TranscriptDone,
    UserTranscript,
)

log = logging.getLogger(__name__)


@dataclass
class HistoryItem:
    """One entry; ``heard_ms`` is set when the reply was cut off (what the user heard)."""

    id: str
    type: Literal["message", "function_call", "function_call_output"]
    role: Literal["user", "assistant", "system"] | None = None
    text: str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    status: str | None = None
    heard_ms: int | None = None
    at: float = 0.0


ChangeKind = Literal["added", "updated", "removed"]
Listener = Callable[[ChangeKind, HistoryItem], None]
_FIELDS = {f.name for f in fields(HistoryItem)}


def _cut_to_heard(text: str, heard_ms: int, total_ms: int) -> str:
    """The part of a transcript the user heard, cut at a word boundary."""
    if total_ms <= 0 or heard_ms >= total_ms:
        return text
    keep = int(len(text) * max(0, heard_ms) / total_ms)
    cut = text[:keep]
    if keep < len(text) and " " in cut:
        cut = cut[: cut.rfind(" ")]
    return f"{cut.rstrip()}…" if cut.strip() else "…"


@dataclass
class History:
    """The ordered items of the conversation; feed it every event with ``observe``."""

    path: Path | None = None
    max_items: int = 200
    enabled: bool = True
    clock: Callable[[], float] = time.time
    items: list[HistoryItem] = field(default_factory=list)
    _listeners: list[Listener] = field(default_factory=list, repr=False)
    _audio_ms: dict[str, float] = field(default_factory=dict, repr=False)
    _partial: dict[str, str] = field(default_factory=dict, repr=False)
    _lines: int = 0
    _file: IO[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.path is not None:
            self.path = Path(self.path)
        if self.enabled and self.path is not None:
            self._load()

    # ------------------------------------------------------------------ reading

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def find(self, item_id: str) -> HistoryItem | None:
        return next((i for i in self.items if i.id == item_id), None)

    def replay(self, budget_chars: int) -> list[Item]:
        """Text items that recreate the conversation in a fresh session (``Link``'s replay).

        The newest user and assistant messages whose texts fit ``budget_chars`` together,
        oldest first, without ids (the link gives them its own). A reply cut off is
        replayed as heard; tool calls stay behind (their outcome is in the replies).
        """
        chosen: list[Item] = []
        used = 0
        for item in reversed(self.items):
            if item.type != "message" or item.role not in ("user", "assistant") or not item.text:
                continue
            if used + len(item.text) > budget_chars:
                break
            used += len(item.text)
            chosen.append(Item(id="", type="message", role=item.role, text=item.text))
        chosen.reverse()
        return chosen

    # ------------------------------------------------------------------ events

    def observe(self, event: Event) -> None:
        """Update from one event; items are persisted when they become final."""
        if isinstance(event, ItemAdded | ItemDone):
            self._merge(event.item, event.previous_item_id, final=isinstance(event, ItemDone))
        elif isinstance(event, UserTranscript):
            self._set(event.item_id, "message", role="user", text=event.transcript)
        elif isinstance(event, TranscriptDelta):
            self._partial[event.item_id] = self._partial.get(event.item_id, "") + event.delta
        elif isinstance(event, TranscriptDone):
            self._partial.pop(event.item_id, None)
            self._set(event.item_id, "message", role="assistant", text=event.transcript)
        elif isinstance(event, AudioDelta):
            ms = bytes_to_ms(len(event.pcm))
            self._audio_ms[event.item_id] = self._audio_ms.get(event.item_id, 0.0) + ms
        elif isinstance(event, FunctionCallRequested):
            existing = next((i for i in self.items if i.call_id == event.call_id), None)
            self._set(
                existing.id if existing else event.item_id,
                "function_call",
                call_id=event.call_id,
                name=event.name,
                arguments=event.arguments,
            )
        elif isinstance(event, ToolFinished):
            out = next(
                (
                    i
                    for i in self.items
                    if i.type == "function_call_output" and i.call_id == event.call_id
                ),
                None,
            )
            item_id = out.id if out else f"local_{event.call_id}"
            self._set(item_id, "function_call_output", call_id=event.call_id, output=event.output)
        elif isinstance(event, ItemTruncated):
            self._truncate(event.item_id, event.audio_end_ms)
        elif isinstance(event, ItemDeleted):
            self._remove(event.item_id)

    def _merge(self, item: Item, previous_id: str | None, final: bool) -> None:
        existing = self.find(item.id)
        if existing is None and item.type == "function_call_output":
            # Our own output echoed back by the server: adopt the server's id.
            existing = next(
                (
                    i
                    for i in self.items
                    if i.type == "function_call_output"
                    and i.call_id == item.call_id
                    and i.id.startswith("local_")
                ),
                None,
            )
            if existing is not None:
                existing.id = item.id
        values: dict[str, Any] = {
            k: v
            for k, v in {
                "role": item.role,
                "status": item.status,
                "text": item.text,
                "call_id": item.call_id,
                "name": item.name,
                "arguments": item.arguments,
                "output": item.output,
            }.items()
            if v not in (None, "")
        }
        if existing is not None:
            self._as_heard(existing, values)
        if existing is None:
            new = HistoryItem(id=item.id, type=item.type, at=self.clock(), **values)
            index = len(self.items)
            if previous_id is not None:
                prev = next((n for n, i in enumerate(self.items) if i.id == previous_id), None)
                if prev is not None:
                    index = prev + 1
            self.items.insert(index, new)
            self._changed("added", new, durable=final)
        else:
            for key, value in values.items():
                setattr(existing, key, value)
            self._changed("updated", existing, durable=final)

    def _set(self, item_id: str, item_type: Any, **values: Any) -> None:
        existing = self.find(item_id)
        if existing is not None:
            self._as_heard(existing, values)
        if existing is None:
            new = HistoryItem(id=item_id, type=item_type, at=self.clock(), **values)
            self.items.append(new)
            self._changed("added", new, durable=True)
            return
        for key, value in values.items():
            setattr(existing, key, value)
        self._changed("updated", existing, durable=True)

    def _as_heard(self, item: HistoryItem, values: dict[str, Any]) -> None:
        """A cut-off reply keeps only what was heard, even when its full text comes later."""
        if item.heard_ms is not None:
            values.pop("status", None)  # stays "incomplete"
        if item.heard_ms is not None and values.get("text"):
            total_ms = round(self._audio_ms.get(item.id, 0.0))
            values["text"] = _cut_to_heard(values["text"], item.heard_ms, total_ms)

    def _truncate(self, item_id: str, audio_end_ms: int) -> None:
        item = self.find(item_id)
        if item is None:
            return
        text = item.text or self._partial.pop(item_id, "")
        total_ms = self._audio_ms.get(item_id, 0.0)
        item.text = _cut_to_heard(text, audio_end_ms, round(total_ms)) if text else text
        item.heard_ms = audio_end_ms
        item.status = "incomplete"
        self._changed("updated", item, durable=True)

    def _remove(self, item_id: str) -> None:
        item = self.find(item_id)
        if item is None:
            return
        self.items.remove(item)
        self._changed("removed", item, durable=True)

    def _changed(self, kind: ChangeKind, item: HistoryItem, durable: bool) -> None:
        while len(self.items) > self.max_items:
            dropped = self.items.pop(0)
            self._audio_ms.pop(dropped.id, None)
        self._append(kind, item, durable)
        for listener in list(self._listeners):
            try:
                listener(kind, item)
            except Exception:
                log.exception("history listener failed")

    # ------------------------------------------------------------------ disk

    def _load(self) -> None:
        """Load the file; a damaged line is skipped, a file with nothing usable is set aside.

        Never raises: a history file must not stop the daemon from starting.
        """
        assert self.path is not None
        try:
            loaded = _replay(self.path)
        except FileNotFoundError:
            log.info("history: none yet at %s", self.path)
            return
        except OSError as exc:
            self._set_aside(f"unreadable: {exc.strerror}")
            return
        if loaded.damaged and not loaded.good_lines:
            self._set_aside(f"no readable line ({loaded.damaged[0]})")
            return
        self.items = loaded.items[-self.max_items :]
        log.info("history: %d items loaded from %s", len(self.items), self.path)
        self._rewrite()  # start from a compact file (without the damaged lines)

    def _set_aside(self, why: str) -> None:
        """Keep an unusable file for inspection under a new name and start a fresh one."""
        assert self.path is not None
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(self.clock()))
        target = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{n}")
        try:
            self.path.replace(target)
        except OSError as exc:
            log.warning(
                "history %s cannot be read (%s) nor moved aside (%s); starting empty",
                self.path,
                why,
                exc.strerror,
            )
            return
        log.warning(
            "history %s cannot be read (%s); moved to %s, starting a fresh one",
            self.path,
            why,
            target.name,
        )
        self._rewrite()

    def _append(self, kind: ChangeKind, item: HistoryItem, durable: bool) -> None:
        """Write one line now (keeps the order); fsync only when the item is final."""
        if not self.enabled or self.path is None:
            return
        record: dict[str, Any] = (
            {"deleted": item.id}
            if kind == "removed"
            else {k: v for k, v in asdict(item).items() if v is not None}
        )
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()
            if durable:
                # A few per turn, and appliances get unplugged without warning.
                os.fsync(self._file.fileno())
            self._lines += 1
        except OSError as exc:
            log.warning("history: cannot write %s: %s", self.path, exc.strerror)
            return
        if self._lines > 2 * self.max_items:
            self._rewrite()

    def _rewrite(self) -> None:
        """Replace the file with the current items: temp file, fsync, rename, fsync dir."""
        if not self.enabled or self.path is None:
            return
        self.close()
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".history-", suffix=".tmp", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    for item in self.items:
                        record = {k: v for k, v in asdict(item).items() if v is not None}
                        out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    out.flush()
                    os.fsync(out.fileno())
                Path(tmp).replace(self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    Path(tmp).unlink()
                raise
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            log.warning("history: cannot rewrite %s: %s", self.path, exc.strerror)
            return
        self._lines = len(self.items)

    def clear(self) -> None:
        """Forget everything, on disk too (the retention switch's 'erase')."""
        self.items.clear()
        self._rewrite()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


_ROLES = (None, "user", "assistant", "system")
_TYPES = ("message", "function_call", "function_call_output")
_TEXTS = ("text", "call_id", "name", "arguments", "output", "status")
_LATEST = 1e11  # epoch seconds (year 5138): anything later is not a time localtime() takes


def _record(line: bytes) -> dict[str, Any]:
    """One line as a checked record; ValueError says why it is unusable."""
    record = json.loads(line.decode("utf-8"))
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    if "deleted" in record:
        if not isinstance(record["deleted"], str):
            raise ValueError("'deleted' is not an id")
        return record
    if not isinstance(record.get("id"), str) or not record["id"]:
        raise ValueError("no id")
    if record.get("type") not in _TYPES:
        raise ValueError(f"unknown type {record.get('type')!r}")
    if record.get("role") not in _ROLES:
        raise ValueError(f"unknown role {record.get('role')!r}")
    for key in _TEXTS:
        if not isinstance(record.get(key, ""), str | None):
            raise ValueError(f"{key} is not a string")
    heard = record.get("heard_ms")
    if heard is not None and (isinstance(heard, bool) or not isinstance(heard, int)):
        raise ValueError("heard_ms is not an integer")
    at = record.get("at", 0.0)
    if isinstance(at, bool) or not isinstance(at, int | float) or not 0 <= at < _LATEST:
        raise ValueError("at is not a time")
    return record


@dataclass
class _Replayed:
    items: list[HistoryItem]
    good_lines: int
    damaged: list[str]  # "line N: why", one per skipped line


def _replay(path: Path) -> _Replayed:
    """Replay a history file: later lines update earlier ones, ``deleted`` removes.

    Read as bytes and decoded line by line, so one line cut inside a multi-byte
    character (a power cut while writing "…") costs that line only. OSError passes.
    """
    by_id: dict[str, HistoryItem] = {}
    good = 0
    damaged: list[str] = []
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = _record(line)
            except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                damaged.append(f"line {number}: {_why(exc)}")
                continue
            good += 1
            if "deleted" in record:
                by_id.pop(record["deleted"], None)
                continue
            item = HistoryItem(**{k: v for k, v in record.items() if k in _FIELDS})
            if item.id in by_id:
                by_id[item.id] = replace(
                    by_id[item.id],
                    **{k: v for k, v in asdict(item).items() if v is not None and k in record},
                )
            else:
                by_id[item.id] = item
    if damaged:
        more = f" and {len(damaged) - 1} more" if len(damaged) > 1 else ""
        log.warning("history %s: skipped a damaged %s%s", path, damaged[0], more)
    return _Replayed(list(by_id.values()), good, damaged)


def _why(exc: ValueError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 (cut inside a character?)"
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON ({exc.msg})"
    return str(exc)


def read_items(path: Path | str) -> list[HistoryItem]:
    """The items of a history file; damaged lines are skipped (and logged once)."""
    return _replay(Path(path)).items


def format_history(path: Path | str, last: int = 0) -> str:
    """The history file as text, one item per line (``hark history``); ``last`` > 0 keeps
    only the last items. Any OSError but a missing file is the caller's to report."""
    try:
        items = read_items(path)
    except FileNotFoundError:
        return f"no history at {path}"
    lines: list[str] = []
    for item in items[-last:] if last > 0 else items:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(item.at)) if item.at else "-"
        if item.type == "message":
            note = (
                f"  [cut off after {item.heard_ms / 1000:.1f} s]"
                if item.heard_ms is not None
                else ""
            )
            lines.append(f"{stamp}  {item.role or '?'}: {item.text or '(no transcript)'}{note}")
        elif item.type == "function_call":
            lines.append(f"{stamp}  tool call: {item.name}({item.arguments or ''})")
        else:
            lines.append(f"{stamp}  tool output: {item.output or ''}")
    return "\n".join(lines) if lines else f"history at {path} is empty"
