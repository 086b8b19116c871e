"""The shapes of everything the app and the daemon drive, as ``typing.Protocol``s.

The loop and the core see hardware, network, systemd and the agent's tools only
through these.  Every adapter port (link, microphone, speaker, trigger, indicator,
notifier, switch) has a real implementation and fakes in ``hark.testing``; the
composition root (``hark.service.wiring.build_app``) picks the real ones, ``hark.demo``
(``hark demo``, ``hark say``, ``hark run --fake-audio``) and tests pass fakes
instead.  Nothing here may import a concrete library.  Adapters call ``post`` from
any thread; it must be cheap and is the only thing that crosses threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from hark.events import (
    Cue,
    Event,
    LedPattern,
    MicDemand,
    StopWordHeard,
    WakeWordHeard,
    WireCommand,
    Word,
)

if TYPE_CHECKING:
    from hark.config import Config

Post = Callable[[Event], None]
"""Hand an event to the loop; safe to call from any thread."""


class Link(Protocol):
    """The Realtime connection: keys, WebSocket, retries, rotation and replay.

    It posts ``LinkUp`` only for a session that runs the latest ``UpdateSession`` it was
    given (kept while down too) and has the conversation replayed into it.
    """

    async def run(self, post: Post) -> None:
        """Serve until cancelled: connect when asked, post link and server events."""

    def connect(self) -> None: ...

    def disconnect(self, reason: str) -> None: ...

    def rotate(self) -> None:
        """Open the next session, replay into it and switch; ``LinkUp`` names the session
        that serves afterwards (the old one again if the new one could not be opened).
        The core asks only at a quiet moment, and holds its commands until then."""

    def send(self, command: WireCommand) -> None:
        """Queue a wire command; never blocks; dropped (and counted) while down."""


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


class WordSpotter(Protocol):
    """Listens for the wake and stop words in 16 kHz PCM16 mono (``hark.audio.wake``).

    The capture chain calls ``process`` on the capture thread with the audio it already
    has at 16 kHz; the app calls ``arm`` from the loop whenever the core's need changes
    (``Conversation.words``).  Unarmed words cost little (the models do not run, the
    shared feature front end does); re-armed ones start afresh.
    """

    @property
    def armed(self) -> frozenset[Word]: ...

    def arm(self, words: frozenset[Word]) -> None: ...

    def process(self, pcm16k: bytes) -> list[tuple[int, WakeWordHeard | StopWordHeard]]:
        """Words heard in ``pcm16k``, each with the sample offset into it where it ended."""


class VolumeControl(Protocol):
    """Anything with a read/write ``volume`` (0.0 silent, 1.0 nominal): the volume tool's
    handle on the ``Speaker``."""

    @property
    def volume(self) -> float: ...

    @volume.setter
    def volume(self, value: float) -> None: ...


class Speaker(VolumeControl, Protocol):
    """Plays 24 kHz reply audio and cues; knows how much was really heard."""

    async def run(self, post: Post) -> None: ...

    def play(self, item_id: str, pcm: bytes) -> None: ...

    def finish(self, item_id: str) -> None:
        """No more audio for this item: post ``PlaybackStopped`` once drained."""

    def stop(self) -> None:
        """Fade out within one buffer and post ``PlaybackStopped(interrupted=True)``."""

    def cue(self, cue: Cue) -> None: ...


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


class Switch(Protocol):
    """An on/off output an agent's tool drives: ``hark.gpio.GpioOutput`` (a relay)."""

    def on(self) -> None: ...

    def off(self) -> None: ...

    @property
    def is_active(self) -> bool: ...


class ToolExecutor(Protocol):
    """Runs a function call the model asked for; the returned string goes back as its output.

    ``hark.agents.agent.ToolRunner`` is the real one (the agent's tools, approvals, handoffs).
    """

    async def run(self, call_id: str, name: str, arguments: str) -> str: ...


# --------------------------------------------------------------------------- the service


class Notifier(Protocol):
    """What the loop tells the service manager (``hark.service.notify.SystemdNotifier``)."""

    def ready(self) -> None: ...

    def status(self, text: str) -> None: ...

    def watchdog(self) -> None: ...

    def stopping(self) -> None: ...


class ServiceNotifier(Notifier, Protocol):
    """What the supervisor tells systemd: the loop's notifications, and reloads."""

    def reloading(self) -> None: ...


class RunningApp(Protocol):
    """What the supervisor needs from a built app: run until told to stop."""

    async def run(self) -> None: ...

    def shutdown(self, when_quiet_s: float = 0.0) -> None:
        """Wind down cleanly (LED off, playback faded, files closed); ``run`` then returns.

        ``when_quiet_s`` > 0 (a reload): first let a turn in progress end, at most that long.
        """


AppFactory = Callable[["Config", str, Notifier], RunningApp]
"""Builds one app from a validated config and the device token (``hark.service.wiring.build_app``);
the supervisor calls it at start and on every reload."""
