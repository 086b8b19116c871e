"""What the simulated model says: the parrot and the scripted brain.

It must not emit events, pace audio or know the wire format beyond item dicts; a brain
turns the conversation into a list of things to say (text and PCM) and calls to make.

Scenario files (``--brain script --script FILE``) are TOML::

    voice = "en"                      # optional espeak-ng voice
    fallback = "I have nothing more to say."   # optional, once the turns run out

    [[turns]]                         # one per response the client asks for
    say = "Hello, I am the kitchen."

    [[turns]]
    say = "Setting a timer."          # optional, spoken before the calls
    calls = [{ name = "set_timer", arguments = { seconds = 300 } }]
    after = "Your timer runs: {output}"   # spoken once the tool output arrives

``arguments`` may be a table (sent as JSON) or a JSON string; ``{output}`` in ``after``
is replaced by the function_call_output text(s).
"""

from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hark_sim import audio

log = logging.getLogger(__name__)


@dataclass
class Speech:
    """Something to say; ``pcm`` None means: synthesise ``text``."""

    text: str
    pcm: bytes | None = None


@dataclass
class Call:
    name: str
    arguments: str


Reply = list[Speech | Call]


@dataclass
class ConvItem:
    """One conversation item as the session keeps it (``audio``: raw input PCM)."""

    data: dict[str, Any]
    audio: bytes = b""
    # Truncated by the client: audio a still-streaming reply sends later is not kept.
    cut: bool = False


class Brain(Protocol):
    voice: str

    def reply(self, items: list[ConvItem], new_items: list[ConvItem]) -> Reply:
        """What to answer, given the whole conversation and the items since last reply."""
        ...


def _role(item: ConvItem) -> str:
    return str(item.data.get("role") or item.data.get("type"))


def _text_of(item: ConvItem) -> str:
    parts = item.data.get("content") or []
    texts = [str(p.get("text") or p.get("transcript") or "") for p in parts]
    return " ".join(t for t in texts if t)


class ParrotBrain:
    """Answers each user turn with that turn's own audio, byte for byte."""

    voice = "en"

    def reply(self, items: list[ConvItem], new_items: list[ConvItem]) -> Reply:
        for item in reversed(items):
            kind = _role(item)
            if kind == "user":
                if item.audio:
                    seconds = len(item.audio) / audio.BYTES_PER_MS / 1000
                    return [Speech(f"You spoke for {seconds:.2f} seconds.", item.audio)]
                text = _text_of(item)
                return [Speech(f"You said: {text}", audio.text_tone(text))]
            if kind == "function_call_output":
                text = f"The tool said: {item.data.get('output', '')}"
                return [Speech(text, audio.text_tone(text))]
            if kind in ("assistant", "function_call"):
                break
        text = "I have nothing to repeat."
        return [Speech(text, audio.text_tone(text))]


@dataclass
class ScriptTurn:
    say: str = ""
    calls: list[Call] = field(default_factory=list)
    after: str = "Done."


@dataclass
class Scenario:
    turns: list[ScriptTurn]
    fallback: str = "That is all I have to say."
    voice: str = "en"


def _arguments(value: Any) -> str:
    if isinstance(value, str):
        json.loads(value)  # must be JSON
        return value
    return json.dumps(value if value is not None else {})


BUNDLED_DIR = Path(__file__).resolve().parent / "scenarios"


def resolve_scenario(path: Path | str) -> Path:
    """``path`` itself, or a bundled scenario when given a bare name such as ``kitchen``."""
    candidate = Path(path)
    bundled = BUNDLED_DIR / f"{path}.toml"
    if not candidate.exists() and bundled.exists():
        return bundled
    return candidate


def load_scenario(path: Path | str) -> Scenario:
    """Read a TOML scenario file (or a bundled one by name); ValueError when malformed."""
    path = resolve_scenario(path)
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        turns = [
            ScriptTurn(
                say=str(t.get("say", "")),
                calls=[
                    Call(str(c["name"]), _arguments(c.get("arguments"))) for c in t.get("calls", [])
                ],
                after=str(t.get("after", "Done.")),
            )
            for t in raw.get("turns", [])
        ]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"bad scenario file {path}: {exc}") from exc
    return Scenario(
        turns=turns,
        fallback=str(raw.get("fallback", "That is all I have to say.")),
        voice=str(raw.get("voice", "en")),
    )


class ScriptBrain:
    """Plays a scenario: one turn per response, tool calls, then the ``after`` line."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.voice = scenario.voice
        self._next = 0
        self._pending_after: str | None = None

    def reply(self, items: list[ConvItem], new_items: list[ConvItem]) -> Reply:
        outputs = [
            str(i.data.get("output", "")) for i in new_items if _role(i) == "function_call_output"
        ]
        if self._pending_after is not None and outputs:
            text = self._pending_after.replace("{output}", "; ".join(outputs))
            self._pending_after = None
            return [Speech(text)]
        if self._next >= len(self.scenario.turns):
            return [Speech(self.scenario.fallback)]
        turn = self.scenario.turns[self._next]
        self._next += 1
        reply: Reply = []
        if turn.say:
            reply.append(Speech(turn.say))
        reply.extend(turn.calls)
        if turn.calls:
            self._pending_after = turn.after
        if not reply:
            reply.append(Speech(self.scenario.fallback))
        return reply


def make_brain(name: str, script: Path | str | None) -> Brain:
    """A fresh brain for one session."""
    if name == "parrot":
        return ParrotBrain()
    if name == "script":
        scenario = load_scenario(script) if script is not None else Scenario(turns=[])
        return ScriptBrain(scenario)
    raise ValueError(f"unknown brain {name!r}")
