"""The ``hark-sim`` command: run the offline Realtime simulator in the foreground.

It must not hold protocol logic; it parses flags into a ``SimConfig`` and runs uvicorn.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

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


def build_parser() -> argparse.ArgumentParser:
    defaults = SimConfig()
    p = argparse.ArgumentParser(
        prog="hark-sim",
        description="Offline stand-in for OpenAI's Realtime API (WebSocket + client_secrets).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8765, help="TCP port (0 = any free port)")
    p.add_argument("--api-key", default=DEFAULT_API_KEY, help="the standard key clients must use")
    p.add_argument("--brain", choices=["parrot", "script"], default="parrot", help="who answers")
    p.add_argument("--script", type=Path, default=None, help="TOML scenario for --brain script")
    p.add_argument(
        "--max-session-s", type=float, default=defaults.max_session_s, help="session length cap"
    )
    p.add_argument(
        "--realtime-factor",
        type=float,
        default=defaults.realtime_factor,
        help="audio pacing: 1 = real time, 0.5 = twice as fast, 0 = no pacing",
    )
    p.add_argument(
        "--ping-interval-s", type=float, default=defaults.ping_interval_s, help="WebSocket pings"
    )
    p.add_argument("--ssl-certfile", type=Path, default=None, help="serve https/wss (PEM)")
    p.add_argument("--ssl-keyfile", type=Path, default=None, help="its key, if not in the PEM")
    p.add_argument("--log-level", default="INFO", help="logging level")
    return p


def main(argv: list[str] | None = None) -> int:
    if _MISSING is not None:
        print(NOT_INSTALLED.format(_MISSING), file=sys.stderr)
        return 69  # EX_UNAVAILABLE
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
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
    scheme = "https" if cfg.tls_certfile else "http"
    log.info("hark-sim on %s://%s:%d/v1 brain=%s", scheme, cfg.host, cfg.port, cfg.brain)
    uvicorn.Server(uvicorn_config(cfg, SimState(cfg), log_level="warning")).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
