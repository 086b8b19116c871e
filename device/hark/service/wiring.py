"""The daemon's composition root: config -> adapters, core, app, agent, history; life cycle.

``build_app`` wires the real adapters (link, soundcard, gpio) around the conversation
core and the app loop, plus the agent's tool runner, guardrails and history; callers
may pass single adapters instead (the demo, ``hark say`` and tests pass fakes).
``Supervisor`` owns the process-level life cycle (SIGTERM, SIGHUP reload, systemd
notifications); ``Daemon`` is one built app plus what it owns outside the loop.

It must not import ``hark.testing`` (the fakes are chosen by ``hark.demo``) and must
stay lean at import time: every heavy import happens inside ``build_app``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import asyncio

    from hark.agents.agent import ToolRunner
    from hark.audio.capture import EchoJudge
    from hark.audio.echo import EchoReference
    from hark.audio.frontend import FrontEnd, TeeReference
    from hark.config import Config
    from hark.conversation import Settings
    from hark.events import LedPattern, SessionConfig
    from hark.history import History
    from hark.ports import (
        AppFactory,
        Indicator,
        Link,
        Microphone,
        Notifier,
        RunningApp,
        ServiceNotifier,
        Speaker,
        Trigger,
        WordSpotter,
    )
    from hark.service.loop import App

log = logging.getLogger(__name__)

EX_OK = 0
STOP_WITHIN_S = 4.5
"""SIGTERM must end the process within 5 s (the unit allows more, owners expect less)."""
RELOAD_WAITS_FOR_TURN_S = 30.0
"""A reload lets a turn in progress finish first, at most this long (``hark reload`` waits 50)."""
RELOAD_RESULT = "reload.json"
"""In ``$RUNTIME_DIRECTORY``: the outcome of the latest reload, for ``hark reload``."""


def load_config(path: str, *, with_token: bool) -> tuple[Config, str | None]:
    """Config and token, or ``ConfigError`` listing every problem of both."""
    from hark.config import ConfigError, load, read_token

    config = load(path)
    token: str | None = None
    if with_token:
        try:
            token = read_token(config.backend.token_file)
        except ConfigError as exc:
            raise ConfigError(exc.problems, path) from None
    return config, token


class Supervisor:
    """SIGTERM/SIGINT stop the app within 5 s; SIGHUP reloads the config or keeps the old.

    A reload that validates replaces the whole app (audio, GPIO and session are
    reopened, the new app reports READY again); one that does not is refused, each
    problem logged, and the running app is left alone.  Every SIGHUP is bracketed by
    RELOADING=1 and READY=1 (the sd_notify reload protocol), and its outcome is
    written to ``result_dir`` (``$RUNTIME_DIRECTORY``) once known, for ``hark reload``:
    sd_notify has no way to say that a reload was refused.
    """

    def __init__(
        self,
        config_path: str,
        config: Config,
        token: str,
        build: AppFactory,
        notifier: ServiceNotifier,
        result_dir: str | None = None,
    ) -> None:
        import asyncio

        if result_dir is None:
            result_dir = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
        self._result_dir = result_dir
        self._reload_seq = 0
        self._outcome: tuple[bool, str] | None = None  # told once the next app is READY
        self.config_path = config_path
        self.config = config
        self.token = token
        self._build = build
        self._notifier = notifier
        self._app: RunningApp | None = None
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._pending: tuple[Config, str] | None = None
        self.reloads = 0
        self.refused_reloads = 0

    def request_stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._stop_event.set()
        log.info("stopping")
        self._notifier.stopping()
        if self._app is not None:
            self._app.shutdown()

    def request_reload(self) -> None:
        from hark.config import ConfigError

        if self._stopping:
            return
        log.info("reloading %s", self.config_path)
        self._notifier.reloading()
        try:
            config, token = load_config(self.config_path, with_token=True)
        except ConfigError as exc:
            self.refused_reloads += 1
            for problem in exc.problems:
                log.error("reload refused: %s: %s", self.config_path, problem)
            self._notifier.status(f"reload refused, old config kept: {exc.problems[0]}")
            self._notifier.ready()  # the old config runs on: the reload is over
            self._tell_outcome(False, f"reload refused, old config kept: {exc.problems[0]}")
            return
        assert token is not None
        if config == self.config and token == self.token and self._pending is None:
            log.info("config unchanged")
            self._notifier.status("config unchanged")
            self._notifier.ready()
            self._tell_outcome(True, "config unchanged")
            return
        self._pending = (config, token)
        self._outcome = (True, "config reloaded")
        if self._app is not None:
            self._app.shutdown(when_quiet_s=RELOAD_WAITS_FOR_TURN_S)

    def _app_ready(self) -> None:
        """The app just sent READY=1: a reload waiting for it is over."""
        outcome, self._outcome = self._outcome, None
        if outcome is not None:
            self._tell_outcome(*outcome)

    def _tell_outcome(self, ok: bool, message: str) -> None:
        """Write the reload's outcome where ``hark reload`` waits for it (atomically)."""
        if self._result_dir is None:
            return
        self._reload_seq += 1
        result = {"pid": os.getpid(), "seq": self._reload_seq, "ok": ok, "message": message}
        path = Path(self._result_dir) / RELOAD_RESULT
        temporary = path.with_name(f".{path.name}.tmp")
        try:
            temporary.write_text(json.dumps(result))
            temporary.replace(path)
        except OSError as exc:
            log.warning("cannot write the reload outcome to %s: %s", path, exc)

    async def serve(self) -> int:
        import asyncio

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        previous: tuple[Config, str] | None = None
        try:
            while True:
                gated = _GatedNotifier(self._notifier, lambda: self._stopping, self._app_ready)
                try:
                    self._app = self._build(self.config, self.token, gated)
                except Exception as exc:
                    if previous is None:
                        raise  # the first start: cmd_run turns it into an exit code
                    # The new config validated but cannot be built (agent.object fails
                    # to import, a pin is busy): keep serving with the old one.
                    self.refused_reloads += 1
                    log.error("reload failed, old config kept: %s", exc)
                    self._notifier.status(f"reload failed, old config kept: {exc}")
                    self._outcome = (False, f"reload failed, old config kept: {exc}")
                    (self.config, self.token), previous = previous, None
                    _apply_log_level(self.config.log.level)
                    continue
                previous = None
                if self._stopping or self._pending is not None:
                    self._app.shutdown()  # a signal came while it was being built
                task = asyncio.create_task(self._app.run(), name="hark-app")
                stop_watch = asyncio.create_task(self._wait_stop(task))
                try:
                    await task
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if not (task.cancelled() and current and not current.cancelling()):
                        raise  # we ourselves are being cancelled
                    log.warning("app cancelled after the stop budget")
                finally:
                    stop_watch.cancel()
                if self._stopping or self._pending is None:
                    return EX_OK
                previous = (self.config, self.token)
                self.config, self.token = self._pending
                self._pending = None
                self.reloads += 1
                _apply_log_level(self.config.log.level)
                log.info("config reloaded")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def _wait_stop(self, task: asyncio.Task[None]) -> None:
        """Once a stop is requested, give the app ``STOP_WITHIN_S`` and then cancel it."""
        import asyncio

        await self._stop_event.wait()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(STOP_WITHIN_S):
                await asyncio.shield(task)
        if not task.done():
            log.warning("app did not stop within %.1f s; cancelling", STOP_WITHIN_S)
            task.cancel()


