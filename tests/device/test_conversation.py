"""The conversation core as transcripts: events in, commands out, no event loop, no clock."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import pytest
from hark import realtime
from hark.conversation import Conversation, LinkState, Phase, Settings
from hark.events import (
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
    Item,
    ItemAdded,
    LinkDown,
    LinkFailed,
    LinkUp,
    MicFrame,
    Play,
    PlaybackStopped,
    PlayCue,
    ReportStatus,
    ResponseCreated,
    ResponseDone,
    ResponseError,
    Rotate,
    RunTool,
    SendAudio,
    ServerError,
    SessionConfig,
    SetLed,
    ShutdownRequested,
    SpeechStarted,
    Stop,
    StopPlayback,
    TextRequested,
    Tick,
    ToolFinished,
    TranscriptDelta,
    TranscriptDone,
    Truncate,
    TurnDetection,
    UpdateSession,
    UserTranscript,
)

from tests.device.test_realtime import CUT_OFF_CALLS, tool_call_frames

FRAME_MS = 20


def pcm(ms: int, fill: int = 0) -> bytes:
    """24 kHz PCM16 mono of ``ms`` milliseconds (48 bytes per ms)."""
    return bytes([fill]) * (48 * ms)


def voiced(fill: int = 1) -> MicFrame:
    return MicFrame(pcm(FRAME_MS, fill), voiced=True)


def quiet(fill: int = 0) -> MicFrame:
    return MicFrame(pcm(FRAME_MS, fill), voiced=False)


Step = tuple[float, Event, Sequence[Command]]


def play(conv: Conversation, steps: Sequence[Step]) -> None:
    """Feed each event at its time and compare the commands (status lines aside)."""
    for index, (now, event, expected) in enumerate(steps):
        got = [c for c in conv.handle(event, now) if not isinstance(c, ReportStatus)]
        assert got == list(expected), f"step {index}: {event!r} in {conv.phase}"


def linked(**overrides: Any) -> Conversation:
    """A conversation that has started and whose link is up at t=0."""
    conv = Conversation(Settings(**overrides))
    conv.start(0.0)
    conv.handle(LinkUp("sess_1", None), 0.0)
    assert conv.phase is Phase.IDLE
    return conv


def to_speaking(conv: Conversation, now: float = 1.0, delta_ms: int = 100) -> None:
    """Hold-to-talk turn committed and the reply started (two deltas of ``delta_ms``)."""
    conv.handle(ButtonPressed(), now)
    for _ in range(10):
        conv.handle(voiced(), now)
    end = ButtonPressed() if conv.settings.button_mode == "tap" else ButtonReleased(0.2)
    conv.handle(end, now)
    conv.handle(ResponseCreated("resp_1"), now)
    conv.handle(AudioDelta("resp_1", "item_a", 0, pcm(delta_ms, 7)), now)
    conv.handle(AudioDelta("resp_1", "item_a", 0, pcm(delta_ms, 7)), now)
    assert conv.phase is Phase.SPEAKING


SPEECH = [MicFrame(pcm(FRAME_MS, 1), True)] * 10


def test_start_connects_with_the_session_config() -> None:
    """Staying connected: start gives the link the session config and asks it to connect;
    the link opens the session with it, so LinkUp has nothing to resend."""
    conv = Conversation(Settings())
    assert [c for c in conv.start(0.0) if not isinstance(c, ReportStatus)] == [
        UpdateSession(SessionConfig()),
        Connect(),
        SetLed("connecting"),
    ]
    play(conv, [(0.5, LinkUp("sess_1", None), [SetLed("idle")])])


def test_hold_to_talk_turn() -> None:
    """Press streams, release commits and asks for a reply, the reply plays, back to idle."""
    conv = linked()
    reply = pcm(100, 7)
    play(
        conv,
        [
            (1.0, ButtonPressed(), [SetLed("listening"), PlayCue("listening")]),
            *[(1.0, f, [SendAudio(f.pcm)]) for f in SPEECH],
            (
                1.2,
                ButtonReleased(0.2),
                [CommitAudio(), CreateResponse(), PlayCue("done"), SetLed("thinking")],
            ),
            (1.3, ResponseCreated("resp_1"), []),
            (1.3, UserTranscript("item_u", "what time is it"), []),
            (
                1.4,
                AudioDelta("resp_1", "item_a", 0, reply),
                [Play("item_a", reply), SetLed("speaking")],
            ),
            (1.4, TranscriptDelta("resp_1", "item_a", "It is "), []),
            (1.5, AudioDelta("resp_1", "item_a", 0, reply), [Play("item_a", reply)]),
            (1.5, TranscriptDone("resp_1", "item_a", "It is noon."), []),
            (1.5, AudioDone("resp_1", "item_a"), [FinishPlayback("item_a")]),
            (1.6, ResponseDone("resp_1", "completed"), []),
            (1.8, PlaybackStopped("item_a", 200, interrupted=False), [SetLed("idle")]),
        ],
    )
    assert conv.turns_completed == 1  # who said what is the history's (test_history.py)


def test_tap_to_talk_turn_ends_on_silence() -> None:
    """A tap opens a turn; release does nothing; 700 ms of silence after speech commits it."""
    conv = linked(button_mode="tap", vad_stop_ms=700)
    silence = [quiet() for _ in range(700 // FRAME_MS)]
    play(
        conv,
        [
            (1.0, ButtonPressed(), [SetLed("listening"), PlayCue("listening")]),
            (1.1, ButtonReleased(0.1), []),
            *[(1.2, f, [SendAudio(f.pcm)]) for f in SPEECH],
            *[(1.5, f, [SendAudio(f.pcm)]) for f in silence[:-1]],
            (
                2.0,
                silence[-1],
                [
                    SendAudio(silence[-1].pcm),
                    CommitAudio(),
                    CreateResponse(),
                    PlayCue("done"),
                    SetLed("thinking"),
                ],
            ),
        ],
    )
    assert conv.ignored_counts["ButtonReleased"] == 1


def test_tap_turn_without_speech_closes_after_the_no_speech_timeout() -> None:
    """A tap followed by silence only is cleared when no_speech_timeout_s passes."""
    conv = linked(button_mode="tap", no_speech_timeout_s=5.0)
    play(conv, [(1.0, ButtonPressed(), [SetLed("listening"), PlayCue("listening")])])
    play(conv, [(1.5, quiet(), [SendAudio(quiet().pcm)])])
    assert conv.deadline() == 6.0
    play(conv, [(6.0, Tick(), [ClearAudio(), SetLed("idle")])])


def test_vad_turn_sends_the_preroll_first() -> None:
    """Voice opens a turn and the last preroll_ms of audio (first syllable included) goes first."""
    conv = linked(trigger_mode="vad", preroll_ms=300, vad_start_ms=60, vad_stop_ms=200)
    background = [quiet(fill=2) for _ in range(20)]
    onset = [voiced(fill=3) for _ in range(3)]
    play(conv, [(1.0, f, []) for f in background + onset[:2]])
    preroll = b"".join(f.pcm for f in ([*background, *onset])[-15:])
    play(
        conv,
        [
            (
                1.5,
                onset[2],
                [SetLed("listening"), PlayCue("listening"), SendAudio(preroll)],
            ),
        ],
    )
    assert len(preroll) == 300 * 48 and preroll.endswith(onset[0].pcm * 3)
    play(conv, [(1.6, f, [SendAudio(f.pcm)]) for f in SPEECH])
    tail = [quiet() for _ in range(10)]
    play(conv, [(1.7, f, [SendAudio(f.pcm)]) for f in tail[:-1]])
    got = conv.handle(tail[-1], 1.9)
    assert got[:3] == [SendAudio(tail[-1].pcm), CommitAudio(), CreateResponse()]
    assert conv.phase is Phase.THINKING


@pytest.mark.parametrize(
    ("mode", "idle", "speaking"),
    [("button", "off", "off"), ("vad", "batched", "batched"), ("both", "batched", "batched")],
)
def test_mic_demand_follows_what_the_frames_are_for(mode: str, idle: str, speaking: str) -> None:
    """Every frame while a turn streams; otherwise frames only where voice can trigger."""
    conv = linked(trigger_mode=mode)
    assert conv.mic_demand == idle
    conv.handle(ButtonPressed(), 1.0)
    assert conv.mic_demand == "every"
    speaking_conv = linked(trigger_mode=mode)
    to_speaking(speaking_conv)
    assert speaking_conv.mic_demand == speaking


def test_a_voice_turn_wants_its_silence_at_once_not_every_frame() -> None:
    """A turn voice opened ends on silence: the mic may hold speech back, never silence."""
    conv = linked(trigger_mode="vad")
    for _ in range(10):
        conv.handle(voiced(), 1.0)
    assert conv.phase is Phase.LISTENING and conv.mic_demand == "speech"


def test_vad_ignores_voice_in_button_mode_and_below_the_start_threshold() -> None:
    """Button mode: frames never open turns; vad mode: a blip under vad_start_ms doesn't."""
    conv = linked()
    play(conv, [(1.0, voiced(), []) for _ in range(20)])
    conv = linked(trigger_mode="vad", vad_start_ms=60, vad_slack_ms=40)  # 3 of 5 frames
    blips = [voiced(), voiced(), quiet(), quiet(), quiet(), voiced(), quiet(), quiet(), voiced()]
    play(conv, [(1.0, f, []) for f in blips])
    assert conv.phase is Phase.IDLE


