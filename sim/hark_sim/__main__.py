"""The ``hark-sim`` command: run the offline Realtime simulator in the foreground.

It must not hold protocol logic; it parses flags into a ``SimConfig`` and runs uvicorn.
"""

from __future__ import annotations

import argparse
import logging
import math
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

try:
    import uvicorn

    from hark_sim.app import SimState
    from hark_sim.brains import load_scenario
    from hark_sim.config import DEFAULT_API_KEY, SimConfig
    from hark_sim.server import uvicorn_config
except ModuleNotFoundError as exc:  # a device install has hark-sim but not the [sim] extra
    _MISSING: str | None = (exc.name or "?").partition(".")[0]
else:
    _MISSING = None

log = logging.getLogger(__name__)
NOT_INSTALLED = (
    "hark-sim: the simulator's packages are not installed (no module named {!r}); a device "
    "install leaves them out: use a checkout (make demo) or pip install '<hark wheel>[sim]'"
)


LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0..65535, 0 = any free)")
    return port


def _seconds(low: float, *, inclusive: bool) -> Callable[[str], float]:
    def check(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        ok = math.isfinite(value) and (value >= low if inclusive else value > low)
        if not ok:
            bound = f">= {low:g}" if inclusive else f"> {low:g}"
            raise argparse.ArgumentTypeError(f"{text} is not a finite number {bound}")
        return value

    return check


def _file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def build_parser() -> argparse.ArgumentParser:
    defaults = SimConfig()
    p = _Parser(
        prog="hark-sim",
        description="Offline stand-in for OpenAI's Realtime API "
        "(client_secrets, the WebSocket, WebRTC calls).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=_port, default=8765, help="TCP port (0 = any free port)")
    p.add_argument("--api-key", default=DEFAULT_API_KEY, help="the standard key clients must use")
    p.add_argument("--brain", choices=["parrot", "script"], default="parrot", help="who answers")
    p.add_argument("--script", type=Path, default=None, help="TOML scenario for --brain script")
    p.add_argument(
        "--max-session-s",
        type=_seconds(0, inclusive=False),
        default=defaults.max_session_s,
        help="session length cap",
    )
    p.add_argument(
        "--realtime-factor",
        type=_seconds(0, inclusive=True),
        default=defaults.realtime_factor,
        help="audio pacing: 1 = real time, 0.5 = twice as fast, 0 = no pacing",
    )
    p.add_argument(
        "--ping-interval-s",
        type=_seconds(0, inclusive=True),
        default=defaults.ping_interval_s,
        help="WebSocket pings (0 = none)",
    )
    p.add_argument("--ssl-certfile", type=_file, default=None, help="serve https/wss (PEM)")
    p.add_argument("--ssl-keyfile", type=_file, default=None, help="its key, if not in the PEM")
    p.add_argument(
        "--log-level", type=str.upper, choices=LOG_LEVELS, default="INFO", help="logging level"
    )
    return p


def _server(config: uvicorn.Config, sim: SimConfig) -> uvicorn.Server:
    """uvicorn, announcing the address it bound; made here, not at import, because a device
    install has no uvicorn and must still get ``NOT_INSTALLED``, not a NameError."""

    class _Server(uvicorn.Server):
        """uvicorn, announcing the address it actually bound (``--port 0`` picks one)."""

        def __init__(self, config: uvicorn.Config, sim: SimConfig) -> None:
            super().__init__(config)
            self.sim = sim

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            try:
                await super().startup(sockets)
            except SystemExit:
                # uvicorn has logged the OSError; say once, plainly, what could not be done.
                print(
                    f"hark-sim: cannot listen on {self.sim.host}:{self.sim.port} (see above)",
                    file=sys.stderr,
                )
                raise
            if not self.started:
                return
            scheme = "https" if self.sim.tls_certfile else "http"
            for server in self.servers:
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    shown = f"[{host}]" if ":" in host else host
                    log.info(
                        "hark-sim on %s://%s:%d/v1 brain=%s", scheme, shown, port, self.sim.brain
                    )

    return _Server(config, sim)


def main(argv: list[str] | None = None) -> int:
    if _MISSING is not None:
        print(NOT_INSTALLED.format(_MISSING), file=sys.stderr)
        return 69  # EX_UNAVAILABLE
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.brain == "script":
        if args.script is None:
            print("hark-sim: --brain script needs --script FILE", file=sys.stderr)
            return 2
        try:
            load_scenario(args.script)
        except ValueError as exc:
            print(f"hark-sim: {exc}", file=sys.stderr)
            return 2
    cfg = SimConfig(
        api_key=args.api_key,
        brain=args.brain,
        script=args.script,
        max_session_s=args.max_session_s,
        realtime_factor=args.realtime_factor,
        ping_interval_s=args.ping_interval_s,
        host=args.host,
        port=args.port,
        tls_certfile=args.ssl_certfile,
        tls_keyfile=args.ssl_keyfile,
    )
    server = _server(uvicorn_config(cfg, SimState(cfg), log_level="warning"), cfg)
    try:
        server.run()
    except SystemExit:  # uvicorn could not start; its startup() said why
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
