"""The core with the wake word, the stop word and the follow-up window, as transcripts."""

from __future__ import annotations

from typing import Any

import pytest
from hark.conversation import Conversation, Phase, Settings
from hark.events import (
    AudioDelta,
    AudioDone,
    ButtonPressed,
    CancelResponse,
    CommitAudio,
    CreateResponse,
    FinishPlayback,
    LinkUp,
    MicFrame,
    Play,
    PlaybackStopped,
    PlayCue,
    ResponseCreated,
    ResponseDone,
    SendAudio,
    SetLed,
    StopPlayback,
    StopWordHeard,
    TextRequested,
    Tick,
    Truncate,
    WakeWordHeard,
)

from tests.device.test_conversation import pcm, play, quiet, voiced

WAKE = WakeWordHeard("Okay Nabu")


def linked(**overrides: Any) -> Conversation:
    conv = Conversation(Settings(**overrides))
    conv.start(0.0)
    conv.handle(LinkUp("sess_1", None), 0.0)
    assert conv.phase is Phase.IDLE
    return conv


def reply_played(conv: Conversation, now: float, rid: str = "resp_1") -> None:
    """The turn was committed: the reply arrives, plays to its end, the response is done."""
    conv.handle(ResponseCreated(rid), now)
    conv.handle(AudioDelta(rid, "item_a", 0, pcm(100, 7)), now)
    conv.handle(AudioDone(rid, "item_a"), now)
    conv.handle(ResponseDone(rid, "completed"), now)
    conv.handle(PlaybackStopped("item_a", 100, interrupted=False), now)


def test_wake_word_opens_a_turn_with_only_what_follows_it() -> None:
    """Frames before the word never leave; the turn starts with the last 100 ms before the
    word was recognised (the model says so 10-60 ms into what follows) and ends on silence."""
    conv = linked(trigger_mode="wake")
    assert conv.words == {"wake"} and conv.mic_demand == "batched"
    before = [quiet(n) for n in range(1, 11)]  # 200 ms: "okay nabu" and what came before
    play(conv, [(1.0, f, []) for f in before])
    lead = b"".join(f.pcm for f in before[-5:])
    play(conv, [(1.0, WAKE, [SetLed("listening"), PlayCue("listening"), SendAudio(lead)])])
    assert conv.phase is Phase.LISTENING and conv.words == frozenset()
    assert conv.mic_demand == "speech"
    speech = [voiced(20)] * 10
    play(conv, [(1.2, f, [SendAudio(f.pcm)]) for f in speech])
    silence = [quiet(30)] * 35  # 700 ms ends the turn
    for f in silence[:-1]:
        play(conv, [(2.0, f, [SendAudio(f.pcm)])])
    play(
        conv,
        [
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
            )
        ],
    )


def test_voice_alone_opens_nothing_in_wake_mode() -> None:
    conv = linked(trigger_mode="wake")
    play(conv, [(1.0, voiced(), []) for _ in range(50)])
    assert conv.phase is Phase.IDLE


def test_wake_word_preroll_can_be_off() -> None:
    conv = linked(trigger_mode="wake", wake_preroll_ms=0)
    play(conv, [(1.0, quiet(1), [])])
    play(conv, [(1.0, WAKE, [SetLed("listening"), PlayCue("listening")])])


def test_a_wake_turn_without_speech_closes_on_the_no_speech_timeout() -> None:
    conv = linked(trigger_mode="wake", no_speech_timeout_s=4.0, wake_preroll_ms=0)
    conv.handle(WAKE, 1.0)
    assert conv.deadline() == pytest.approx(5.0)
    play(conv, [(5.0, Tick(), [SetLed("idle")])])