def test_barge_in_by_button_truncates_to_what_was_heard_clamped() -> None:
    """A press while speaking stops, cancels, opens a turn; truncate clamps to audio received."""
    conv = linked()
    to_speaking(conv, delta_ms=100)  # 200 ms received
    late = AudioDelta("resp_1", "item_a", 0, pcm(100, 7))
    play(
        conv,
        [
            (
                2.0,
                ButtonPressed(),
                [
                    StopPlayback(),
                    CancelResponse("resp_1"),
                    SetLed("listening"),
                    PlayCue("listening"),
                ],
            ),
            (2.0, late, []),
            (2.01, PlaybackStopped("item_a", 250, interrupted=True), [Truncate("item_a", 200)]),
            (2.1, ResponseDone("resp_1", "cancelled", "client_cancelled"), []),
            *[(2.2, f, [SendAudio(f.pcm)]) for f in SPEECH],
            (
                2.4,
                ButtonReleased(0.4),
                [CommitAudio(), CreateResponse(), PlayCue("done"), SetLed("thinking")],
            ),
        ],
    )
    assert conv.ignored_counts["AudioDelta"] == 1


def test_barge_in_by_voice_keeps_the_speech_and_truncates_to_played() -> None:
    """Voiced frames past barge_in_ms while speaking interrupt; the barge-in audio is not lost."""
    conv = linked(trigger_mode="vad", barge_in_ms=100, preroll_ms=300)
    to_speaking(conv, delta_ms=500)  # 1000 ms received
    echo = [quiet(fill=5) for _ in range(5)]  # the echo gate said: our own voice
    speech = [voiced(fill=6) for _ in range(5)]
    play(conv, [(2.0, f, []) for f in echo + speech[:4]])
    preroll = b"".join(f.pcm for f in echo + speech)
    play(
        conv,
        [
            (
                2.1,
                speech[4],
                [
                    StopPlayback(),
                    CancelResponse("resp_1"),
                    SetLed("listening"),
                    PlayCue("listening"),
                    SendAudio(preroll),
                ],
            ),
            (2.11, PlaybackStopped("item_a", 430, interrupted=True), [Truncate("item_a", 430)]),
        ],
    )


def test_voice_in_button_mode_never_barges_in() -> None:
    """Trigger mode "button": voice during a reply is not an interruption."""
    conv = linked()
    to_speaking(conv)
    play(conv, [(2.0, voiced(), []) for _ in range(30)])
    assert conv.phase is Phase.SPEAKING


