"""The app loop with hark.testing's fakes: whole turns, supervision, watchdog, shutdown."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from hark.backoff import Backoff
from hark.conversation import Conversation, Phase, Settings
from hark.events import (
    AudioDelta,
    AudioDone,
    ButtonPressed,
    ButtonReleased,
    CommitAudio,
    CreateItem,
    CreateResponse,
    DeviceLost,
    DeviceRestored,
    Event,
    FunctionCallRequested,
    LinkUp,
    MicFrame,
    ResponseCreated,
    ResponseDone,
    SessionConfig,
    TranscriptDone,
    UpdateSession,
    WireCommand,
)
from hark.history import History
from hark.ports import Post
from hark.service.loop import App, NoTools
from hark.testing import (
    FakeButton,
    RecordingIndicator,
    RecordingLink,
    RecordingMicrophone,
    RecordingNotifier,
    RecordingSpeaker,
    until,
)

FRAME = bytes(960)  # 20 ms of 24 kHz PCM16
REPLY = bytes(4800)  # 100 ms


async def forever() -> None:
    await asyncio.Event().wait()


class ScriptedLink(RecordingLink):
    """Scripts the server: a response with two audio deltas for every response.create."""

    session_id = "sess_1"

    def __init__(self, tool_call: bool = False) -> None:
        super().__init__()
        self.tool_call = tool_call
        self._responses = 0

    def send(self, command: WireCommand) -> None:
        super().send(command)
        if isinstance(command, CreateResponse):
            self._respond()

    def _respond(self) -> None:
        assert self.post is not None
        self._responses += 1
        rid = f"resp_{self._responses}"
        post = self.post
        post(ResponseCreated(rid))
        if self.tool_call and self._responses == 1:
            post(FunctionCallRequested(rid, "item_f", "call_1", "lamp", '{"on": true}'))
            post(ResponseDone(rid, "completed"))
            return
        item = f"item_{self._responses}"
        for _ in range(2):
            post(AudioDelta(rid, item, 0, REPLY))
        post(AudioDone(rid, item))
        post(TranscriptDone(rid, item, "Hello there."))
        post(ResponseDone(rid, "completed"))


class Rig:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        tool_call: bool = False,
        mic_crashes: int = 0,
        **app_kwargs: Any,
    ) -> None:
        self.link = ScriptedLink(tool_call=tool_call)
        self.speaker = RecordingSpeaker(heard_at_stop=0.5)  # a barge-in hears half
        self.mic = RecordingMicrophone(crashes=mic_crashes)
        self.indicator = RecordingIndicator()
        self.button = FakeButton()
        self.notifier = RecordingNotifier()
        self.conv = Conversation(settings or Settings())
        self.events: list[Event] = []
        self.app = App(
            self.conv,
            self.link,
            self.mic,
            self.speaker,
            self.indicator,
            [self.button],
            self.notifier,
            **app_kwargs,
        )
        self.app.add_listener(lambda ev, _cmds: self.events.append(ev))


def hold_to_talk(frames: int = 10) -> Sequence[Event]:
    return [ButtonPressed(), *[MicFrame(FRAME, True)] * frames, ButtonReleased(0.2)]


async def test_whole_hold_to_talk_turn_through_the_app() -> None:
    """Press, speech, release from the button's thread: the reply plays and the LED follows."""
    rig = Rig()
    history = History()  # who said what: the history, fed by a listener as the daemon does
    rig.app.add_listener(lambda event, commands: history.observe(event))
    await rig.app.start()
    assert rig.notifier.times("ready")
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE and rig.conv.connected, 5.0)
    seen = rig.conv.turns_completed
    rig.button.fire(*hold_to_talk())
    await rig.app.wait_turn_completed(timeout_s=5.0, after=seen)
    wire = [type(c).__name__ for c in rig.link.sent]
    assert wire == ["UpdateSession", *["SendAudio"] * 10, "CommitAudio", "CreateResponse"]
    assert [i for i, _ in rig.speaker.played] == ["item_1", "item_1"]
    assert rig.speaker.cues == ["listening", "done"]
    assert rig.indicator.shown == [
        "connecting",
        "idle",
        "listening",
        "thinking",
        "speaking",
        "idle",
    ]
    assert history.items[-1].text == "Hello there."
    assert rig.notifier.statuses[-1] == "idle"
    # push to talk: no frames wanted but while the turn streamed, and then every one
    assert rig.mic.demands == ["off", "every", "off"]
    await rig.app.shutdown()