def test_wake_word_during_a_reply_barges_in() -> None:
    conv = linked(trigger_mode="wake", wake_preroll_ms=0)
    conv.handle(WAKE, 1.0)
    for f in [voiced()] * 10:
        conv.handle(f, 1.1)
    for f in [quiet()] * 35:
        conv.handle(f, 2.0)
    assert conv.phase is Phase.THINKING
    conv.handle(ResponseCreated("resp_1"), 2.1)
    conv.handle(AudioDelta("resp_1", "item_a", 0, pcm(100, 7)), 2.1)
    assert conv.words == {"wake"}
    play(
        conv,
        [
            (
                2.5,
                WAKE,
                [
                    StopPlayback(),
                    CancelResponse("resp_1"),
                    SetLed("listening"),
                    PlayCue("listening"),
                ],
            )
        ],
    )


def test_stop_word_cuts_the_reply_like_a_barge_in_without_a_turn() -> None:
    """Fade, cancel, truncate to what was heard, back to rest: also in button mode."""
    conv = linked(trigger_mode="button", stop_word=True)
    assert conv.words == frozenset() and conv.mic_demand == "off"
    from tests.device.test_conversation import to_speaking

    to_speaking(conv)
    assert conv.words == {"stop"}
    assert conv.mic_demand == "batched"  # the spotter runs on the capture chain
    play(
        conv,
        [
            (2.0, StopWordHeard(), [StopPlayback(), CancelResponse("resp_1"), SetLed("idle")]),
            (2.1, PlaybackStopped("item_a", 120, interrupted=True), [Truncate("item_a", 120)]),
        ],
    )
    assert conv.words == frozenset() and conv.mic_demand == "off"


def test_stop_word_is_not_listened_for_unless_configured() -> None:
    conv = linked(trigger_mode="wake")
    conv.handle(WAKE, 1.0)
    assert "stop" not in conv.words
    play(conv, [(1.0, StopWordHeard(), [])])  # not in a reply: nothing
    assert conv.ignored_counts["StopWordHeard"] == 1


def test_stop_word_waits_while_approval_is_pending() -> None:
    conv = linked(stop_word=True)
    from tests.device.test_conversation import to_speaking

    to_speaking(conv)
    conv.set_approval_pending(True, 2.0)
    assert conv.words == frozenset()
    play(conv, [(2.0, StopWordHeard(), [])])


def test_follow_up_window_opens_after_a_reply_and_voice_opens_a_turn() -> None:
    conv = linked(trigger_mode="wake", follow_up_s=5.0, wake_preroll_ms=0)
    conv.handle(WAKE, 1.0)
    for f in [voiced()] * 10:
        conv.handle(f, 1.1)
    for f in [quiet()] * 35:
        conv.handle(f, 2.0)
    conv.handle(ResponseCreated("resp_1"), 2.1)
    conv.handle(AudioDelta("resp_1", "item_a", 0, pcm(100, 7)), 2.1)
    conv.handle(AudioDone("resp_1", "item_a"), 2.2)
    conv.handle(ResponseDone("resp_1", "completed"), 2.2)
    play(conv, [(3.0, PlaybackStopped("item_a", 100, False), [SetLed("follow_up")])])
    assert conv.phase is Phase.FOLLOW_UP and conv.deadline() == pytest.approx(8.0)
    assert conv.mic_demand == "batched" and conv.words == {"wake"}
    # Quiet frames are kept locally only; voice (4 of 6 frames) opens a turn with them.
    play(conv, [(3.5, quiet(2), [])] * 3)
    frames = [voiced(5)] * 4
    play(conv, [(3.6, f, []) for f in frames[:3]])
    got = conv.handle(frames[3], 3.6)
    assert SetLed("listening") in got and conv.phase is Phase.LISTENING
    sent = [c for c in got if isinstance(c, SendAudio)]
    assert sent == [SendAudio(quiet(2).pcm * 3 + frames[0].pcm * 4)]