def test_barge_in_before_cancel_completes_queues_the_next_response() -> None:
    """If the new turn commits before the cancelled response is done, response.create waits."""
    conv = linked()
    to_speaking(conv)
    conv.handle(ButtonPressed(), 2.0)
    for f in SPEECH:
        conv.handle(f, 2.1)
    play(
        conv,
        [
            (2.3, ButtonReleased(0.3), [CommitAudio(), PlayCue("done"), SetLed("thinking")]),
            (2.4, ResponseDone("resp_1", "cancelled"), [CreateResponse()]),
            (2.5, ResponseCreated("resp_2"), []),
        ],
    )


def test_long_press_cancels_in_tap_mode() -> None:
    """Tap mode: a long press clears an open turn, and stops a reply without a new turn."""
    conv = linked(button_mode="tap")
    play(
        conv,
        [
            (1.0, ButtonPressed(), [SetLed("listening"), PlayCue("listening")]),
            *[(1.1, f, [SendAudio(f.pcm)]) for f in SPEECH[:3]],
            (1.6, ButtonLongPressed(), [ClearAudio(), SetLed("idle")]),
        ],
    )
    conv = linked(button_mode="tap")
    to_speaking(conv)
    play(
        conv,
        [(3.0, ButtonLongPressed(), [StopPlayback(), CancelResponse("resp_1"), SetLed("idle")])],
    )


def test_long_press_while_holding_to_talk_is_talking_not_cancelling() -> None:
    """Hold mode: a long hold with speech is a long question; a silent hold cancels."""
    conv = linked()
    conv.handle(ButtonPressed(), 1.0)
    for f in SPEECH:
        conv.handle(f, 1.1)
    play(conv, [(2.0, ButtonLongPressed(), [])])
    assert CommitAudio() in conv.handle(ButtonReleased(5.0), 6.0)
    conv = linked()
    conv.handle(ButtonPressed(), 1.0)
    for _ in range(10):
        conv.handle(quiet(), 1.1)
    play(conv, [(2.0, ButtonLongPressed(), [ClearAudio(), SetLed("idle")])])


@pytest.mark.parametrize("frames", [0, 1, 4])
def test_turn_shorter_than_100ms_is_cleared_not_committed(frames: int) -> None:
    """Under 100 ms the commit would be refused (commit_empty): clear and go idle instead."""
    conv = linked()
    conv.handle(ButtonPressed(), 1.0)
    for _ in range(frames):
        conv.handle(voiced(), 1.0)
    expected: list[Command] = [ClearAudio()] if frames else []
    play(conv, [(1.1, ButtonReleased(0.1), [*expected, SetLed("idle")])])


def test_tool_call_round_trip_queues_response_create_until_done() -> None:
    """FunctionCall → RunTool; its output goes back at once, response.create after response.done."""
    conv = linked()
    conv.handle(ButtonPressed(), 1.0)
    for f in SPEECH:
        conv.handle(f, 1.0)
    conv.handle(ButtonReleased(0.2), 1.2)
    output = Item(id="", type="function_call_output", call_id="call_1", output='{"t": "noon"}')
    play(
        conv,
        [
            (1.3, ResponseCreated("resp_1"), []),
            (
                1.4,
                FunctionCallRequested("resp_1", "item_f", "call_1", "get_time", "{}"),
                [RunTool("call_1", "get_time", "{}")],
            ),
            (1.5, ToolFinished("call_1", '{"t": "noon"}'), [CreateItem(output)]),
            (1.6, ResponseDone("resp_1", "completed"), [CreateResponse()]),
            (1.7, ResponseCreated("resp_2"), []),
            (
                1.8,
                AudioDelta("resp_2", "item_b", 0, pcm(50)),
                [Play("item_b", pcm(50)), SetLed("speaking")],
            ),
        ],
    )
    assert conv.phase is Phase.SPEAKING


def test_tool_finishing_after_response_done_creates_the_response_at_once() -> None:
    """When the response is already done, the output and response.create go together."""
    conv = linked()
    conv.handle(ButtonPressed(), 1.0)
    for f in SPEECH:
        conv.handle(f, 1.0)
    conv.handle(ButtonReleased(0.2), 1.2)
    conv.handle(ResponseCreated("resp_1"), 1.3)
    conv.handle(FunctionCallRequested("resp_1", "item_f", "call_1", "lamp", '{"on": true}'), 1.4)
    play(conv, [(1.5, ResponseDone("resp_1", "completed"), [])])
    assert conv.phase is Phase.THINKING  # still waiting for the tool
    output = Item(id="", type="function_call_output", call_id="call_1", output="ok")
    play(conv, [(1.9, ToolFinished("call_1", "ok"), [CreateItem(output), CreateResponse()])])
    play(conv, [(1.9, ToolFinished("call_1", "again"), [])])
    assert conv.ignored_counts["ToolFinished"] == 1


@pytest.mark.parametrize("ending", CUT_OFF_CALLS)
def test_a_cut_off_tool_call_never_runs(ending: dict[str, Any]) -> None:
    """Server frames through the codec into the core: a call whose response was cut short
    (incomplete, cancelled) runs no tool, with any arguments; then a completed call runs."""
    conv = linked()
    conv.handle(ButtonPressed(), 1.0)
    for f in SPEECH:
        conv.handle(f, 1.0)
    conv.handle(ButtonReleased(0.2), 1.2)
    commands: list[Command] = []
    for frame in tool_call_frames("resp_1", "call_1", '{"seconds": 3', **ending):
        event = realtime.decode(json.dumps(frame))
        if event is not None:
            commands += conv.handle(event, 1.3)
    assert not [c for c in commands if isinstance(c, RunTool)]
    assert conv.phase is not Phase.THINKING  # nothing left to wait for
    conv.handle(ButtonPressed(), 2.0)
    for f in SPEECH:
        conv.handle(f, 2.0)
    conv.handle(ButtonReleased(0.2), 2.2)
    commands = []
    for frame in tool_call_frames("resp_2", "call_2", '{"seconds": 300}'):
        commands += conv.handle(realtime.decode(json.dumps(frame)) or Tick(), 2.3)
    assert [c for c in commands if isinstance(c, RunTool)] == [
        RunTool("call_2", "set_timer", '{"seconds": 300}')
    ]