async def test_barge_in_truncates_to_what_the_speaker_reports() -> None:
    """A press while the reply plays stops the speaker and truncates to its played_ms."""
    rig = Rig()
    await rig.app.start()
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE and rig.conv.connected, 5.0)
    rig.speaker.finish = lambda item_id: None  # type: ignore[method-assign]  # keep playing
    rig.button.fire(*hold_to_talk())
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.SPEAKING, 5.0)
    rig.button.fire(ButtonPressed())
    await until(lambda: any(type(c).__name__ == "Truncate" for c in rig.link.sent))
    truncate = next(c for c in rig.link.sent if type(c).__name__ == "Truncate")
    assert truncate == type(truncate)("item_1", 100)  # half of the 200 ms received
    assert rig.speaker.stops == 1 and rig.conv.phase is Phase.LISTENING
    await rig.app.shutdown()


async def test_tool_call_runs_on_the_runner_and_the_reply_follows() -> None:
    """RunTool goes to the ToolRunner; its output and response.create go back on the link."""

    class Lamp:
        async def run(self, call_id: str, name: str, arguments: str) -> str:
            return json.dumps({"lamp": json.loads(arguments)["on"]})

    rig = Rig(tool_call=True, tools=Lamp())
    await rig.app.start()
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE and rig.conv.connected, 5.0)
    seen = rig.conv.turns_completed
    rig.button.fire(*hold_to_talk())
    await rig.app.wait_turn_completed(timeout_s=5.0, after=seen)
    outputs = [c for c in rig.link.sent if isinstance(c, CreateItem)]
    assert [o.item.output for o in outputs] == ['{"lamp": true}']
    assert sum(isinstance(c, CreateResponse) for c in rig.link.sent) == 2
    assert [i for i, _ in rig.speaker.played] == ["item_2", "item_2"]
    await rig.app.shutdown()


async def test_default_tool_runner_answers_no_such_tool() -> None:
    """Without tools, a function call gets an error output instead of hanging the turn."""
    assert json.loads(await NoTools().run("c", "lamp", "{}")) == {"error": "no such tool: lamp"}


async def test_crashing_adapter_is_restarted_and_the_loop_stays_up() -> None:
    """A mic that crashes twice is restarted with backoff; lost and restored are posted once."""
    quick = Backoff(initial_s=0.01, max_s=0.02, jitter=0.0)
    rig = Rig(mic_crashes=2, restart_backoff=quick, stable_after_s=0.05)
    await rig.app.start()
    await until(lambda: any(isinstance(e, DeviceRestored) for e in rig.events))
    lost = [e for e in rig.events if isinstance(e, DeviceLost)]
    assert [e.device for e in lost] == ["microphone"] and "device unplugged" in lost[0].message
    assert rig.mic.runs == 3 and rig.app.restarts["microphone"] == 2
    assert rig.speaker.cues == ["error"]
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE and rig.conv.connected, 5.0)
    seen = rig.conv.turns_completed
    rig.button.fire(*hold_to_talk())
    await rig.app.wait_turn_completed(timeout_s=5.0, after=seen)  # the loop still serves turns
    await rig.app.shutdown()


async def test_watchdog_pings_stop_while_the_loop_is_blocked() -> None:
    """WATCHDOG=1 comes only from a healthy loop: none while it is blocked, again afterwards."""
    rig = Rig(watchdog_interval_s=0.02)
    await rig.app.start()
    await until(lambda: len(rig.notifier.times("watchdog")) >= 3)
    window: dict[str, float] = {}

    def block() -> None:
        window["start"] = time.monotonic()
        time.sleep(0.3)  # a stalled loop: a blocking call on the loop thread
        window["end"] = time.monotonic()

    asyncio.get_running_loop().call_soon(block)
    await until(lambda: "end" in window)
    await until(lambda: any(t > window["end"] for t in rig.notifier.times("watchdog")))
    pings = rig.notifier.times("watchdog")
    assert not [t for t in pings if window["start"] <= t <= window["end"]]
    await rig.app.shutdown()