def _read_outcome(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


ReloadVerdict = Literal["reloaded", "refused", "not running", "no answer"]


def reload_and_wait(pid: int, result_dir: str, timeout_s: float) -> tuple[ReloadVerdict, str]:
    """SIGHUP the daemon ``pid`` and wait for the reload's outcome: (verdict, message).

    "no answer" when the daemon said nothing within ``timeout_s``.  This is ``hark
    reload``, the unit's ``ExecReload=``: systemd waits for it and fails the reload job
    when it exits non-zero, which is how ``systemctl reload`` learns that a config was
    refused (sd_notify cannot say so).  Stdlib only: it starts quickly on a Pi Zero.
    """
    path = Path(result_dir) / RELOAD_RESULT
    before = _read_outcome(path)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return "not running", f"hark is not running (no process {pid})"
    except PermissionError:
        return "not running", f"not allowed to signal process {pid}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.05)
        outcome = _read_outcome(path)
        if outcome is not None and outcome != before:
            verdict: ReloadVerdict = "reloaded" if outcome.get("ok") else "refused"
            return verdict, str(outcome.get("message", ""))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "not running", f"process {pid} ended during the reload"
    return "no answer", f"no reload outcome from process {pid} within {timeout_s:.0f} s"


def _apply_log_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())


class NullIndicator:
    """No LED configured (or the demo): patterns go nowhere."""

    def show(self, pattern: LedPattern) -> None:
        pass

    def close(self) -> None:
        pass


