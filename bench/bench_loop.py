"""The appliance loop's own latency: trigger or server event → the adapter call, with fakes.

Fake adapters and a fake link with zero delay isolate what ``hark.service.loop`` and
``hark.conversation`` add.  Button events come from a thread of their own, as
gpiozero's do; server events are posted on the loop, as the link does.  Figures are
printed, never asserted.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable

from hark.conversation import Conversation, Phase, Settings
from hark.events import (
    AudioDelta,
    ButtonPressed,
    ButtonReleased,
    CommitAudio,
    Cue,
    Event,
    MicFrame,
    PlaybackStopped,
    ResponseCreated,
    ResponseDone,
    WireCommand,
)
from hark.ports import Post
from hark.service.loop import App
from hark.testing import NullIndicator, NullLink, NullMicrophone, NullTrigger

TURNS = 300
FRAME = bytes(960)  # 20 ms at 24 kHz PCM16
DELTA = bytes(4800)  # 100 ms


class _Marks:
    """Timestamps taken inside the fakes; ``arm`` before causing one, then ``wait``."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self._armed: dict[str, asyncio.Event] = {}

    def mark(self, name: str) -> None:
        self.at[name] = time.perf_counter()
        if (event := self._armed.get(name)) is not None:
            event.set()

    def arm(self, *names: str) -> None:
        for name in names:
            self._armed.setdefault(name, asyncio.Event()).clear()

    async def wait(self, name: str) -> float:
        async with asyncio.timeout(5.0):
            await self._armed[name].wait()
        return self.at[name]


class _Link(NullLink):
    def __init__(self, marks: _Marks) -> None:
        super().__init__()
        self.marks = marks

    def send(self, command: WireCommand) -> None:
        if isinstance(command, CommitAudio):
            self.marks.mark("commit")


class _Speaker:
    def __init__(self, marks: _Marks) -> None:
        self.marks = marks
        self.post: Post | None = None
        self.item: str | None = None

    async def run(self, post: Post) -> None:
        self.post = post
        await asyncio.Event().wait()

    def play(self, item_id: str, pcm: bytes) -> None:
        if item_id != self.item:
            self.item = item_id
            self.marks.mark("play")

    def finish(self, item_id: str) -> None:
        pass

    def stop(self) -> None:
        self.marks.mark("stop")
        assert self.post is not None
        self.post(PlaybackStopped(self.item, 50, interrupted=True))

    def cue(self, cue: Cue) -> None:
        self.marks.mark(f"cue:{cue}")

    @property
    def volume(self) -> float:
        return 1.0

    @volume.setter
    def volume(self, value: float) -> None:
        pass


def _percentiles(samples_s: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return statistics.median(ms), ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]


async def _measure() -> dict[str, list[float]]:
    marks = _Marks()
    conv = Conversation(Settings(listening_cue=True, done_cue=False))
    speaker = _Speaker(marks)
    app = App(conv, _Link(marks), NullMicrophone(), speaker, NullIndicator(), [NullTrigger()])
    await app.start()
    loop = asyncio.get_running_loop()

    async def idle() -> None:
        if conv.phase is not Phase.IDLE:
            await app.run_until(lambda _: conv.phase is Phase.IDLE, timeout_s=5.0)

    await idle()

    async def from_button_thread(event: Event) -> float:
        """Post as gpiozero would, from another thread; return when it was posted."""
        posted: list[float] = []

        def fire() -> None:
            posted.append(time.perf_counter())
            app.post(event)

        thread = threading.Thread(target=fire)
        thread.start()
        await loop.run_in_executor(None, thread.join)
        return posted[0]

    figures: dict[str, list[float]] = {"release": [], "delta": [], "barge": []}
    for turn in range(TURNS):
        marks.arm("cue:listening", "commit", "play", "stop")
        await from_button_thread(ButtonPressed())
        await marks.wait("cue:listening")
        for _ in range(10):
            app.post(MicFrame(FRAME, True))
        posted = await from_button_thread(ButtonReleased(0.2))
        figures["release"].append(await marks.wait("commit") - posted)

        rid = f"resp_{turn}"
        app.post(ResponseCreated(rid))
        posted = time.perf_counter()
        app.post(AudioDelta(rid, f"item_{turn}", 0, DELTA))
        figures["delta"].append(await marks.wait("play") - posted)
        app.post(AudioDelta(rid, f"item_{turn}", 0, DELTA))

        marks.arm("cue:listening")
        posted = await from_button_thread(ButtonPressed())  # barge-in while speaking
        figures["barge"].append(await marks.wait("stop") - posted)
        await marks.wait("cue:listening")
        await from_button_thread(ButtonReleased(0.0))  # too short: cleared
        app.post(ResponseDone(rid, "cancelled"))
        await idle()
    await app.shutdown()
    return figures


FRAMES = 5000
FRAME_GAP_S = 0.001  # each frame its own wake-up, as at 50 frames/s (not one batch)


def _post_frames(post: Post, frames: int) -> None:
    for _ in range(frames):
        post(MicFrame(FRAME, False))
        time.sleep(FRAME_GAP_S)


async def _frame_cost_us() -> float:
    """Process CPU per MicFrame posted from a thread through App, less the bare poster's."""
    conv = Conversation(Settings())
    app = App(
        conv,
        _Link(_Marks()),
        NullMicrophone(),
        _Speaker(_Marks()),
        NullIndicator(),
        [NullTrigger()],
    )
    app.add_listener(lambda _event, _commands: None)
    await app.start()
    await app.wait_for(lambda: conv.connected and conv.phase is Phase.IDLE, timeout_s=5.0)
    loop = asyncio.get_running_loop()

    started = time.process_time()
    await loop.run_in_executor(None, _post_frames, lambda _event: None, FRAMES)
    bare_s = time.process_time() - started

    seen = 0

    def count(event: Event, _commands: object) -> None:
        nonlocal seen
        seen += isinstance(event, MicFrame)

    app.add_listener(count)
    started = time.process_time()
    await loop.run_in_executor(None, _post_frames, app.post, FRAMES)
    await app.wait_for(lambda: seen >= FRAMES, timeout_s=10.0)
    through_s = time.process_time() - started
    await app.shutdown()
    return (through_s - bare_s) / FRAMES * 1e6


def main() -> None:
    figures = asyncio.run(_measure())
    rows: list[tuple[str, str, float]] = [
        ("release", "button release → CommitAudio handed to link.send", 5.0),
        ("delta", "first AudioDelta posted → speaker.play called", 20.0),
        ("barge", "barge-in press while speaking → speaker.stop called", 30.0),
    ]
    report: Callable[[str], None] = print
    for key, label, target_ms in rows:
        p50, p95 = _percentiles(figures[key])
        report(
            f"   {label}: p50 {p50:.3f} ms, p95 {p95:.3f} ms "
            f"(target p95 ≤ {target_ms:g} ms, n={len(figures[key])})"
        )
    frame_us = asyncio.run(_frame_cost_us())
    report(
        f"   CPU per MicFrame through App (post from a thread → core → listeners): "
        f"{frame_us:.1f} µs (= {frame_us * 50 / 1000:.2f} ms/s at 50 frames/s, n={FRAMES})"
    )


if __name__ == "__main__":
    main()
