"""The sound card's blocking work off the loop: a cancel is never lost, a late stream is closed;
what the speaker is told while its device opens.

No device is needed: ``_off_loop`` runs any blocking function on a daemon thread.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from hark.audio.portaudio import _off_loop
from hark.audio.soundcard import SoundcardSpeaker
from hark.events import Event, PlaybackStopped


def _threads_named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


async def test_a_cancel_in_the_same_pass_as_the_result_is_not_swallowed() -> None:
    """The result is queued, then the task is cancelled: it must end cancelled, result discarded.

    Python 3.11's ``wait_for`` returned the result here and dropped the cancel, so a
    microphone told to stop during a reopen kept reopening forever (seen as a hung
    probe in the ALSA tests under load).
    """
    go, started = threading.Event(), threading.Event()
    discarded: list[str] = []

    def blocking_open() -> str:
        started.set()
        go.wait(10)
        return "stream"

    task = asyncio.create_task(_off_loop(blocking_open, 10, discarded.append))
    while not started.is_set():
        await asyncio.sleep(0.01)
    (worker,) = _threads_named("hark-audio-io")
    go.set()
    worker.join(10)  # the thread has queued its result; the loop has not run it yet
    assert not worker.is_alive()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert discarded == ["stream"]


async def test_a_result_after_the_timeout_is_discarded() -> None:
    """An open that outlives its timeout raises TimeoutError; what it opens later is closed."""
    go = threading.Event()
    discarded: list[str] = []

    def slow_open() -> str:
        go.wait(10)
        return "late stream"

    with pytest.raises(TimeoutError):
        await _off_loop(slow_open, 0.05, discarded.append)
    go.set()
    deadline = time.monotonic() + 10
    while not discarded and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert discarded == ["late stream"]


async def test_a_failure_is_raised_to_the_caller() -> None:
    """The blocking function's exception reaches the awaiting task unchanged."""

    def failing_open() -> str:
        raise OSError("no such device")

    with pytest.raises(OSError, match="no such device"):
        await _off_loop(failing_open, 10)


async def test_a_stop_while_the_speaker_opens_answers_for_the_reply_not_a_cue() -> None:
    """Play, then a cue, then stop, all before the first open is done: the stop reports the
    reply item as interrupted (a queued cue is no item), and nothing is replayed after."""
    go = threading.Event()

    def opening() -> None:
        go.wait(10)
        raise OSError("no such device")

    speaker = SoundcardSpeaker("nothing")
    speaker._open_blocking = opening  # type: ignore[method-assign, assignment]
    posted: list[Event] = []
    task = asyncio.create_task(speaker.run(posted.append))
    await asyncio.sleep(0)  # run() is now waiting for the open
    speaker.play("item_1", bytes(960))
    speaker.cue("done")
    speaker.stop()
    assert posted == [PlaybackStopped("item_1", 0, interrupted=True)]
    go.set()
    while len(posted) < 2:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [type(e).__name__ for e in posted] == ["PlaybackStopped", "DeviceLost"]
