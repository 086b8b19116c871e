"""The provisioning plan: every file that goes onto the boot partition, in a safe order,
and applying it (free space checked first, leftovers of an earlier run removed).

It must not validate owner input (``inputs`` and the config model did that) and must
never print a secret: secret files show as ``<redacted>``.
"""

from __future__ import annotations

import datetime as dt
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from hark.provision import render
from hark.provision.bootfs import BootFs, Release, TargetError
from hark.provision.inputs import FirstUser, Wifi

SERVICE_USER = "hark"
CONFIG_PATH = "/etc/hark/hark.toml"
REPO_ROOT = Path(__file__).resolve().parents[3]  # device/hark/provision -> checkout root


@dataclass(frozen=True)
class Request:
    """Everything already validated that decides what the card gets."""

    hostname: str
    wifi: Wifi | None
    country: str | None  # the regulatory domain, also without Wi-Fi
    user: FirstUser | None
    timezone: str | None
    config_bytes: bytes
    token_path: str
    token: str
    wheel: Path | None = None
    wheelhouse: Path | None = None
    index_url: str = ""
    package: str = ""  # --from-index NAME==VERSION; never a default name
    install_script: Path | None = None
    unit: Path | None = None
    apt_packages: tuple[str, ...] = ()


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


def build_plan(boot: BootFs, release: Release, req: Request) -> list[Write]:
    """Every file to write, in order: payload first, cmdline.txt last (the hook goes live
    only once everything it needs is on the card)."""
    hostname, wifi, user, timezone = req.hostname, req.wifi, req.user, req.timezone
    card = render.CARD_DIR
    plan: list[Write] = []
    wheels: list[Path] = []
    if req.wheel is not None:
        wheels = [req.wheel]
        install_from, wheel_name = "wheel", req.wheel.name
    elif req.wheelhouse is not None:
        wheels = sorted(req.wheelhouse.glob("*.whl"))
        install_from, wheel_name = "wheelhouse", ""
    elif req.package:
        install_from, wheel_name = "index", ""
    else:
        raise ValueError("no source for hark: a wheel, a wheelhouse or --from-index")
    for wheel in wheels:
        plan.append(Write(f"{card}/wheels/{wheel.name}", source=wheel))
    ours = [w for w in wheels if w.name.startswith("hark_voice-")]
    script = _support_file(req.install_script, "scripts/install-device", ours)
    unit = _support_file(req.unit, "systemd/hark.service", ours)
    if script is not None:
        plan.append(Write(f"{card}/scripts/install-device", script))
    if unit is not None:
        plan.append(Write(f"{card}/systemd/hark.service", unit))
    values = render.FirstbootValues(
        service_user=SERVICE_USER,
        config_path=CONFIG_PATH,
        token_path=req.token_path,
        install_from=install_from,
        wheel_name=wheel_name,
        package_spec=req.package,
        index_url=req.index_url,
        apt_packages=" ".join(req.apt_packages),
        ssh_user=user.name if user else "",
        provisioned_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    plan.append(Write(f"{card}/firstboot.sh", render.firstboot_sh(values).encode()))
    plan.append(Write(f"{card}/hark.toml", req.config_bytes))
    plan.append(Write(f"{card}/device-token", (req.token + "\n").encode(), secret=True))
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
    cmdline = render.edit_cmdline(original, release.method, req.country, instance_id)
    plan.append(Write("cmdline.txt", cmdline.encode(), shown=cmdline.strip()))
    return plan


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
            f"{needed_b / 2**20:.1f} MiB more; use --wheel or --from-index instead of "
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