def test_a_failed_response_reports_the_servers_error(caplog: pytest.LogCaptureFixture) -> None:
    """`status_details.error` reaches the status line and the log, type, code and message."""
    conv = linked()
    to_speaking(conv)
    error = ResponseError("server_error", "internal_error", "The server had an error.")
    commands = conv.handle(ResponseDone("resp_1", "failed", error=error), 2.0)
    said = "the response failed: server_error (internal_error): The server had an error."
    assert conv.last_error == said
    assert any(said in c.text for c in commands if isinstance(c, ReportStatus))
    assert said in caplog.text
    conv = linked()
    to_speaking(conv)
    conv.handle(ResponseDone("resp_1", "failed"), 2.0)
    assert conv.last_error == "the response failed: no reason given"


def test_a_completed_reply_ends_a_failed_turns_error() -> None:
    """Found by the soak: "last error: no reply" stayed in STATUS through later good turns.

    A reply that completes means the failure is over; a fault still standing (a lost
    microphone) stays on the status line.
    """
    conv = linked(error_hold_s=0.5)
    to_speaking(conv, 1.0)
    conv.handle(ResponseDone("resp_1", "failed"), 2.0)
    assert conv.last_error == "the response failed: no reason given"
    conv.handle(Tick(), 3.0)
    assert conv.phase is Phase.IDLE and "last error" in conv.status_text()
    to_speaking(conv, 4.0)
    commands = conv.handle(ResponseDone("resp_1", "completed"), 5.0)
    commands += conv.handle(PlaybackStopped("item_a", 200, interrupted=False), 5.1)
    assert conv.last_error is None
    assert [c.text for c in commands if isinstance(c, ReportStatus)][-1] == "idle"
    standing = linked()
    standing.handle(DeviceLost("microphone", "unplugged"), 0.5)
    standing.handle(ResponseDone("resp_9", "completed"), 1.0)
    assert standing.last_error == "microphone: unplugged"


def test_a_turn_while_the_link_retries_asks_for_it_again() -> None:
    """A press while the link retries sends Connect again: the link may cut its backoff."""
    conv = Conversation(Settings())
    conv.start(0.0)
    conv.handle(LinkFailed("network", "unreachable"), 1.0)
    assert conv.link_state is LinkState.CONNECTING
    assert Connect() in conv.handle(ButtonPressed(), 2.0)
    linked_conv = linked()
    assert Connect() not in linked_conv.handle(ButtonPressed(), 1.0)


def test_a_reload_lets_the_turn_finish_first() -> None:
    """Found by the soak: SIGHUP mid-turn cut the user off. A reload now waits for a quiet
    moment (the reply played out), at most ``when_quiet_s``; SIGTERM never waits."""
    conv = linked()
    to_speaking(conv, 1.0)
    assert conv.handle(ShutdownRequested(when_quiet_s=30.0), 1.5) == []
    assert conv.deadline() is not None and conv.deadline() <= 31.5
    conv.handle(ResponseDone("resp_1", "completed"), 2.0)
    stopped = conv.handle(PlaybackStopped("item_a", 200, interrupted=False), 2.5)
    assert Stop() in stopped and Disconnect("shutdown") in stopped
    # A turn that never ends: stopped at the bound.
    conv = linked()
    to_speaking(conv, 1.0)
    conv.handle(ShutdownRequested(when_quiet_s=10.0), 1.0)
    assert Stop() in conv.handle(Tick(), 11.0)
    # Quiet already, or SIGTERM: at once.
    assert Stop() in linked().handle(ShutdownRequested(when_quiet_s=10.0), 1.0)
    conv = linked()
    to_speaking(conv, 1.0)
    assert Stop() in conv.handle(ShutdownRequested(), 1.0)


def test_a_key_backend_failure_names_the_key_backend() -> None:
    """A failure of the key fetch says "key backend" on the status line, not "Realtime server"."""
    conv = Conversation(Settings())
    conv.start(0.0)
    garbage = "the key backend answered 200 but not with a key (not JSON (20 bytes))"
    conv.handle(LinkFailed("server", garbage, "backend"), 1.0)
    assert conv.last_error == f"the key backend failed — retrying ({garbage})"
    assert "Realtime" not in conv.status_text()
    conv.handle(LinkFailed("server", "closed (1011)"), 2.0)
    assert conv.last_error == "the Realtime server failed — retrying (closed (1011))"
    conv.handle(LinkFailed("network", "key backend unreachable: refused", "backend"), 3.0)
    assert conv.last_error is not None and conv.last_error.startswith("cannot reach the key")


def test_guardrail_interrupt_drops_late_deltas_and_says_the_fallback() -> None:
    """interrupt(say=…) is barge-in plus a fallback reply queued behind the cancelled one."""
    conv = linked()
    to_speaking(conv)
    fallback = CreateResponse(instructions="Say exactly this and nothing else: Let's not.")
    cmds = [c for c in conv.interrupt(2.0, say="Let's not.") if not isinstance(c, ReportStatus)]
    assert cmds == [StopPlayback(), CancelResponse("resp_1"), SetLed("thinking")]
    late = AudioDelta("resp_1", "item_a", 0, pcm(100))
    play(
        conv,
        [
            (2.0, late, []),
            (2.0, late, []),
            (2.01, PlaybackStopped("item_a", 120, True), [Truncate("item_a", 120)]),
            (2.1, ResponseDone("resp_1", "cancelled"), [fallback]),
            (2.2, ResponseCreated("resp_2"), []),
        ],
    )
    assert conv.ignored_counts["AudioDelta"] == 2


