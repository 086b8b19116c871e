"""The composition root: the ``hark`` command, its exit codes, logging, and which adapters run.

``main`` parses argv and dispatches; ``build_app`` wires the real adapters (link,
soundcard, gpio) around the conversation core and the app loop; ``Supervisor`` owns
the process-level life cycle (SIGTERM, SIGHUP reload, systemd notifications). It must
stay lean at import time: ``hark --version`` and ``hark check-config`` must not import
numpy, PyAudio or websockets, so every heavy import happens inside a command.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hark import __version__

if TYPE_CHECKING:
    import asyncio

    from hark.config import Config

log = logging.getLogger(__name__)

EX_OK = 0
EX_USAGE = 2  # argparse's own code for bad arguments
EX_SOFTWARE = 70
EX_UNAVAILABLE = 69  # a device (sound card, GPIO) or service is missing
EX_CONFIG = 78  # sysexits.h; the unit file's RestartPreventExitStatus=78

DEFAULT_CONFIG = "/etc/hark/hark.toml"
STOP_WITHIN_S = 4.5
"""SIGTERM must end the process within 5 s (the unit allows more, owners expect less)."""


# --------------------------------------------------------------------------- config helpers


def _print_problems(exc: Exception) -> None:
    """One line per bad field on stderr, naming its dotted path (the ConfigError contract)."""
    print(str(exc), file=sys.stderr)


def _load(path: str, *, with_token: bool) -> tuple[Config, str | None]:
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


def to_toml(data: dict[str, Any]) -> str:
    """Render the effective config (tables of scalars, lists, and arrays of tables) as TOML."""

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        if isinstance(value, list | tuple):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        return json.dumps(str(value), ensure_ascii=False)

    lines: list[str] = []

    def table(prefix: str, body: dict[str, Any], array: bool = False) -> None:
        lines.append(f"[[{prefix}]]" if array else f"[{prefix}]")
        nested: list[tuple[str, Any]] = []
        for key, value in body.items():
            if value is None:
                lines.append(f"# {key} = (not set)")
            elif isinstance(value, dict) or (
                isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
            ):
                nested.append((key, value))
            else:
                lines.append(f"{key} = {scalar(value)}")
        lines.append("")
        for key, value in nested:
            if isinstance(value, dict):
                table(f"{prefix}.{key}", value)
            else:
                for entry in value:
                    table(f"{prefix}.{key}", entry, array=True)

    for section, body in data.items():
        table(section, body)
    return "\n".join(lines)


# --------------------------------------------------------------------------- the daemon


class ServiceNotifier(Protocol):
    """What the supervisor tells systemd (``hark.notify.SystemdNotifier``)."""

    def ready(self) -> None: ...

    def reloading(self) -> None: ...

    def status(self, text: str) -> None: ...

    def watchdog(self) -> None: ...

    def stopping(self) -> None: ...


class RunningApp(Protocol):
    """What the supervisor needs from a built app: run until told to stop."""

    async def run(self) -> None: ...

    def shutdown(self) -> None:
        """Wind down cleanly (LED off, playback faded, files closed); ``run`` then returns."""


AppFactory = Callable[["Config", str, Any], RunningApp]


class Supervisor:
    """SIGTERM/SIGINT stop the app within 5 s; SIGHUP reloads the config or keeps the old.

    A reload that validates replaces the whole app (audio, GPIO and session are
    reopened, the new app reports READY again); one that does not is refused, each
    problem logged, and the running app is left alone.
    """

    def __init__(
        self,
        config_path: str,
        config: Config,
        token: str,
        build: AppFactory,
        notifier: ServiceNotifier,
    ) -> None:
        import asyncio

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

        log.info("reloading %s", self.config_path)
        try:
            config, token = _load(self.config_path, with_token=True)
        except ConfigError as exc:
            self.refused_reloads += 1
            for problem in exc.problems:
                log.error("reload refused: %s: %s", self.config_path, problem)
            self._notifier.status(f"reload refused, old config kept: {exc.problems[0]}")
            return
        assert token is not None
        if config == self.config and token == self.token:
            log.info("config unchanged")
            self._notifier.status("config unchanged")
            return
        self._notifier.reloading()
        self._pending = (config, token)
        if self._app is not None:
            self._app.shutdown()

    async def serve(self) -> int:
        import asyncio

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        previous: tuple[Config, str] | None = None
        try:
            while True:
                gated = _GatedNotifier(self._notifier, lambda: self._stopping)
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
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), STOP_WITHIN_S)
        if not task.done():
            log.warning("app did not stop within %.1f s; cancelling", STOP_WITHIN_S)
            task.cancel()


def _apply_log_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())


class _NoIndicator:
    """No LED configured (or the demo): patterns go nowhere."""

    def show(self, pattern: str) -> None:
        pass

    def close(self) -> None:
        pass


class _SilentMicrophone:
    """``hark say`` needs no capture: nothing is ever heard."""

    async def run(self, post: Any) -> None:
        import asyncio

        await asyncio.Event().wait()


class _GatedNotifier:
    """Forwards to systemd, except STOPPING=1 from an app torn down for a reload.

    systemd treats STOPPING=1 as the start of a stop, so only a real stop may send it.
    """

    def __init__(self, real: Any, really_stopping: Callable[[], bool]) -> None:
        self._real = real
        self._really_stopping = really_stopping

    def ready(self) -> None:
        self._real.ready()

    def status(self, text: str) -> None:
        self._real.status(text)

    def watchdog(self) -> None:
        self._real.watchdog()

    def stopping(self) -> None:
        if self._really_stopping():
            self._real.stopping()


class Daemon:
    """A built app plus what it owns outside the loop (history file, relays); a ``RunningApp``."""

    def __init__(self, app: Any, closers: list[Callable[[], None]]) -> None:
        self.app = app
        self._closers = closers

    async def run(self) -> None:
        try:
            await self.app.start()
            _trim_heap()
            await self.app.wait_stopped()
        finally:
            self.close()

    def shutdown(self) -> None:
        # Through the core, so the reply fades, the LED goes off and the link closes
        # cleanly; the supervisor cancels the loop if this takes too long.
        from hark.events import ShutdownRequested

        self.app.post(ShutdownRequested())

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


def build_app(
    config: Config,
    token: str,
    notifier: Any,
    *,
    mic: Any = None,
    speaker: Any = None,
    triggers: Sequence[Any] | None = None,
    indicator: Any = None,
    link: Any = None,
    pin_factory: Any = None,
    fake_audio: bool = False,
) -> Daemon:
    """Wire the adapters around the core: link, mic, speaker, button, LED, agent, history, app.

    Keyword arguments replace single adapters (the demo, ``hark say`` and tests use
    fakes); ``fake_audio`` swaps the sound card for ``hark.testing``'s WAV mic
    (silence) and speaker (discarding), for benchmarks and tests of ``hark run``.
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
            fake_audio=fake_audio,
        )
    except BaseException:
        for close in reversed(opened):
            with contextlib.suppress(Exception):
                close()
        raise