async def test_watchdog_withheld_while_the_inbox_is_not_drained() -> None:
    """A heartbeat stuck behind a backlog withholds the ping even though timers still run."""
    rig = Rig(watchdog_interval_s=0.02)
    await rig.app.start()
    await until(lambda: len(rig.notifier.times("watchdog")) >= 2)
    handled: list[float] = []

    def slow(event: Event, _cmds: object) -> None:
        if isinstance(event, ButtonReleased):
            time.sleep(0.005)  # a slow consumer; the loop yields between batches
            handled.append(time.monotonic())

    rig.app.add_listener(slow)
    for _ in range(200):  # ignored events (idle): pure backlog
        rig.app.post(ButtonReleased(0.0))
    await until(lambda: len(handled) == 200)
    during = [t for t in rig.notifier.times("watchdog") if handled[0] < t < handled[-1]]
    # The backlog takes ~1 s of consumer time: at ~20 ms per ping a live watchdog would
    # send dozens; the heartbeat queued behind it lets at most the few already in flight.
    assert len(during) <= 2
    await rig.app.shutdown()


async def test_shutdown_turns_the_led_off_and_stops_everything() -> None:
    """Shutdown goes through the core: playback stopped, link closed, LED off, adapters stopped."""
    rig = Rig()
    await rig.app.start()
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE and rig.conv.connected, 5.0)
    await rig.app.shutdown()
    assert rig.indicator.shown[-1] == "off" and rig.indicator.closed
    assert "disconnect:shutdown" in rig.link.calls
    assert rig.speaker.stops == 1
    assert rig.notifier.times("stopping")
    assert rig.mic.cancelled
    await rig.app.wait_stopped()


async def test_interrupt_hook_stops_the_reply_and_says_the_fallback() -> None:
    """app.interrupt(say=…) stops playback and asks for the fallback line once cancelled."""
    rig = Rig()
    await rig.app.start()
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE and rig.conv.connected, 5.0)
    rig.speaker.finish = lambda item_id: None  # type: ignore[method-assign]
    rig.link._respond = lambda: None  # type: ignore[method-assign]  # the test plays the server
    rig.button.fire(*hold_to_talk())
    await until(lambda: isinstance(rig.link.sent[-1], CreateResponse))
    rig.app.post(ResponseCreated("resp_9"))
    rig.app.post(AudioDelta("resp_9", "item_9", 0, REPLY))
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.SPEAKING, 5.0)
    rig.app.interrupt(say="I can't talk about that.")
    await until(lambda: rig.speaker.stops == 1)
    rig.app.post(ResponseDone("resp_9", "cancelled"))
    await until(lambda: isinstance(rig.link.sent[-1], CreateResponse))
    last = rig.link.sent[-1]
    assert isinstance(last, CreateResponse) and "I can't talk about that." in (
        last.instructions or ""
    )
    await rig.app.shutdown()


@pytest.mark.parametrize("policy", ["always", "on_demand"])
async def test_ready_is_sent_with_the_network_still_down(policy: str) -> None:
    """READY=1 depends on the adapters only; the link may come up later (or never)."""
    rig = Rig(Settings(session_policy=policy))  # type: ignore[arg-type]
    rig.link.connect = lambda: rig.link.calls.append("connect")  # type: ignore[method-assign]
    await rig.app.start()
    assert rig.notifier.times("ready")
    # The session config is handed over (the link opens the session with it); nothing else.
    assert all(isinstance(c, UpdateSession) for c in rig.link.sent)
    await rig.app.shutdown()


async def test_interceptor_consumes_events_before_the_core() -> None:
    """An interceptor (e.g. tool approval) takes a press away from the core until removed."""
    rig = Rig()
    await rig.app.start()
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE and rig.conv.connected, 5.0)
    approvals: list[Event] = []

    def approve(event: Event) -> bool:
        if isinstance(event, ButtonPressed | ButtonReleased):
            approvals.append(event)
            return True
        return False

    remove = rig.app.add_interceptor(approve)
    rig.button.fire(ButtonPressed(), ButtonReleased(0.1))
    await until(lambda: len(approvals) == 2)
    assert rig.conv.phase is Phase.IDLE
    remove()
    rig.button.fire(ButtonPressed())
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.LISTENING, 5.0)
    rig.app.update_session(SessionConfig(instructions="new agent"))
    await until(lambda: rig.link.sent[-1] == UpdateSession(SessionConfig(instructions="new agent")))
    await rig.app.shutdown()