class _GatedNotifier:
    """Forwards to systemd, except STOPPING=1 from an app torn down for a reload.

    systemd treats STOPPING=1 as the start of a stop, so only a real stop may send it.
    ``on_ready`` runs after each READY=1 (a reload's outcome is known then).
    """

    def __init__(
        self,
        real: ServiceNotifier,
        really_stopping: Callable[[], bool],
        on_ready: Callable[[], None],
    ) -> None:
        self._real = real
        self._really_stopping = really_stopping
        self._on_ready = on_ready

    def ready(self) -> None:
        self._real.ready()
        self._on_ready()

    def status(self, text: str) -> None:
        self._real.status(text)

    def watchdog(self) -> None:
        self._real.watchdog()

    def stopping(self) -> None:
        if self._really_stopping():
            self._real.stopping()


class Daemon:
    """A built app plus what it owns outside the loop (history file, relays); a ``RunningApp``."""

    def __init__(
        self,
        app: App,
        closers: list[Callable[[], None]],
        *,
        runner: ToolRunner,
        history: History,
    ) -> None:
        self.app = app
        self.runner = runner
        """The agent's ``ToolRunner`` (approve/reject, the current agent)."""
        self.history = history
        """The conversation ``History`` (items, persisted when enabled)."""
        self._closers = closers

    async def run(self) -> None:
        try:
            await self.app.start()
            _trim_heap()
            await self.app.wait_stopped()
        finally:
            self.close()

    def shutdown(self, when_quiet_s: float = 0.0) -> None:
        # Through the core, so the reply fades, the LED goes off and the link closes
        # cleanly; the supervisor cancels the loop if this takes too long.
        from hark.events import ShutdownRequested

        self.app.post(ShutdownRequested(when_quiet_s))

    def close(self) -> None:
        for close in reversed(self._closers):
            try:
                close()
            except Exception:
                log.exception("closing %r failed", close)
        self._closers.clear()


def _trim_heap() -> None:
    """Give start-up garbage (import-time objects, schema building) back to the system.

    glibc keeps freed heap pages; an idle daemon on a 512 MiB Pi should not.
    """
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL(None).malloc_trim(0)


def cue_files(config: Config) -> dict[str, Path | str]:
    """The configured cue sounds by cue name (``hark.events.Cue``)."""
    a = config.audio
    files: dict[str, Path | str] = {}
    for cue, cue_path in (
        ("listening", a.cue_listening),
        ("done", a.cue_done),
        ("error", a.cue_error),
    ):
        if cue_path is not None:
            files[cue] = cue_path
    return files


@dataclass
class EchoPath:
    """How the mic keeps our own voice out: the speaker's reference, the gate, the front end.

    ``note``: a STATUS remark when a configured front-end library is missing.
    """

    reference: EchoReference | None = None
    gate: EchoJudge | None = None
    front_end: FrontEnd | None = None
    note: str | None = None


def front_end_configured(config: Config) -> bool:
    """Some [frontend] stage is on."""
    f = config.frontend
    return f.echo_cancel != "off" or bool(f.noise_suppression) or bool(f.auto_gain_dbfs)


