"""The ``hark-backend`` command: ``serve`` and ``device add|list|revoke|rotate|remove``.

It must not take the OpenAI key from anywhere but ``--openai-key-file``, ``OPENAI_API_KEY``
or systemd's credential directory, nor print or log it; a device token is printed exactly
once, as the last line of ``device add`` / ``device rotate``, and never logged.

Exit codes: 0; 1 for a refused registry operation (unknown or duplicate device, bad name);
69 (EX_UNAVAILABLE) when the database or the listening address is unavailable (worth a
restart); 78 (EX_CONFIG) for a bad command line, policy or missing key, always one line
naming the option (the unit sets ``RestartPreventExitStatus=78``); 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from pydantic import ValidationError

from hark_backend.policy import OPENAI_MAX_TTL_S, OPENAI_MIN_TTL_S
from hark_backend.registry import RateLimit, Registry, RegistryError, RegistryUnavailableError

log = logging.getLogger(__name__)

EX_UNAVAILABLE = 69
EX_CONFIG = 78  # sysexits.h EX_CONFIG; the unit sets RestartPreventExitStatus=78
DB_ENV = "HARK_BACKEND_DB"
CREDENTIAL_NAME = "openai-key"  # systemd LoadCredential=openai-key:...
# Third-party loggers that could print request details at DEBUG; kept at WARNING always.
_QUIET_LOGGERS = ("openai", "httpx", "httpx2", "httpcore", "hpack", "uvicorn.access")


class ConfigError(Exception):
    """A bad command line or missing secret: exit 78, the unit does not restart."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr and exit 78 (EX_CONFIG), so a
    bad drop-in stops the unit at once instead of restarting it ten times."""

    def error(self, message: str) -> NoReturn:
        self.exit(EX_CONFIG, f"{self.prog}: {message} (see --help)\n")


# -- argument types: each refuses a bad value with a message naming the allowed range ------


def _int_in(low: int, high: int, what: str = "") -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high}{what}, not {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, not {text}")
    return value


def _rate(text: str) -> RateLimit:
    try:
        return RateLimit.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _visible(text: str) -> str:
    """A single word of visible characters (a host, a model name)."""
    if not text or not text.isprintable() or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"must be one word of visible characters, not {text!r}")
    return text


def _upstream_url(text: str) -> str:
    """The upstream's base URL: https, or http only to loopback (the OpenAI key goes there)."""
    _visible(text)
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        _ = parts.port  # raises ValueError when out of range
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"is not a valid URL ({exc}): {text!r}") from None
    if parts.scheme not in ("https", "http") or not host:
        raise argparse.ArgumentTypeError(f"must be an https:// URL with a host, not {text!r}")
    if parts.scheme == "http" and not _is_loopback(host):
        raise argparse.ArgumentTypeError(
            f"must be https unless the host is loopback (the OpenAI key is sent there): {text!r}"
        )
    return text


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _trusted_proxies(text: str) -> str:
    """``*`` or a comma list of IP addresses and networks (uvicorn would take a typo as a
    literal name and never match it)."""
    if text.strip() == "*":
        return text
    for item in (part.strip() for part in text.split(",")):
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be * or IP addresses/networks separated by commas; {item!r} is neither"
            ) from None
    return text