def _wire(
    config: Config,
    token: str,
    notifier: Any,
    opened: list[Callable[[], None]],
    *,
    mic: Any,
    speaker: Any,
    triggers: Sequence[Any] | None,
    indicator: Any,
    link: Any,
    pin_factory: Any,
    fake_audio: bool,
) -> Daemon:
    from hark import builtin_tools
    from hark.agent import ToolRunner, agent_from_config
    from hark.app import App
    from hark.conversation import Conversation, Settings
    from hark.events import (
        ButtonLongPressed,
        ButtonPressed,
        ButtonReleased,
        SessionConfig,
    )
    from hark.guardrails import GuardrailMonitor
    from hark.history import History
    from hark.notify import watchdog_interval_s

    closers: list[Callable[[], None]] = []
    a, v, t, g = config.audio, config.vad, config.trigger, config.gpio
    hands_free = t.mode in ("vad", "both")
    cue_files: dict[Any, Path | str] = {}  # the speakers type keys as hark.events.Cue
    for cue, cue_path in (
        ("listening", a.cue_listening),
        ("done", a.cue_done),
        ("error", a.cue_error),
    ):
        if cue_path is not None:
            cue_files[cue] = cue_path
    if fake_audio:
        from hark.testing import WavMicrophone, WavSpeaker

        mic = mic or WavMicrophone(vad_aggressiveness=v.aggressiveness)
        speaker = speaker or WavSpeaker(None, volume=a.volume, cue_files=cue_files)
    if mic is None or speaker is None:
        from hark import soundcard
        from hark.echo import EchoGate, EchoReference

        reference = EchoReference() if hands_free and v.echo_gate else None
        if speaker is None:
            speaker = soundcard.SoundcardSpeaker(
                a.output_device,
                rate_hz=a.output_rate_hz,
                volume=a.volume,
                buffer_ms=a.buffer_ms,
                cue_files=cue_files,
                echo_reference=reference,
            )
        if mic is None:
            gate = (
                EchoGate(
                    reference,
                    margin_db=v.echo_margin_db,
                    max_delay_ms=v.echo_delay_max_ms,
                )
                if reference is not None
                else None
            )
            mic = soundcard.SoundcardMicrophone(
                a.input_device,
                rate_hz=a.capture_rate_hz,
                vad_aggressiveness=v.aggressiveness,
                echo_gate=gate,
                buffer_ms=a.buffer_ms,
            )
    if triggers is None:
        triggers = []
        if t.mode in ("button", "both") and g.button_pin is not None:
            from hark.gpio import GpioButton

            button = GpioButton(
                g.button_pin,
                pull_up=g.button_pull_up,
                bounce_s=g.bounce_s,
                long_press_s=t.long_press_s,
                pin_factory=pin_factory,
            )
            opened.append(button.close)
            triggers = [button]
    if indicator is None:
        if g.led_pin is not None or g.rgb_pins is not None:
            from hark.gpio import GpioIndicator

            indicator = GpioIndicator(
                g.led_pin if g.rgb_pins is None else None,
                rgb_pins=g.rgb_pins,
                pwm=g.led_pwm,
                active_high=g.led_active_high,
                pin_factory=pin_factory,
            )
            opened.append(indicator.close)
        else:
            indicator = _NoIndicator()

    switches = builtin_tools.open_outputs(config.agent.outputs, pin_factory=pin_factory)
    closers += [s.close for s in switches if hasattr(s, "close")]
    opened += closers
    agent = agent_from_config(config.agent, volume=speaker, switches=switches)
    base = SessionConfig(
        model=config.realtime.model,
        transcription_model=config.realtime.transcription_model,
        transcription_language=config.realtime.language,
    )
    holder: dict[str, Any] = {}

    def agent_changed(_agent: Any, session: SessionConfig) -> None:
        # Queued in inbox order, so it precedes the tool's output (ToolRunner's
        # contract), and kept by the core for reconnects.
        holder["app"].update_session(session)

    runner = ToolRunner(
        agent,
        base=base,
        default_timeout_s=config.agent.tool_timeout_s,
        on_agent_changed=agent_changed,
        on_approval_required=lambda p: log.info(
            "tool %s needs approval: press the button (hold to refuse)", p.tool_name
        ),
        on_end_conversation=lambda call_id: log.info("the agent ended the conversation"),
    )
    settings = Settings(
        trigger_mode=t.mode,
        button_mode=t.button,
        end_of_turn=t.end_of_turn,
        session_policy=config.session.policy,
        idle_disconnect_s=config.session.idle_disconnect_s,
        rotate_after_s=config.session.rotate_after_s,
        session=runner.session_config(),
        preroll_ms=v.pre_roll_ms,
        vad_start_ms=v.start_ms,
        barge_in_ms=v.barge_in_ms,
        vad_stop_ms=v.stop_silence_ms,
        no_speech_timeout_s=t.no_speech_timeout_s,
        max_turn_s=config.session.max_turn_s,
        response_timeout_s=config.session.response_timeout_s,
        listening_cue=a.cues_enabled,
        done_cue=a.cues_enabled,
    )
    if link is None:
        from hark.link import WebSocketLink

        link = WebSocketLink(
            backend_url=config.backend.url,
            device_token=token,
            model=config.realtime.model,
            realtime_url=config.realtime.url,
            open_timeout_s=config.realtime.connect_timeout_s,
            http_timeout_s=config.backend.timeout_s,
            max_session_age_s=config.session.rotate_after_s,
            replay_budget_chars=config.session.replay_budget_chars,
            history_max_items=config.history.max_items,
        )
    history = History(
        path=config.history.path if config.history.enabled else None,
        max_items=config.history.max_items,
        enabled=config.history.enabled,
    )
    closers.append(history.close)
    opened.append(history.close)
    if config.history.enabled:
        link.seed_history(history.items_for_replay())

    interval_s = watchdog_interval_s()
    app = App(
        Conversation(settings),
        link,
        mic,
        speaker,
        indicator,
        triggers,
        notifier,
        runner,
        watchdog_interval_s=interval_s / 2 if interval_s else None,
    )
    holder["app"] = app
    guardrails = GuardrailMonitor(agent_provider=lambda: runner.agent)
    deciding = [False]

    def approvals(event: Any) -> bool:
        """While a tool waits for approval, a press approves it and a long press refuses."""
        if isinstance(event, ButtonReleased) and deciding[0]:
            deciding[0] = False
            return True
        if not runner.pending_approvals():
            return False
        if isinstance(event, ButtonPressed):
            deciding[0] = True
            return runner.approve()
        if isinstance(event, ButtonLongPressed):
            deciding[0] = True
            return runner.reject()
        return False

    def observe(event: Any, commands: Any) -> None:
        history.observe(event)
        runner.observe(event)
        tripped = guardrails.feed(event)
        if tripped is not None:
            app.interrupt(say=tripped.fallback)

    app.add_interceptor(approvals)
    app.add_listener(observe)
    return Daemon(app, closers)


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from hark.config import ConfigError
    from hark.notify import SystemdNotifier, setup_logging, under_systemd

    setup_logging("info")
    notifier = SystemdNotifier()
    try:
        config, token = _load(args.config, with_token=True)
    except ConfigError as exc:
        if under_systemd():  # the journal, at error priority
            for problem in exc.problems:
                log.error("%s: %s", exc.source, problem)
        else:  # a person at a terminal: the plain lines
            _print_problems(exc)
        notifier.status(f"bad config: {exc.problems[0]}")
        return EX_CONFIG
    assert token is not None
    setup_logging(config.log.level)
    log.info("hark %s starting (config %s)", __version__, args.config)
    build: AppFactory = build_app
    if args.fake_audio:
        log.warning("--fake-audio: WAV-backed silence in, nothing out (tests, benchmarks)")
        build = functools.partial(build_app, fake_audio=True)
    supervisor = Supervisor(args.config, config, token, build, notifier)
    try:
        return asyncio.run(supervisor.serve())
    except Exception as exc:
        code, line = _start_failure(exc)
        if code == EX_SOFTWARE:
            log.exception("hark crashed")
        elif under_systemd():
            log.error("%s", line)
        else:
            print(f"{args.config}: {line}", file=sys.stderr)
        notifier.status(line)
        return code