def front_end_from(config: Config) -> tuple[FrontEnd | None, TeeReference | None]:
    """The [frontend] stages configured, and the speaker reference a canceller reads.

    Raises ``FrontEndUnavailableError`` naming what to install when a library is missing.
    """
    from hark.audio import frontend

    f = config.frontend
    tee = frontend.TeeReference() if f.echo_cancel != "off" else None
    front = frontend.make_front_end(
        f.echo_cancel,
        tee,
        tail_ms=f.echo_tail_ms,
        noise_suppression=f.noise_suppression,
        auto_gain_dbfs=f.auto_gain_dbfs,
    )
    return front, tee


def echo_path(config: Config) -> EchoPath:
    """The echo handling the config asks for ([frontend], [vad] echo_gate, the trigger).

    A canceller needs the speaker's reference in any mode (what it cleans is sent to the
    model); the gate only hands-free. After a canceller the gate is a ``ResidualGate``
    (docs/audio.md has the measurements).
    A missing library is one error line; the echo gate alone then carries on.
    """
    from hark.audio.echo import EchoGate, EchoReference

    v = config.vad
    # The local VAD right after (or during) our own voice: voice turns, the follow-up.
    t = config.trigger
    hands_free = t.mode in ("vad", "both") or t.follow_up_s > 0
    path = EchoPath()
    if front_end_configured(config):
        from hark.audio import frontend

        try:
            path.front_end, tee = front_end_from(config)
        except frontend.FrontEndUnavailableError as exc:
            log.error("%s; running without the audio front end", exc)
            path.note = "audio front end unavailable"
        else:
            if path.front_end is not None and path.front_end.aec is not None and tee:
                path.reference = tee
                if hands_free and v.echo_gate:
                    # After a canceller the residual's level tells echo from the user
                    # (measured on the PulseAudio rig: AEC3 alone lets its first second
                    # of a reply through, while it learns the room).
                    path.gate = frontend.ResidualGate(tee, front_end=path.front_end)
                return path
    if hands_free and v.echo_gate:
        path.reference = EchoReference()
        path.gate = EchoGate(
            path.reference, margin_db=v.echo_margin_db, max_delay_ms=v.echo_delay_max_ms
        )
    return path


def session_base(config: Config) -> SessionConfig:
    """The session options of ``[realtime]``: the agent adds instructions, voice and tools."""
    from hark.events import SessionConfig, Truncation, TurnDetection

    r = config.realtime
    truncation: Truncation | Literal["auto", "disabled"] | None = None
    if r.truncation is None or isinstance(r.truncation, str):
        truncation = r.truncation
    else:
        truncation = Truncation(r.truncation.retention_ratio, r.truncation.post_instructions_tokens)
    detection: TurnDetection | None = None
    if r.turn_detection is not None:
        td = r.turn_detection
        detection = TurnDetection(
            type=td.type,
            threshold=td.threshold,
            prefix_padding_ms=td.prefix_padding_ms,
            silence_duration_ms=td.silence_duration_ms,
            idle_timeout_ms=td.idle_timeout_ms,
            eagerness=td.eagerness,
        )
    return SessionConfig(
        model=r.model,
        speed=r.speed,
        turn_detection=detection,
        transcription_model=r.transcription_model,
        transcription_language=r.language,
        transcription_prompt=r.transcription_prompt,
        transcription_keywords=r.transcription_keywords,
        noise_reduction=r.noise_reduction,
        max_output_tokens=r.max_output_tokens,
        truncation=truncation,
        reasoning_effort=r.reasoning_effort,
    )


def conversation_settings(config: Config, session: SessionConfig) -> Settings:
    """The core's settings from the config: the one mapping, so tests can hold it."""
    from hark.conversation import Settings

    t, v, a = config.trigger, config.vad, config.audio
    return Settings(
        trigger_mode=t.mode,
        button_mode=t.button,
        end_of_turn=t.end_of_turn,
        session_policy=config.session.policy,
        idle_disconnect_s=config.session.idle_disconnect_s,
        rotate_after_s=config.session.rotate_after_s,
        session=session,
        preroll_ms=v.pre_roll_ms,
        vad_start_ms=v.start_ms,
        barge_in_ms=v.barge_in_ms,
        vad_stop_ms=v.stop_silence_ms,
        no_speech_timeout_s=t.no_speech_timeout_s,
        max_turn_s=config.session.max_turn_s,
        response_timeout_s=config.session.response_timeout_s,
        listening_cue=a.cues_enabled,
        done_cue=a.cues_enabled,
        stop_word=t.stop_word,
        follow_up_s=t.follow_up_s,
    )