def test_link_failure_shows_error_once_and_link_up_recovers() -> None:
    """Repeated LinkFailed: error LED and cue once, a status naming the cause; LinkUp clears it."""
    conv = Conversation(Settings())
    conv.start(0.0)
    failed = LinkFailed("unauthorised", "HTTP 401")
    first = conv.handle(failed, 1.0)
    assert [c for c in first if not isinstance(c, ReportStatus)] == [
        PlayCue("error"),
        SetLed("error"),
    ]
    statuses = [c.text for c in first if isinstance(c, ReportStatus)]
    assert statuses and "not authorised" in statuses[-1]
    play(conv, [(2.0, failed, []), (4.0, failed, [])])
    play(conv, [(5.0, LinkUp("sess_1", None), [SetLed("idle")])])
    assert conv.handle(failed, 6.0)[:2] == [PlayCue("error"), SetLed("error")]


def test_response_timeout_gives_an_error_then_idle() -> None:
    """No reply within response_timeout_s: cancel, error cue and LED, idle after error_hold_s."""
    conv = linked(response_timeout_s=15.0, error_hold_s=3.0)
    conv.handle(ButtonPressed(), 1.0)
    for f in SPEECH:
        conv.handle(f, 1.0)
    conv.handle(ButtonReleased(0.2), 1.2)
    assert conv.deadline() == pytest.approx(16.2)
    play(conv, [(16.2, Tick(), [CancelResponse(), PlayCue("error"), SetLed("error")])])
    assert conv.last_error and "no reply" in conv.last_error
    assert conv.deadline() == pytest.approx(19.2)
    play(conv, [(19.2, Tick(), [SetLed("idle")])])
    # The reply that finally shows up is unwanted now.
    play(conv, [(20.0, ResponseCreated("resp_late"), [CancelResponse("resp_late")])])


def test_on_demand_connects_on_trigger_and_disconnects_when_idle() -> None:
    """On demand: a press connects, audio waits for the link, the session sleeps after idling."""
    conv = Conversation(Settings(session_policy="on_demand", idle_disconnect_s=60.0))
    assert [c for c in conv.start(0.0) if not isinstance(c, ReportStatus)] == [SetLed("idle")]
    assert conv.deadline() is None
    play(
        conv,
        [
            (
                1.0,
                ButtonPressed(),
                [
                    UpdateSession(SessionConfig()),
                    Connect(),
                    SetLed("listening"),
                    PlayCue("listening"),
                ],
            ),
            *[(1.0, f, []) for f in SPEECH],
            (1.2, ButtonReleased(0.2), [PlayCue("done"), SetLed("thinking")]),
            (
                1.4,
                LinkUp("sess_1", None),
                [
                    *[SendAudio(f.pcm) for f in SPEECH],
                    CommitAudio(),
                    CreateResponse(),
                ],
            ),
            (1.5, ResponseCreated("resp_1"), []),
            (1.6, ResponseDone("resp_1", "completed"), [SetLed("idle")]),
        ],
    )
    assert conv.deadline() == pytest.approx(61.6)
    play(conv, [(61.6, Tick(), [Disconnect("idle")])])
    play(conv, [(61.7, LinkDown("client closed", retrying=False), [])])
    assert conv.phase is Phase.IDLE and conv.deadline() is None
    assert conv.handle(ButtonPressed(), 70.0)[:2] == [UpdateSession(SessionConfig()), Connect()]


def test_always_connected_rotates_the_session_when_quiet() -> None:
    """Staying connected: after rotate_after_s the idle core asks the link to rotate."""
    conv = linked(rotate_after_s=3000.0)
    assert conv.deadline() == 3000.0
    play(conv, [(3000.0, Tick(), [Rotate()])])
    assert conv.link_state is LinkState.ROTATING and conv.deadline() is None
    play(conv, [(3001.0, LinkUp("sess_2", None), [])])
    assert conv.deadline() == 6001.0  # the new session's age counts from its LinkUp


def test_rotation_comes_before_the_cap_the_server_announced() -> None:
    """A session that ends sooner than rotate_after_s is replaced 5 minutes before its end."""
    conv = Conversation(Settings(rotate_after_s=3300.0))
    conv.start(0.0)
    conv.handle(LinkUp("sess_1", 1e9 + 1200, expires_in_s=1200.0), 0.0)
    assert conv.deadline() == 900.0


def test_rotation_waits_for_a_quiet_moment() -> None:
    """Never mid-turn or mid-reply, and only rotate_quiet_s after the last one ended."""
    conv = linked(rotate_after_s=60.0, rotate_quiet_s=5.0)
    to_speaking(conv, now=59.0)
    assert conv.deadline() != 60.0  # a reply plays: no rotation
    assert conv.handle(Tick(), 60.0) == []
    conv.handle(ResponseDone("resp_1", "completed"), 61.0)
    conv.handle(PlaybackStopped("item_a", 200, interrupted=False), 61.5)
    assert conv.phase is Phase.IDLE
    assert conv.deadline() == 66.5
    play(conv, [(66.5, Tick(), [Rotate()])])


def test_commands_wait_while_the_link_rotates() -> None:
    """A turn begun while the next session opens goes to that session, whole."""
    conv = linked(rotate_after_s=60.0)
    play(conv, [(60.0, Tick(), [Rotate()])])
    play(conv, [(60.1, ButtonPressed(), [SetLed("listening"), PlayCue("listening")])])
    play(conv, [(60.1, f, []) for f in SPEECH])  # held: the old session is going away
    play(conv, [(60.5, LinkUp("sess_2", None), [SendAudio(f.pcm) for f in SPEECH])])
    play(conv, [(60.6, SPEECH[0], [SendAudio(SPEECH[0].pcm)])])


def test_a_failed_rotation_keeps_the_session_and_retries_later() -> None:
    """LinkUp naming the old session again: it goes on, and the next try is rotate_retry_s on."""
    conv = linked(rotate_after_s=60.0, rotate_retry_s=30.0)
    play(conv, [(60.0, Tick(), [Rotate()])])
    play(conv, [(62.0, LinkUp("sess_1", None), [])])
    assert conv.link_state is LinkState.UP
    assert conv.deadline() == 92.0


