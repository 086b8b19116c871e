"""``hark provision``: turn a Raspberry Pi OS card, image or mounted boot partition into a
hark device (the owner-facing command behind scripts/provision-sd).

It must not write anything before every input, the config and the target have been
checked, must not write outside the FAT boot partition, and must never print a secret
(the Wi-Fi key and the device token show as ``<redacted>``).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hark.provision.bootfs import BootFs, Release, TargetError, detect_release, open_target
from hark.provision.inputs import (
    FirstUser,
    InputError,
    Wifi,
    check_country,
    check_hostname,
    check_ssh_key,
    check_ssid,
    check_timezone,
    check_username,
    mint_token,
    read_token_file,
    wpa_psk,
)
from hark.provision.plan import CONFIG_PATH, REPO_ROOT, Request, apply, build_plan

log = logging.getLogger(__name__)

EXIT_TARGET = 1
EXIT_INPUT = 2
EXIT_CONFIG = 78  # EX_CONFIG, as the daemon uses for a bad config
# What install-device needs from Debian, installed before it runs: PyAudio and
# systemd-python as Debian builds them (PyPI has no aarch64 wheels; nothing is compiled).
DEFAULT_APT = ("python3-venv", "python3-pyaudio", "python3-systemd", "alsa-utils")
# --from-index: one exact release by name, nothing that makes pip run other code or look
# elsewhere (no URL, extras, markers or version ranges).
_FROM_INDEX = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?==[A-Za-z0-9][A-Za-z0-9.+!]*")
PASSPHRASE_ENV = "HARK_WIFI_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
# A wheel's name goes into firstboot.sh and onto FAT: PEP 427's ASCII characters only.
_WHEEL_NAME = re.compile(r"[A-Za-z0-9_.+!-]+\.whl")
_WHEEL_NAME_RULE = "a wheel's file name has only ASCII letters, digits and _ . + ! - (rename it)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hark provision",
        description="Prepare a Raspberry Pi OS (Bookworm or Trixie) card so that it boots "
        "into a working hark device: Wi-Fi, hostname, optional SSH login, and hark "
        "installed and started on first boot. See docs/provisioning.md.",
    )
    p.add_argument(
        "target",
        type=Path,
        help="image file, block device (/dev/sdX) or mounted boot partition folder",
    )
    p.add_argument("--config", type=Path, required=True, help="the device's hark.toml")
    p.add_argument("--hostname", required=True, help="the Pi's name (reachable as NAME.local)")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--token-file", type=Path, help="file holding the device token")
    tok.add_argument(
        "--backend-admin",
        metavar="COMMAND",
        help='mint a token now, e.g. "hark-backend device add kitchen --db URL" '
        "(its last output line is the token)",
    )
    p.add_argument("--wifi-ssid", help="Wi-Fi network name (omit for Ethernet only)")
    p.add_argument(
        "--wifi-passphrase-file",
        type=Path,
        help=f"file holding the Wi-Fi passphrase (else ${PASSPHRASE_ENV}, "
        "else asked on the terminal)",
    )
    p.add_argument("--wifi-country", help="ISO 3166 alpha-2 code, e.g. GB (needed with Wi-Fi)")
    p.add_argument("--wifi-hidden", action="store_true", help="the network hides its SSID")
    p.add_argument("--timezone", help="IANA zone, e.g. Europe/London")
    p.add_argument("--user", help="create this login user (key-only, with sudo)")
    p.add_argument("--ssh-key", type=Path, help="the user's SSH public key file (*.pub)")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--wheel",
        type=Path,
        help="hark wheel to copy onto the card (default: build this checkout's wheel)",
    )
    src.add_argument(
        "--wheelhouse",
        type=Path,
        help="folder of wheels (hark + dependencies) for a fully offline install",
    )
    src.add_argument(
        "--from-index",
        metavar="NAME==VERSION",
        help="install this exact release from a package index on first boot instead "
        "(only for a name you control)",
    )
    p.add_argument("--index-url", help="with --from-index: the index (https://…, default PyPI)")
    p.add_argument("--install-script", type=Path, help="scripts/install-device to put on the card")
    p.add_argument("--unit", type=Path, help="systemd/hark.service to put on the card")
    p.add_argument(
        "--apt-package",
        action="append",
        default=[],
        metavar="NAME",
        help="extra Debian package to install on first boot (repeatable)",
    )
    p.add_argument(
        "--release",
        choices=("bookworm", "trixie"),
        help="override detection: bookworm = firstrun.sh, trixie = cloud-init",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list what would be written; write nothing"
    )
    return p


def _read_passphrase(args: argparse.Namespace) -> str:
    if args.wifi_passphrase_file is not None:
        path: Path = args.wifi_passphrase_file
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise InputError([f"--wifi-passphrase-file {path}: {exc.strerror}"]) from None
        except UnicodeDecodeError:  # its bytes are secret: not even the bad one is shown
            raise InputError(
                [
                    f"--wifi-passphrase-file {path}: not UTF-8 text "
                    "(a WPA passphrase is 8-63 printable ASCII characters)"
                ]
            ) from None
    from_env = os.environ.get(PASSPHRASE_ENV, "")
    if from_env:
        return from_env
    if sys.stdin.isatty():
        return getpass.getpass(f"Wi-Fi passphrase for {args.wifi_ssid!r}: ")
    raise InputError(
        [f"--wifi-ssid needs a passphrase: --wifi-passphrase-file F or ${PASSPHRASE_ENV}"]
    )


def _gather(args: argparse.Namespace) -> tuple[str, Wifi | None, FirstUser | None, str | None]:
    """Validate every non-secret input, collecting all problems before failing."""
    problems: list[str] = []
    hostname = ""
    wifi: Wifi | None = None
    user: FirstUser | None = None
    timezone: str | None = None

    def attempt(fn: object) -> None:
        try:
            fn()  # type: ignore[operator]
        except InputError as exc:
            problems.extend(exc.problems)

    def _host() -> None:
        nonlocal hostname
        hostname = check_hostname(args.hostname)

    def _wifi() -> None:
        nonlocal wifi
        if args.wifi_ssid is None:
            if args.wifi_passphrase_file or args.wifi_hidden:
                raise InputError(["Wi-Fi options given without --wifi-ssid"])
            return
        ssid = check_ssid(args.wifi_ssid)
        if not args.wifi_country:
            raise InputError(["--wifi-country is required with --wifi-ssid (e.g. GB)"])
        country = check_country(args.wifi_country)
        psk = wpa_psk(ssid, _read_passphrase(args))
        wifi = Wifi(ssid, psk, country, bool(args.wifi_hidden))

    def _country_alone() -> None:
        if args.wifi_ssid is None and args.wifi_country:
            check_country(args.wifi_country)

    def _tz() -> None:
        nonlocal timezone
        if args.timezone:
            timezone = check_timezone(args.timezone)

    def _user() -> None:
        nonlocal user
        if args.user is None and args.ssh_key is None:
            return
        if args.user is None or args.ssh_key is None:
            raise InputError(["--user and --ssh-key go together (logins are key-only)"])
        name = check_username(args.user)
        try:
            text = args.ssh_key.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError([f"--ssh-key {args.ssh_key}: {exc.strerror}"]) from None
        except UnicodeDecodeError:
            raise InputError(
                [f"--ssh-key {args.ssh_key}: not UTF-8 text (pass the *.pub file)"]
            ) from None
        user = FirstUser(name, check_ssh_key(text, str(args.ssh_key)))

    for fn in (_host, _wifi, _country_alone, _tz, _user):
        attempt(fn)
    if args.wheel is not None and not (args.wheel.is_file() and args.wheel.suffix == ".whl"):
        problems.append(f"--wheel {args.wheel}: not a .whl file")
    elif args.wheel is not None and not _WHEEL_NAME.fullmatch(args.wheel.name):
        problems.append(f"--wheel {str(args.wheel)!r}: {_WHEEL_NAME_RULE}")
    if args.wheelhouse is not None and not list(_hark_wheels(args.wheelhouse)):
        problems.append(f"--wheelhouse {args.wheelhouse}: holds no hark_voice-*.whl")
    elif args.wheelhouse is not None:
        problems += [
            f"--wheelhouse {args.wheelhouse}: {w.name!r}: {_WHEEL_NAME_RULE}"
            for w in sorted(args.wheelhouse.glob("*.whl"))
            if not _WHEEL_NAME.fullmatch(w.name)
        ]
    problems += _check_index(args.from_index, args.index_url)
    no_source = args.wheel is None and args.wheelhouse is None and args.from_index is None
    if no_source and not (REPO_ROOT / "pyproject.toml").is_file():
        problems.append(
            "say where hark comes from: --wheel F (a wheel built from a hark checkout), "
            "--wheelhouse D, or --from-index NAME==VERSION"
        )
    if args.token_file is None and args.backend_admin is None:
        problems.append("no device token: pass --token-file F or --backend-admin COMMAND")
    for opt in ("install_script", "unit"):
        given = getattr(args, opt)
        if given is not None and not given.is_file():
            problems.append(f"--{opt.replace('_', '-')} {given}: no such file")
    if problems:
        raise InputError(problems)
    return hostname, wifi, user, timezone


def _hark_wheels(folder: Path) -> list[Path]:
    return sorted(folder.glob("hark_voice-*.whl")) if folder.is_dir() else []


def _check_index(spec: str | None, index_url: str | None) -> list[str]:
    """--from-index must name one exact release; its index must be https."""
    problems = []
    if spec is not None and not _FROM_INDEX.fullmatch(spec):
        problems.append(f"--from-index {spec!r}: give one exact release, NAME==VERSION")
    if index_url is not None:
        if spec is None:
            problems.append("--index-url goes with --from-index NAME==VERSION")
        if not index_url.startswith("https://") or any(c.isspace() for c in index_url):
            problems.append(
                f"--index-url {index_url!r}: must be an https:// URL (the Pi installs "
                "from it as root; plain http can be tampered with on the way)"
            )
    return problems


@contextlib.contextmanager
def _checkout_wheel() -> Iterator[Path]:
    """This checkout's wheel, built in a temporary copy (no build/ or egg-info left in the
    checkout, no stale build/lib in the wheel); yields its path while it exists."""
    with tempfile.TemporaryDirectory(prefix="hark-wheel-") as tmp:
        src = Path(tmp) / "src"
        junk = shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "demo-out"
        )
        shutil.copytree(REPO_ROOT, src, symlinks=True, ignore=junk)
        out = Path(tmp) / "dist"
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
            capture_output=True,
            text=True,
            check=False,
        )
        wheels = sorted(out.glob("hark_voice-*.whl"))
        if built.returncode != 0 or not wheels:
            tail = " | ".join(built.stderr.strip().splitlines()[-2:]) or "no wheel"
            raise InputError([f"cannot build the wheel of {REPO_ROOT} ({tail}); pass --wheel F"])
        yield wheels[0]


def _load_config(path: Path) -> tuple[bytes, str]:
    """Validate with hark's own model (lazily imported); return the bytes and token path."""
    from hark.config import ConfigError, parse

    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read the config file: {exc.strerror}"], str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text: {exc.reason}"], str(path)) from None
    # Relative paths resolve as they will on the Pi, next to /etc/hark/hark.toml.
    config = parse(text, str(path), base_dir=Path(CONFIG_PATH).parent)
    token_path = str(config.backend.token_file)
    if not token_path.startswith("/") or any(c in token_path for c in "\n\r\t"):
        raise ConfigError(
            [f"backend.token_file: must be an absolute path (got {token_path!r})"], str(path)
        )
    return raw, token_path