def _start_failure(exc: Exception) -> tuple[int, str]:
    """Exit code and status line: a bad agent object is a config error, a busy pin a
    missing device (systemd retries 69, not 78); anything else is a crash."""
    agent = sys.modules.get("hark.agent")
    gpio = sys.modules.get("hark.gpio")
    if agent is not None and isinstance(exc, agent.AgentLoadError):
        return EX_CONFIG, str(exc)
    if gpio is not None and isinstance(exc, gpio.GpioError):
        return EX_UNAVAILABLE, f"GPIO unavailable: {exc}"
    return EX_SOFTWARE, f"crashed: {type(exc).__name__}: {exc}; see the journal"


# --------------------------------------------------------------------------- other commands


def cmd_check_config(args: argparse.Namespace) -> int:
    from hark.config import ConfigError, redacted

    try:
        config, _ = _load(args.config, with_token=not args.no_token)
    except ConfigError as exc:
        _print_problems(exc)
        return EX_CONFIG
    data = redacted(config)
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(f"# effective config from {args.config} (defaults filled in, secrets masked)")
        print(to_toml(data), end="")
    return EX_OK


def cmd_devices(args: argparse.Namespace) -> int:
    try:
        from hark import soundcard
    except ImportError as exc:
        print(f"hark devices: audio support is not installed ({exc})", file=sys.stderr)
        return EX_UNAVAILABLE
    try:
        listing = soundcard.list_devices()
    except Exception as exc:  # PortAudio/ALSA failures: report, do not trace back
        print(f"hark devices: cannot list audio devices: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    print(listing)
    if not listing.inputs or not listing.outputs:
        print("no input or no output device: is the sound card connected? (see `aplay -l`)")
        return EX_UNAVAILABLE
    return EX_OK


def cmd_history(args: argparse.Namespace) -> int:
    from hark.config import ConfigError

    try:
        config, _ = _load(args.config, with_token=False)
    except ConfigError as exc:
        _print_problems(exc)
        return EX_CONFIG
    if not config.history.enabled:
        print("history is disabled ([history] enabled = false)")
        return EX_OK
    from hark.history import format_history

    text = format_history(config.history.path)
    lines = text.splitlines()
    print("\n".join(lines[-args.last :] if args.last else lines))
    return EX_OK


# --------------------------------------------------------------------------- doctor


@dataclass
class Check:
    """One ``hark doctor`` line: what was checked, the outcome, and how to fix a failure."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def doctor_checks(config_path: str) -> list[Check]:
    """Config, token, backend (a real key is minted), audio devices, GPIO; each independent."""
    from hark.config import ConfigError, load, read_token

    checks: list[Check] = []
    try:
        config = load(config_path)
    except ConfigError as exc:
        fix = f"edit {config_path} (see docs/config.md)"
        checks.append(Check("config", False, "; ".join(exc.problems), fix))
        return checks
    checks.append(Check("config", True, f"{config_path} is valid"))
    try:
        token: str | None = read_token(config.backend.token_file)
        checks.append(Check("token", True, f"{config.backend.token_file} (mode ok)"))
    except ConfigError as exc:
        token = None
        problem = exc.problems[0].removeprefix("backend.token_file: ")
        checks.append(Check("token", False, problem, "see docs/config.md, 'The device token'"))
    checks.append(_check_backend(config, token))
    checks += _check_audio(config)
    checks += _check_gpio(config)
    return checks


def _check_backend(config: Config, token: str | None) -> Check:
    if token is None:
        return Check("backend", False, "not tried (no usable token)", "fix the token first")
    import time

    from hark.keys import KeyFetchError, KeySource, LinkConfigError

    try:
        source = KeySource(config.backend.url, token, None, config.backend.timeout_s)
        grant = source.fetch_blocking()
    except LinkConfigError as exc:
        return Check("backend", False, str(exc), "fix backend.url")
    except KeyFetchError as exc:
        fixes = {
            "network": "check the network (ping the backend host) and backend.url",
            "unauthorised": "the device token was refused (revoked or wrong): on the backend "
            "run `hark-backend device rotate NAME` and install the new token",
            "config": "backend.url is probably wrong (it must be the client_secrets endpoint)",
            "server": "the backend or OpenAI is failing: see the backend's log",
        }
        return Check("backend", False, str(exc), fixes.get(exc.kind, ""))
    left_s = grant.expires_at - time.time()
    return Check("backend", True, f"minted a Realtime key (valid {left_s:.0f} s)")


def _check_audio(config: Config) -> list[Check]:
    try:
        import pyaudio

        from hark import soundcard
    except ImportError as exc:
        return [Check("audio", False, f"audio support missing: {exc}", "reinstall hark[device]")]
    soundcard.quiet_alsa()
    checks: list[Check] = []
    try:
        pa = pyaudio.PyAudio()
    except Exception as exc:
        return [Check("audio", False, f"PortAudio failed: {exc}", "check `aplay -l`")]
    try:
        for direction, wanted in (
            ("input", config.audio.input_device),
            ("output", config.audio.output_device),
        ):
            key = f"audio.{direction}_device"
            try:
                device = soundcard.find_device(pa, wanted, direction)  # type: ignore[arg-type]
            except Exception as exc:
                first = str(exc).splitlines()[0]
                checks.append(
                    Check(
                        f"audio {direction}",
                        False,
                        first,
                        f"set {key} to a name or index from `hark devices` (is the user in "
                        "group audio? is the card plugged in?)",
                    )
                )
                continue
            checks.append(
                Check(
                    f"audio {direction}",
                    True,
                    f"[{device.index}] {device.name} ({device.default_rate_hz} Hz)",
                )
            )
    finally:
        pa.terminate()
    return checks


def _check_gpio(config: Config) -> list[Check]:
    pins: list[tuple[str, int]] = []
    if config.trigger.mode in ("button", "both") and config.gpio.button_pin is not None:
        pins.append(("button", config.gpio.button_pin))
    if config.gpio.led_pin is not None:
        pins.append(("LED", config.gpio.led_pin))
    for i, pin in enumerate(config.gpio.rgb_pins or ()):
        pins.append((f"RGB {'rgb'[i]}", pin))
    for output in config.agent.outputs:
        pins.append((f"output {output.name!r}", output.pin))
    if not pins:
        return [Check("gpio", True, "no pins configured")]
    try:
        from gpiozero import DigitalInputDevice
    except ImportError as exc:
        return [Check("gpio", False, f"gpiozero missing: {exc}", "reinstall hark[device]")]
    checks: list[Check] = []
    for what, pin in pins:
        try:
            device = DigitalInputDevice(pin)
            device.close()
            checks.append(Check(f"gpio {what}", True, f"GPIO{pin} opens"))
        except Exception as exc:
            checks.append(
                Check(
                    f"gpio {what}",
                    False,
                    f"GPIO{pin}: {exc}",
                    "on a Pi: add the user to group gpio and install python3-lgpio; "
                    "elsewhere: GPIOZERO_PIN_FACTORY=mock",
                )
            )
    return checks


def doctor_announce(config_path: str, failed: list[Check]) -> None:
    """Say the result on a screenless device: blink the LED and speak through the speaker."""
    from hark.config import ConfigError, load

    try:
        config = load(config_path)
    except ConfigError:
        return
    text = (
        "All checks passed."
        if not failed
        else f"{len(failed)} checks failed. First: {failed[0].name}."
    )
    with contextlib.suppress(Exception):
        _blink(config, ok=not failed)
    with contextlib.suppress(Exception):
        _speak(config, text)


def _blink(config: Config, *, ok: bool) -> None:
    if config.gpio.led_pin is None:
        return
    import time

    from gpiozero import LED

    led = LED(config.gpio.led_pin, active_high=config.gpio.led_active_high)
    try:
        on_s, off_s, n = (0.5, 0.3, 2) if ok else (0.1, 0.1, 10)
        for _ in range(n):
            led.on()
            time.sleep(on_s)
            led.off()
            time.sleep(off_s)
    finally:
        led.close()


def _speak(config: Config, text: str) -> None:
    """espeak-ng into a WAV, played on the configured output (best effort)."""
    import shutil
    import subprocess
    import tempfile
    import wave

    import numpy as np
    import pyaudio
    import soxr

    from hark import soundcard

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "say.wav"
        subprocess.run([espeak, "-w", str(path), text], check=True, timeout=30)
        with wave.open(str(path)) as w:
            rate_hz = w.getframerate()
            data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    pa = pyaudio.PyAudio()
    try:
        device = soundcard.find_device(pa, config.audio.output_device, "output")
        out_rate = config.audio.output_rate_hz or device.default_rate_hz
        samples = soxr.resample(data.astype(np.float32) / 32768, rate_hz, out_rate)
        samples = np.clip(samples * config.audio.volume, -1, 1)
        stream = pa.open(
            format=pyaudio.paInt16,
            channels=1,
            rate=out_rate,
            output=True,
            output_device_index=device.index,
        )
        try:
            stream.write((samples * 32767).astype(np.int16).tobytes())
        finally:
            stream.close()
    finally:
        pa.terminate()


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = doctor_checks(args.config)
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = "ok  " if c.ok else "FAIL"
        print(f"{mark} {c.name:<{width}}  {c.detail}")
        if not c.ok and c.fix:
            print(f"     {'':<{width}}  fix: {c.fix}")
    failed = [c for c in checks if not c.ok]
    print("all checks passed" if not failed else f"{len(failed)} check(s) failed")
    if not args.quiet:
        doctor_announce(args.config, failed)
    if failed and failed[0].name in ("config", "token"):
        return EX_CONFIG
    return EX_UNAVAILABLE if failed else EX_OK


# --------------------------------------------------------------------------- demo and say


DEMO_QUESTION = "Hello hark. What is the tallest mountain on the moon?"


@contextlib.contextmanager
def _demo_backend(sim: Any, tmp: Path) -> Iterator[tuple[str, str, str]]:
    """The real key backend on loopback in front of ``hark_sim``; yields (url, token, label).

    Without the backend's dependencies the device asks the simulator's own key endpoint.
    """
    import threading
    import time

    try:
        import uvicorn
        from hark_backend.app import Settings as BackendSettings
        from hark_backend.app import create_app
        from hark_backend.registry import Registry
    except ImportError:
        yield f"{sim.base_url}/realtime/client_secrets", sim.api_key, "hark_sim's key endpoint"
        return
    db_url = f"sqlite:///{tmp / 'backend.db'}"
    registry = Registry(db_url)
    try:
        registry.init_schema()
        token = registry.add("demo", group=None, now_s=time.time())
    finally:
        registry.close()
    app = create_app(
        BackendSettings(db_url=db_url, openai_base_url=sim.base_url, openai_api_key=sim.api_key)
    )
    import socket

    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="demo-backend", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the demo's key backend did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1/realtime/client_secrets", token, "hark-backend"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


class _PrintingIndicator:
    """The demo's LED: prints each pattern change."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self._say = say
        self.pattern = "off"

    def show(self, pattern: str) -> None:
        if pattern != self.pattern:
            self.pattern = pattern
            self._say(f"LED     {pattern}")

    def close(self) -> None:
        self.show("off")


def cmd_demo(args: argparse.Namespace) -> int:
    """A whole spoken turn: sim (+ backend) on loopback, WAV mic and speaker, the real pipeline."""
    import asyncio
    import secrets
    import tempfile
    import time

    from hark_sim import SimConfig, start_sim

    from hark.config import BackendConfig, Config, HistoryConfig, RealtimeConfig
    from hark.notify import setup_logging
    from hark.testing import WavMicrophone, WavSpeaker, speech_wav

    setup_logging("warning")
    speed = args.speed
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = args.question or DEMO_QUESTION
    t0 = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - t0:6.2f} s] {message}", flush=True)

    print("hark demo: one spoken turn through the real pipeline, offline (no key, no sound card)")
    question = speech_wav(text, out / "question.wav")
    voice = "espeak-ng" if shutil_which("espeak-ng") else "synthetic speech"
    say(f"question  {text!r} -> {question} ({voice})")
    api_key = "sk-demo-" + secrets.token_hex(8)
    factor = 1.0 / speed if speed > 0 else 0.0
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_sim(SimConfig(api_key=api_key, brain="parrot", realtime_factor=factor)) as sim,
        _demo_backend(sim, Path(tmp)) as (backend_url, token, label),
    ):
        say(f"hark_sim  {sim.ws_url} (parrot brain: replies with what it heard)")
        say(f"keys      {label} at {backend_url}")
        config = Config(
            backend=BackendConfig(url=backend_url),
            realtime=RealtimeConfig(url=sim.ws_url),
            history=HistoryConfig(enabled=False),
        )
        mic = WavMicrophone(speed=speed)
        speaker = WavSpeaker(out / "reply.wav", speed=speed)
        daemon = build_app(
            config,
            token,
            None,
            mic=mic,
            speaker=speaker,
            triggers=[],
            indicator=_PrintingIndicator(say),
        )
        try:
            ok = asyncio.run(_demo_turn(daemon, mic, question, say))
        finally:
            daemon.close()
    print()
    for line in daemon.app.conversation.transcript:
        mark = " (interrupted)" if line.interrupted else ""
        print(f"  {line.role:>9}: {line.text}{mark}")
    print(f"\nreply written to {out / 'reply.wav'}")
    return EX_OK if ok else EX_SOFTWARE