def make_spotter(config: Config) -> WordSpotter | None:
    """The wake/stop word spotter the config asks for (None: neither), its models loaded.

    Raises ``hark.audio.wake.WakeWordError`` naming the model or the missing package;
    pymicro-wakeword is imported only here, only then.
    """
    from hark.config import WAKE_MODES

    t = config.trigger
    wake = t.mode in WAKE_MODES
    if not wake and not t.stop_word:
        return None
    from hark.audio.wake import MicroWordSpotter

    return MicroWordSpotter(
        t.wake_word if wake else None,
        stop=t.stop_word,
        wake_cutoff=t.wake_threshold,
        stop_cutoff=t.stop_threshold,
        refractory_s=t.wake_refractory_s,
    )


def build_app(
    config: Config,
    token: str,
    notifier: Notifier | None,
    *,
    mic: Microphone | None = None,
    speaker: Speaker | None = None,
    triggers: Sequence[Trigger] | None = None,
    indicator: Indicator | None = None,
    link: Link | None = None,
    pin_factory: Any = None,
    spotter: WordSpotter | None = None,
) -> Daemon:
    """Wire the adapters around the core: link, mic, speaker, button, LED, agent, history, app.

    Keyword arguments replace single adapters (the demo, ``hark say`` and tests use
    fakes; ``hark.demo.build_with_fake_audio`` is ``hark run --fake-audio``); a ``mic``
    passed in runs the ``spotter`` passed with it (``make_spotter``), if any;
    ``pin_factory`` is a gpiozero pin factory (its ``MockFactory`` in tests), None for
    gpiozero's default.  ``notifier`` None: no service manager.
    If wiring fails half-way, the pins opened so far are released (a reload falls
    back to the old config, which needs them).
    """
    opened: list[Callable[[], None]] = []
    try:
        return _wire(
            config,
            token,
            notifier,
            opened,
            mic=mic,
            speaker=speaker,
            triggers=triggers,
            indicator=indicator,
            link=link,
            pin_factory=pin_factory,
            spotter=spotter,
        )
    except BaseException:
        for close in reversed(opened):
            with contextlib.suppress(Exception):
                close()
        raise