def main(argv: list[str] | None = None) -> int:
    """Provision a card; exit 0, 1 (target refused), 2 (bad input) or 78 (bad config)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_INPUT
    try:
        inputs = _gather(args)
    except InputError as exc:
        for line in exc.problems:
            print(f"hark provision: {line}", file=sys.stderr)
        return EXIT_INPUT
    try:
        config = _load_config(args.config)
    except Exception as exc:  # hark.config.ConfigError, imported lazily
        problems = getattr(exc, "problems", None)
        if problems is None:
            raise
        print(f"hark provision: {args.config} is not a valid hark config:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        boot = open_target(args.target)
        release = detect_release(boot, args.release)
    except TargetError as exc:
        print(f"hark provision: refusing {args.target}: {exc}", file=sys.stderr)
        return EXIT_TARGET
    with contextlib.ExitStack() as stack:
        wheel: Path | None = args.wheel
        try:
            # Before a token is minted: a failed build must not leave a device registered.
            if wheel is None and args.wheelhouse is None and args.from_index is None:
                wheel = stack.enter_context(_checkout_wheel())
            if args.token_file is not None:
                token = read_token_file(args.token_file)
            elif args.dry_run:
                token = "<not minted in a dry run>"  # noqa: S105 - a placeholder
            else:
                token = mint_token(args.backend_admin)
        except InputError as exc:
            for line in exc.problems:
                print(f"hark provision: {line}", file=sys.stderr)
            return EXIT_INPUT
        print(f"target:  {boot.description}")
        print(f"release: {release.name}, first boot via {release.method} ({release.evidence})")
        if args.from_index is not None:
            where = args.index_url or "PyPI"
            print(f"hark:    {args.from_index} from {where} on first boot (--from-index)")
        elif wheel is not None and args.wheel is None:
            print(f"hark:    {wheel.name}, built from this checkout, goes on the card")
        if args.dry_run and args.backend_admin:
            print(f"token:   would be minted by running: {args.backend_admin}")
        return _write(args, boot, release, inputs, config, token, wheel)


def _write(
    args: argparse.Namespace,
    boot: BootFs,
    release: Release,
    inputs: tuple[str, Wifi | None, FirstUser | None, str | None],
    config: tuple[bytes, str],
    token: str,
    wheel: Path | None,
) -> int:
    """Build the plan and write it (or list it); the exit code."""
    try:
        hostname, wifi, user, timezone = inputs
        country = (
            wifi.country
            if wifi
            else (check_country(args.wifi_country) if args.wifi_country else None)
        )
        req = Request(
            hostname=hostname,
            wifi=wifi,
            country=country,
            user=user,
            timezone=timezone,
            config_bytes=config[0],
            token_path=config[1],
            token=token,
            wheel=wheel,
            wheelhouse=args.wheelhouse,
            index_url=args.index_url or "",
            package=args.from_index or "",
            install_script=args.install_script,
            unit=args.unit,
            apt_packages=(*DEFAULT_APT, *args.apt_package),
        )
        plan = build_plan(boot, release, req)
        apply(boot, plan, args.dry_run)
    except TargetError as exc:
        print(f"hark provision: refusing {args.target}: {exc}", file=sys.stderr)
        return EXIT_TARGET
    except OSError as exc:
        print(f"hark provision: writing to {args.target} failed: {exc}", file=sys.stderr)
        return EXIT_TARGET
    if args.dry_run:
        print("dry run: nothing was written")
    else:
        os.sync()  # a card reader may still hold the writes in the page cache
        print(
            f"done. Eject the card, put it into the Pi and power it on; after a few minutes (and "
            f"{'one reboot' if release.method == 'firstrun' else 'cloud-init'}) hark runs as "
            f"hark.service on {inputs[0]}.local. If it does not, read hark-firstboot.log on "
            "the card."
        )
    return 0
