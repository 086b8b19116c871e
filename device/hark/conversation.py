"""The conversation core: phases, turns, barge-in, tool calls and feedback, as a sans-I/O machine.

It must not import asyncio, ``time`` or any adapter: events and the current time come
in through ``handle(event, now)``, commands go out as return values, and ``deadline()``
says when the core next needs a ``Tick``.  Every transition is a row of ``_TABLE``.

Phases and what the LED says (the LED doubles as a privacy indicator: audio leaves
the device only while it shows "listening"):

- IDLE: connected (or, on demand, asleep); the button, the wake VAD or the wake word are
  armed.
- CONNECTING: the link is coming up (or retrying); a turn may still open, its audio
  is held in an outbox and flushed on ``LinkUp``.
- LISTENING: a turn is open and the mic streams (``SendAudio``).
- THINKING: the turn is committed; waiting for the reply (or a tool).
- SPEAKING: reply audio is playing.
- FOLLOW_UP: a reply just ended and ``follow_up_s`` > 0: for that long the user may
  answer without the wake word or button; voice (the local VAD) opens a turn, silence
  ends the window without one.  Nothing leaves the device until voice is heard.
- ERROR: a fault (link, device) until it clears, or a transient error for
  ``error_hold_s``.

While a tool waits for the owner's approval (``set_approval_pending``, from the glue
through ``App.call``), the LED shows "connecting" (the "waiting for something" blink; the mic is not
streaming, so not "listening"), a "listening" cue asks for the press, the buttons
belong to the glue's interceptor and the response timeout is suspended (voice can
still barge in).  ``end_after_reply`` (the "end the conversation" tool) lets the
current reply finish, then plays "done", rests (on demand: hangs up) and keeps the wake
VAD deaf for ``end_quiet_s``.

Words (``hark.audio.wake``): ``WakeWordHeard`` opens a turn from rest or a follow-up and
barges in on a reply; the turn starts where the word ended (its last ``wake_preroll_ms``
before, no more: audio before the wake word never leaves the device).  ``StopWordHeard``
cuts a reply short the way a barge-in does (fade, cancel, truncate to what was heard)
and opens no turn.  ``Conversation.words`` says which words the spotter must listen for.

Voice activity goes through ``hark.vadgate`` only: ``Settings.open_gate()`` opens a
turn from rest, ``Settings.barge_in_gate()`` (stricter: an echo margin) interrupts a
reply, the gate's close-on-silence ends a local turn, and ``Settings.preroll()`` keeps
the first syllable.  The echo tests build the same gates from ``Settings()``.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from hark import defaults
from hark.durations import bytes_to_ms
from hark.events import (
    AudioCleared,
    AudioCommitted,
    AudioDelta,
    AudioDone,
    ButtonLongPressed,
    ButtonPressed,
    ButtonReleased,
    CancelResponse,
    ClearAudio,
    Command,
    CommitAudio,
    Connect,
    CreateItem,
    CreateResponse,
    DeviceLost,
    DeviceRestored,
    Disconnect,
    Event,
    FinishPlayback,
    FunctionCallRequested,
    InputTimedOut,
    Item,
    ItemAdded,
    ItemDeleted,
    ItemDone,
    ItemTruncated,
    LedPattern,
    LinkDown,
    LinkFailed,
    LinkFailure,
    LinkUp,
    MicDemand,
    MicFrame,
    Play,
    PlaybackStopped,
    PlayCue,
    ProtocolError,
    ReportStatus,
    ResponseCreated,
    ResponseDone,
    Rotate,
    RunTool,
    SendAudio,
    ServerError,
    SessionConfig,
    SessionCreated,
    SessionUpdated,
    SetLed,
    ShutdownRequested,
    SpeechStarted,
    SpeechStopped,
    Stop,
    StopPlayback,
    StopWordHeard,
    TextRequested,
    Tick,
    ToolFinished,
    TranscriptDelta,
    TranscriptDone,
    Truncate,
    TurnDetection,
    UpdateSession,
    UserTranscript,
    WakeWordHeard,
    WireCommand,
    Word,
)
from hark.vadgate import PreRoll, VadGate

log = logging.getLogger(__name__)

LINK_DEVICE = "link"  # DeviceLost/DeviceRestored name the app uses when the link adapter crashes
BENIGN_ERROR_CODES = frozenset(
    {
        # Races the protocol doc (section 8) lists as harmless.
        "response_cancel_not_active",
        "conversation_already_has_active_response",
        "input_audio_buffer_commit_empty",
        # The link reconnects by itself; the core sees LinkDown/LinkUp.
        "session_expired",
    }
)
_LINK_FAILURE_TEXT: dict[LinkFailure, str] = {
    "unauthorised": "device not authorised — check the token / backend",
    "refused": "the Realtime server refused the backend's key — check the backend",
    "config": "link configuration is wrong — check the config",
    "network": "network unreachable — retrying",
    "server": "the Realtime server failed — retrying",
}
_BACKEND_FAILURE_TEXT: dict[LinkFailure, str] = {
    "config": "the key backend is set up wrong — check backend.url",
    "network": "cannot reach the key backend — retrying",
    "server": "the key backend failed — retrying",
}
"""What the status line says when the key fetch, not the Realtime server, failed."""

TriggerMode = Literal["button", "vad", "both", "wake", "wake+button"]
ButtonMode = Literal["hold", "tap"]
EndOfTurn = Literal["local", "server"]
SessionPolicy = Literal["always", "on_demand"]
TurnSource = Literal["hold", "tap", "vad", "wake"]


class Phase(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    FOLLOW_UP = "follow_up"
    ERROR = "error"


_LED: dict[Phase, LedPattern] = {
    Phase.IDLE: "idle",
    Phase.CONNECTING: "connecting",
    Phase.LISTENING: "listening",
    Phase.THINKING: "thinking",
    Phase.SPEAKING: "speaking",
    Phase.FOLLOW_UP: "follow_up",
    Phase.ERROR: "error",
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Conversation policy in plain values (the CLI maps the config file onto it)."""

    trigger_mode: TriggerMode = "button"
    button_mode: ButtonMode = "hold"
    # Who ends a voice/tap turn: local VAD silence (server turn_detection null) or server_vad.
    end_of_turn: EndOfTurn = "local"
    session_policy: SessionPolicy = "always"
    idle_disconnect_s: float = defaults.IDLE_DISCONNECT_S
    # Sessions are capped at 60 min (protocol doc 2.4): rotate at a quiet moment before,
    # at this age or this long before the cap the server announced, whichever is first.
    rotate_after_s: float = defaults.ROTATE_AFTER_S
    rotate_before_expiry_s: float = defaults.ROTATE_BEFORE_EXPIRY_S
    rotate_quiet_s: float = defaults.ROTATE_QUIET_S
    rotate_retry_s: float = defaults.ROTATE_RETRY_S
    session: SessionConfig = field(default_factory=SessionConfig)
    preroll_ms: int = 300
    vad_frame_ms: int = 20  # the length of one MicFrame (hark.audio.capture.FRAME_MS)
    # Voiced audio within (voiced + slack) ms that opens a turn (4 of 6 frames)...
    vad_start_ms: int = 80
    vad_slack_ms: int = 40
    # ...and that interrupts a reply: stricter, an echo margin (8 of 10 frames).
    barge_in_ms: int = 160
    barge_in_slack_ms: int = 40
    vad_stop_ms: int = 700  # silence that ends a turn (local end of turn)
    end_quiet_s: float = 2.0  # wake VAD deaf after an ended conversation (the goodbye's tail)
    no_speech_timeout_s: float = defaults.NO_SPEECH_TIMEOUT_S  # a voiceless tap turn closes
    max_turn_s: float = defaults.MAX_TURN_S
    response_timeout_s: float = defaults.RESPONSE_TIMEOUT_S
    # input_audio_buffer_commit_empty below 100 ms (protocol doc 2.5).
    min_commit_ms: int = 100
    error_hold_s: float = 3.0
    listening_cue: bool = True
    done_cue: bool = True
    # "stop" cuts a reply short (any trigger mode); the spotter must have the stop model.
    stop_word: bool = False
    # After a reply, the mic stays open this long for an answer without a trigger; 0 = off.
    follow_up_s: float = 0.0
    # A wake word turn starts this long before the word was recognised: the model says
    # so 10-60 ms into what follows when the user does not pause (130-180 ms after the
    # word when they do), so the first syllable is kept and little of the word.
    wake_preroll_ms: int = 100

    def __post_init__(self) -> None:
        if self.preroll_ms < max(self.vad_start_ms, self.barge_in_ms):
            raise ValueError("preroll_ms must cover vad_start_ms and barge_in_ms")
        if self.min_commit_ms < 100:
            raise ValueError("min_commit_ms below 100 ms makes the server refuse commits")
        if min(self.vad_frame_ms, self.vad_start_ms, self.barge_in_ms) <= 0:
            raise ValueError("vad_frame_ms, vad_start_ms and barge_in_ms must be positive")
        if min(self.vad_slack_ms, self.barge_in_slack_ms) < 0:
            raise ValueError("vad_slack_ms and barge_in_slack_ms cannot be negative")
        if self.follow_up_s < 0:
            raise ValueError("follow_up_s cannot be negative (0 is off)")
        if not 0 <= self.wake_preroll_ms <= self.preroll_ms:
            raise ValueError("wake_preroll_ms must be 0..preroll_ms")

    def open_gate(self) -> VadGate:
        """The gate that opens a turn from rest (IDLE, CONNECTING, ERROR) and ends it."""
        return VadGate.from_ms(
            self.vad_start_ms,
            self.vad_start_ms + self.vad_slack_ms,
            self.vad_stop_ms,
            self.vad_frame_ms,
        )

    def barge_in_gate(self) -> VadGate:
        """The stricter gate that interrupts a reply (THINKING, SPEAKING): echo margin."""
        return VadGate.from_ms(
            self.barge_in_ms,
            self.barge_in_ms + self.barge_in_slack_ms,
            self.vad_stop_ms,
            self.vad_frame_ms,
        )

    def preroll(self) -> PreRoll:
        """The pre-roll buffer a voice-opened turn starts with."""
        return PreRoll(self.preroll_ms, self.vad_frame_ms)