def shutil_which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


async def _demo_turn(daemon: Daemon, mic: Any, question: Path, say: Callable[[str], None]) -> bool:
    """Press, speak the question, release, wait for the reply to finish playing; print phases."""
    import asyncio
    import time
    import wave

    from hark.capture import FRAME_MS
    from hark.events import (
        AudioDelta,
        ButtonPressed,
        ButtonReleased,
        CommitAudio,
        LinkUp,
        MicFrame,
        PlaybackStopped,
        UserTranscript,
    )

    app = daemon.app
    marks: dict[str, float] = {}
    last_phase = [""]

    def watch(event: Any, commands: Sequence[Any]) -> None:
        now = time.monotonic()
        phase = app.conversation.phase.value
        if phase != last_phase[0]:
            last_phase[0] = phase
            say(f"phase   {phase}")
        if isinstance(event, AudioDelta) and "first_audio" not in marks:
            marks["first_audio"] = now
            say("reply   first audio received")
        if isinstance(event, UserTranscript):
            say(f"heard   {event.transcript!r}")
        if isinstance(event, PlaybackStopped) and event.item_id is not None:
            marks["played"] = now
        if any(isinstance(c, CommitAudio) for c in commands):
            marks["commit"] = now

    app.add_listener(watch)
    started = time.monotonic()
    await app.start()
    say(f"ready   (READY=1 after {1000 * (time.monotonic() - started):.0f} ms)")
    try:
        await app.run_until(lambda e: isinstance(e, LinkUp), 20)
        say("link    session open")
        app.post(ButtonPressed())
        pressed = time.monotonic()
        say("button  pressed (hold to talk)")
        # The mic posts one 20 ms frame per chunk: wait until the whole question (and
        # a little trailing silence) has been "heard", as a person holding the button would.
        with wave.open(str(question)) as w:
            question_ms = 1000 * w.getnframes() / w.getframerate()
        before = mic.frames_posted
        mic.say(question)
        wanted = before + int(question_ms / FRAME_MS) + 10
        await app.run_until(
            lambda e: isinstance(e, MicFrame) and mic.frames_posted >= wanted,
            10 + 2 * question_ms / 1000,
        )
        say(f"mic     spoke {question_ms / 1000:.2f} s of audio")
        app.post(ButtonReleased(held_s=time.monotonic() - pressed))
        released = time.monotonic()
        say("button  released")
        await app.wait_turn_completed(60)
    except TimeoutError:
        say("FAILED: no complete reply within the time limit")
        return False
    finally:
        app.post(__import__("hark.events", fromlist=["ShutdownRequested"]).ShutdownRequested())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(app.wait_stopped(), 5)
    print("\ntimings")
    if "commit" in marks:
        print(f"  release -> commit on the wire   {1000 * (marks['commit'] - released):7.1f} ms")
    if "first_audio" in marks:
        print(
            f"  release -> first reply audio    {1000 * (marks['first_audio'] - released):7.1f} ms"
        )
    if "played" in marks and "first_audio" in marks:
        print(f"  reply playback                  {marks['played'] - marks['first_audio']:7.2f} s")
    print(f"  whole demo                      {time.monotonic() - started:7.2f} s")
    return "first_audio" in marks


