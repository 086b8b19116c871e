"""The ``hark-backend`` command: ``serve`` and ``device add|list|revoke|rotate|remove``.

It must not take the OpenAI key from anywhere but ``--openai-key-file``, ``OPENAI_API_KEY``
or systemd's credential directory, nor print or log it; a device token is printed exactly
once, as the last line of ``device add`` / ``device rotate``, and never logged.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from hark_backend.registry import RateLimit, Registry, RegistryError, RegistryUnavailableError

log = logging.getLogger(__name__)

EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_CONFIG = 78  # sysexits.h EX_CONFIG; the unit sets RestartPreventExitStatus=78
DB_ENV = "HARK_BACKEND_DB"
CREDENTIAL_NAME = "openai-key"  # systemd LoadCredential=openai-key:...
# Third-party loggers that could print request details at DEBUG; kept at WARNING always.
_QUIET_LOGGERS = ("openai", "httpx", "httpx2", "httpcore", "hpack", "uvicorn.access")


class ConfigError(Exception):
    """A bad command line or missing secret: exit 78, the unit does not restart."""


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def read_openai_key(key_file: Path | None) -> str:
    """The owner's key: --openai-key-file, else OPENAI_API_KEY, else systemd's credential."""
    candidates: list[Path] = []
    if key_file is not None:
        candidates.append(key_file)
    elif os.environ.get("OPENAI_API_KEY", "").strip():
        return os.environ["OPENAI_API_KEY"].strip()
    elif os.environ.get("CREDENTIALS_DIRECTORY"):
        candidates.append(Path(os.environ["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME)
    for path in candidates:
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the OpenAI key file {path}: {exc.strerror}") from None
        if not key:
            raise ConfigError(f"the OpenAI key file {path} is empty")
        return key
    raise ConfigError(
        "no OpenAI key: set OPENAI_API_KEY, pass --openai-key-file, or use systemd "
        f"LoadCredential={CREDENTIAL_NAME}:PATH"
    )


def _db_url(args: argparse.Namespace) -> str:
    url: str | None = args.db or os.environ.get(DB_ENV)
    if not url:
        raise ConfigError(f"no database: pass --db URL or set {DB_ENV}")
    return url


def _iso(ts_s: float | None) -> str:
    if ts_s is None:
        return "-"
    return datetime.fromtimestamp(ts_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- serve -----------------------------------------------------------------------------------


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0 = any free port) that uvicorn can serve on.

    Made with ``proto=IPPROTO_TCP`` on purpose: asyncio sets TCP_NODELAY only on accepted
    sockets whose proto is IPPROTO_TCP, and ``socket.create_server`` leaves proto 0, which
    costs every response a 40 ms delayed-ACK stall (Nagle).
    """
    family, type_, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hark_backend.app import Settings, create_app
    from hark_backend.httpserver import server_config
    from hark_backend.policy import load_policy

    _setup_logging(args.log_level)
    try:
        rate_limit = RateLimit.parse(args.rate_limit)
        auth_fail_limit = RateLimit.parse(args.auth_fail_limit)
        policy = load_policy(args.policy, model=args.model, key_ttl_s=args.key_ttl_s)
    except (ValueError, OSError) as exc:  # pydantic's ValidationError is a ValueError
        detail = str(exc) if not isinstance(exc, ValidationError) else exc.errors()
        raise ConfigError(f"bad policy or rate limit: {detail}") from None
    settings = Settings(
        db_url=_db_url(args),
        openai_base_url=args.openai_base_url,
        openai_api_key=read_openai_key(args.openai_key_file),
        policy=policy,
        rate_limit=rate_limit,
        auth_fail_limit=auth_fail_limit,
        max_body_bytes=args.max_body_bytes,
        upstream_timeout_s=args.upstream_timeout_s,
        upstream_connections=args.upstream_connections,
    )
    try:
        sock = listen_socket(args.host, args.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc.strerror or exc)
        return EX_UNAVAILABLE
    host, port = sock.getsockname()[:2]
    scheme = "https" if args.ssl_certfile else "http"
    config = server_config(
        create_app(settings),
        max_header_bytes=args.max_header_bytes,
        forwarded_allow_ips=args.forwarded_allow_ips,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    log.info("listening on %s://%s:%d", scheme, host if ":" not in host else f"[{host}]", port)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


# -- device ----------------------------------------------------------------------------------


def _device(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level)
    registry = Registry(_db_url(args))
    try:
        registry.init_schema()
        now_s = time.time()
        if args.device_command == "add":
            token = registry.add(args.name, group=args.group, now_s=now_s)
            print(f"added device {args.name}" + (f" (group {args.group})" if args.group else ""))
            print("its token follows; store it on the device now, it is not shown again:")
            print(token)
        elif args.device_command == "rotate":
            token = registry.rotate(args.name, now_s=now_s)
            print(f"rotated the token of {args.name}; the old token no longer works")
            print("the new token follows; store it on the device now, it is not shown again:")
            print(token)
        elif args.device_command == "revoke":
            changed = registry.revoke(args.name, now_s=now_s)
            print(f"revoked {args.name}" if changed else f"{args.name} was already revoked")
        elif args.device_command == "remove":
            registry.remove(args.name)
            print(f"removed {args.name}")
        else:
            _list(registry, as_json=args.json)
    finally:
        registry.close()
    return 0


def _list(registry: Registry, *, as_json: bool) -> None:
    devices = registry.devices()
    if as_json:
        rows = [
            {
                "name": d.name,
                "group": d.group,
                "created_at": _iso(d.created_at_s),
                "rotated_at": None if d.rotated_at_s is None else _iso(d.rotated_at_s),
                "last_seen_at": None if d.last_seen_at_s is None else _iso(d.last_seen_at_s),
                "revoked": d.revoked_at_s is not None,
                "revoked_at": None if d.revoked_at_s is None else _iso(d.revoked_at_s),
                "requests": d.request_count,
            }
            for d in devices
        ]
        print(json.dumps(rows, indent=2))
        return
    header = ("NAME", "GROUP", "CREATED", "LAST SEEN", "REVOKED", "REQUESTS")
    table = [header] + [
        (
            d.name,
            d.group or "-",
            _iso(d.created_at_s),
            _iso(d.last_seen_at_s),
            _iso(d.revoked_at_s) if d.revoked_at_s is not None else "no",
            str(d.request_count),
        )
        for d in devices
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# -- argv ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (``hark-backend --help``)."""
    parser = argparse.ArgumentParser(
        prog="hark-backend",
        description="Mint short-lived OpenAI Realtime keys for registered hark devices.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        help=f"sqlite:///relative.db, sqlite:////abs.db or postgresql://... (default ${DB_ENV})",
    )
    common.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080, help="0 picks a free port (logged)")
    serve.add_argument("--openai-base-url", default="https://api.openai.com/v1")
    serve.add_argument("--openai-key-file", type=Path, help="file holding the owner's OpenAI key")
    serve.add_argument("--policy", type=Path, help="TOML policy file (see docs/backend.md)")
    serve.add_argument("--model", help="Realtime model (overrides the policy file)")
    serve.add_argument("--key-ttl-s", type=int, help="key lifetime, 10..7200 (default 60)")
    serve.add_argument("--rate-limit", default="20/60", help="N/S: N key requests per S seconds")
    serve.add_argument(
        "--auth-fail-limit",
        default="30/60",
        help="N/S: past N failed authentications in S seconds an address gets 429",
    )
    serve.add_argument("--max-body-bytes", type=int, default=16 * 1024)
    serve.add_argument(
        "--max-header-bytes",
        type=int,
        default=16 * 1024,
        help="cap on a request's line and headers (431 beyond it)",
    )
    serve.add_argument("--upstream-timeout-s", type=float, default=10.0)
    serve.add_argument(
        "--upstream-connections", type=int, default=32, help="HTTP connections kept to OpenAI"
    )
    serve.add_argument("--ssl-certfile", help="serve TLS directly (else put a proxy in front)")
    serve.add_argument("--ssl-keyfile")
    serve.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1",
        help="proxies trusted for X-Forwarded-For (comma list)",
    )
    serve.set_defaults(func=_serve)

    device = sub.add_parser("device", help="manage the device registry")
    dsub = device.add_subparsers(dest="device_command", required=True)
    add = dsub.add_parser("add", parents=[common], help="register a device, print its token")
    add.add_argument("name")
    add.add_argument("--group", help="policy group (see [groups.NAME] in the policy)")
    lst = dsub.add_parser("list", parents=[common], help="name, created, last seen, revoked")
    lst.add_argument("--json", action="store_true")
    for name, text in (
        ("revoke", "refuse the device from its next request on"),
        ("rotate", "issue a new token (the old one stops working); reinstates a revoked device"),
        ("remove", "delete the device"),
    ):
        p = dsub.add_parser(name, parents=[common], help=text)
        p.add_argument("name")
    device.set_defaults(func=_device)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``hark-backend``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except ConfigError as exc:
        print(f"hark-backend: {exc}", file=sys.stderr)
        return EX_CONFIG
    except RegistryError as exc:
        print(f"hark-backend: {exc}", file=sys.stderr)
        return 1
    except RegistryUnavailableError as exc:
        print(f"hark-backend: database unavailable: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
