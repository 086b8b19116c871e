"""The device's event loop: inbox, core, commands to adapters, deadline ticks, supervision, health.

It sees hardware, network, systemd and the agent's tools only through ``hark.ports``
Protocols; it must not import a concrete library (websockets, PyAudio, gpiozero,
systemd, numpy).  Adapter threads only ever call ``App.post``; everything else runs
on the one asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from hark.backoff import Backoff
from hark.conversation import LINK_DEVICE, Conversation
from hark.events import (
    CancelResponse,
    ClearAudio,
    Command,
    CommitAudio,
    Connect,
    CreateItem,
    CreateResponse,
    DeleteItem,
    DeviceLost,
    DeviceRestored,
    Disconnect,
    Event,
    FinishPlayback,
    MicDemand,
    Play,
    PlayCue,
    ReportStatus,
    Rotate,
    RunTool,
    SendAudio,
    SessionConfig,
    SetLed,
    ShutdownRequested,
    Stop,
    StopPlayback,
    Tick,
    ToolFinished,
    Truncate,
    UpdateSession,
    Word,
)
from hark.ports import (
    Indicator,
    Link,
    Microphone,
    Notifier,
    Post,
    Speaker,
    ToolExecutor,
    Trigger,
    WordSpotter,
)

log = logging.getLogger(__name__)

_WIRE = (
    SendAudio,
    CommitAudio,
    ClearAudio,
    CreateResponse,
    CancelResponse,
    Truncate,
    CreateItem,
    DeleteItem,
    UpdateSession,
)
_YIELD_EVERY = 32  # events handled back to back before letting adapter tasks run
MAX_TICKS_WITHOUT_PROGRESS = 8
"""Ticks in a row that leave a deadline due that the previous Tick already saw: more is a
core bug (a deadline it reports but never handles), raised rather than spun on. Several
deadlines may fall due together; each Tick must handle at least one."""
RESTART_BACKOFF = Backoff(initial_s=0.5, max_s=30.0, jitter=0.0)
"""How long a crashed adapter waits before its restart (no jitter: one device, one task)."""


class NullNotifier:
    """No service manager: every notification is dropped (a ``ports.ServiceNotifier``)."""

    def ready(self) -> None:
        pass

    def reloading(self) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def watchdog(self) -> None:
        pass

    def stopping(self) -> None:
        pass


class NoTools:
    """The default runner: the device offers no tools, so every call is an error output."""

    async def run(self, call_id: str, name: str, arguments: str) -> str:
        return json.dumps({"error": f"no such tool: {name}"})


Listener = Callable[[Event, Sequence[Command]], None]
"""Sees every event after the core has handled it, with the commands it produced."""

Interceptor = Callable[[Event], bool]
"""Sees every event before the core; returning True consumes it (e.g. a press approving a tool)."""


@dataclass(frozen=True, slots=True)
class _Heartbeat:
    """Travels through the inbox; the watchdog pings only once it comes out the other end."""

    done: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class _Call:
    """Run a core entry point (e.g. ``interrupt``) in inbox order."""

    fn: Callable[[float], list[Command]]


_Item = Event | _Heartbeat | _Call


class App:
    """One loop around one ``Conversation``: ``await start()`` … ``await shutdown()``.

    ``watchdog_interval_s`` should be half of systemd's ``WatchdogSec`` (None: no pings).
    READY=1 goes out once every adapter that opens a device (``ports.Opening``) has
    opened it or reported it missing, and what they posted meanwhile has been handled
    (so STATUS already names a missing card); after ``start_timeout_s`` it goes out
    anyway, naming what is still opening, well inside systemd's start timeout.
    ``status_notes`` are appended to every STATUS line (e.g. a button that could not
    be opened); dropouts (``ports.DropoutCounter``) are read every ``health_interval_s``
    and shown in STATUS while any happened in the last ``dropout_window_s``.
    """

    def __init__(
        self,
        conversation: Conversation,
        link: Link,
        mic: Microphone,
        speaker: Speaker,
        indicator: Indicator,
        triggers: Sequence[Trigger] = (),
        notifier: Notifier | None = None,
        tools: ToolExecutor | None = None,
        *,
        watchdog_interval_s: float | None = None,
        restart_backoff: Backoff = RESTART_BACKOFF,
        stable_after_s: float = 2.0,
        shutdown_timeout_s: float = 4.0,
        start_timeout_s: float = 30.0,
        health_interval_s: float = 5.0,
        dropout_window_s: float = 60.0,
        status_notes: Mapping[str, str] | None = None,
        spotter: WordSpotter | None = None,
    ) -> None:
        self.conversation = conversation
        self.spotter = spotter
        self.link = link
        self.mic = mic
        self.speaker = speaker
        self.indicator = indicator
        self.triggers = tuple(triggers)
        self.notifier: Notifier = notifier or NullNotifier()
        self.tools: ToolExecutor = tools or NoTools()
        self.watchdog_interval_s = watchdog_interval_s
        self.restart_backoff = restart_backoff
        self.stable_after_s = stable_after_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.start_timeout_s = start_timeout_s
        self.health_interval_s = health_interval_s
        self.dropout_window_s = dropout_window_s
        self.restarts: dict[str, int] = {}
        self.command_errors = 0
        # A plain deque woken once per batch: asyncio.Queue.get and a timeout per item cost
        # more than the core does for a MicFrame (50 a second, all day).
        self._inbox: deque[_Item] = deque()
        self._wake: asyncio.Future[None] | None = None  # set while the loop waits for items
        self._timer: asyncio.TimerHandle | None = None  # the core's deadline, re-armed on change
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._main: asyncio.Task[None] | None = None
        self._ready: asyncio.Event = asyncio.Event()
        self._stopping = False
        self._stopped = False
        self._listeners: list[Listener] = []
        self._interceptors: list[Interceptor] = []
        self._waiters: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = []
        self._state_waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._last_tick_at = float("-inf")
        self._ticks_without_progress = 0
        self._deadline_armed = False  # a timer is set for the core's deadline
        self._dispatching = False  # _put_now is handling items (nested posts only queue)
        self._failure: Exception | None = None  # raised by _put_now, for the drain task
        self._mic_demand: MicDemand | None = None  # what the mic was last told
        self._words: frozenset[Word] | None = None  # what the spotter was last armed for
        # STATUS: the core's line, then the notes; sent only when the whole line changes.
        self._core_status = ""
        self._notes: dict[str, str] = dict(status_notes or {})
        self._status_sent: str | None = None
        self._dropouts = _DropoutWatch(dropout_window_s)

    # ------------------------------------------------------------------ public

    def post(self, event: Event) -> None:
        """Hand an event to the loop; safe from any thread, cheap, never blocks."""
        loop = self._loop
        if loop is None:
            self._put(event)
        elif threading.get_ident() != self._loop_thread:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens
                loop.call_soon_threadsafe(self._put_now, event)
        elif asyncio.current_task(loop) is None:
            self._put_now(event)  # a plain callback, e.g. the mic's batch from its thread
        else:
            self._put(event)  # inside an adapter's task: later, once it has moved on

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def add_interceptor(self, interceptor: Interceptor) -> Callable[[], None]:
        """Let ``interceptor`` consume events before the core; returns its remover."""
        self._interceptors.append(interceptor)
        return lambda: self._interceptors.remove(interceptor)

    def call(self, fn: Callable[[float], list[Command]]) -> None:
        """Run a core entry point ``fn(now)`` in inbox order and execute its commands."""
        self._post_item(_Call(fn))

    def update_session(self, config: SessionConfig) -> None:
        """Send a new session config now (handoffs) and keep it for reconnects."""
        self.call(lambda _now: self.conversation.update_session(config))

    async def start(self) -> None:
        """Start the adapters and the loop; returns once READY was sent."""
        if self._main is not None:
            raise RuntimeError("App.start() called twice")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._main = asyncio.create_task(self._serve(), name="hark-app")
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({ready, self._main}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._main.done():
            self._main.result()  # the loop died while starting: raise its error

    async def run(self) -> None:
        """The daemon's whole life: start, then serve until shut down."""
        await self.start()
        await self.wait_stopped()

    async def wait_stopped(self) -> None:
        assert self._main is not None, "App.start() first"
        await asyncio.shield(self._main)

    async def shutdown(self) -> None:
        """Wind down (ShutdownRequested through the core), bounded by ``shutdown_timeout_s``."""
        main = self._main
        if main is None or main.done():
            return
        self.post(ShutdownRequested())
        try:
            async with asyncio.timeout(self.shutdown_timeout_s):
                await asyncio.shield(main)
        except TimeoutError:
            log.error("shutdown took over %.1f s; cancelling the loop", self.shutdown_timeout_s)
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main

    def interrupt(self, say: str | None = None) -> None:
        """Cut the current reply short (guardrails); ``say`` a fallback line instead."""
        self.call(lambda now: self.conversation.interrupt(now, say))

    async def run_until(self, predicate: Callable[[Event], bool], timeout_s: float) -> Event:
        """Wait until an event handled *from now on* satisfies ``predicate``; return it.

        Events handled before the call are not seen: to wait for a state that may
        already hold (linked, idle, a counter grown), use ``wait_for``.
        """
        loop = asyncio.get_running_loop()
        waiter: tuple[Callable[[Event], bool], asyncio.Future[Event]] = (
            predicate,
            loop.create_future(),
        )
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                return await waiter[1]
        finally:
            self._waiters.remove(waiter)

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float) -> None:
        """Wait until ``condition()`` holds: checked at once, then after every item handled.

        For state (``conv.phase is Phase.IDLE and conv.connected``), free of the race
        ``run_until`` has with events that were handled before it was called.
        Raises ``TimeoutError`` after ``timeout_s``.
        """
        if condition():
            return
        waiter: tuple[Callable[[], bool], asyncio.Future[None]] = (
            condition,
            asyncio.get_running_loop().create_future(),
        )
        self._state_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                await waiter[1]
        finally:
            self._state_waiters.remove(waiter)

    async def wait_turn_completed(self, timeout_s: float, after: int | None = None) -> None:
        """Wait until ``conversation.turns_completed`` exceeds ``after``.

        ``after`` defaults to the count at the call (the next reply); pass the count
        read before triggering the turn so a reply that ends quickly is not missed.
        """
        seen = self.conversation.turns_completed if after is None else after
        await self.wait_for(lambda: self.conversation.turns_completed > seen, timeout_s)

    # ------------------------------------------------------------------ the loop

    def _post_item(self, item: _Item) -> None:
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            self._put(item)
        else:
            loop.call_soon_threadsafe(self._put_now, item)

    def _put(self, item: _Item) -> None:
        """On the loop: queue ``item``; wake the loop only if it is waiting."""
        self._inbox.append(item)
        self._wake_up()

    def _put_now(self, item: _Item) -> None:
        """On the loop, in a callback of its own: handle ``item`` at once if the drain
        task is asleep.

        Only called outside any task (another thread's post, or the batch an audio
        thread scheduled), never in the middle of an adapter's code, so handling the
        item here is as safe as in the drain task, and saves a pass of the event loop
        per post (the mic posts 25 times a second, all day).  Posts made while it
        dispatches are queued and handled after, in order; a burst beyond
        ``_YIELD_EVERY`` is left to the drain task.  An exception (a bug) is not the
        poster's: it is raised in the drain task, as if it had been handled there.
        """
        self._inbox.append(item)
        wake, loop = self._wake, self._loop
        if self._dispatching or wake is None or wake.done() or loop is None:
            self._wake_up()
            return
        self._dispatching = True
        try:
            inbox = self._inbox
            for _ in range(_YIELD_EVERY):
                if not inbox or self._stopped:
                    break
                self._dispatch(inbox.popleft(), loop.time())
            if inbox or self._stopped or self._rearm(loop):
                self._wake_up()  # more to do: the drain task takes over
        except Exception as exc:
            self._failure = exc
            self._wake_up()
        finally:
            self._dispatching = False

    def _wake_up(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _deadline_due(self) -> None:
        self._timer = self._timer_at = None
        self._wake_up()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        adapters: list[tuple[str, Callable[[Post], Awaitable[None]]]] = [
            ("microphone", self.mic.run),
            ("speaker", self.speaker.run),
            *[
                (f"trigger{'' if len(self.triggers) == 1 else i}", t.run)
                for i, t in enumerate(self.triggers)
            ],
            (LINK_DEVICE, self.link.run),
        ]
        for name, run in adapters:
            self._spawn(self._supervise(name, run), name=f"hark-{name}")
        try:
            self._execute(self.conversation.start(loop.time()))
            self._sync_mic()
            self._spawn(self._announce_ready(), name="hark-ready")
            if self.watchdog_interval_s:
                self._spawn(self._watchdog(self.watchdog_interval_s), name="hark-watchdog")
            counters = [
                (name, adapter)
                for name, adapter in (("microphone", self.mic), ("speaker", self.speaker))
                if isinstance(getattr(adapter, "dropouts", None), int)
            ]
            if counters and self.health_interval_s > 0:
                self._spawn(self._watch_dropouts(counters), name="hark-dropouts")
            await self._drain(loop)
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = self._timer_at = None
            await self._wind_down()

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Handle inbox items until stopped; a Tick whenever the inbox is empty past the deadline.

        Items always go before a Tick.  One wake-up handles every item queued by then, and
        the core's deadline is read once per wake-up, its timer re-armed only when it moves.
        """
        inbox = self._inbox
        handled = 0
        while not self._stopped:
            if inbox:
                self._dispatch(inbox.popleft(), loop.time())
                handled += 1
                if handled % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                continue
            if self._rearm(loop):
                continue
            self._wake = wake = loop.create_future()
            try:
                await wake
            finally:
                self._wake = None
            if (failure := self._failure) is not None:
                self._failure = None
                raise failure
            if self._timer_at is None and self._deadline_armed and not inbox:
                self._dispatch(Tick(), loop.time())  # the timer fired (maybe a hair early)

    def _rearm(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Arm the timer for the core's deadline; True if a Tick was due and handled now."""
        now = loop.time()
        deadline = self.conversation.deadline()
        if deadline is not None and deadline <= now:
            if deadline <= self._last_tick_at:  # already due at the previous Tick
                self._ticks_without_progress += 1
                if self._ticks_without_progress > MAX_TICKS_WITHOUT_PROGRESS:
                    raise RuntimeError(
                        f"the core's deadline {deadline:.3f} stays due after "
                        f"{MAX_TICKS_WITHOUT_PROGRESS} ticks (phase {self.conversation.phase})"
                    )
            else:
                self._ticks_without_progress = 0
            self._last_tick_at = now
            self._dispatch(Tick(), now)
            return True
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = None if deadline is None else loop.call_at(deadline, self._deadline_due)
        self._deadline_armed = deadline is not None
        return False

    def _dispatch(self, item: _Item, now: float) -> None:
        if isinstance(item, _Heartbeat):
            if not item.done.done():
                item.done.set_result(None)
            return
        if isinstance(item, _Call):
            self._execute(item.fn(now))
            self._sync_mic()
            self._check_state_waiters()
            return
        if isinstance(item, ShutdownRequested) and not self._stopping:
            self._stopping = True
            self.notifier.stopping()
        elif self._interceptors and any(consume(item) for consume in list(self._interceptors)):
            return
        commands = self.conversation.handle(item, now)
        self._execute(commands)
        self._sync_mic()
        for listener in self._listeners:
            try:
                listener(item, commands)
            except Exception:
                log.exception("event listener failed")
        for predicate, future in self._waiters:
            if future.done():
                continue
            try:
                if predicate(item):
                    future.set_result(item)
            except Exception as exc:
                future.set_exception(exc)
        self._check_state_waiters()

    def _sync_mic(self) -> None:
        """Tell the mic how its frames are wanted, and the spotter which words, whenever
        the core's need changes."""
        demand = self.conversation.mic_demand
        if demand != self._mic_demand:
            self._mic_demand = demand
            self.mic.set_demand(demand)
        if self.spotter is not None:
            words = self.conversation.words
            if words != self._words:
                self._words = words
                self.spotter.arm(words)

    def _check_state_waiters(self) -> None:
        for condition, future in self._state_waiters:
            if future.done():
                continue
            try:
                if condition():
                    future.set_result(None)
            except Exception as exc:
                future.set_exception(exc)

    def _execute(self, commands: Sequence[Command]) -> None:
        for command in commands:
            try:
                self._run_command(command)
            except Exception:
                # An adapter method failing must not take the daemon down.  Device loss
                # is the adapter's to report (it alone can also report the recovery).
                self.command_errors += 1
                log.exception("running %s failed", type(command).__name__)

    def _run_command(self, command: Command) -> None:
        if isinstance(command, _WIRE):
            self.link.send(command)
        elif isinstance(command, Play):
            self.speaker.play(command.item_id, command.pcm)
        elif isinstance(command, FinishPlayback):
            self.speaker.finish(command.item_id)
        elif isinstance(command, StopPlayback):
            self.speaker.stop()
        elif isinstance(command, PlayCue):
            self.speaker.cue(command.cue)
        elif isinstance(command, SetLed):
            self.indicator.show(command.pattern)
        elif isinstance(command, ReportStatus):
            if command.text != self._core_status:
                # One journal line per change; an error's detail (a device listing) is
                # logged where it happened.
                log.info("status: %s", command.text.partition("\n")[0])
            self._core_status = command.text
            self._send_status()
        elif isinstance(command, RunTool):
            self._spawn(self._run_tool(command), name=f"hark-tool-{command.name}")
        elif isinstance(command, Connect):
            self.link.connect()
        elif isinstance(command, Disconnect):
            self.link.disconnect(command.reason)
        elif isinstance(command, Rotate):
            self.link.rotate()
        elif isinstance(command, Stop):
            self._stopped = True
        else:  # pragma: no cover - the Command union is closed
            raise TypeError(f"unknown command {command!r}")

    # ------------------------------------------------------------------ status and health

    def _send_status(self) -> None:
        """STATUS= the core's line plus the notes, unless systemd already has exactly that."""
        notes = [*self._notes.values()]
        if self._dropouts.note:
            notes.append(self._dropouts.note)
        line = "; ".join([self._core_status, *notes]) if self._core_status else "; ".join(notes)
        if line and line != self._status_sent:
            self._status_sent = line
            self.notifier.status(line)

    def set_note(self, key: str, text: str | None) -> None:
        """Add (or with None remove) a standing STATUS note, e.g. a device that is missing."""
        if text is None:
            self._notes.pop(key, None)
        else:
            self._notes[key] = text
        if self._loop is not None:
            self._send_status()

    async def _announce_ready(self) -> None:
        """READY=1 once the devices are open or known missing, and the inbox has caught up."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)  # every adapter task runs to its first await
        waits: dict[asyncio.Future[None], str] = {}
        for name, adapter in (("microphone", self.mic), ("speaker", self.speaker)):
            wait_started = getattr(adapter, "wait_started", None)
            if wait_started is not None:
                waits[asyncio.ensure_future(wait_started())] = name
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self.start_timeout_s)
            for future in pending:
                future.cancel()
            if pending:
                names = ", ".join(waits[f] for f in pending)
                log.warning(
                    "%s still opening after %.0f s; reporting ready, it keeps trying",
                    names,
                    self.start_timeout_s,
                )
                self.set_note("opening", f"{names} still opening")
        # A heartbeat through the inbox: a missing card's DeviceLost is in STATUS first.
        beat = _Heartbeat(loop.create_future())
        self._put(beat)
        await beat.done
        log.info("ready")
        self.notifier.ready()
        self._ready.set()

    async def _watch_dropouts(self, counters: Sequence[tuple[str, object]]) -> None:
        """Read the dropout counters every ``health_interval_s``: journal and STATUS.

        The audio callbacks only count; this reads the counts on the loop every few
        seconds, so no audio frame pays for the reporting.
        """
        loop = asyncio.get_running_loop()
        watch = self._dropouts
        for name, adapter in counters:
            watch.track(name, getattr(adapter, "dropouts", 0), loop.time())
        while True:
            await asyncio.sleep(self.health_interval_s)
            now = loop.time()
            for name, adapter in counters:
                watch.update(name, getattr(adapter, "dropouts", 0), now)
            for line in watch.summaries(now):
                log.warning("%s", line)
            if watch.refresh_note(now):
                self._send_status()

    # ------------------------------------------------------------------ background tasks

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_tool(self, command: RunTool) -> None:
        try:
            output = await self.tools.run(command.call_id, command.name, command.arguments)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("tool %s failed", command.name)
            output = json.dumps({"error": f"tool {command.name} failed: {exc}"})
        self.post(ToolFinished(command.call_id, output))

    async def _supervise(self, name: str, run: Callable[[Post], Awaitable[None]]) -> None:
        """Keep one adapter running: a crash is logged, shown, and retried with backoff."""
        attempt = 0  # restarts since the adapter last ran stably
        lost = False
        while True:
            task = asyncio.ensure_future(run(self.post))
            crash: Exception | None = None
            try:
                if lost:
                    done, _ = await asyncio.wait({task}, timeout=self.stable_after_s)
                    if not done:  # survived a while: the device is back
                        lost, attempt = False, 0
                        self.post(DeviceRestored(name))
                await task
                error = "returned unexpectedly"
            except asyncio.CancelledError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                raise
            except Exception as exc:
                error, crash = f"{type(exc).__name__}: {exc}", exc
            delay_s = self.restart_backoff.delay_s(attempt)
            if crash is not None:
                log.error("%s adapter crashed; restarting in %.1f s", name, delay_s, exc_info=crash)
            self.restarts[name] = self.restarts.get(name, 0) + 1
            if not lost:
                lost = True
                self.post(DeviceLost(name, f"adapter crashed: {error}"))
            await asyncio.sleep(delay_s)
            attempt += 1

    async def _watchdog(self, interval_s: float) -> None:
        """Ping only after a heartbeat has gone through the inbox: a stalled loop stops pings.

        One heartbeat is in flight at a time, so a stalled loop is not also flooded.
        ``asyncio.wait`` rather than ``wait_for``: on 3.11 the latter can swallow a cancel.
        """
        loop = asyncio.get_running_loop()
        beat: _Heartbeat | None = None
        stalled = False
        while True:
            started = loop.time()
            if beat is None or beat.done.done():
                beat = _Heartbeat(loop.create_future())
                self._put(beat)
            done, _ = await asyncio.wait({beat.done}, timeout=interval_s)
            if done:
                stalled = False
                self.notifier.watchdog()
            elif not stalled:
                stalled = True
                log.warning("inbox not drained within %.1f s; withholding WATCHDOG=1", interval_s)
            await asyncio.sleep(max(0.0, interval_s - (loop.time() - started)))

    async def _wind_down(self) -> None:
        if self._dropouts.total():
            log.info("audio dropouts since start: %s", self._dropouts.totals_text())
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.shutdown_timeout_s)
            for task in pending:
                log.error("task %s did not stop in time", task.get_name())
        try:
            self.indicator.show("off")
            self.indicator.close()
        except Exception:
            log.exception("indicator failed to close")
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(RuntimeError("the app stopped"))
        for _, state_future in self._state_waiters:
            if not state_future.done():
                state_future.set_exception(RuntimeError("the app stopped"))


class _DropoutWatch:
    """Dropout counts per device: a journal summary at most once a ``window_s`` per
    device, and the STATUS note for the ``window_s`` just past.  Plain numbers, no I/O."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.note = ""
        self._seen: dict[str, int] = {}  # last counter value read
        self._base: dict[str, int] = {}  # the counter when tracking began
        self._recent: deque[tuple[float, str, int]] = deque()  # (when, device, how many)
        self._unlogged: dict[str, int] = {}
        self._since: dict[str, float] = {}  # start of the period the next summary covers
        self._logged: dict[str, bool] = {}  # a summary was logged within the last window

    def track(self, name: str, count: int, now: float) -> None:
        self._seen[name] = self._base[name] = count
        self._unlogged[name] = 0
        self._since[name] = now
        self._logged[name] = False

    def update(self, name: str, count: int, now: float) -> None:
        new = count - self._seen[name]
        self._seen[name] = count
        if new > 0:
            self._recent.append((now, name, new))
            self._unlogged[name] += new

    def summaries(self, now: float) -> list[str]:
        """Journal lines due now: the first dropout at once, then one summary a window."""
        lines = []
        for name, count in self._unlogged.items():
            since = self._since[name]
            if self._logged[name] and now - since < self.window_s:
                continue
            if count:
                total = self._seen[name] - self._base[name]
                plural = "s" if count != 1 else ""
                lines.append(
                    f"{name}: {count} audio dropout{plural} in the last {now - since:.0f} s "
                    f"({total} since start)"
                )
            self._unlogged[name] = 0
            self._since[name] = now
            self._logged[name] = bool(count)
        return lines

    def refresh_note(self, now: float) -> bool:
        """Recompute the STATUS note for the last window; True if it changed."""
        while self._recent and self._recent[0][0] <= now - self.window_s:
            self._recent.popleft()
        counts: dict[str, int] = {}
        for _, name, new in self._recent:
            counts[name] = counts.get(name, 0) + new
        note = ""
        if counts:
            listed = ", ".join(f"{name} {n}" for name, n in counts.items())
            note = f"audio dropouts in the last {self.window_s:.0f} s: {listed}"
        changed = note != self.note
        self.note = note
        return changed

    def total(self) -> int:
        return sum(self._seen[n] - self._base[n] for n in self._seen)

    def totals_text(self) -> str:
        return ", ".join(f"{n} {self._seen[n] - self._base[n]}" for n in self._seen)