def _policy_error(exc: ValidationError) -> str:
    """A pydantic error list as one line: ``field: message; field: message``."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())) or "policy"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


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


def _open_registry(url: str) -> Registry:
    """The registry for ``url``; a malformed URL or a missing driver is a ConfigError."""
    try:
        return Registry(url)
    except RegistryError as exc:
        raise ConfigError(f"--db: {exc}") from None
    except ImportError:
        raise ConfigError(
            "--db: a postgresql:// database needs psycopg: pip install 'hark-voice[postgres]'"
        ) from None


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
    if args.ssl_keyfile and not args.ssl_certfile:
        raise ConfigError("--ssl-keyfile needs --ssl-certfile")
    try:
        policy = load_policy(args.policy, model=args.model, key_ttl_s=args.key_ttl_s)
    except ValidationError as exc:
        raise ConfigError(f"bad policy: {_policy_error(exc)}") from None
    except (ValueError, OSError) as exc:  # unreadable file, bad TOML
        raise ConfigError(f"bad policy file {args.policy}: {exc}") from None
    settings = Settings(
        db_url=_db_url(args),
        openai_base_url=args.openai_base_url,
        openai_api_key=read_openai_key(args.openai_key_file),
        policy=policy,
        rate_limit=args.rate_limit,
        auth_fail_limit=args.auth_fail_limit,
        max_body_bytes=args.max_body_bytes,
        upstream_timeout_s=args.upstream_timeout_s,
        upstream_connections=args.upstream_connections,
    )
    # Open the database now: a bad URL is one line and 78, an unreachable one 69, instead
    # of a traceback from the server's startup.
    registry = _open_registry(settings.db_url)
    try:
        registry.init_schema()
        try:
            sock = listen_socket(args.host, args.port)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", args.host, args.port, exc.strerror or exc)
            return EX_UNAVAILABLE
        host, port = sock.getsockname()[:2]
        scheme = "https" if args.ssl_certfile else "http"
        config = server_config(
            create_app(settings, registry=registry),
            max_header_bytes=args.max_header_bytes,
            forwarded_allow_ips=args.forwarded_allow_ips,
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
        )
        try:
            config.load()  # loads the certificate now, to report a bad one in one line
        except OSError as exc:  # ssl.SSLError is an OSError
            sock.close()
            files = f"--ssl-certfile {args.ssl_certfile}"
            if args.ssl_keyfile:
                files += f" with --ssl-keyfile {args.ssl_keyfile}"
            raise ConfigError(f"cannot use {files}: {exc.strerror or exc}") from None
        log.info("listening on %s://%s:%d", scheme, host if ":" not in host else f"[{host}]", port)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        registry.close()
    return 0


# -- device ----------------------------------------------------------------------------------


def _device(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level)
    registry = _open_registry(_db_url(args))
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
    parser = _Parser(
        prog="hark-backend",
        description="Mint short-lived OpenAI Realtime keys for registered hark devices.",
    )
    common = _Parser(add_help=False)
    common.add_argument(
        "--db",
        help=f"sqlite:///relative.db, sqlite:////abs.db or postgresql://... (default ${DB_ENV})",
    )
    common.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the HTTP service")
    serve.add_argument("--host", type=_visible, default="127.0.0.1")
    serve.add_argument(
        "--port",
        type=_int_in(0, 65535, " (0 picks a free port)"),
        default=8080,
        help="0 picks a free port (logged)",
    )
    serve.add_argument(
        "--openai-base-url",
        type=_upstream_url,
        default="https://api.openai.com/v1",
        help="https (http only to loopback, e.g. hark_sim)",
    )
    serve.add_argument("--openai-key-file", type=Path, help="file holding the owner's OpenAI key")
    serve.add_argument("--policy", type=Path, help="TOML policy file (see docs/backend.md)")
    serve.add_argument("--model", type=_visible, help="Realtime model (overrides the policy file)")
    serve.add_argument(
        "--key-ttl-s",
        type=_int_in(OPENAI_MIN_TTL_S, OPENAI_MAX_TTL_S, " seconds"),
        help=f"key lifetime, {OPENAI_MIN_TTL_S}..{OPENAI_MAX_TTL_S} (default 60)",
    )
    serve.add_argument(
        "--rate-limit",
        type=_rate,
        default=RateLimit(20, 60.0),
        help="N/S: N key requests per device per S seconds (default 20/60)",
    )
    serve.add_argument(
        "--auth-fail-limit",
        type=_rate,
        default=RateLimit(30, 60.0),
        help="N/S: past N failed authentications in S seconds an address gets 429 (30/60)",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=_int_in(1, 16 << 20),
        default=16 * 1024,
        help="larger bodies get 413 (default 16384)",
    )
    serve.add_argument(
        "--max-header-bytes",
        type=_int_in(1024, 1 << 20),
        default=16 * 1024,
        help="cap on a request's line and headers; larger get 431 (default 16384)",
    )
    serve.add_argument(
        "--upstream-timeout-s", type=_seconds, default=10.0, help="per request to OpenAI (10)"
    )
    serve.add_argument(
        "--upstream-connections",
        type=_int_in(1, 1000),
        default=32,
        help="HTTP connections kept to OpenAI (32)",
    )
    serve.add_argument("--ssl-certfile", help="serve TLS directly (else put a proxy in front)")
    serve.add_argument("--ssl-keyfile")
    serve.add_argument(
        "--forwarded-allow-ips",
        type=_trusted_proxies,
        default="127.0.0.1",
        help="proxies trusted for X-Forwarded-For: * or IPs/networks, comma-separated",
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