class LinkState(enum.Enum):
    """Where the core stands with the link (one field, not three flags)."""

    DOWN = "down"  # no session and none asked for (on demand, or the link adapter gone)
    CONNECTING = "connecting"  # Connect sent, or the link retries by itself
    UP = "up"  # a session serves; wire commands go out
    ROTATING = "rotating"  # Rotate sent: commands wait for the next LinkUp
    HANGING_UP = "hanging up"  # Disconnect sent (on demand), its LinkDown still to come


@dataclass(frozen=True, slots=True)
class _SessionClock:
    """The serving session: its id, when it started, when the server will end it."""

    session_id: str
    started_at: float
    expires_at: float | None  # on the core's clock


@dataclass(slots=True)
class _Reply:
    """The server's side of a turn: the response under way, what is queued, what was
    cancelled. ``reset`` forgets all but the cancelled ids (their late events stay ignored)."""

    response_id: str | None = None
    expected: bool = False  # response.create sent, not acknowledged yet
    cancel_next_created: bool = False  # an id-less cancel went out: cancel what comes next
    pending_create: CreateResponse | None = None  # asked for while another response ran
    tool_calls: dict[str, str] = field(default_factory=dict)  # call_id -> response_id
    cancelled: dict[str, None] = field(default_factory=dict)  # ordered set, trimmed

    def reset(self) -> None:
        self.response_id = None
        self.expected = self.cancel_next_created = False
        self.pending_create = None
        self.tool_calls.clear()

    def cancel(self, rid: str) -> None:
        self.cancelled[rid] = None
        while len(self.cancelled) > 32:
            del self.cancelled[next(iter(self.cancelled))]

    def busy(self) -> bool:
        """A response exists (or is about to) on the server."""
        return self.response_id is not None or self.expected or self.cancel_next_created

    def awaited(self) -> bool:
        """A reply the user still wants is on its way (cancelled ones do not count)."""
        rid = self.response_id
        return (
            (rid is not None and rid not in self.cancelled)
            or self.expected
            or self.pending_create is not None
            or any(r not in self.cancelled for r in self.tool_calls.values())
        )


@dataclass(slots=True)
class _Playback:
    """Reply audio handed to the speaker: the items playing, how much of each arrived, and
    the interrupted ones whose truncation waits for the speaker's ``PlaybackStopped``
    (it survives ``_settle`` and new turns: a quick tap can end before the speaker reports)."""

    playing: set[str] = field(default_factory=set)
    received_ms: dict[str, float] = field(default_factory=dict)
    cuts: dict[str, float] = field(default_factory=dict)  # item -> received ms at the cut

    def reset(self) -> None:
        self.playing.clear()
        self.cuts.clear()

    def received(self, item: str, pcm: bytes) -> None:
        self.received_ms[item] = self.received_ms.get(item, 0.0) + bytes_to_ms(len(pcm))
        self.playing.add(item)

    def cut(self) -> bool:
        """Everything playing is interrupted; True if anything was."""
        if not self.playing:
            return False
        for item in self.playing:
            self.cuts[item] = self.received_ms.get(item, 0.0)
        while len(self.cuts) > 8:  # a speaker that never reported
            del self.cuts[next(iter(self.cuts))]
        self.playing.clear()
        return True

    def stopped(self, ev: PlaybackStopped) -> Truncate | None:
        """The speaker reports; the truncation owed for what was really heard, if any."""
        item, owed = ev.item_id, None
        if ev.interrupted and self.cuts:
            if item is not None and item in self.cuts:
                # Clamp to what arrived: a longer audio_end_ms is a server error (5.4).
                owed = Truncate(item, max(0, min(ev.played_ms, int(self.cuts[item]))))
            self.cuts.clear()  # the speaker stopped everything it had
        elif item is None:
            self.cuts.clear()
        else:
            self.cuts.pop(item, None)  # it had finished anyway: nothing to cut
        if item is None or ev.interrupted:
            self.playing.clear()
        else:
            self.playing.discard(item)
        return owed