def cmd_say(args: argparse.Namespace) -> int:
    """Send a typed turn; the reply plays on the configured speaker."""
    import asyncio

    from hark.config import ConfigError
    from hark.notify import setup_logging

    try:
        config, token = _load(args.config, with_token=True)
    except ConfigError as exc:
        _print_problems(exc)
        return EX_CONFIG
    assert token is not None
    setup_logging(config.log.level)
    daemon = build_app(
        config,
        token,
        None,
        mic=_SilentMicrophone(),
        triggers=[],
        indicator=_NoIndicator(),
        fake_audio=args.fake_audio,
    )
    try:
        ok = asyncio.run(_say(daemon, " ".join(args.text), config.session.response_timeout_s))
    finally:
        daemon.close()
    for line in daemon.app.conversation.transcript:
        if line.role == "assistant":
            print(line.text)
    return EX_OK if ok else EX_UNAVAILABLE


async def _say(daemon: Daemon, text: str, timeout_s: float) -> bool:
    import asyncio

    from hark.events import ShutdownRequested, TextRequested

    app = daemon.app
    await app.start()
    try:
        app.post(TextRequested(text))
        await app.wait_turn_completed(timeout_s + 60)
        return True
    except TimeoutError:
        print("hark say: no reply (see the log)", file=sys.stderr)
        return False
    finally:
        app.post(ShutdownRequested())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(app.wait_stopped(), 5)