async def test_an_adapter_method_raising_is_logged_and_the_loop_goes_on() -> None:
    """A speaker whose play() raises costs that chunk only; the turn still completes."""
    rig = Rig()

    def broken(item_id: str, pcm: bytes) -> None:
        raise OSError("ALSA underrun")

    rig.speaker.play = broken  # type: ignore[method-assign]
    await rig.app.start()
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE and rig.conv.connected, 5.0)
    seen = rig.conv.turns_completed
    rig.button.fire(*hold_to_talk())
    await rig.app.wait_turn_completed(timeout_s=5.0, after=seen)
    assert rig.app.command_errors == 2
    await rig.app.shutdown()


async def test_wait_for_sees_a_state_reached_before_the_call() -> None:
    """wait_for returns at once when the state already holds (LinkUp handled long ago)."""
    rig = Rig()
    await rig.app.start()
    await until(lambda: any(isinstance(e, LinkUp) for e in rig.events))
    await asyncio.sleep(0.01)  # LinkUp is long handled: run_until(LinkUp) would now hang
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE and rig.conv.connected, 5.0)
    with pytest.raises(TimeoutError):
        await rig.app.wait_for(lambda: rig.conv.phase is Phase.SPEAKING, 0.05)
    seen = rig.conv.turns_completed
    rig.button.fire(*hold_to_talk())
    await asyncio.sleep(0.05)  # the turn may well be over before we wait: no miss
    await rig.app.wait_turn_completed(timeout_s=5.0, after=seen)
    assert rig.conv.turns_completed == seen + 1
    await rig.app.shutdown()


@pytest.mark.parametrize(
    ("policy", "link_calls"),
    [("always", ["connect"]), ("on_demand", ["connect", "disconnect:conversation ended"])],
)
async def test_end_after_reply_through_the_app(policy: str, link_calls: list[str]) -> None:
    """The end tool's glue: app.call(end_after_reply) ends after the goodbye, then idle."""

    class EndTool:
        def __init__(self, app: App, conv: Conversation) -> None:
            self.app, self.conv = app, conv

        async def run(self, call_id: str, name: str, arguments: str) -> str:
            self.app.call(lambda now: self.conv.end_after_reply(now))
            return "{}"

    rig = Rig(Settings(session_policy=policy), tool_call=True)  # type: ignore[arg-type]
    rig.app.tools = EndTool(rig.app, rig.conv)
    await rig.app.start()
    seen = rig.conv.turns_completed
    rig.button.fire(*hold_to_talk())
    await rig.app.wait_turn_completed(timeout_s=5.0, after=seen)
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE, 5.0)
    assert rig.speaker.cues == ["listening", "done", "done"]  # commit, then the end
    assert [i for i, _ in rig.speaker.played] == ["item_2", "item_2"]  # the goodbye played
    assert rig.link.calls == link_calls
    await rig.app.shutdown()


async def test_approval_pending_set_through_app_call_keeps_presses_from_the_core() -> None:
    """With approval pending (set in inbox order), a press during THINKING does not barge in."""
    approved = asyncio.Event()

    class Approved:
        async def run(self, call_id: str, name: str, arguments: str) -> str:
            await approved.wait()
            return "{}"

    rig = Rig(tool_call=True, tools=Approved())
    await rig.app.start()
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE and rig.conv.connected, 5.0)
    seen = rig.conv.turns_completed
    rig.button.fire(*hold_to_talk())
    await rig.app.wait_for(lambda: any(isinstance(e, FunctionCallRequested) for e in rig.events), 5)
    rig.app.call(lambda now: rig.conv.set_approval_pending(True, now))
    await rig.app.wait_for(lambda: rig.conv.approval_pending, 5.0)
    assert rig.indicator.shown[-1] == "connecting"
    rig.button.fire(ButtonPressed(), ButtonReleased(0.1))
    await until(lambda: isinstance(rig.events[-1], ButtonReleased))
    assert rig.conv.phase is Phase.THINKING
    rig.app.call(lambda now: rig.conv.set_approval_pending(False, now))
    approved.set()
    await rig.app.wait_turn_completed(timeout_s=5.0, after=seen)
    await rig.app.shutdown()


