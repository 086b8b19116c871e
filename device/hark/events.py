"""The vocabulary of the device: input events (past tense) and commands (imperative).

Every adapter speaks to the conversation core in these types and nothing else, so
the core can be driven by a test with plain values.  This module must not import
anything else from the package, nor any I/O library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# --------------------------------------------------------------------------- shared


@dataclass(frozen=True, slots=True)
class Item:
    """A conversation item as the device understands it (GA `realtime.item`).

    ``text`` is the transcript of an audio message or the text of a text message;
    for function calls ``name``/``arguments``/``call_id`` are set; for outputs
    ``call_id``/``output``.
    """

    id: str
    type: Literal["message", "function_call", "function_call_output"]
    role: Literal["user", "assistant", "system"] | None = None
    status: str | None = None
    text: str | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function tool offered to the model: type "function", name, description, parameters."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class TurnDetection:
    """Server-side turn detection (`session.audio.input.turn_detection`)."""

    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    create_response: bool = True
    interrupt_response: bool = True
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    idle_timeout_ms: int | None = None
    eagerness: Literal["low", "medium", "high", "auto"] | None = None


ReasoningEffort = Literal["minimal", "low", "medium", "high", "xhigh"]


@dataclass(frozen=True, slots=True)
class Truncation:
    """`truncation` by retention ratio: keep this fraction of the conversation when cutting."""

    retention_ratio: float
    post_instructions_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """The complete session the device wants; encoded whole into every `session.update`.

    ``turn_detection=None`` means manual turns (the wire's ``null``): the device
    commits and asks for responses itself. ``None`` elsewhere means "not sent" (the
    server's default); ``voice`` starting ``voice_`` is a custom voice id.
    """

    model: str = "gpt-realtime"
    instructions: str = ""
    voice: str | None = None
    speed: float | None = None
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: Literal["auto", "none", "required"] = "auto"
    turn_detection: TurnDetection | None = None
    transcription_model: str | None = None
    transcription_language: str | None = None
    transcription_prompt: str | None = None
    transcription_keywords: tuple[str, ...] = ()
    noise_reduction: Literal["near_field", "far_field", "off"] | None = None
    max_output_tokens: int | Literal["inf"] | None = None
    truncation: Literal["auto", "disabled"] | Truncation | None = None
    reasoning_effort: ReasoningEffort | None = None


# --------------------------------------------------------------------------- inputs
# Triggers and hardware.


@dataclass(frozen=True, slots=True)
class ButtonPressed:
    """The talk button went down."""


@dataclass(frozen=True, slots=True)
class ButtonReleased:
    """The talk button came up; ``held_s`` is how long it was down."""

    held_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ButtonLongPressed:
    """The talk button has been held past the long-press threshold (cancel gesture)."""


@dataclass(frozen=True, slots=True)
class MicFrame:
    """One captured frame, already at 24 kHz PCM16 mono, with the local VAD's verdict.

    ``voiced`` is False while the speaker plays unless the echo gate judged the
    frame to be the user rather than our own voice.
    """

    pcm: bytes
    voiced: bool


Word = Literal["wake", "stop"]
"""What the word spotter listens for: the wake word (opens a turn) and "stop" (ends a reply)."""


@dataclass(frozen=True, slots=True)
class WakeWordHeard:
    """The wake word ended here; frames posted after it are what the user said next.

    Posted by the capture chain in stream order, between the ``MicFrame``s, so the core
    knows exactly which audio came before it (never sent) and which after (the turn).
    """

    model: str = ""


@dataclass(frozen=True, slots=True)
class StopWordHeard:
    """The user said the stop word while a reply was coming or playing."""


@dataclass(frozen=True, slots=True)
class DeviceLost:
    """An audio or GPIO device failed; the adapter is retrying with backoff."""

    device: str
    message: str


@dataclass(frozen=True, slots=True)
class DeviceRestored:
    """A lost device is back."""

    device: str


@dataclass(frozen=True, slots=True)
class PlaybackStopped:
    """The speaker stopped (drained or told to stop); ``played_ms`` was really heard."""

    item_id: str | None
    played_ms: int
    interrupted: bool


@dataclass(frozen=True, slots=True)
class TextRequested:
    """Someone typed a turn (``hark say``): send it as a user text item."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolFinished:
    """A tool the core asked to run has finished; ``output`` goes back to the model."""

    call_id: str
    output: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; sent when ``Conversation.deadline()`` is reached."""


@dataclass(frozen=True, slots=True)
class ShutdownRequested:
    """SIGTERM or the end of a demo: wind down cleanly.

    ``when_quiet_s`` > 0 (a reload): let a turn or reply in progress finish first, for
    at most that long, so reloading the config does not cut a user off mid-sentence.
    """

    when_quiet_s: float = 0.0


# The link (connection state).


@dataclass(frozen=True, slots=True)
class LinkUp:
    """This session serves the core now (also after a rotation, or one that failed).

    ``expires_at`` is the session cap in epoch seconds; ``expires_in_s`` the same as
    seconds left when it was posted, for the core, which reads no clock.
    """

    session_id: str
    expires_at: float | None
    expires_in_s: float | None = None


@dataclass(frozen=True, slots=True)
class LinkDown:
    """The session ended; the link retries by itself when ``retrying``."""

    reason: str
    retrying: bool


LinkFailure = Literal["unauthorised", "refused", "config", "network", "server"]


LinkPart = Literal["realtime", "backend"]
"""Which half of the link failed: the Realtime server, or the key backend before it."""


@dataclass(frozen=True, slots=True)
class LinkFailed:
    """A classified connection failure, for the LED, the cue and the status line."""

    kind: LinkFailure
    message: str
    part: LinkPart = "realtime"


# Server events (parsed by ``hark.realtime``).


@dataclass(frozen=True, slots=True)
class SessionCreated:
    session_id: str
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    pass


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    audio_start_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    audio_end_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class AudioCommitted:
    item_id: str
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class AudioCleared:
    pass


@dataclass(frozen=True, slots=True)
class InputTimedOut:
    """`input_audio_buffer.timeout_triggered`: the user said nothing for a while."""

    item_id: str


@dataclass(frozen=True, slots=True)
class ItemAdded:
    item: Item
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class ItemDone:
    item: Item
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class ItemTruncated:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class ItemDeleted:
    item_id: str


@dataclass(frozen=True, slots=True)
class UserTranscript:
    """`conversation.item.input_audio_transcription.completed`."""

    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    response_id: str


@dataclass(frozen=True, slots=True)
class AudioDelta:
    """Decoded reply audio: 24 kHz PCM16 mono bytes."""

    response_id: str
    item_id: str
    content_index: int
    pcm: bytes


@dataclass(frozen=True, slots=True)
class AudioDone:
    response_id: str
    item_id: str


@dataclass(frozen=True, slots=True)
class TranscriptDelta:
    """Assistant transcript (audio replies) or text (text replies) as it streams."""

    response_id: str
    item_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class TranscriptDone:
    response_id: str
    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class FunctionCallRequested:
    """The model wants a tool run: a `response.output_item.done` whose function_call item
    is `completed` (its arguments are whole; an interrupted call is never requested)."""

    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ResponseError:
    """`status_details.error` of a failed response: what went wrong, as the server said it."""

    type: str | None = None
    code: str | None = None
    message: str | None = None

    def __str__(self) -> str:
        said = " ".join(p for p in (self.type, f"({self.code})" if self.code else None) if p)
        if self.message:
            return f"{said}: {self.message}" if said else self.message
        return said or "no details"


@dataclass(frozen=True, slots=True)
class ResponseDone:
    response_id: str
    status: str
    reason: str | None = None
    output_tokens: int = 0
    input_tokens: int = 0
    error: ResponseError | None = None


@dataclass(frozen=True, slots=True)
class ServerError:
    """An `error` event.  Most are recoverable; ``code`` says which."""

    code: str | None
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The server sent something we could not read (bad JSON, bad fields)."""

    message: str
    raw: str = field(default="", repr=False)


ServerEvent = (
    SessionCreated
    | SessionUpdated
    | SpeechStarted
    | SpeechStopped
    | AudioCommitted
    | AudioCleared
    | InputTimedOut
    | ItemAdded
    | ItemDone
    | ItemTruncated
    | ItemDeleted
    | UserTranscript
    | ResponseCreated
    | AudioDelta
    | AudioDone
    | TranscriptDelta
    | TranscriptDone
    | FunctionCallRequested
    | ResponseDone
    | ServerError
    | ProtocolError
)

Event = (
    ButtonPressed
    | ButtonReleased
    | ButtonLongPressed
    | MicFrame
    | WakeWordHeard
    | StopWordHeard
    | DeviceLost
    | DeviceRestored
    | PlaybackStopped
    | TextRequested
    | ToolFinished
    | Tick
    | ShutdownRequested
    | LinkUp
    | LinkDown
    | LinkFailed
    | ServerEvent
)

# --------------------------------------------------------------------------- commands
# Wire commands (encoded by ``hark.realtime``, sent by ``hark.net.link``).


@dataclass(frozen=True, slots=True)
class UpdateSession:
    config: SessionConfig


@dataclass(frozen=True, slots=True)
class SendAudio:
    """24 kHz PCM16 mono to append to the input buffer."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class CommitAudio:
    pass


@dataclass(frozen=True, slots=True)
class ClearAudio:
    pass


@dataclass(frozen=True, slots=True)
class CreateItem:
    """`conversation.item.create`; ``item.id`` may be empty to let the server choose."""

    item: Item
    previous_item_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteItem:
    item_id: str


@dataclass(frozen=True, slots=True)
class CreateResponse:
    instructions: str | None = None


@dataclass(frozen=True, slots=True)
class CancelResponse:
    response_id: str | None = None


@dataclass(frozen=True, slots=True)
class Truncate:
    item_id: str
    audio_end_ms: int
    content_index: int = 0


WireCommand = (
    UpdateSession
    | SendAudio
    | CommitAudio
    | ClearAudio
    | CreateItem
    | DeleteItem
    | CreateResponse
    | CancelResponse
    | Truncate
)

# Device commands (run by the app on its adapters).


@dataclass(frozen=True, slots=True)
class Connect:
    """Open the link (fetch a fresh key, then the WebSocket)."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason: str


@dataclass(frozen=True, slots=True)
class Rotate:
    """Replace the session with a fresh one now (a quiet moment before its cap)."""


@dataclass(frozen=True, slots=True)
class Play:
    """Queue reply audio (24 kHz PCM16) for the speaker."""

    item_id: str
    pcm: bytes


@dataclass(frozen=True, slots=True)
class FinishPlayback:
    """No more audio is coming for this item: report ``PlaybackStopped`` once drained."""

    item_id: str


@dataclass(frozen=True, slots=True)
class StopPlayback:
    """Stop now (short fade); the speaker answers with ``PlaybackStopped``."""


Cue = Literal["listening", "done", "error"]


@dataclass(frozen=True, slots=True)
class PlayCue:
    cue: Cue


MicDemand = Literal["off", "batched", "speech", "every"]
"""What the core needs from the mic: nothing; frames where only voice is urgent; frames
where only silence is urgent (a turn that ends on it); every frame at once."""

LedPattern = Literal[
    "off", "idle", "connecting", "listening", "follow_up", "thinking", "speaking", "error"
]
"""``follow_up``: the mic is open for an answer without the wake word or button, but
nothing leaves the device unless the user speaks (then ``listening``)."""


@dataclass(frozen=True, slots=True)
class SetLed:
    pattern: LedPattern


@dataclass(frozen=True, slots=True)
class RunTool:
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ReportStatus:
    """One line for systemd's STATUS= and the log."""

    text: str


@dataclass(frozen=True, slots=True)
class Stop:
    """The core has wound down; the app may exit."""


DeviceCommand = (
    Connect
    | Disconnect
    | Rotate
    | Play
    | FinishPlayback
    | StopPlayback
    | PlayCue
    | SetLed
    | RunTool
    | ReportStatus
    | Stop
)

Command = WireCommand | DeviceCommand