# --------------------------------------------------------------------------- argv


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hark", description="hark: a voice appliance for OpenAI Realtime agents."
    )
    parser.add_argument("--version", action="version", version=f"hark {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            "-c",
            default=os.environ.get("HARK_CONFIG", DEFAULT_CONFIG),
            help=f"config file (default {DEFAULT_CONFIG}, or $HARK_CONFIG)",
        )

    p = sub.add_parser("run", help="run the daemon (what hark.service starts)")
    with_config(p)
    p.add_argument("--fake-audio", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate the config and print it, secrets masked")
    with_config(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    p.add_argument("--no-token", action="store_true", help="do not check the token file")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("devices", help="list audio inputs and outputs with their rates")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("demo", help="a whole spoken turn against the offline simulator")
    p.add_argument("--out", default="demo-out", help="folder for the reply WAV (demo-out)")
    p.add_argument("--question", default=None, help="the question to speak (espeak-ng)")
    p.add_argument("--speed", type=float, default=1.0, help="audio pacing (1.0 = real time)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("say", help="send a text turn; the reply is spoken")
    with_config(p)
    p.add_argument("--fake-audio", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("text", nargs="+", help="what to say to the agent")
    p.set_defaults(func=cmd_say)

    p = sub.add_parser("doctor", help="check config, token, backend, audio and GPIO")
    with_config(p)
    p.add_argument("--quiet", action="store_true", help="do not speak or blink the result")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("history", help="print the conversation history")
    with_config(p)
    p.add_argument("--last", type=int, default=0, help="only the last N items")
    p.set_defaults(func=cmd_history)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``hark`` console script; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EX_USAGE
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