async def test_events_posted_from_a_thread_are_handled_in_order() -> None:
    """A burst posted from another thread reaches the core and listeners whole and in order."""
    rig = Rig()
    await rig.app.start()
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE and rig.conv.connected, 5.0)
    frames = [MicFrame(bytes([i % 256]) * 960, False) for i in range(500)]
    rig.button.fire(*frames)
    await until(lambda: sum(isinstance(e, MicFrame) for e in rig.events) >= len(frames))
    assert [e for e in rig.events if isinstance(e, MicFrame)] == frames
    await rig.app.shutdown()


async def test_a_post_from_a_plain_loop_callback_is_handled_at_once() -> None:
    """The mic's batch arrives as a loop callback (no task): handled there, in order, and
    what its commands post (the speaker's PlaybackStopped) follows it."""
    rig = Rig()
    await rig.app.start()
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE and rig.conv.connected, 5.0)
    seen = rig.conv.turns_completed
    phases: list[Phase] = []

    def batch() -> None:
        rig.app.post(ButtonPressed())
        phases.append(rig.conv.phase)  # already handled, before this callback returns
        for event in hold_to_talk()[1:]:
            rig.app.post(event)

    asyncio.get_running_loop().call_soon(batch)
    await rig.app.wait_turn_completed(timeout_s=5.0, after=seen)
    assert phases == [Phase.LISTENING]
    wire = [type(c).__name__ for c in rig.link.sent]
    assert wire == ["UpdateSession", *["SendAudio"] * 10, "CommitAudio", "CreateResponse"]
    await rig.app.shutdown()


async def test_a_bug_while_handling_a_post_fails_the_app_not_the_poster() -> None:
    """A handler's exception (here an interceptor's bug) ends the app as it always did,
    but never raises into the adapter that posted (the mic's callback goes on)."""
    rig = Rig()
    await rig.app.start()
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE and rig.conv.connected, 5.0)
    bad = MicFrame(b"\x01" * 960, False)

    def buggy(event: Event) -> bool:
        if event is bad:
            raise RuntimeError("interceptor bug")
        return False

    rig.app.add_interceptor(buggy)
    posted: list[Event] = []

    def batch() -> None:
        for event in [bad, MicFrame(b"\x02" * 960, False)]:
            rig.app.post(event)
            posted.append(event)

    asyncio.get_running_loop().call_soon(batch)
    with pytest.raises(RuntimeError, match="interceptor bug"):
        await asyncio.wait_for(rig.app.wait_stopped(), 5.0)
    assert len(posted) == 2


async def test_core_deadline_fires_while_mic_frames_keep_flowing() -> None:
    """The max-turn deadline ends a held turn although frames arrive all the while."""
    rig = Rig(Settings(max_turn_s=0.2))
    await rig.app.start()
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE and rig.conv.connected, 5.0)
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            rig.app.post(MicFrame(FRAME, True))
            time.sleep(0.002)

    rig.button.fire(ButtonPressed())
    thread = threading.Thread(target=stream)
    thread.start()
    try:
        await rig.app.wait_for(lambda: rig.conv.phase is Phase.LISTENING, 5.0)
        await rig.app.wait_for(lambda: rig.conv.phase is not Phase.LISTENING, 5.0)
    finally:
        stop.set()
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
    assert any(isinstance(c, CommitAudio) for c in rig.link.sent)
    await rig.app.shutdown()


# --------------------------------------------------------------------------- READY and STATUS


class OpeningMic(RecordingMicrophone):
    """A mic that opens its device in ``run`` (``ports.Opening``), when the test says so."""

    def __init__(self, missing: str | None = None) -> None:
        super().__init__()
        self.missing = missing
        self.open_now = asyncio.Event()
        self._started = asyncio.Event()

    async def wait_started(self) -> None:
        await self._started.wait()

    async def run(self, post: Post) -> None:
        await self.open_now.wait()
        if self.missing is not None:
            post(DeviceLost("microphone", self.missing))
        self._started.set()
        await forever()


