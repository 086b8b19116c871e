"""The ``hark`` command: argv, exit codes and logging set-up; each command delegates.

``main`` parses argv and dispatches to a thin ``cmd_*``; the daemon's wiring and life
cycle live in ``hark.service.wiring``, ``hark demo``/``hark say`` in ``hark.demo``, the checks
in ``hark.doctor``, provisioning in ``hark.provision``. It must stay lean at import
time: ``hark --version`` and ``hark check-config`` must not import numpy, PyAudio or
websockets, so every heavy import happens inside a command.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hark import __version__

if TYPE_CHECKING:
    from hark.ports import AppFactory

log = logging.getLogger(__name__)

EX_OK = 0
EX_USAGE = 2  # argparse's own code for bad arguments
EX_NOINPUT = 66  # a file to read (the history) cannot be read
EX_SOFTWARE = 70
EX_TEMPFAIL = 75  # `hark reload`: no answer from the daemon in time
EX_UNAVAILABLE = 69  # a device (sound card, GPIO) or service is missing
EX_CONFIG = 78  # sysexits.h; the unit file's RestartPreventExitStatus=78

DEFAULT_CONFIG = "/etc/hark/hark.toml"


# --------------------------------------------------------------------------- config helpers


def _print_problems(exc: Exception) -> None:
    """One line per bad field on stderr, naming its dotted path (the ConfigError contract)."""
    print(str(exc), file=sys.stderr)


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


# --------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from hark.config import ConfigError
    from hark.service.notify import SystemdNotifier, setup_logging, under_systemd
    from hark.service.wiring import Supervisor, build_app, load_config

    setup_logging("info")
    notifier = SystemdNotifier()
    try:
        config, token = load_config(args.config, with_token=True)
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
        from hark.demo import build_with_fake_audio, fake_speed

        try:
            fake_speed()
        except ValueError as exc:
            print(f"hark run: {exc}", file=sys.stderr)
            return EX_USAGE
        log.warning("--fake-audio: WAV-backed silence in, nothing out (tests, benchmarks)")
        build = build_with_fake_audio
    elif args.control_socket:
        from hark.demo import build_with_control_socket

        log.warning("--control-socket: the button is %s (tests, benchmarks)", args.control_socket)
        build = functools.partial(build_with_control_socket, socket_path=args.control_socket)
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
    """Exit code and status line: a bad agent object or link URL is a config error, a busy
    pin a missing device (systemd retries 69, not 78); anything else is a crash."""
    agent = sys.modules.get("hark.agents.agent")
    gpio = sys.modules.get("hark.gpio")
    keys = sys.modules.get("hark.net.keys")
    wake = sys.modules.get("hark.audio.wake")
    if agent is not None and isinstance(exc, agent.AgentLoadError):
        return EX_CONFIG, str(exc)
    if wake is not None and isinstance(exc, wake.WakeWordError):  # a model, or the extra
        return (EX_UNAVAILABLE if exc.missing_package else EX_CONFIG), f"trigger: {exc}"
    if keys is not None and isinstance(exc, keys.LinkConfigError):  # a URL config let through
        return EX_CONFIG, str(exc)
    if gpio is not None and isinstance(exc, gpio.GpioError):
        return EX_UNAVAILABLE, f"GPIO unavailable: {exc}"
    return EX_SOFTWARE, f"crashed: {type(exc).__name__}: {exc}; see the journal"


# --------------------------------------------------------------------------- other commands


def cmd_check_config(args: argparse.Namespace) -> int:
    from hark.config import ConfigError, redacted
    from hark.service.wiring import load_config

    try:
        config, _ = load_config(args.config, with_token=not args.no_token)
    except ConfigError as exc:
        _print_problems(exc)
        return EX_CONFIG
    if config.agent.object is not None:  # only importing it tells whether `hark run` can
        from hark.agents.agent import AgentLoadError, check_object

        try:
            check_object(config.agent.object)
        except AgentLoadError as exc:
            print(f"{args.config}: {exc}", file=sys.stderr)
            return EX_CONFIG
    data = redacted(config)
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(f"# effective config from {args.config} (defaults filled in, secrets masked)")
        print(to_toml(data), end="")
    return EX_OK


def cmd_reload(args: argparse.Namespace) -> int:
    """SIGHUP the daemon and wait for the outcome (the unit's ``ExecReload=``)."""
    from hark.service.wiring import reload_and_wait

    pid = args.pid or os.environ.get("MAINPID", "")
    directory = args.runtime_dir or os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if not pid.isdigit() or not directory:
        print(
            "hark reload: needs --pid and --runtime-dir (systemd sets $MAINPID and "
            "$RUNTIME_DIRECTORY for ExecReload=); use `systemctl reload hark`",
            file=sys.stderr,
        )
        return EX_USAGE
    verdict, message = reload_and_wait(int(pid), directory, args.timeout)
    print(f"hark reload: {message}", file=sys.stdout if verdict == "reloaded" else sys.stderr)
    codes = {"reloaded": EX_OK, "refused": EX_CONFIG, "not running": EX_UNAVAILABLE}
    return codes.get(verdict, EX_TEMPFAIL)


def cmd_devices(args: argparse.Namespace) -> int:
    try:
        from hark.audio import portaudio
    except ImportError as exc:
        print(f"hark devices: audio support is not installed ({exc})", file=sys.stderr)
        return EX_UNAVAILABLE
    try:
        listing = portaudio.list_devices()
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
    from hark.service.wiring import load_config

    try:
        config, _ = load_config(args.config, with_token=False)
    except ConfigError as exc:
        _print_problems(exc)
        return EX_CONFIG
    if not config.history.enabled:
        print("history is disabled ([history] enabled = false)")
        return EX_OK
    from hark.history import format_history

    try:
        text = format_history(config.history.path, args.last)
    except OSError as exc:
        print(f"hark history: cannot read {config.history.path}: {exc.strerror}", file=sys.stderr)
        return EX_NOINPUT
    print(text)
    return EX_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from hark.doctor import doctor_announce, doctor_checks, print_report

    failed = print_report(doctor_checks(args.config))
    if not args.quiet:
        doctor_announce(args.config, failed)
    if failed and failed[0].name in ("config", "agent", "token"):
        return EX_CONFIG
    return EX_UNAVAILABLE if failed else EX_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """A whole spoken turn against the offline simulator (what ``make demo`` runs)."""
    try:
        import hark_sim.app  # starlette and (below) uvicorn: the [sim] extra
        import hark_sim.server  # noqa: F401
    except ModuleNotFoundError as exc:
        missing = (exc.name or "?").partition(".")[0]
        print(
            f"hark demo: needs the simulator's packages (no module named {missing!r}), which "
            "a device install leaves out: run `make demo` in a checkout, or "
            "pip install '<hark wheel>[sim]'",
            file=sys.stderr,
        )
        return EX_UNAVAILABLE
    from hark.demo import run_demo

    return EX_OK if run_demo(Path(args.out), args.question, args.speed) else EX_SOFTWARE


def cmd_say(args: argparse.Namespace) -> int:
    """Send a typed turn; the reply plays on the configured speaker."""
    text = " ".join(args.text).strip()
    if not text:
        print("hark say: nothing to say (TEXT is empty)", file=sys.stderr)
        return EX_USAGE
    from hark.config import ConfigError
    from hark.demo import say
    from hark.service.notify import setup_logging
    from hark.service.wiring import load_config

    try:
        config, token = load_config(args.config, with_token=True)
    except ConfigError as exc:
        _print_problems(exc)
        return EX_CONFIG
    assert token is not None
    setup_logging(config.log.level)
    try:
        failed = say(config, token, text, fake_audio=args.fake_audio)
    except Exception as exc:  # could not even start: a bad agent object, a busy pin
        code, line = _start_failure(exc)
        if code == EX_SOFTWARE:
            log.exception("hark say crashed")
        print(f"hark say: {line}", file=sys.stderr)
        return code
    if failed is None:
        return EX_OK
    print(f"hark say: {failed.reason}", file=sys.stderr)
    return EX_CONFIG if failed.config else EX_UNAVAILABLE


# --------------------------------------------------------------------------- argv


def _count(text: str) -> int:
    """A whole number, 0 or more; argparse prints the refusal and exits 2."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more (got {value})")
    return value


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
    # The real sound card, the button a harness's Unix socket (bench soak --audio pulse).
    p.add_argument("--control-socket", default="", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("reload", help="reload the running daemon's config; exits 78 if refused")
    p.add_argument("--pid", default="", help="the daemon's pid (default $MAINPID)")
    p.add_argument("--runtime-dir", default="", help="its runtime dir ($RUNTIME_DIRECTORY)")
    p.add_argument("--timeout", type=float, default=50.0, help="seconds to wait (50)")
    p.set_defaults(func=cmd_reload)

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

    # `hark provision ARGS` is forwarded whole to hark.provision (see main); listed here
    # for `hark --help` only.
    sub.add_parser("provision", help="prepare a Raspberry Pi OS card (see docs/provisioning.md)")

    p = sub.add_parser("history", help="print the conversation history")
    with_config(p)
    p.add_argument("--last", type=_count, default=0, metavar="N", help="only the last N items")
    p.set_defaults(func=cmd_history)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``hark`` console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["provision"]:  # its own parser, options and exit codes
        from hark.provision import main as provision

        return provision(argv[1:])
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
