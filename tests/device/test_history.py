"""Conversation history: items from events, truncation as heard, persistence, bounds, retention."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
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
from hark.history import History, HistoryItem, format_history, read_items


def user_turn(n: int, text: str) -> list[Event]:
    item = Item(f"u{n}", "message", role="user", status="in_progress")
    return [
        ItemAdded(item, None),
        ItemDone(Item(f"u{n}", "message", role="user", status="completed"), None),
        UserTranscript(f"u{n}", text),
    ]


def reply(n: int, text: str, audio_ms: int = 1000) -> list[Event]:
    item_id = f"a{n}"
    added = ItemAdded(Item(item_id, "message", role="assistant", status="in_progress"), f"u{n}")
    words = text.split(" ")
    deltas: list[Event] = [TranscriptDelta(f"r{n}", item_id, w + " ") for w in words]
    audio: list[Event] = [AudioDelta(f"r{n}", item_id, 0, b"\0" * 48 * audio_ms)]
    done: list[Event] = [
        TranscriptDone(f"r{n}", item_id, text),
        ItemDone(Item(item_id, "message", role="assistant", status="completed", text=text), None),
    ]
    return [added, *audio, *deltas, *done]


def feed(history: History, events: list[Event]) -> None:
    for event in events:
        history.observe(event)


def summary(history: History) -> list[tuple[str, str | None, str | None]]:
    return [(i.type, i.role or i.name, i.text or i.output) for i in history.items]


def test_items_from_events_with_tool_calls_and_listeners() -> None:
    """Messages, a tool call and its output appear in order; listeners hear every change."""
    changes: list[tuple[str, str]] = []
    history = History()
    history.add_listener(lambda kind, item: changes.append((kind, item.id)))
    feed(history, user_turn(1, "Lights on please"))
    call = Item("fc1", "function_call", status="in_progress", call_id="call_1", name="set_light")
    feed(
        history,
        [
            ItemAdded(call, "u1"),
            FunctionCallRequested("r1", "fc1", "call_1", "set_light", '{"on": true}'),
            ToolFinished("call_1", '{"on": true}'),
            # The server echoes the output item we sent: it must not be a second item.
            ItemAdded(
                Item("out1", "function_call_output", call_id="call_1", output='{"on": true}'),
                "fc1",
            ),
        ],
    )
    feed(history, reply(2, "Done, the light is on."))
    assert summary(history) == [
        ("message", "user", "Lights on please"),
        ("function_call", "set_light", None),
        ("function_call_output", None, '{"on": true}'),
        ("message", "assistant", "Done, the light is on."),
    ]
    assert history.items[1].arguments == '{"on": true}'
    assert history.items[2].id == "out1"
    assert ("added", "u1") in changes and ("updated", "a2") in changes
    # Replay recreates the conversation as text; the tool's outcome is in the reply.
    assert history.replay(1000) == [
        Item("", "message", role="user", text="Lights on please"),
        Item("", "message", role="assistant", text="Done, the light is on."),
    ]


def test_interrupted_reply_is_kept_as_heard() -> None:
    """A truncated reply keeps only the words heard (by audio played), even if text comes later."""
    history = History()
    feed(history, user_turn(1, "Tell me a story"))
    events = reply(1, "Once upon a time there was a small dragon who loved tea", audio_ms=4000)
    before_done = events[:-2]
    feed(history, before_done)
    history.observe(ItemTruncated("a1", 1000))  # a quarter of the audio was heard
    feed(history, events[-2:])  # the full transcript arrives after the cut
    item = history.find("a1")
    assert item is not None
    assert item.heard_ms == 1000 and item.status == "incomplete"
    assert item.text == "Once upon a…"  # 1/4 of the characters, at a word boundary


def test_deleted_items_disappear() -> None:
    """ItemDeleted removes the item."""
    history = History()
    feed(history, user_turn(1, "hello"))
    history.observe(ItemDeleted("u1"))
    assert history.items == []


def test_persists_and_a_restart_continues(tmp_path: Path) -> None:
    """Items survive a restart; the file replays into the same items, ready for the link."""
    path = tmp_path / "state" / "history.jsonl"
    history = History(path=path, clock=lambda: 1_700_000_000.0)
    feed(history, user_turn(1, "What time is it?"))
    feed(history, reply(1, "It is nine."))
    history.close()
    restarted = History(path=path)
    assert summary(restarted) == [
        ("message", "user", "What time is it?"),
        ("message", "assistant", "It is nine."),
    ]
    assert restarted.items[0].at == 1_700_000_000.0
    assert [i.text for i in restarted.replay(1000)] == ["What time is it?", "It is nine."]
    feed(restarted, user_turn(2, "Thanks"))
    restarted.close()
    assert [i.id for i in read_items(path)] == ["u1", "a1", "u2"]


def test_bounded_and_compacted(tmp_path: Path) -> None:
    """Memory keeps max_items; the file is rewritten compactly when it grows past twice that."""
    path = tmp_path / "history.jsonl"
    history = History(path=path, max_items=4)
    for n in range(10):
        feed(history, user_turn(n, f"turn {n}"))
    assert [i.id for i in history.items] == ["u6", "u7", "u8", "u9"]
    lines = path.read_text().splitlines()
    assert len(lines) <= 2 * 4 + 1
    history.close()
    assert [i.id for i in History(path=path, max_items=4).items] == ["u6", "u7", "u8", "u9"]
    assert not list(tmp_path.glob(".history-*"))  # no temp files left behind


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    """A line cut short by a power loss does not stop the history from loading."""
    path = tmp_path / "history.jsonl"
    good = json.dumps({"id": "u1", "type": "message", "role": "user", "text": "hi"})
    path.write_text(good + "\n" + '{"id": "u2", "type": "mess')
    assert [i.id for i in History(path=path).items] == ["u1"]


def _conversation(path: Path) -> bytes:
    """A history file whose last lines hold multi-byte characters: "…", umlauts, emoji."""
    history = History(path=path, clock=lambda: 1_700_000_000.0)
    feed(history, user_turn(1, "Wie spät ist es? 🕰️"))
    feed(history, reply(1, "Es ist neun Uhr, Zeit fürs Frühstück 🥐", audio_ms=1000)[:-2])
    history.observe(ItemTruncated("a1", 600))  # cut off: its text ends in "…"
    feed(history, [FunctionCallRequested("r2", "fc1", "c1", "lampe", '{"farbe": "grün 💡"}')])
    feed(history, [ToolFinished("c1", "✓ erledigt")])
    history.close()
    return path.read_bytes()


def test_cut_at_every_byte_of_the_last_lines_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut can stop the file anywhere, also inside a character; every cut loads,
    keeps every complete line, and leaves a clean file that takes new items."""
    data = _conversation(tmp_path / "full.jsonl")
    monkeypatch.setattr("os.fsync", lambda fd: None)  # 400 cuts; durability is not the point
    starts = [0] + [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    tail = data[starts[-4] :].decode()
    assert "…" in tail and "💡" in tail and "ü" in tail and "✓" in tail
    path = tmp_path / "history.jsonl"
    for cut in range(starts[-4], len(data) + 1):
        whole = data[: data.rfind(b"\n", 0, cut) + 1]  # the complete lines before the cut
        (tmp_path / "whole.jsonl").write_bytes(whole)
        expected = read_items(tmp_path / "whole.jsonl") if whole else []
        rest = data[len(whole) : cut]
        if rest and data[cut : cut + 1] == b"\n":  # cut just before a newline: line intact
            (tmp_path / "whole.jsonl").write_bytes(whole + rest)
            expected = read_items(tmp_path / "whole.jsonl")
        path.write_bytes(data[:cut])
        history = History(path=path)
        assert history.items == expected, cut
        assert not list(tmp_path.glob("history.jsonl.damaged-*")), cut
        path.read_bytes().decode("utf-8")  # rewritten without the torn line
        if data[cut - 1] >= 0x80 and cut < len(data):  # inside a character or right after
            feed(history, user_turn(9, "noch da?"))
            history.close()
            assert [i.id for i in History(path=path).items] == [i.id for i in expected] + ["u9"]
        history.close()


def test_damaged_lines_are_skipped_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bad bytes, bad JSON or wrong types in one line cost that line only, with one warning."""
    path = tmp_path / "history.jsonl"
    good = [
        json.dumps({"id": f"u{n}", "type": "message", "role": "user", "text": f"t{n}"})
        for n in (1, 2, 3)
    ]
    bad = [
        b"\xff\xfe garbage",
        b"[1, 2]",
        b'{"id": 5, "type": "message"}',
        b'{"id": "x", "type": "message", "at": "noon"}',
        b'{"id": "y", "type": "message", "at": 1e300}',
        b'{"id": "z", "type": "message", "heard_ms": "long"}',
        b'{"id": "w", "type": "dance"}',
        b'{"deleted": ["u1"]}',
        b"\0\0\0\0",
    ]
    lines = [good[0].encode(), *bad[:5], good[1].encode(), *bad[5:], good[2].encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING, logger="hark.history"):
        history = History(path=path)
    assert [i.id for i in history.items] == ["u1", "u2", "u3"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"history {path}: skipped a damaged line 2: not UTF-8 (cut inside a "
                        f"character?) and {len(bad) - 1} more"]  # fmt: skip
    history.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hark.history"):
        assert [i.id for i in History(path=path).items] == ["u1", "u2", "u3"]
    assert not caplog.records  # the damaged lines were dropped when the file was rewritten
    assert format_history(path).splitlines()[-1] == "-  user: t3"


def test_a_file_with_nothing_readable_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not one usable line: the file is kept as history.jsonl.damaged-<time>, a fresh one
    is started, and the history works."""
    path = tmp_path / "history.jsonl"
    junk = bytes(range(256)) * 4
    path.write_bytes(junk)
    with caplog.at_level(logging.WARNING, logger="hark.history"):
        history = History(path=path, clock=lambda: 1_700_000_000.0)
    assert history.items == []
    [aside] = tmp_path.glob("history.jsonl.damaged-*")
    assert aside.read_bytes() == junk
    assert "moved to history.jsonl.damaged-" in caplog.text
    feed(history, user_turn(1, "hallo"))
    history.close()
    assert [i.id for i in History(path=path).items] == ["u1"]
    path.write_bytes(junk)  # the same second again: a second name, nothing overwritten
    History(path=path, clock=lambda: 1_700_000_000.0).close()
    assert len(list(tmp_path.glob("history.jsonl.damaged-*"))) == 2


def test_retention_off_writes_nothing(tmp_path: Path) -> None:
    """enabled=False keeps history in memory only: no file, no directory."""
    path = tmp_path / "private" / "history.jsonl"
    history = History(path=path, enabled=False)
    feed(history, user_turn(1, "secret"))
    assert history.items[0].text == "secret"
    assert not path.parent.exists()


def test_format_history(tmp_path: Path) -> None:
    """`hark history` prints one line per item, with tool calls and cut-off replies marked."""
    path = tmp_path / "history.jsonl"
    assert format_history(path) == f"no history at {path}"
    history = History(path=path, clock=lambda: 0.0)
    feed(history, user_turn(1, "Light on"))
    feed(
        history,
        [
            FunctionCallRequested("r1", "fc1", "c1", "set_light", '{"on": true}'),
            ToolFinished("c1", "ok"),
        ],
    )
    feed(history, reply(1, "Sure thing, done and dusted", audio_ms=1000)[:-2])
    history.observe(ItemTruncated("a1", 500))
    history.close()
    text = format_history(path)
    assert text.splitlines() == [
        "-  user: Light on",
        '-  tool call: set_light({"on": true})',
        "-  tool output: ok",
        "-  assistant: Sure thing,…  [cut off after 0.5 s]",
    ]
    assert isinstance(read_items(path)[0], HistoryItem)


def test_replay_takes_the_newest_that_fit_oldest_first() -> None:
    """The newest messages whose texts fit the budget together, oldest first; messages
    without text (a reply still streaming) are passed over."""
    history = History()
    for n, (role, text) in enumerate(
        [
            ("user", "one"),
            ("assistant", "two two"),
            ("user", None),
            ("user", "three"),
            ("assistant", "four"),
        ]
    ):
        history.observe(ItemDone(Item(f"i{n}", "message", role, "completed", text), None))
    texts = lambda budget: [i.text for i in history.replay(budget)]  # noqa: E731
    assert texts(9) == ["three", "four"]
    assert texts(16) == ["two two", "three", "four"]
    assert texts(100) == ["one", "two two", "three", "four"]
    assert texts(3) == []


def test_replay_carries_a_cut_off_reply_as_heard_and_forgets_deleted_items() -> None:
    """A truncated reply is replayed as far as it was heard, never the unheard rest."""
    history = History()
    feed(history, user_turn(1, "Tell me a story"))
    events = reply(1, "Once upon a time there was a small dragon who loved tea", audio_ms=4000)
    feed(history, events[:-2])
    history.observe(ItemTruncated("a1", 1000))
    feed(history, events[-2:])
    feed(history, user_turn(2, "never mind"))
    history.observe(ItemDeleted("u2"))
    assert [(i.role, i.text) for i in history.replay(1000)] == [
        ("user", "Tell me a story"),
        ("assistant", "Once upon a…"),
    ]