def opening_rig(mic: OpeningMic, **app_kwargs: Any) -> Rig:
    rig = Rig(**app_kwargs)
    rig.mic = mic
    rig.app.mic = mic
    return rig


async def test_ready_waits_until_the_microphone_is_open() -> None:
    """READY=1 means audio is open: not sent while the mic is still opening its device."""
    mic = OpeningMic()
    rig = opening_rig(mic)
    starting = asyncio.create_task(rig.app.start())
    await rig.app.wait_for(lambda: rig.conv.connected, 5.0)  # the loop is serving meanwhile
    for _ in range(20):
        await asyncio.sleep(0)
    assert not rig.notifier.times("ready")
    assert not starting.done()
    mic.open_now.set()
    await asyncio.wait_for(starting, 5.0)
    assert rig.notifier.times("ready")
    await rig.app.shutdown()


async def test_a_missing_card_is_named_in_status_before_ready() -> None:
    """No sound card at boot: READY=1 still goes out (no start timeout, no restart loop),
    after a STATUS line that names the missing device."""
    mic = OpeningMic(missing="no input device matches 'usb'")
    rig = opening_rig(mic)
    mic.open_now.set()
    await rig.app.start()
    ready_at = rig.notifier.messages.index("READY=1")
    named = [m for m in rig.notifier.messages[:ready_at] if "no input device matches" in m]
    assert named and named[-1].startswith("STATUS=error")
    await rig.app.shutdown()


async def test_ready_after_the_start_timeout_names_what_is_still_opening() -> None:
    """A driver that hangs: READY=1 after ``start_timeout_s``, STATUS says what still opens."""
    mic = OpeningMic()
    rig = opening_rig(mic, start_timeout_s=0.05)
    await asyncio.wait_for(rig.app.start(), 5.0)
    assert rig.notifier.times("ready")
    assert "microphone still opening" in rig.notifier.statuses[-1]
    await rig.app.shutdown()


async def test_status_is_sent_once_per_change() -> None:
    """The same status line twice in a row is neither re-sent nor re-logged."""
    rig = Rig()
    await rig.app.start()
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE and rig.conv.connected, 5.0)
    for _ in range(3):  # each makes the core report its (unchanged) error status again
        rig.app.post(DeviceLost("speaker", "gone"))
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.ERROR, 5.0)
    await rig.app.wait_for(lambda: len(rig.events) >= 4, 5.0)
    statuses = rig.notifier.statuses
    assert all(a != b for a, b in itertools.pairwise(statuses)), statuses
    await rig.app.shutdown()


async def test_status_drops_the_error_of_a_device_that_came_back() -> None:
    """Lost, then restored: the status line is plain "idle" again, not "last error: …"."""
    rig = Rig()
    await rig.app.start()
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE and rig.conv.connected, 5.0)
    rig.app.post(DeviceLost("speaker", "stream stopped"))
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.ERROR, 5.0)
    assert "speaker: stream stopped" in rig.notifier.statuses[-1]
    rig.app.post(DeviceRestored("speaker"))
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE, 5.0)
    assert rig.notifier.statuses[-1] == "idle"
    await rig.app.shutdown()


async def test_status_notes_follow_the_phase() -> None:
    """A standing note (a button that could not be opened) rides on every status line."""
    rig = Rig(status_notes={"button": "button on GPIO 17 unavailable: hands-free only"})
    await rig.app.start()
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE and rig.conv.connected, 5.0)
    assert rig.notifier.statuses[-1] == "idle; button on GPIO 17 unavailable: hands-free only"
    await rig.app.shutdown()


# --------------------------------------------------------------------------- audio dropouts


class CountingSpeaker(RecordingSpeaker):
    """A speaker whose underflows the test counts up (``ports.DropoutCounter``)."""

    def __init__(self) -> None:
        super().__init__()
        self.dropouts = 0