def test_a_connect_that_overtakes_its_own_hang_up() -> None:
    """On demand: idle hang-up, then a press before the hang-up's LinkDown arrived. That
    LinkDown is not the new connection failing; the turn waits for the next LinkUp."""
    conv = Conversation(Settings(session_policy="on_demand", idle_disconnect_s=60.0))
    conv.start(0.0)
    conv.handle(ButtonPressed(), 0.0)
    conv.handle(LinkUp("sess_1", None), 0.1)
    conv.handle(ButtonLongPressed(), 0.2)  # a silent hold: the turn is dropped
    play(conv, [(60.2, Tick(), [Disconnect("idle")])])
    assert conv.link_state is LinkState.HANGING_UP
    cmds = conv.handle(ButtonPressed(), 60.3)
    assert cmds[:2] == [UpdateSession(conv.session_config), Connect()]
    play(conv, [(60.4, LinkDown("idle", retrying=False), [])])
    assert conv.link_state is LinkState.CONNECTING and conv.phase is Phase.LISTENING
    conv.handle(voiced(), 60.5)
    play(conv, [(60.6, LinkUp("sess_2", None), [SendAudio(voiced().pcm)])])


def test_link_down_mid_reply_stops_and_shows_connecting() -> None:
    """The link dropping mid-reply stops playback, cues the error and shows connecting."""
    conv = linked()
    to_speaking(conv)
    play(
        conv,
        [
            (
                2.0,
                LinkDown("network", retrying=True),
                [StopPlayback(), PlayCue("error"), SetLed("connecting")],
            ),
            (2.1, AudioDelta("resp_1", "item_a", 0, pcm(10)), []),
            (3.0, LinkUp("sess_2", None), [SetLed("idle")]),
        ],
    )


@pytest.mark.parametrize(
    "code", ["response_cancel_not_active", "conversation_already_has_active_response"]
)
def test_benign_server_errors_do_not_go_to_error(code: str) -> None:
    """The protocol's known races are counted, never shown as errors."""
    conv = linked()
    to_speaking(conv)
    play(conv, [(2.0, ServerError(code, "race"), [])])
    assert conv.phase is Phase.SPEAKING and conv.ignored_counts[f"error:{code}"] == 1


def test_other_server_errors_cue_and_recover() -> None:
    """An unexpected server error aborts the reply, shows the error, then returns to idle."""
    conv = linked(error_hold_s=2.0)
    to_speaking(conv)
    play(
        conv,
        [
            (
                2.0,
                ServerError("server_error", "boom", type="server_error"),
                [StopPlayback(), CancelResponse("resp_1"), PlayCue("error"), SetLed("error")],
            ),
            (2.0, PlaybackStopped("item_a", 80, True), [Truncate("item_a", 80)]),
            (4.0, Tick(), [SetLed("idle")]),
        ],
    )
    assert conv.status_text() == "idle; last error: server error server_error: boom"


def test_device_lost_and_restored() -> None:
    """A lost mic shows the error (once) and refuses turns until it is back."""
    conv = linked()
    play(
        conv,
        [
            (1.0, DeviceLost("microphone", "unplugged"), [PlayCue("error"), SetLed("error")]),
            (1.5, DeviceLost("microphone", "still gone"), []),
            (2.0, ButtonPressed(), [PlayCue("error")]),
            (3.0, DeviceRestored("microphone"), [SetLed("idle")]),
            (4.0, ButtonPressed(), [SetLed("listening"), PlayCue("listening")]),
        ],
    )


def test_server_vad_mode_session_and_end_of_turn() -> None:
    """end_of_turn="server": server_vad without auto-interrupt; its commit ends the turn."""
    conv = linked(trigger_mode="vad", end_of_turn="server", vad_start_ms=60)
    detection = conv.session_config.turn_detection
    assert detection == TurnDetection(create_response=True, interrupt_response=False)
    for f in [voiced()] * 3:
        conv.handle(f, 1.0)
    assert conv.phase is Phase.LISTENING
    play(
        conv,
        [
            (1.1, SpeechStarted(0, "item_u"), []),
            *[(1.2, f, [SendAudio(f.pcm)]) for f in [quiet()] * 50],  # no local end of turn
            (2.5, AudioCommitted("item_u", None), [PlayCue("done"), SetLed("thinking")]),
            (2.6, ResponseCreated("resp_1"), []),
        ],
    )
    button_only = Conversation(Settings(trigger_mode="button", end_of_turn="server"))
    assert button_only.session_config.turn_detection is None  # button turns are manual


def test_text_turn() -> None:
    """TextRequested sends a user text item and asks for a reply."""
    conv = linked()
    item = Item(id="", type="message", role="user", text="hello")
    play(
        conv,
        [(1.0, TextRequested("hello"), [CreateItem(item), CreateResponse(), SetLed("thinking")])],
    )


def test_routine_and_unexpected_events() -> None:
    """Routine server events are silent; events with no transition are ignored and counted."""
    conv = linked()
    play(
        conv,
        [
            (1.0, ItemAdded(Item(id="i", type="message"), None), []),
            (1.0, ButtonReleased(0.1), []),
            (1.0, AudioDelta("resp_x", "item_x", 0, pcm(10)), []),
        ],
    )
    assert conv.ignored_counts["ButtonReleased"] == 1
    assert conv.ignored_counts["AudioDelta"] == 1
    assert "ItemAdded" not in conv.ignored_counts


def test_shutdown_winds_down_and_then_ignores_everything() -> None:
    """Shutdown stops playback, disconnects, turns the LED off and says Stop; nothing after."""
    conv = linked()
    to_speaking(conv)
    play(
        conv,
        [
            (
                5.0,
                ShutdownRequested(),
                [StopPlayback(), Disconnect("shutdown"), SetLed("off"), Stop()],
            ),
            (5.1, ButtonPressed(), []),
        ],
    )
    assert conv.deadline() is None


def test_settings_refuse_a_preroll_shorter_than_the_vad_start() -> None:
    """The pre-roll must hold the voiced onset that opened the turn."""
    with pytest.raises(ValueError, match="preroll_ms"):
        Settings(preroll_ms=50, vad_start_ms=60)
    assert dataclasses.replace(Settings(), preroll_ms=500).preroll_ms == 500