def test_follow_up_window_closes_on_silence_without_a_turn() -> None:
    conv = linked(follow_up_s=4.0)
    from tests.device.test_conversation import to_speaking

    to_speaking(conv)
    conv.handle(AudioDone("resp_1", "item_a"), 2.0)
    conv.handle(ResponseDone("resp_1", "completed"), 2.0)
    play(conv, [(2.5, PlaybackStopped("item_a", 200, False), [SetLed("follow_up")])])
    assert conv.mic_demand == "batched"  # button mode: the mic works only for the window
    play(conv, [(3.0, quiet(), [])] * 100)  # nothing sent, no turn
    play(conv, [(6.4, Tick(), [])])
    play(conv, [(6.5, Tick(), [SetLed("idle")])])
    assert conv.phase is Phase.IDLE and conv.mic_demand == "off"
    assert conv.turns_completed == 1


def test_follow_up_takes_the_button_and_typed_requests() -> None:
    conv = linked(follow_up_s=4.0)
    from tests.device.test_conversation import to_speaking

    to_speaking(conv)
    conv.handle(AudioDone("resp_1", "item_a"), 2.0)
    conv.handle(ResponseDone("resp_1", "completed"), 2.0)
    conv.handle(PlaybackStopped("item_a", 200, False), 2.5)
    play(conv, [(3.0, ButtonPressed(), [SetLed("listening"), PlayCue("listening")])])
    conv2 = linked(follow_up_s=4.0)
    to_speaking(conv2)
    conv2.handle(AudioDone("resp_1", "item_a"), 2.0)
    conv2.handle(ResponseDone("resp_1", "completed"), 2.0)
    conv2.handle(PlaybackStopped("item_a", 200, False), 2.5)
    got = conv2.handle(TextRequested("and tomorrow?"), 3.0)
    assert SetLed("thinking") in got


def test_no_follow_up_after_a_reply_cut_short() -> None:
    """ "stop" means stop: the window does not open after an interrupted reply."""
    conv = linked(stop_word=True, follow_up_s=4.0)
    from tests.device.test_conversation import to_speaking

    to_speaking(conv)
    conv.handle(StopWordHeard(), 2.0)
    assert conv.phase is Phase.IDLE


def test_follow_up_is_off_by_default() -> None:
    conv = linked()
    from tests.device.test_conversation import to_speaking

    to_speaking(conv)
    conv.handle(AudioDone("resp_1", "item_a"), 2.0)
    conv.handle(ResponseDone("resp_1", "completed"), 2.0)
    play(conv, [(2.5, PlaybackStopped("item_a", 200, False), [SetLed("idle")])])


def test_late_events_do_not_close_the_window_early() -> None:
    conv = linked(follow_up_s=4.0)
    from tests.device.test_conversation import to_speaking

    to_speaking(conv)
    conv.handle(AudioDone("resp_1", "item_a"), 2.0)
    conv.handle(ResponseDone("resp_1", "completed"), 2.0)
    conv.handle(PlaybackStopped("item_a", 200, False), 2.5)
    play(conv, [(3.0, LinkUp("sess_1", None), [])])
    assert conv.phase is Phase.FOLLOW_UP


@pytest.mark.parametrize("mode", ["wake", "wake+button"])
def test_wake_modes_ask_the_server_for_its_vad_when_it_ends_turns(mode: str) -> None:
    from hark.conversation import effective_session

    settings = Settings(trigger_mode=mode, end_of_turn="server")  # type: ignore[arg-type]
    assert effective_session(settings).turn_detection is not None


def test_wake_preroll_must_fit_the_preroll() -> None:
    with pytest.raises(ValueError, match="wake_preroll_ms"):
        Settings(wake_preroll_ms=400)
    with pytest.raises(ValueError, match="follow_up_s"):
        Settings(follow_up_s=-1)


def test_replay_of_words_in_the_wrong_phase_is_ignored() -> None:
    conv = linked(trigger_mode="wake", wake_preroll_ms=0)
    conv.handle(WAKE, 1.0)
    play(conv, [(1.1, WAKE, [])])  # already listening
    assert conv.ignored_counts["WakeWordHeard"] == 1
    _ = (Play, FinishPlayback, MicFrame)