async def test_dropouts_reach_status_and_the_journal_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Underflows show in STATUS while recent; the journal gets one summary, not one a poll."""
    rig = Rig(health_interval_s=0.01, dropout_window_s=600)
    speaker = CountingSpeaker()
    rig.app.speaker = rig.speaker = speaker
    caplog.set_level("INFO", logger="hark.service.loop")
    await rig.app.start()
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE and rig.conv.connected, 5.0)
    for n in (1, 3, 7):
        speaker.dropouts = n
        await until(lambda n=n: f"speaker {n}" in rig.notifier.statuses[-1])  # type: ignore[misc]
    assert rig.notifier.statuses[-1] == "idle; audio dropouts in the last 600 s: speaker 7"
    lines = [r.getMessage() for r in caplog.records if "audio dropout" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("speaker: 1 audio dropout in the last")
    await rig.app.shutdown()
    assert "audio dropouts since start: microphone" not in caplog.text  # fakes count nothing
    assert "audio dropouts since start: speaker 7" in caplog.text


def test_dropout_watch_summarises_once_a_window_and_forgets_old_ones() -> None:
    """The pure bookkeeping: first dropout at once, a summary a window, the note expires."""
    from hark.service.loop import _DropoutWatch

    watch = _DropoutWatch(window_s=60)
    watch.track("speaker", 5, now=0.0)  # counted before tracking began: not ours
    watch.update("speaker", 5, now=5.0)
    assert watch.summaries(5.0) == [] and not watch.refresh_note(5.0)
    watch.update("speaker", 7, now=10.0)
    assert watch.summaries(10.0) == ["speaker: 2 audio dropouts in the last 5 s (2 since start)"]
    assert watch.refresh_note(10.0) and watch.note == "audio dropouts in the last 60 s: speaker 2"
    watch.update("speaker", 8, now=20.0)
    watch.update("speaker", 9, now=40.0)
    assert watch.summaries(40.0) == []  # within the window of the last summary: held
    assert watch.summaries(70.0) == ["speaker: 2 audio dropouts in the last 60 s (4 since start)"]
    watch.refresh_note(75.0)
    assert watch.note == "audio dropouts in the last 60 s: speaker 2"  # those at 20 s and 40 s
    assert watch.refresh_note(101.0) and watch.note == ""
    assert watch.summaries(130.0) == []  # nothing new: silent
    watch.update("speaker", 10, now=135.0)
    assert watch.summaries(135.0) == ["speaker: 1 audio dropout in the last 5 s (5 since start)"]
    assert watch.total() == 5 and watch.totals_text() == "speaker 5"


class _NeverHandlesItsDeadline(Conversation):
    """A core with a bug: a deadline it reports but no Tick ever handles."""

    def deadline(self) -> float | None:
        return 0.0


async def test_a_deadline_the_core_never_handles_is_raised_not_spun_on() -> None:
    """Ticks that leave the same deadline due are a core bug: the app ends with it (the
    fuzz test in test_conversation_deadlines.py holds the real core to this), instead of
    burning a core ticking, or quietly retrying later as it used to."""
    rig = Rig()
    rig.app.conversation = _NeverHandlesItsDeadline(Settings())
    with pytest.raises(RuntimeError, match="stays due after"):
        await rig.app.start()
        await asyncio.wait_for(rig.app.wait_stopped(), 5.0)


async def test_the_spotter_is_armed_for_what_the_core_listens_for() -> None:
    """Push to talk with the stop word: nothing armed at rest, "stop" during the reply,
    and a stop heard on the mic's thread cuts the reply (the mic runs only then)."""
    from hark.events import StopWordHeard
    from hark.testing import RecordingSpotter

    spotter = RecordingSpotter()
    rig = Rig(Settings(stop_word=True), spotter=spotter)
    await rig.app.start()
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE and rig.conv.connected, 5.0)
    rig.speaker.finish = lambda item_id: None  # type: ignore[method-assign]  # keep playing
    rig.button.fire(*hold_to_talk())
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.SPEAKING, 5.0)
    assert spotter.arms[-1] == {"stop"} and rig.mic.demands[-1] == "batched"
    rig.app.post(StopWordHeard())  # as the capture chain posts it
    await rig.app.wait_for(lambda: rig.conv.phase is Phase.IDLE, 5.0)
    assert spotter.arms == [frozenset(), frozenset({"stop"}), frozenset()]
    assert rig.mic.demands[-1] == "off"
    await rig.app.shutdown()
