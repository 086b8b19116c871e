"""The shapes of the adapters the app drives, as ``typing.Protocol``s.

The app and the core see hardware and network only through these, so every one
has a fake (``hark.testing``) and a real implementation, chosen in ``hark.cli``.
Nothing here may import a concrete library.  Adapters call ``post`` from any
thread; it must be cheap and is the only thing that crosses threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from hark.events import Cue, Event, Item, LedPattern, MicDemand, WireCommand

Post = Callable[[Event], None]
"""Hand an event to the loop; safe to call from any thread."""


class Link(Protocol):
    """The Realtime connection: keys, WebSocket, retries, rotation and replay."""

    async def run(self, post: Post) -> None:
        """Serve until cancelled: connect when asked, post link and server events."""

    def connect(self) -> None: ...

    def disconnect(self, reason: str) -> None: ...

    def rotate(self) -> None:
        """Open a fresh session now and carry the conversation over."""

    def send(self, command: WireCommand) -> None:
        """Queue a wire command; never blocks; dropped (and counted) while down."""

    def seed_history(self, items: list[Item]) -> None:
        """Items to replay into the next session (e.g. persisted history)."""


class Microphone(Protocol):
    """Captures, resamples to 24 kHz, runs the local VAD and posts ``MicFrame``s."""

    async def run(self, post: Post) -> None:
        """Capture until cancelled; on device loss post ``DeviceLost`` and retry."""

    def set_demand(self, demand: MicDemand) -> None:
        """How frames are wanted (the app says so whenever it changes).

        ``"every"`` while a button's turn streams: post each frame as it comes (the
        release commits what has arrived).  ``"speech"`` while a turn that ends on
        silence streams: voiced frames may be held back and posted together, but an
        unvoiced one goes at once with those before it (the end of the turn is never
        late).  ``"batched"`` (the default; voice may open a turn or barge in): the
        reverse, unvoiced frames may wait, a voiced one goes at once.  ``"off"`` (push
        to talk, no turn open): nothing is wanted, and the audio need not be processed.
        """


class Speaker(Protocol):
    """Plays 24 kHz reply audio and cues; knows how much was really heard."""

    async def run(self, post: Post) -> None: ...

    def play(self, item_id: str, pcm: bytes) -> None: ...

    def finish(self, item_id: str) -> None:
        """No more audio for this item: post ``PlaybackStopped`` once drained."""

    def stop(self) -> None:
        """Fade out within one buffer and post ``PlaybackStopped(interrupted=True)``."""

    def cue(self, cue: Cue) -> None: ...

    @property
    def volume(self) -> float: ...

    @volume.setter
    def volume(self, value: float) -> None: ...


class Indicator(Protocol):
    """The LED(s)."""

    def show(self, pattern: LedPattern) -> None: ...

    def close(self) -> None:
        """Off, and release the pins."""


class Opening(Protocol):
    """An adapter that opens its device in ``run`` (the sound card); the app waits for it.

    READY=1 means the microphone and speaker are open: the app sends it only once every
    such adapter's ``wait_started`` has returned.
    """

    async def wait_started(self) -> None:
        """Return once the device is open, or its first attempt failed and was posted
        as ``DeviceLost`` (it goes on retrying: a missing card is no reason to wait)."""


class DropoutCounter(Protocol):
    """An audio adapter that counts dropouts (input overflows, output underflows).

    The callback only increments an int; the app reads it every few seconds and turns
    it into a journal summary and a STATUS note, so dropping audio never looks healthy.
    """

    @property
    def dropouts(self) -> int:
        """Dropouts since the adapter was made (every stream it opened)."""


class Trigger(Protocol):
    """The button(s): posts ``ButtonPressed``/``ButtonReleased``/``ButtonLongPressed``."""

    async def run(self, post: Post) -> None: ...