@dataclass(slots=True)
class _Turn:
    source: TurnSource
    opened_at: float
    gate: VadGate  # open once speech was heard; closing on silence ends a local turn
    audio_ms: float = 0.0
    voiced_seen: bool = False
    server_speech: bool = False


def effective_session(settings: Settings) -> SessionConfig:
    """The session to send: server_vad only for voice turns ended by the server.

    The device does barge-in itself (echo gating, truncation to what was heard), so
    the server must not cancel on its own: ``interrupt_response`` is false.
    """
    if settings.trigger_mode != "button" and settings.end_of_turn == "server":
        base = settings.session.turn_detection or TurnDetection()
        detection: TurnDetection | None = dataclasses.replace(
            base, create_response=True, interrupt_response=False
        )
    else:
        detection = None
    return dataclasses.replace(settings.session, turn_detection=detection)


class Conversation:
    """Events in, commands out; ``deadline()`` for timeouts.  Not thread-safe: one loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.session_config = effective_session(settings)
        self.phase = Phase.IDLE
        self.last_error: str | None = None
        self.ignored_counts: Counter[str] = Counter()
        self.turns_completed = 0
        self._vad = settings.trigger_mode in ("vad", "both")
        self._wake = settings.trigger_mode in ("wake", "wake+button")
        self._follow_up_until: float | None = None  # FOLLOW_UP: when the window closes
        self._reply_cut = False  # the last reply was cut short: no follow-up after it
        self._server_vad = self.session_config.turn_detection is not None
        # link
        self._link = LinkState.DOWN
        self._session: _SessionClock | None = None
        self._rotate_retry_at = float("-inf")
        self._link_failure_reported = False
        self._outbox: list[WireCommand] = []
        # input
        self._turn: _Turn | None = None
        self._open_gate = settings.open_gate()
        self._barge_gate = settings.barge_in_gate()
        self._gate: VadGate | None = None  # the trigger gate fed last (reset on a switch)
        self._preroll = settings.preroll()
        self._quiet_until = float("-inf")  # wake VAD deaf until then (end_after_reply)
        self._end_requested = False
        self._approval_pending = False
        self._stop_when_quiet_by: float | None = None  # a reload waiting for a quiet moment
        # output
        self._reply = _Reply()
        self._playback = _Playback()
        # time
        self._response_deadline: float | None = None
        self._error_until: float | None = None
        self._faults: dict[str, str] = {}
        self._last_activity = 0.0
        self._stopped = False

    # ------------------------------------------------------------------ public

    @property
    def connected(self) -> bool:
        """A Realtime session serves (``LinkUp`` seen, no ``LinkDown`` since)."""
        return self._link in (LinkState.UP, LinkState.ROTATING)

    @property
    def link_state(self) -> LinkState:
        return self._link

    @property
    def mic_demand(self) -> MicDemand:
        """Every frame while a button's turn streams, the silence at once in a voice turn;
        voice triggers need the rest, push to talk not."""
        if self._turn is not None:
            return "speech" if self._turn.source in ("vad", "wake") else "every"
        if self._vad or self.phase is Phase.FOLLOW_UP or self.words:
            return "batched"  # voice, or the spotter (it runs on the capture chain)
        return "off"

    @property
    def words(self) -> frozenset[Word]:
        """What the word spotter must listen for now: the wake word at rest, in a
        follow-up and during a reply (to barge in), "stop" during a reply."""
        if self._stopped or self.phase is Phase.LISTENING:
            return frozenset()
        reply = self.phase in (Phase.THINKING, Phase.SPEAKING)
        if reply and self._approval_pending:
            return frozenset()  # the button answers the approval; voice waits
        words: set[Word] = set()
        if self._wake:
            words.add("wake")
        if reply and self.settings.stop_word:
            words.add("stop")
        return frozenset(words)

    def status_text(self) -> str:
        text = self.phase.value
        if self._approval_pending:
            text += "; waiting for approval"
        if self.last_error:
            text += f"; last error: {self.last_error}"
        return text

    def start(self, now: float) -> list[Command]:
        """First commands: the LED, and ``Connect`` when the policy stays connected."""
        self._last_activity = now
        if self.settings.session_policy == "always":
            return [*self._connect(), *self._go(Phase.CONNECTING)]
        return [SetLed(_LED[self.phase]), ReportStatus(self.status_text())]

    def handle(self, event: Event, now: float) -> list[Command]:
        """Feed one event; return what the adapters must do, in order."""
        handler = None if self._stopped else _TABLE.get((self.phase, type(event)))
        if handler is None:
            self.ignored_counts[type(event).__name__] += 1
            cmds: list[Command] = []
        else:
            cmds = handler(self, event, now)
        by = self._stop_when_quiet_by
        if by is not None and not self._stopped and (self._quiet() or now >= by):
            cmds += self._stop_now()
        return cmds

    def _quiet(self) -> bool:
        """No turn, no reply, no tool waiting for approval: a moment to stop or reload."""
        return self.phase in _QUIET and self._turn is None and not self._approval_pending

    def deadline(self) -> float | None:
        """When the next ``Tick`` is due (same clock as ``now``), or None."""
        if self._stopped:
            return None
        times: list[float] = []
        s = self.settings
        if self._stop_when_quiet_by is not None:
            times.append(self._stop_when_quiet_by)
        if (turn := self._turn) is not None:
            times.append(turn.opened_at + s.max_turn_s)
            if self._no_speech_applies(turn):
                times.append(turn.opened_at + s.no_speech_timeout_s)
        if (due := self._response_deadline_due()) is not None:
            times.append(due)
        if self.phase is Phase.ERROR and self._error_until is not None:
            times.append(self._error_until)
        if self.phase is Phase.FOLLOW_UP and self._follow_up_until is not None:
            times.append(self._follow_up_until)
        if self.phase is Phase.IDLE and self._link is LinkState.UP:
            if s.session_policy == "on_demand":
                times.append(self._last_activity + s.idle_disconnect_s)
            if (due := self._rotation_due()) is not None:
                times.append(due)
        return min(times) if times else None

    def interrupt(self, now: float, say: str | None = None) -> list[Command]:
        """Cut the reply short as a barge-in would, then optionally say ``say`` instead.

        The hook for output guardrails (issue 7): stop playback, cancel, truncate to
        what was heard once the speaker reports, and queue a fallback response.
        """
        if self._stopped:
            return []
        cmds = self._interrupt()
        if say:
            self._reply_cut = False  # the fallback is a reply like any other
            instructions = f"Say exactly this and nothing else: {say}"
            cmds += self._request_response(CreateResponse(instructions=instructions), now)
        return cmds + self._settle(now)

    @property
    def approval_pending(self) -> bool:
        """A tool waits for the owner's press; the glue's interceptor owns the button."""
        return self._approval_pending

    def set_approval_pending(self, pending: bool, now: float) -> list[Command]:
        """Enter or leave "waiting for approval": LED, cue, buttons, response timeout.

        While pending, presses and long presses in THINKING/SPEAKING do nothing here
        (the glue turns them into approve/reject) and ``response_timeout_s`` is
        suspended, so the core never gives up before the runner's approval timeout.
        """
        if self._stopped or pending == self._approval_pending:
            return []
        self._approval_pending = pending
        cmds: list[Command] = []
        if pending:
            cmds.append(PlayCue("listening"))
        elif self.phase is Phase.THINKING:
            self._response_deadline = now + self.settings.response_timeout_s
        cmds.insert(0, SetLed(self._led()))
        cmds.append(ReportStatus(self.status_text()))
        return cmds

    def end_after_reply(self, now: float) -> list[Command]:
        """End the conversation once the current reply has played (the "end" tool).

        Then: the "done" cue, IDLE, ``Disconnect`` under the on-demand policy, and the
        wake VAD deaf for ``end_quiet_s`` so the goodbye's tail cannot open a turn.
        A new turn the user opens before that cancels the request.
        """
        if self._stopped:
            return []
        self._end_requested = True
        if self.phase in (Phase.THINKING, Phase.SPEAKING, Phase.LISTENING):
            return []  # _settle finishes it when the reply is over
        return self._settle(now)

    def update_session(self, config: SessionConfig) -> list[Command]:
        """Switch instructions, tools or voice live (handoffs): one ``session.update``.

        Turn detection stays what the settings imply; the link opens every later
        session (reconnects, rotations) with the new config.
        """
        self.session_config = effective_session(dataclasses.replace(self.settings, session=config))
        # Straight to the link, linked or not: it opens every later session with it.
        return [UpdateSession(self.session_config)]

    # ------------------------------------------------------------------ helpers

    def _led(self) -> LedPattern:
        if self._approval_pending and self.phase in (Phase.THINKING, Phase.SPEAKING):
            return "connecting"  # waiting on someone; not "listening": the mic is closed
        return _LED[self.phase]

    def _response_deadline_due(self) -> float | None:
        """The response timeout, unless suspended by a pending approval."""
        if self.phase is not Phase.THINKING or self._approval_pending:
            return None
        return self._response_deadline

    def _go(self, phase: Phase, force_status: bool = False) -> list[Command]:
        if phase is self.phase and not force_status:
            return []
        changed = phase is not self.phase
        self.phase = phase
        if phase is not Phase.THINKING:
            self._response_deadline = None
        cmds: list[Command] = [SetLed(self._led())] if changed else []
        cmds.append(ReportStatus(self.status_text()))
        return cmds

    def _rest_phase(self) -> Phase:
        if self._faults:
            return Phase.ERROR
        if self._link is LinkState.CONNECTING:
            return Phase.CONNECTING
        if self.connected or self.settings.session_policy == "on_demand":
            return Phase.IDLE
        return Phase.ERROR  # stays-connected policy, link closed for good

    def _settle(self, now: float) -> list[Command]:
        """Pick the phase the state implies; count a turn when a reply has ended."""
        if self._turn is not None:
            return self._go(Phase.LISTENING)
        if self._playback.playing:
            return self._go(Phase.SPEAKING)
        if self._reply.awaited():
            if self.phase is not Phase.THINKING:
                self._response_deadline = now + self.settings.response_timeout_s
            return self._go(Phase.THINKING)
        replied = self.phase in (Phase.THINKING, Phase.SPEAKING)
        if replied:
            self.turns_completed += 1
        self._playback.received_ms.clear()
        self._last_activity = now
        ended = self._end_requested
        cmds = self._end_conversation(now) if ended else []
        if self.phase is Phase.ERROR and self._error_until is not None and now < self._error_until:
            return cmds
        rest = self._rest_phase()
        until = self._follow_up_until
        window = self.phase is Phase.FOLLOW_UP and until is not None and now < until
        if window and rest is Phase.IDLE and not ended:
            return cmds  # a late event; the window stays open until its deadline
        follow_up = replied and not ended and not self._reply_cut and self.settings.follow_up_s > 0
        if follow_up and rest is Phase.IDLE:
            return cmds + self._open_follow_up(now)
        self._follow_up_until = None
        return cmds + self._go(rest)

    def _open_follow_up(self, now: float) -> list[Command]:
        """A reply ended: listen (locally) for an answer for ``follow_up_s``."""
        self._follow_up_until = now + self.settings.follow_up_s
        self._gate = None  # the open gate starts afresh; so does the pre-roll
        self._preroll.clear()
        return self._go(Phase.FOLLOW_UP)

    def _end_conversation(self, now: float) -> list[Command]:
        """The reply asked for by ``end_after_reply`` is over: cue, deaf wake VAD, hang up."""
        self._end_requested = False
        self._quiet_until = now + self.settings.end_quiet_s
        self._gate = None
        self._preroll.clear()
        cmds: list[Command] = [PlayCue("done")]
        if self.settings.session_policy == "on_demand" and self._link is LinkState.UP:
            cmds += self._hang_up("conversation ended")
        return cmds

    def _connect(self) -> list[Command]:
        """Open the link; it opens every session with this config before ``LinkUp``."""
        self._link = LinkState.CONNECTING
        return [UpdateSession(self.session_config), Connect()]

    def _connect_if_down(self) -> list[Command]:
        """A turn or a typed request needs a session: ask for one, or, while the link is
        retrying, ask again (someone is waiting: it may cut a network backoff short)."""
        if self._link in (LinkState.DOWN, LinkState.HANGING_UP):
            return self._connect()
        if self._link is LinkState.CONNECTING:
            return [Connect()]
        return []

    def _hang_up(self, reason: str) -> list[Command]:
        self._link = LinkState.HANGING_UP
        return [Disconnect(reason)]

    def _rotation_due(self) -> float | None:
        """When to replace the session: its age or the server's cap, at a quiet moment."""
        session, s = self._session, self.settings
        if session is None:
            return None
        due = session.started_at + s.rotate_after_s
        if session.expires_at is not None:
            due = min(due, session.expires_at - s.rotate_before_expiry_s)
        return max(due, self._last_activity + s.rotate_quiet_s, self._rotate_retry_at)

    def _wire(self, *cmds: WireCommand) -> list[Command]:
        """Wire commands go out while a session serves, wait in the outbox while one is
        being opened (connecting, rotating), and are dropped otherwise."""
        if self._link is LinkState.UP:
            return list(cmds)
        if self._link in (LinkState.CONNECTING, LinkState.ROTATING):
            self._outbox.extend(cmds)
        else:
            self.ignored_counts["dropped_wire_command"] += len(cmds)
        return []

    def _request_response(self, cmd: CreateResponse, now: float) -> list[Command]:
        """Ask for a response, or queue it until the current one is done (protocol doc 4)."""
        self._response_deadline = now + self.settings.response_timeout_s
        if self._reply.busy():
            self._reply.pending_create = cmd
            return []
        self._reply.expected = True
        return self._wire(cmd)

    def _interrupt(self) -> list[Command]:
        """Barge-in's first half: stop the speaker, cancel the response (reused by guardrails)."""
        self._reply_cut = True
        cmds: list[Command] = [StopPlayback()] if self._playback.cut() else []
        reply = self._reply
        rid = reply.response_id
        if rid is not None and rid not in reply.cancelled:
            reply.cancel(rid)
            cmds += self._wire(CancelResponse(rid))
        elif rid is None and reply.expected:
            # response.create is on the wire but not yet acknowledged; the socket is
            # ordered, so an id-less cancel reaches the server after it.
            reply.expected = False
            reply.cancel_next_created = True
            cmds += self._wire(CancelResponse())
        reply.pending_create = None
        return cmds

    def _open_turn(self, source: TurnSource, now: float, gate: VadGate | None) -> list[Command]:
        """Open a turn; ``gate`` is the voice gate that opened it (its pre-roll goes first)."""
        cmds = self._connect_if_down()
        if gate is None:  # a button turn: speech has yet to be heard
            gate = self._open_gate
            gate.reset()
        # The turn owns the gate now; the trigger gates start afresh after it.
        self._gate = None
        self._end_requested = False  # the user wants to go on
        self._reply_cut = False
        self._follow_up_until = None
        turn = self._turn = _Turn(source, now, gate, voiced_seen=gate.is_open)
        cmds += self._go(Phase.LISTENING)
        if self.settings.listening_cue:
            cmds.append(PlayCue("listening"))
        held_ms = self._preroll.held_ms
        frames = self._preroll.take()
        if source == "wake":
            # From where the word ended on: the frames before that never leave.
            keep = -(-self.settings.wake_preroll_ms // self.settings.vad_frame_ms)
            frames = frames[-keep:] if keep else []
            held_ms = len(frames) * self.settings.vad_frame_ms
        if (turn.voiced_seen or source == "wake") and frames:
            turn.audio_ms = held_ms
            cmds += self._wire(SendAudio(b"".join(frames)))
        return cmds

    def _end_turn(self, now: float) -> list[Command]:
        """Commit and ask for a reply, or clear a turn too short to commit."""
        turn = self._turn
        assert turn is not None
        self._turn = None
        if turn.audio_ms < self.settings.min_commit_ms:
            return self._drop_turn(turn, now)
        cmds = self._wire(CommitAudio())
        cmds += self._request_response(CreateResponse(), now)
        if self.settings.done_cue:
            cmds.append(PlayCue("done"))
        return cmds + self._settle(now)

    def _drop_turn(self, turn: _Turn, now: float) -> list[Command]:
        self._turn = None
        cmds: list[Command] = []
        if self._link is not LinkState.UP:  # the audio never left: forget it, no clear
            self._outbox = [c for c in self._outbox if not isinstance(c, SendAudio)]
        elif turn.audio_ms > 0:
            cmds = self._wire(ClearAudio())
        return cmds + self._settle(now)

    def _barge_in(self, source: TurnSource, now: float, gate: VadGate | None) -> list[Command]:
        return self._interrupt() + self._open_turn(source, now, gate)

    def _fail(self, now: float, message: str) -> list[Command]:
        """A transient error: abort what is going on, error LED and cue, back to rest later."""
        log.warning("conversation error: %s", message)
        self.last_error = message
        cmds = self._interrupt()
        if self._turn is not None:
            cmds += self._wire(ClearAudio())
            self._turn = None
        # Forget the reply entirely: if it shows up later, _response_created cancels it.
        if self._reply.response_id is not None:
            self._reply.cancel(self._reply.response_id)
        self._reply.reset()
        self._outbox.clear()  # a turn that failed must not reach a later session
        self._error_until = now + self.settings.error_hold_s
        if self.phase is not Phase.ERROR:
            cmds.append(PlayCue("error"))
        return cmds + self._go(Phase.ERROR, force_status=True)

    def _reset_session_state(self) -> list[Command]:
        """The session is gone: nothing of it can be cancelled or truncated any more."""
        cmds: list[Command] = [StopPlayback()] if self._playback.playing else []
        self._playback.reset()
        had_work = self._turn is not None or self._reply.busy() or bool(self._reply.tool_calls)
        self._turn = None
        self._reply.reset()
        self._outbox.clear()
        if had_work:
            cmds.append(PlayCue("error"))
        return cmds

    def _no_speech_applies(self, turn: _Turn) -> bool:
        return turn.source != "hold" and not turn.voiced_seen and not turn.server_speech

    def _frames_in(self, ev: MicFrame) -> int:
        """Gate updates for one MicFrame (capture sends one ``vad_frame_ms`` frame each)."""
        return max(1, round(bytes_to_ms(len(ev.pcm)) / self.settings.vad_frame_ms))

    def _vad_trigger(self, ev: MicFrame, gate: VadGate) -> bool:
        """Feed the pre-roll and ``gate``; True when voice should open a turn."""
        if gate is not self._gate:  # switched between the open and barge-in gates
            gate.reset()
            self._gate = gate
        self._preroll.push(ev.pcm, bytes_to_ms(len(ev.pcm)))
        changes = [gate.update(ev.voiced) for _ in range(self._frames_in(ev))]
        return "opened" in changes

    # ------------------------------------------------------------------ handlers: triggers

    def _press_open(self, ev: ButtonPressed, now: float) -> list[Command]:
        if any(device != LINK_DEVICE for device in self._faults):
            return [PlayCue("error"), ReportStatus(self.status_text())]
        # With only the link failing, a press is also a retry (on demand: nobody else connects).
        return self._open_turn(self.settings.button_mode, now, None)

    def _press_in_turn(self, ev: ButtonPressed, now: float) -> list[Command]:
        turn = self._turn
        assert turn is not None
        if self.settings.button_mode == "tap":
            return self._end_turn(now)  # a second tap ends the turn
        turn.source = "hold"  # a voice turn taken over by the button: release ends it
        return []

    def _press_barge_in(self, ev: ButtonPressed, now: float) -> list[Command]:
        if self._approval_pending:  # the glue's interceptor approves; nothing here
            self.ignored_counts["approval:ButtonPressed"] += 1
            return []
        return self._barge_in(self.settings.button_mode, now, None)

    def _release(self, ev: ButtonReleased, now: float) -> list[Command]:
        turn = self._turn
        assert turn is not None
        if turn.source != "hold":
            self.ignored_counts[type(ev).__name__] += 1
            return []
        return self._end_turn(now)

    def _long_press_in_turn(self, ev: ButtonLongPressed, now: float) -> list[Command]:
        turn = self._turn
        assert turn is not None
        if turn.source == "hold" and turn.voiced_seen:
            # Holding to talk is a long press too; only a silent hold cancels.
            self.ignored_counts[type(ev).__name__] += 1
            return []
        return self._drop_turn(turn, now)

    def _long_press_busy(self, ev: ButtonLongPressed, now: float) -> list[Command]:
        if self._approval_pending:  # the glue's interceptor rejects; nothing here
            self.ignored_counts["approval:ButtonLongPressed"] += 1
            return []
        return self._interrupt() + self._settle(now)

    def _frame_idle(self, ev: MicFrame, now: float) -> list[Command]:
        if not (self._vad or self._wake) or self._faults:
            return []
        if now < self._quiet_until:  # the goodbye's tail: neither a turn nor pre-roll
            self._gate = None
            self._preroll.clear()
            return []
        if not self._vad:  # the wake word's: only the frames a wake turn starts with
            self._preroll.push(ev.pcm, bytes_to_ms(len(ev.pcm)))
            return []
        if self._vad_trigger(ev, self._open_gate):
            return self._open_turn("vad", now, self._open_gate)
        return []

    def _frame_follow_up(self, ev: MicFrame, now: float) -> list[Command]:
        if self._faults:
            return []
        if self._vad_trigger(ev, self._open_gate):
            return self._open_turn("vad", now, self._open_gate)
        return []

    def _frame_busy(self, ev: MicFrame, now: float) -> list[Command]:
        if self._vad and self._vad_trigger(ev, self._barge_gate):
            return self._barge_in("vad", now, self._barge_gate)
        if self._wake and not self._vad:
            self._preroll.push(ev.pcm, bytes_to_ms(len(ev.pcm)))
        return []

    def _wake_open(self, ev: WakeWordHeard, now: float) -> list[Command]:
        if any(device != LINK_DEVICE for device in self._faults):
            return [PlayCue("error"), ReportStatus(self.status_text())]
        if now < self._quiet_until:  # the goodbye's tail (end_after_reply)
            self.ignored_counts["quiet:WakeWordHeard"] += 1
            return []
        return self._open_turn("wake", now, None)

    def _wake_barge_in(self, ev: WakeWordHeard, now: float) -> list[Command]:
        if self._approval_pending:  # the button answers; the word is not an answer
            self.ignored_counts["approval:WakeWordHeard"] += 1
            return []
        return self._barge_in("wake", now, None)

    def _stop_word(self, ev: StopWordHeard, now: float) -> list[Command]:
        if self._approval_pending:
            self.ignored_counts["approval:StopWordHeard"] += 1
            return []
        return self._interrupt() + self._settle(now)

    def _frame_in_turn(self, ev: MicFrame, now: float) -> list[Command]:
        turn = self._turn
        assert turn is not None
        ms = bytes_to_ms(len(ev.pcm))
        turn.audio_ms += ms
        cmds = self._wire(SendAudio(ev.pcm))
        changes = [turn.gate.update(ev.voiced) for _ in range(self._frames_in(ev))]
        if "opened" in changes:
            turn.voiced_seen = True
        if "closed" in changes and turn.source != "hold" and not self._server_vad:
            cmds += self._end_turn(now)
        return cmds

    def _text(self, ev: TextRequested, now: float) -> list[Command]:
        if any(device != LINK_DEVICE for device in self._faults):
            return [PlayCue("error"), ReportStatus(self.status_text())]
        cmds = self._interrupt() + self._connect_if_down()
        self._reply_cut = False
        self._follow_up_until = None
        item = Item(id="", type="message", role="user", text=ev.text)
        cmds += self._wire(CreateItem(item))
        cmds += self._request_response(CreateResponse(), now)
        return cmds + self._settle(now)

    # ------------------------------------------------------------------ handlers: server

    def _speech_started(self, ev: SpeechStarted, now: float) -> list[Command]:
        assert self._turn is not None
        self._turn.server_speech = True
        return []

    def _server_committed(self, ev: AudioCommitted, now: float) -> list[Command]:
        if not self._server_vad:
            return []  # the ack of our own commit
        self._turn = None  # server_vad ended the turn and creates the response itself
        self._reply.expected = True
        self._response_deadline = now + self.settings.response_timeout_s
        cmds: list[Command] = [PlayCue("done")] if self.settings.done_cue else []
        return cmds + self._settle(now)

    def _response_created(self, ev: ResponseCreated, now: float) -> list[Command]:
        reply = self._reply
        reply.response_id = ev.response_id
        if reply.cancel_next_created:
            reply.cancel_next_created = False
            reply.cancel(ev.response_id)
            return []
        reply.expected = False
        if self.phase in (Phase.THINKING, Phase.SPEAKING):
            self._response_deadline = now + self.settings.response_timeout_s
            return []
        # Nobody asked for it (e.g. server_vad answered a pause): the user comes first.
        reply.cancel(ev.response_id)
        return self._wire(CancelResponse(ev.response_id))

    def _audio_delta(self, ev: AudioDelta, now: float) -> list[Command]:
        if ev.response_id in self._reply.cancelled:
            self.ignored_counts[type(ev).__name__] += 1
            return []
        self._playback.received(ev.item_id, ev.pcm)
        cmds: list[Command] = [Play(ev.item_id, ev.pcm)]
        if self.phase is not Phase.SPEAKING:
            cmds += self._go(Phase.SPEAKING)
        return cmds

    def _audio_done(self, ev: AudioDone, now: float) -> list[Command]:
        if ev.response_id in self._reply.cancelled or ev.item_id not in self._playback.playing:
            self.ignored_counts[type(ev).__name__] += 1
            return []
        return [FinishPlayback(ev.item_id)]

    def _function_call(self, ev: FunctionCallRequested, now: float) -> list[Command]:
        if ev.response_id in self._reply.cancelled:
            self.ignored_counts[type(ev).__name__] += 1
            return []
        self._reply.tool_calls[ev.call_id] = ev.response_id
        self._response_deadline = now + self.settings.response_timeout_s
        return [RunTool(ev.call_id, ev.name, ev.arguments)]

    def _tool_finished(self, ev: ToolFinished, now: float) -> list[Command]:
        rid = self._reply.tool_calls.pop(ev.call_id, None)
        if rid is None:
            self.ignored_counts[type(ev).__name__] += 1
            return []
        # The output always goes back (the call item exists); a reply only if still wanted.
        output = Item(id="", type="function_call_output", call_id=ev.call_id, output=ev.output)
        cmds = self._wire(CreateItem(output))
        wanted = rid not in self._reply.cancelled and self.phase in (Phase.THINKING, Phase.SPEAKING)
        if wanted and rid not in self._reply.tool_calls.values():
            cmds += self._request_response(CreateResponse(), now)
        return cmds + (self._settle(now) if self.phase is Phase.THINKING else [])

    def _response_done(self, ev: ResponseDone, now: float) -> list[Command]:
        reply = self._reply
        cancelled = ev.response_id in reply.cancelled
        if ev.response_id == reply.response_id:
            reply.response_id = None
        cmds: list[Command] = []
        if reply.pending_create is not None and not reply.busy():
            cmds += self._wire(reply.pending_create)
            reply.pending_create = None
            reply.expected = True
        if ev.status == "failed" and not cancelled:
            why = str(ev.error) if ev.error is not None else ev.reason or "no reason given"
            return cmds + self._fail(now, f"the response failed: {why}")
        if ev.status == "incomplete":  # cut short: whatever was said stays, no tool ran
            log.info("response %s incomplete: %s", ev.response_id, ev.reason or "no reason given")
        if ev.status == "completed" and not cancelled:
            self._error_is_past()  # a reply came through: a failed turn's error is over
        if self.phase in (Phase.THINKING, Phase.SPEAKING):
            cmds += self._settle(now)
        return cmds

    def _playback_stopped(self, ev: PlaybackStopped, now: float) -> list[Command]:
        owed = self._playback.stopped(ev)
        cmds = self._wire(owed) if owed is not None else []
        if self.phase is Phase.SPEAKING:
            cmds += self._settle(now)
        return cmds

    def _server_error(self, ev: ServerError, now: float) -> list[Command]:
        if ev.code in BENIGN_ERROR_CODES:
            self.ignored_counts[f"error:{ev.code}"] += 1
            if ev.code == "input_audio_buffer_commit_empty" and self.phase is Phase.THINKING:
                # Nothing was committed, so no reply will come.
                self._reply.expected = False
                self._reply.pending_create = None
                return self._settle(now)
            return []
        return self._fail(now, f"server error {ev.code}: {ev.message}")

    def _protocol_error(self, ev: ProtocolError, now: float) -> list[Command]:
        return self._fail(now, f"unreadable server message: {ev.message}")

    def _observe(self, ev: Event, now: float) -> list[Command]:
        """Routine events with nothing to do in the core (the app's listeners still see them)."""
        return []

    # ------------------------------------------------------------------ handlers: link, devices

    def _link_up(self, ev: LinkUp, now: float) -> list[Command]:
        session = self._session
        if session is not None and ev.session_id == session.session_id:
            # The same session again: a rotation that failed (try later), or a connect
            # that overtook its own hang-up; its clock goes on.
            if self._link is LinkState.ROTATING:
                self._rotate_retry_at = now + self.settings.rotate_retry_s
        else:
            expires = None if ev.expires_in_s is None else now + ev.expires_in_s
            self._session = _SessionClock(ev.session_id, now, expires)
            self._last_activity = now
        self._link = LinkState.UP
        self._link_failure_reported = False
        self._clear_fault(LINK_DEVICE)
        if self.last_error is not None and self.last_error.startswith("link closed: "):
            self.last_error = None  # linked again: that error is over
        # The link opened the session with ``session_config`` (see ``_connect``).
        cmds: list[Command] = list(self._outbox)
        self._outbox = []
        if self.phase is Phase.ERROR and self._error_until is not None and now < self._error_until:
            return cmds
        return cmds + self._settle(now)

    def _link_down(self, ev: LinkDown, now: float) -> list[Command]:
        # Only our own Disconnect ends the link for good (retrying=False).
        if not ev.retrying and self._link is LinkState.CONNECTING:
            return []  # the hang-up we asked for before this connect: the new one goes on
        self._session = None
        if not ev.retrying and self._link is LinkState.HANGING_UP:
            self._link = LinkState.DOWN
            return self._settle(now)
        self._link = LinkState.CONNECTING if ev.retrying else LinkState.DOWN
        cmds = self._reset_session_state()
        if not ev.retrying and self.settings.session_policy == "always":
            self.last_error = f"link closed: {ev.reason}"
        return cmds + self._settle(now)

    def _link_failed(self, ev: LinkFailed, now: float) -> list[Command]:
        said = _BACKEND_FAILURE_TEXT.get(ev.kind) if ev.part == "backend" else None
        text = f"{said or _LINK_FAILURE_TEXT[ev.kind]} ({ev.message})"
        cmds = self._reset_session_state()  # cues if a turn or reply was lost
        self._link = LinkState.CONNECTING  # the link retries by itself
        self._session = None
        self._faults[LINK_DEVICE] = text
        changed = text != self.last_error
        self.last_error = text
        if not self._link_failure_reported:  # once per outage, not per retry
            self._link_failure_reported = True
            if not any(isinstance(c, PlayCue) for c in cmds):
                cmds.append(PlayCue("error"))
        return cmds + self._go(Phase.ERROR, force_status=changed)

    def _device_lost(self, ev: DeviceLost, now: float) -> list[Command]:
        first = ev.device not in self._faults
        self._faults[ev.device] = ev.message
        self.last_error = f"{ev.device}: {ev.message}"
        cmds: list[Command] = []
        if ev.device == LINK_DEVICE:
            self._link, self._session = LinkState.DOWN, None
            cmds += self._reset_session_state()
            cmds = [c for c in cmds if not isinstance(c, PlayCue)]
        else:
            cmds += self._interrupt()
            if self._turn is not None:
                self._turn = None
                cmds += self._wire(ClearAudio())
        if first and self.phase is not Phase.ERROR:
            cmds.append(PlayCue("error"))
        return cmds + self._go(Phase.ERROR, force_status=True)

    def _clear_fault(self, device: str) -> bool:
        """Forget ``device``'s fault; the status line's error goes with it (it would lie).

        ``last_error`` then names a fault still standing, or nothing; an error of the
        past that no fault stands for (a failed turn) stays as the last error until a
        reply comes through (``_response_done``).
        """
        message = self._faults.pop(device, None)
        if message is None:
            return False
        if self.last_error in (message, f"{device}: {message}"):
            self._error_is_past()
        return True

    def _error_is_past(self) -> None:
        """``last_error`` names the newest fault still standing, or nothing."""
        self.last_error = None
        for other, text in reversed(self._faults.items()):
            self.last_error = text if other == LINK_DEVICE else f"{other}: {text}"
            break

    def _device_restored(self, ev: DeviceRestored, now: float) -> list[Command]:
        if not self._clear_fault(ev.device):
            return []
        cmds: list[Command] = []
        if ev.device == LINK_DEVICE and self.settings.session_policy == "always":
            cmds += self._connect()
        if self._faults:
            return cmds + self._go(Phase.ERROR, force_status=True)
        self._error_until = None
        return cmds + self._settle(now)

    def _tick(self, ev: Tick, now: float) -> list[Command]:
        s = self.settings
        if (turn := self._turn) is not None:
            if now >= turn.opened_at + s.max_turn_s:
                return self._end_turn(now)
            if self._no_speech_applies(turn) and now >= turn.opened_at + s.no_speech_timeout_s:
                return self._drop_turn(turn, now)
        thinking_until = self._response_deadline_due()
        if thinking_until is not None and now >= thinking_until:
            return self._fail(now, f"no reply within {s.response_timeout_s:g} s")
        error_until = self._error_until if self.phase is Phase.ERROR else None
        if error_until is not None and now >= error_until:
            self._error_until = None
            return self._settle(now)
        follow_up_until = self._follow_up_until if self.phase is Phase.FOLLOW_UP else None
        if follow_up_until is not None and now >= follow_up_until:
            return self._settle(now)  # silence: the window closes without a turn
        if self.phase is Phase.IDLE and self._link is LinkState.UP:
            if s.session_policy == "on_demand" and now >= self._last_activity + s.idle_disconnect_s:
                return self._hang_up("idle")
            if (due := self._rotation_due()) is not None and now >= due:
                self._link = LinkState.ROTATING
                return [Rotate()]
        return []

    def _shutdown(self, ev: ShutdownRequested, now: float) -> list[Command]:
        if ev.when_quiet_s > 0 and not self._quiet():
            log.info("stopping once this turn is over (at most %.0f s)", ev.when_quiet_s)
            by = now + ev.when_quiet_s
            if self._stop_when_quiet_by is None or by < self._stop_when_quiet_by:
                self._stop_when_quiet_by = by
            return []
        return self._stop_now()

    def _stop_now(self) -> list[Command]:
        self._stopped = True
        self._stop_when_quiet_by = None
        return [
            StopPlayback(),
            Disconnect("shutdown"),
            SetLed("off"),
            ReportStatus("stopping"),
            Stop(),
        ]


_Handler = Callable[[Conversation, Any, float], list[Command]]
_P = Phase
_ALL = tuple(Phase)
_REST = (_P.IDLE, _P.CONNECTING, _P.ERROR)
_QUIET = (*_REST, _P.FOLLOW_UP)  # no turn, no reply: triggers open a turn
_REPLY = (_P.THINKING, _P.SPEAKING)  # a reply is coming: triggers barge in


def _rows(phases: tuple[Phase, ...], event: type[Any], handler: _Handler) -> dict[Any, _Handler]:
    return {(phase, event): handler for phase in phases}


C = Conversation
# Every transition: (phase, event type) -> handler.  Absent pairs are ignored and counted.
_TABLE: dict[tuple[Phase, type[Any]], _Handler] = {
    # triggers
    **_rows(_QUIET, ButtonPressed, C._press_open),
    (_P.LISTENING, ButtonPressed): C._press_in_turn,
    **_rows(_REPLY, ButtonPressed, C._press_barge_in),
    (_P.LISTENING, ButtonReleased): C._release,
    (_P.LISTENING, ButtonLongPressed): C._long_press_in_turn,
    **_rows(_REPLY, ButtonLongPressed, C._long_press_busy),
    **_rows(_REST, MicFrame, C._frame_idle),
    (_P.FOLLOW_UP, MicFrame): C._frame_follow_up,
    (_P.LISTENING, MicFrame): C._frame_in_turn,
    **_rows(_REPLY, MicFrame, C._frame_busy),
    **_rows(_QUIET, WakeWordHeard, C._wake_open),
    **_rows(_REPLY, WakeWordHeard, C._wake_barge_in),
    **_rows(_REPLY, StopWordHeard, C._stop_word),
    **_rows((*_QUIET, *_REPLY), TextRequested, C._text),
    # the reply
    (_P.LISTENING, SpeechStarted): C._speech_started,
    (_P.LISTENING, AudioCommitted): C._server_committed,
    **_rows(_ALL, ResponseCreated, C._response_created),
    **_rows(_REPLY, AudioDelta, C._audio_delta),
    **_rows(_REPLY, AudioDone, C._audio_done),
    **_rows(_REPLY, FunctionCallRequested, C._function_call),
    **_rows(_ALL, ToolFinished, C._tool_finished),
    **_rows(_ALL, ResponseDone, C._response_done),
    **_rows(_ALL, PlaybackStopped, C._playback_stopped),
    **_rows(_ALL, ServerError, C._server_error),
    **_rows(_ALL, ProtocolError, C._protocol_error),
    # routine server events: seen, nothing to do
    **{
        (phase, event): C._observe
        for phase in _ALL
        for event in (
            SessionCreated,
            SessionUpdated,
            SpeechStopped,
            AudioCleared,
            ItemAdded,
            ItemDone,
            ItemTruncated,
            ItemDeleted,
            InputTimedOut,
            # who said what is the history's (hark.history), not the core's
            TranscriptDelta,
            TranscriptDone,
            UserTranscript,
        )
    },
    **{(phase, AudioCommitted): C._observe for phase in (*_QUIET, *_REPLY)},
    **{(phase, SpeechStarted): C._observe for phase in (*_QUIET, *_REPLY)},
    # link, devices, time, shutdown
    **_rows(_ALL, LinkUp, C._link_up),
    **_rows(_ALL, LinkDown, C._link_down),
    **_rows(_ALL, LinkFailed, C._link_failed),
    **_rows(_ALL, DeviceLost, C._device_lost),
    **_rows(_ALL, DeviceRestored, C._device_restored),
    **_rows(_ALL, Tick, C._tick),
    **_rows(_ALL, ShutdownRequested, C._shutdown),
}
del C
