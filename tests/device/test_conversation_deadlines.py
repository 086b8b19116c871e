"""The core's deadline moves whenever a Tick at it is handled: random event sequences.

``App`` dispatches a ``Tick`` once ``deadline()`` has passed; if the core then still
reports the same deadline, the loop would tick again at once, forever. hypothesis
drives the core through arbitrary sequences of the events its adapters can post, in
every trigger mode and session policy, and ticks it whenever a deadline is due.
"""

from __future__ import annotations

import os

from hark.conversation import Conversation, Settings
from hark.events import (
    AudioCommitted,
    AudioDelta,
    AudioDone,
    ButtonLongPressed,
    ButtonPressed,
    ButtonReleased,
    DeviceLost,
    DeviceRestored,
    Event,
    FunctionCallRequested,
    LinkDown,
    LinkFailed,
    LinkUp,
    MicFrame,
    PlaybackStopped,
    ResponseCreated,
    ResponseDone,
    Rotate,
    ServerError,
    SpeechStarted,
    TextRequested,
    Tick,
    ToolFinished,
)
from hypothesis import given, settings
from hypothesis import strategies as st

FRAME = bytes(960)  # 20 ms at 24 kHz

RIDS = st.sampled_from(["resp_1", "resp_2"])
ITEMS = st.sampled_from(["item_a", "item_b"])
CALLS = st.sampled_from(["call_1", "call_2"])

EVENTS: st.SearchStrategy[Event] = st.one_of(
    st.just(ButtonPressed()),
    st.builds(ButtonReleased, st.floats(0, 5)),
    st.just(ButtonLongPressed()),
    st.builds(MicFrame, st.just(FRAME), st.booleans()),
    st.builds(LinkUp, st.just("sess"), st.none()),
    st.builds(LinkDown, st.just("gone"), st.booleans()),
    st.builds(
        LinkFailed, st.sampled_from(["network", "server", "config", "unauthorised"]), st.just("x")
    ),
    st.builds(ResponseCreated, RIDS),
    st.builds(AudioDelta, RIDS, ITEMS, st.just(0), st.just(bytes(4800))),
    st.builds(AudioDone, RIDS, ITEMS),
    st.builds(ResponseDone, RIDS, st.sampled_from(["completed", "cancelled", "failed"])),
    st.builds(PlaybackStopped, st.one_of(st.none(), ITEMS), st.integers(0, 500), st.booleans()),
    st.builds(FunctionCallRequested, RIDS, ITEMS, CALLS, st.just("time"), st.just("{}")),
    st.builds(ToolFinished, CALLS, st.just("{}")),
    st.builds(TextRequested, st.just("hi")),
    st.builds(
        ServerError, st.sampled_from(["bad", "input_audio_buffer_commit_empty"]), st.just("m")
    ),
    st.builds(DeviceLost, st.sampled_from(["microphone", "speaker"]), st.just("gone")),
    st.builds(DeviceRestored, st.sampled_from(["microphone", "speaker"])),
    st.just(AudioCommitted("item_u", None)),
    st.just(SpeechStarted(0, "item_u")),
)

SETTINGS = st.builds(
    Settings,
    trigger_mode=st.sampled_from(["button", "vad", "both"]),
    button_mode=st.sampled_from(["hold", "tap"]),
    end_of_turn=st.sampled_from(["local", "server"]),
    session_policy=st.sampled_from(["always", "on_demand"]),
    idle_disconnect_s=st.sampled_from([1.0, 60.0]),
    rotate_after_s=st.sampled_from([2.0, 3000.0]),
    error_hold_s=st.sampled_from([0.5, 3.0]),
)


@settings(max_examples=int(os.environ.get("HARK_FUZZ_EXAMPLES", "300")), deadline=None)
@given(SETTINGS, st.lists(st.tuples(st.floats(0.0, 4.0), EVENTS), max_size=60))
def test_ticks_at_the_deadline_always_make_progress(
    config: Settings, steps: list[tuple[float, Event]]
) -> None:
    """Each due deadline is handled within a few Ticks at that moment; never a spin.

    Two deadlines can fall at the same time (a dropped turn and a rotation), so the one
    after a Tick may equal the one before; what must not happen is a deadline that stays
    due however often it is ticked.
    """
    conv = Conversation(config)
    now = 0.0
    conv.start(now)
    for gap, event in steps:
        target = now + gap
        ticks_now = 0
        while (due := conv.deadline()) is not None and due <= target:
            if due > now:
                now, ticks_now = due, 0
            conv.handle(Tick(), now)
            ticks_now += 1
            assert ticks_now <= 5, (conv.phase, due)  # as many deadlines as there are kinds
        now = target
        conv.handle(event, now)


def test_two_deadlines_due_at_once_take_two_ticks() -> None:
    """Found by the test above: a tap turn's no-speech drop and the rotation both due at
    t=5. The first Tick drops the turn and leaves the rotation due (the same time); the
    second rotates. App's old guard took that for a stuck deadline and delayed it."""
    conv = Conversation(
        Settings(button_mode="tap", rotate_after_s=2.0, rotate_quiet_s=0.0, no_speech_timeout_s=5.0)
    )
    conv.start(0.0)
    conv.handle(ButtonPressed(), 0.0)
    conv.handle(LinkUp("sess", None), 3.0)
    assert conv.deadline() == 5.0
    conv.handle(Tick(), 5.0)  # the turn had no speech: dropped
    assert conv.deadline() == 5.0  # the rotation, due at the same moment
    assert Rotate() in conv.handle(Tick(), 5.0)