def _wire(
    config: Config,
    token: str,
    notifier: Notifier | None,
    opened: list[Callable[[], None]],
    *,
    mic: Microphone | None,
    speaker: Speaker | None,
    triggers: Sequence[Trigger] | None,
    indicator: Indicator | None,
    link: Link | None,
    pin_factory: Any,
    spotter: WordSpotter | None,
) -> Daemon:
    from hark.agents import builtin as builtin_tools
    from hark.agents.agent import ToolRunner, agent_from_config
    from hark.agents.guardrails import GuardrailMonitor
    from hark.config import BUTTON_MODES
    from hark.conversation import Conversation
    from hark.history import History
    from hark.service.loop import App
    from hark.service.notify import watchdog_interval_s

    closers: list[Callable[[], None]] = []
    notes: dict[str, str] = {}
    a, t, g = config.audio, config.trigger, config.gpio
    if mic is None:
        spotter = make_spotter(config)
        if spotter is not None and hasattr(spotter, "close"):
            opened.append(spotter.close)
            closers.append(spotter.close)
    if mic is None or speaker is None:
        from hark.audio import soundcard

        path = echo_path(config)
        reference = path.reference
        if path.note:
            notes["frontend"] = path.note
        if speaker is None:
            speaker = soundcard.SoundcardSpeaker(
                a.output_device,
                rate_hz=a.output_rate_hz,
                volume=a.volume,
                buffer_ms=a.buffer_ms,
                cue_files=cue_files(config),
                echo_reference=reference,
            )
        if mic is None:
            mic = soundcard.SoundcardMicrophone(
                a.input_device,
                rate_hz=a.capture_rate_hz,
                vad_aggressiveness=config.vad.aggressiveness,
                echo_gate=path.gate,
                buffer_ms=a.capture_buffer_ms,
                front_end=path.front_end,
                spotter=spotter,
            )
    if triggers is None:
        triggers = []
        if t.mode in BUTTON_MODES and g.button_pin is not None:
            from hark.gpio import GpioButton, GpioError

            try:
                button = GpioButton(
                    g.button_pin,
                    pull_up=g.button_pull_up,
                    bounce_s=g.bounce_s,
                    long_press_s=t.long_press_s,
                    pin_factory=pin_factory,
                )
            except GpioError as exc:
                if t.mode == "button":
                    raise  # nothing else opens a turn: exit 69, which the unit does not restart
                # Voice (or the wake word) still opens turns: it stays useful.
                log.error("%s; running hands-free only", exc)
                notes["button"] = f"button on GPIO {g.button_pin} unavailable: hands-free only"
            else:
                opened.append(button.close)
                triggers = [button]
    if indicator is None:
        if g.led_pin is not None or g.rgb_pins is not None:
            from hark.gpio import GpioError, GpioIndicator

            try:
                indicator = GpioIndicator(
                    g.led_pin if g.rgb_pins is None else None,
                    rgb_pins=g.rgb_pins,
                    pwm=g.led_pwm,
                    active_high=g.led_active_high,
                    pin_factory=pin_factory,
                )
            except GpioError as exc:
                # The cues still sound; a missing LED driver is no reason to go silent.
                log.error("%s; running without the LED", exc)
                notes["led"] = "LED unavailable"
                indicator = NullIndicator()
            else:
                opened.append(indicator.close)
        else:
            indicator = NullIndicator()

    switches = builtin_tools.open_outputs(config.agent.outputs, pin_factory=pin_factory)
    closers += [s.close for s in switches if hasattr(s, "close")]
    opened += closers
    agent = agent_from_config(config.agent, volume=speaker, switches=switches)
    base = session_base(config)
    runner = ToolRunner(agent, base=base, default_timeout_s=config.agent.tool_timeout_s)
    settings = conversation_settings(config, runner.session_config())
    # The conversation's one memory: the link replays it into every new session.
    history = History(
        path=config.history.path if config.history.enabled else None,
        max_items=config.history.max_items,
        enabled=config.history.enabled,
    )
    closers.append(history.close)
    opened.append(history.close)
    if link is None:
        link = make_link(config, token, history)

    interval_s = watchdog_interval_s()
    conversation = Conversation(settings)
    # The core owns the effective session (turn detection): handoffs build on it, so a
    # handoff's session.update keeps server VAD on where the settings want it.
    runner.base = conversation.session_config
    app = App(
        conversation,
        link,
        mic,
        speaker,
        indicator,
        triggers,
        notifier,
        runner,
        watchdog_interval_s=interval_s / 2 if interval_s else None,
        status_notes=notes,
        spotter=spotter,
    )
    from hark.service.glue import AgentGlue

    glue = AgentGlue(app, runner, history, GuardrailMonitor(lambda: runner.agent))
    glue.install()
    return Daemon(app, closers, runner=runner, history=history)


def make_link(config: Config, token: str, history: History) -> Link:
    """The ``Link`` that ``realtime.transport`` names; WebRTC's libraries load only for it."""
    from hark.net.link import WebSocketLink

    options: dict[str, Any] = {
        "backend_url": config.backend.url,
        "device_token": token,
        "model": config.realtime.model,
        "realtime_url": config.realtime.url,
        "open_timeout_s": config.realtime.connect_timeout_s,
        "http_timeout_s": config.backend.timeout_s,
        "replay": history.replay,
        "replay_budget_chars": config.session.replay_budget_chars,
    }
    if config.realtime.transport == "websocket":
        return WebSocketLink(**options)
    try:
        from hark.net.webrtc import WebRTCLink
    except ImportError as exc:
        from hark.net.keys import LinkConfigError

        raise LinkConfigError(
            'realtime.transport = "webrtc" needs the webrtc extra '
            f"(pip install 'hark-voice[webrtc]'; missing: {exc.name})"
        ) from None
    return WebRTCLink(ice_servers=config.realtime.ice_servers, **options)