def test_update_session_switches_live_and_survives_reconnects() -> None:
    """A handoff's config goes to the link at once, linked or not (the link opens every
    later session with it), and keeps the settings' turn detection."""
    conv = linked(trigger_mode="vad", end_of_turn="server")
    kept = conv.session_config.turn_detection
    new = SessionConfig(instructions="You are the kitchen agent.", voice="marin")
    [cmd] = conv.update_session(new)
    assert isinstance(cmd, UpdateSession) and cmd.config.instructions == new.instructions
    assert cmd.config.turn_detection == kept
    conv.handle(LinkDown("network", retrying=True), 1.0)
    assert conv.update_session(new) == [cmd]  # reconnecting: not held back in the outbox
    assert not any(isinstance(c, UpdateSession) for c in conv.handle(LinkUp("s2", None), 2.0))


def test_on_demand_short_press_while_connecting_sends_nothing() -> None:
    """A turn dropped before the link is up never reaches the session: no audio, no clear."""
    conv = Conversation(Settings(session_policy="on_demand"))
    conv.start(0.0)
    conv.handle(ButtonPressed(), 1.0)
    conv.handle(voiced(), 1.0)
    play(conv, [(1.1, ButtonReleased(0.1), [SetLed("connecting")])])
    play(conv, [(1.5, LinkUp("sess_1", None), [SetLed("idle")])])


# ---------------------------------------------------------------------- one VAD hysteresis

V, Q = True, False
GATE_PATTERNS = [
    [V],
    [V, V, V],
    [V, V, V, V],
    [V, Q, V, V, V],
    [V, Q, Q, V, Q, V, Q, V],
    [V, V, Q, V, V, Q, V, V, V, V],
    [V] * 7 + [Q] + [V],
    [V] * 12,
    [Q, V] * 10,
]


def first_open(gate_feed: list[str | None]) -> int | None:
    return next((i for i, change in enumerate(gate_feed) if change == "opened"), None)


@pytest.mark.parametrize("pattern", GATE_PATTERNS)
def test_voice_opens_a_turn_exactly_when_settings_open_gate_opens(pattern: list[bool]) -> None:
    """From rest the core opens a turn on the very frame Settings().open_gate() opens."""
    conv = linked(trigger_mode="vad")
    gate = Settings().open_gate()
    expected = first_open([gate.update(v) for v in pattern])
    opened = None
    for i, v in enumerate(pattern):
        conv.handle(MicFrame(pcm(FRAME_MS, 1), v), 1.0)
        if conv.phase is Phase.LISTENING:
            opened = i
            break
    assert opened == expected


@pytest.mark.parametrize("pattern", GATE_PATTERNS)
def test_voice_barges_in_exactly_when_settings_barge_in_gate_opens(pattern: list[bool]) -> None:
    """While speaking the core barges in on the frame Settings().barge_in_gate() opens."""
    conv = linked(trigger_mode="vad")
    to_speaking(conv)
    gate = Settings().barge_in_gate()
    expected = first_open([gate.update(v) for v in pattern])
    opened = None
    for i, v in enumerate(pattern):
        conv.handle(MicFrame(pcm(FRAME_MS, 1), v), 2.0)
        if conv.phase is Phase.LISTENING:
            opened = i
            break
    assert opened == expected


@pytest.mark.parametrize(
    ("overrides", "open_voiced", "open_window", "barge_voiced", "barge_window", "close_ms"),
    [
        ({}, 4, 6, 8, 10, 700),
        ({"vad_start_ms": 60, "vad_slack_ms": 0}, 3, 3, 8, 10, 700),
        ({"barge_in_ms": 200, "barge_in_slack_ms": 100, "vad_stop_ms": 500}, 4, 6, 10, 15, 500),
    ],
)
def test_settings_build_the_gates_from_milliseconds(
    overrides: dict[str, int],
    open_voiced: int,
    open_window: int,
    barge_voiced: int,
    barge_window: int,
    close_ms: int,
) -> None:
    """Thresholds stay in ms in Settings; the gates count 20 ms frames."""
    s = Settings(**overrides)
    o, b = s.open_gate(), s.barge_in_gate()
    assert (o.open_voiced, o.open_window, o.close_silence_ms) == (
        open_voiced,
        open_window,
        close_ms,
    )
    assert (b.open_voiced, b.open_window, b.close_silence_ms) == (
        barge_voiced,
        barge_window,
        close_ms,
    )
    assert s.preroll().duration_ms == s.preroll_ms


@pytest.mark.parametrize(
    ("tail", "ends"),
    [
        ([Q] * 34, False),  # 680 ms of silence: a pause
        ([Q] * 35, True),  # 700 ms: the gate closes, the turn ends
        ([Q] * 20 + [V] + [Q] * 34, False),  # a voiced frame restarts the silence count
    ],
)
def test_local_end_of_turn_is_the_gate_closing(tail: list[bool], ends: bool) -> None:
    """A voice turn ends when its gate closes after vad_stop_ms of silence, not before."""
    conv = linked(trigger_mode="vad")
    for f in SPEECH:
        conv.handle(f, 1.0)
    assert conv.phase is Phase.LISTENING
    for v in tail:
        conv.handle(MicFrame(pcm(FRAME_MS), v), 1.5)
    assert (conv.phase is Phase.THINKING) == ends


# ---------------------------------------------------------------------- quick-tap truncate


@pytest.mark.parametrize(
    ("played_ms", "truncate_ms"),
    [(150, 150), (250, 200), (0, 0)],
)
def test_quick_tap_keeps_the_truncate_until_the_speaker_reports(
    played_ms: int, truncate_ms: int
) -> None:
    """Press and release before PlaybackStopped: the truncate still goes out, clamped."""
    conv = linked()
    to_speaking(conv, delta_ms=100)  # 200 ms received
    play(
        conv,
        [
            (
                2.0,
                ButtonPressed(),
                [
                    StopPlayback(),
                    CancelResponse("resp_1"),
                    SetLed("listening"),
                    PlayCue("listening"),
                ],
            ),
            (2.05, ButtonReleased(0.05), [SetLed("idle")]),  # too short: nothing committed
            (
                2.06,
                PlaybackStopped("item_a", played_ms, interrupted=True),
                [Truncate("item_a", truncate_ms)],
            ),
            (2.07, PlaybackStopped("item_a", played_ms, interrupted=True), []),  # once only
        ],
    )


