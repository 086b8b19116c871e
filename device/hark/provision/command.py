"""``hark provision``: turn a Raspberry Pi OS card, image or mounted boot partition into a
hark device (the owner-facing command behind scripts/provision-sd).

It must not write anything before every input, the config and the target have been
checked, must not write outside the FAT boot partition, and must never print a secret
(the Wi-Fi key and the device token show as ``<redacted>``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import importlib.metadata
import logging
import os
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from hark.provision import render
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

log = logging.getLogger(__name__)

EXIT_TARGET = 1
EXIT_INPUT = 2
EXIT_CONFIG = 78  # EX_CONFIG, as the daemon uses for a bad config
SERVICE_USER = "hark"
CONFIG_PATH = "/etc/hark/hark.toml"
DEFAULT_APT = ("python3-venv", "python3-pip", "alsa-utils", "libportaudio2")
PASSPHRASE_ENV = "HARK_WIFI_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
REPO_ROOT = Path(__file__).resolve().parents[3]  # device/hark/provision -> checkout root


@dataclass(frozen=True)
class Write:
    """One file for the boot partition; ``secret`` ones are never shown and written 0600."""

    path: str
    data: bytes = b""
    secret: bool = False
    shown: str = ""  # for --dry-run: a one-line preview instead of the size
    source: Path | None = None  # copied from this file instead of ``data`` (big wheels)

    @property
    def size_b(self) -> int:
        return self.source.stat().st_size if self.source is not None else len(self.data)


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
    src.add_argument("--wheel", type=Path, help="hark wheel to copy onto the card")
    src.add_argument(
        "--wheelhouse",
        type=Path,
        help="folder of wheels (hark + dependencies) for a fully offline install",
    )
    src.add_argument("--index-url", help="package index to install hark from (default PyPI)")
    p.add_argument("--package", help="what to install from the index (default hark-voice==VERSION)")
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


def _version() -> str:
    try:
        return importlib.metadata.version("hark-voice")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _read_passphrase(args: argparse.Namespace) -> str:
    if args.wifi_passphrase_file is not None:
        try:
            path: Path = args.wifi_passphrase_file
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise InputError([f"--wifi-passphrase-file: {exc.strerror}"]) from None
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
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError([f"--ssh-key {args.ssh_key}: cannot read ({exc})"]) from None
        user = FirstUser(name, check_ssh_key(text, str(args.ssh_key)))

    for fn in (_host, _wifi, _country_alone, _tz, _user):
        attempt(fn)
    if args.wheel is not None and not (args.wheel.is_file() and args.wheel.suffix == ".whl"):
        problems.append(f"--wheel {args.wheel}: not a .whl file")
    if args.wheelhouse is not None and not list(_hark_wheels(args.wheelhouse)):
        problems.append(f"--wheelhouse {args.wheelhouse}: holds no hark_voice-*.whl")
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


def _from_wheel(wheels: list[Path], suffix: str) -> bytes | None:
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name.endswith(suffix):
                    return zf.read(name)
    return None


def _support_file(explicit: Path | None, repo_rel: str, wheels: list[Path]) -> bytes | None:
    """install-device / hark.service: --option, else this checkout, else inside the wheel."""
    if explicit is not None:
        return explicit.read_bytes()
    in_repo = REPO_ROOT / repo_rel
    if in_repo.is_file():
        return in_repo.read_bytes()
    return _from_wheel(wheels, "/" + repo_rel.rsplit("/", 1)[-1])


def build_plan(
    args: argparse.Namespace,
    boot: BootFs,
    release: Release,
    inputs: tuple[str, Wifi | None, FirstUser | None, str | None],
    config: tuple[bytes, str],
    token: str,
) -> list[Write]:
    """Every file to write, in order: payload first, cmdline.txt last (the hook goes live
    only once everything it needs is on the card)."""
    hostname, wifi, user, timezone = inputs
    config_bytes, token_path = config
    card = render.CARD_DIR
    plan: list[Write] = []
    wheels: list[Path] = []
    if args.wheel is not None:
        wheels = [args.wheel]
        install_from, wheel_name = "wheel", args.wheel.name
    elif args.wheelhouse is not None:
        wheels = sorted(args.wheelhouse.glob("*.whl"))
        install_from, wheel_name = "wheelhouse", ""
    else:
        install_from, wheel_name = "index", ""
    for wheel in wheels:
        plan.append(Write(f"{card}/wheels/{wheel.name}", source=wheel))
    script = _support_file(args.install_script, "scripts/install-device", _hark_wheels_of(wheels))
    unit = _support_file(args.unit, "systemd/hark.service", _hark_wheels_of(wheels))
    if script is not None:
        plan.append(Write(f"{card}/scripts/install-device", script))
    if unit is not None:
        plan.append(Write(f"{card}/systemd/hark.service", unit))
    values = render.FirstbootValues(
        service_user=SERVICE_USER,
        config_path=CONFIG_PATH,
        token_path=token_path,
        install_from=install_from,
        wheel_name=wheel_name,
        package_spec=args.package or f"hark-voice=={_version()}",
        index_url=args.index_url or "",
        apt_packages=" ".join((*DEFAULT_APT, *args.apt_package)),
        ssh_user=user.name if user else "",
        provisioned_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    plan.append(Write(f"{card}/firstboot.sh", render.firstboot_sh(values).encode()))
    plan.append(Write(f"{card}/hark.toml", config_bytes))
    plan.append(Write(f"{card}/device-token", (token + "\n").encode(), secret=True))
    instance_id = f"hark-{int(time.time() * 1000)}"  # unique per provisioning, like Imager's
    if release.method == "firstrun":
        if wifi is not None:
            profile = render.nmconnection(wifi).encode()
            plan.append(Write(f"{card}/wifi.nmconnection", profile, secret=True))
        text = render.firstrun_sh(hostname, timezone, user, wifi)
        plan.append(Write("firstrun.sh", text.encode()))
    else:
        plan.append(Write("meta-data", render.meta_data(instance_id).encode()))
        plan.append(Write("user-data", render.user_data(hostname, timezone, user).encode()))
        plan.append(
            Write("network-config", render.network_config(wifi).encode(), secret=wifi is not None)
        )
    original = boot.read("cmdline.txt").decode("utf-8", errors="replace")
    country = (
        wifi.country if wifi else (check_country(args.wifi_country) if args.wifi_country else None)
    )
    cmdline = render.edit_cmdline(original, release.method, country, instance_id)
    plan.append(Write("cmdline.txt", cmdline.encode(), shown=cmdline.strip()))
    return plan


def _hark_wheels_of(wheels: list[Path]) -> list[Path]:
    return [w for w in wheels if w.name.startswith("hark_voice-")]


def _describe(w: Write) -> str:
    if w.secret:
        return "<redacted> (secret, mode 0600)"
    if w.shown:
        return w.shown
    return f"{w.size_b} bytes"


def _check_space(boot: BootFs, plan: list[Write]) -> None:
    """Refuse before the first write when the files cannot fit (FAT fills up silently)."""
    replaced = sum(boot.size_b(w.path) for w in plan)  # overwritten files free their space
    slack_b = 64 * 1024 * len(plan)  # cluster rounding and directory entries
    needed_b = sum(w.size_b for w in plan) - replaced + slack_b
    free_b = boot.free_b()
    if needed_b > free_b:
        raise TargetError(
            f"the boot partition has {free_b / 2**20:.1f} MiB free but this needs "
            f"{needed_b / 2**20:.1f} MiB more; use --wheel or --index-url instead of "
            "--wheelhouse, or remove files from the boot partition"
        )


def apply(boot: BootFs, plan: list[Write], dry_run: bool) -> None:
    """Write the plan (or list it): space checked, folders made, stale results removed."""
    verb = "would write" if dry_run else "wrote"
    if not dry_run:
        _check_space(boot, plan)
        folders = sorted({w.path.rsplit("/", 1)[0] for w in plan if "/" in w.path}, key=len)
        for folder in folders:
            parts = folder.split("/")
            for i in range(1, len(parts) + 1):
                boot.mkdir("/".join(parts[:i]))
        # Leftovers of an earlier provisioning of this card: its log, a Wi-Fi profile or
        # hook this run does not write (a stale secret otherwise), other wheels.
        planned = {w.path.lower() for w in plan}
        stale = ["hark-firstboot.log", "firstrun.sh", f"{render.CARD_DIR}/wifi.nmconnection"]
        stale += [f"{render.CARD_DIR}/wheels/{n}" for n in boot.names(f"{render.CARD_DIR}/wheels")]
        for path in stale:
            if path.lower() not in planned and not path.endswith("/"):
                boot.delete(path)
    for w in plan:
        if dry_run:
            pass
        elif w.source is not None:
            boot.copy_in(w.source, w.path)
        else:
            boot.write(w.path, w.data, secret=w.secret)
        print(f"  {verb} {w.path}: {_describe(w)}")


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
    try:
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
    if args.dry_run and args.backend_admin:
        print(f"token:   would be minted by running: {args.backend_admin}")
    try:
        plan = build_plan(args, boot, release, inputs, config, token)
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
        print(
            f"done. Put the card into the Pi and power it on; after a few minutes (and "
            f"{'one reboot' if release.method == 'firstrun' else 'cloud-init'}) hark runs as "
            f"hark.service on {inputs[0]}.local. If it does not, read hark-firstboot.log on "
            "the card."
        )
    return 0