def test_pending_truncate_survives_a_new_turn_and_commit() -> None:
    """A barge-in turn committed before the speaker reports still truncates the old item."""
    conv = linked()
    to_speaking(conv, delta_ms=100)
    conv.handle(ButtonPressed(), 2.0)
    for f in SPEECH:
        conv.handle(f, 2.1)
    conv.handle(ButtonReleased(0.3), 2.3)
    assert conv.phase is Phase.THINKING
    play(conv, [(2.4, PlaybackStopped("item_a", 120, interrupted=True), [Truncate("item_a", 120)])])


# ---------------------------------------------------------------------- tool approval


def to_tool_call(conv: Conversation) -> None:
    """A committed turn whose response asked for a tool (phase THINKING)."""
    conv.handle(ButtonPressed(), 1.0)
    for f in SPEECH:
        conv.handle(f, 1.0)
    conv.handle(ButtonReleased(0.2), 1.2)
    conv.handle(ResponseCreated("resp_1"), 1.3)
    conv.handle(FunctionCallRequested("resp_1", "item_f", "call_1", "light", "{}"), 1.4)
    assert conv.phase is Phase.THINKING


def test_approval_pending_owns_the_button_and_suspends_the_timeout() -> None:
    """While approval is pending: waiting LED and cue, buttons inert, no response timeout."""
    conv = linked(response_timeout_s=15.0)
    to_tool_call(conv)
    cmds = [c for c in conv.set_approval_pending(True, 2.0) if not isinstance(c, ReportStatus)]
    assert cmds == [SetLed("connecting"), PlayCue("listening")]
    assert conv.approval_pending and "approval" in conv.status_text()
    assert conv.deadline() is None
    play(
        conv,
        [
            (3.0, ButtonPressed(), []),
            (3.1, ButtonReleased(0.1), []),
            (5.0, ButtonLongPressed(), []),
            (40.0, Tick(), []),  # well past response_timeout_s: still waiting
        ],
    )
    assert conv.phase is Phase.THINKING
    cmds = [c for c in conv.set_approval_pending(False, 41.0) if not isinstance(c, ReportStatus)]
    assert cmds == [SetLed("thinking")]
    assert conv.deadline() == pytest.approx(56.0)
    play(
        conv,
        [
            (
                42.0,
                ToolFinished("call_1", '{"ok": true}'),
                [
                    CreateItem(
                        Item(
                            id="",
                            type="function_call_output",
                            call_id="call_1",
                            output='{"ok": true}',
                        )
                    ),
                ],
            )
        ],
    )


# ---------------------------------------------------------------------- end of conversation


@pytest.mark.parametrize(
    ("policy", "after_reply"),
    [
        ("always", [PlayCue("done"), SetLed("idle")]),
        ("on_demand", [PlayCue("done"), Disconnect("conversation ended"), SetLed("idle")]),
    ],
)
def test_end_after_reply_waits_for_the_goodbye_then_ends(
    policy: str, after_reply: list[Command]
) -> None:
    """The end tool: the goodbye plays out, then done cue, idle, and on demand a disconnect."""
    conv = linked(session_policy=policy, trigger_mode="both", end_quiet_s=2.0)
    to_tool_call(conv)
    assert conv.end_after_reply(2.0) == []
    bye = pcm(100, 7)
    play(
        conv,
        [
            (
                2.1,
                ToolFinished("call_1", "{}"),
                [
                    CreateItem(
                        Item(id="", type="function_call_output", call_id="call_1", output="{}")
                    ),
                ],
            ),
            (2.2, ResponseDone("resp_1", "completed"), [CreateResponse()]),
            (2.3, ResponseCreated("resp_2"), []),
            (
                2.4,
                AudioDelta("resp_2", "item_b", 0, bye),
                [Play("item_b", bye), SetLed("speaking")],
            ),
            (2.5, AudioDone("resp_2", "item_b"), [FinishPlayback("item_b")]),
            (2.6, ResponseDone("resp_2", "completed"), []),
            (2.7, PlaybackStopped("item_b", 100, interrupted=False), after_reply),
        ],
    )
    assert conv.phase is Phase.IDLE
    # The goodbye's tail within end_quiet_s opens nothing; voice after it does.
    play(conv, [(3.0 + i * 0.02, f, []) for i, f in enumerate(SPEECH)])
    conv.handle(LinkUp("sess_2", None), 4.0)
    for f in SPEECH:
        conv.handle(f, 4.8)
    assert conv.phase is Phase.LISTENING


def test_end_after_reply_when_idle_ends_at_once_and_a_new_turn_cancels_it() -> None:
    """Nothing playing: the end is immediate; a turn opened first cancels the request."""
    conv = linked(session_policy="on_demand")
    cmds = [c for c in conv.end_after_reply(1.0) if not isinstance(c, ReportStatus)]
    assert cmds == [PlayCue("done"), Disconnect("conversation ended")]
    conv = linked()
    to_tool_call(conv)
    conv.end_after_reply(2.0)
    conv.handle(ButtonPressed(), 2.1)  # the user goes on: barge-in over the pending reply
    assert conv.phase is Phase.LISTENING
    for f in SPEECH:
        conv.handle(f, 2.2)
    conv.handle(ButtonReleased(0.3), 2.4)
    conv.handle(ResponseDone("resp_1", "cancelled"), 2.5)
    conv.handle(ResponseCreated("resp_2"), 2.6)
    done = conv.handle(ResponseDone("resp_2", "completed"), 2.7)
    assert PlayCue("done") not in done and Disconnect("conversation ended") not in done
