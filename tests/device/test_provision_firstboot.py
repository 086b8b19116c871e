"""The generated first-boot scripts, run in a throwaway root with root-only commands stubbed."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from hark.provision import main
from hark.provision.inputs import wpa_psk

CMDLINE = (
    "console=serial0,115200 console=tty1 root=PARTUUID=6c586e13-02 rootfstype=ext4 "
    "fsck.repair=yes rootwait quiet"
)
ISSUE = {
    "bookworm": "Raspberry Pi reference 2024-11-19\n",
    "trixie": "Raspberry Pi reference 2025-11-24\n",
}
CONFIG = '[backend]\nurl = "https://keys.example.com/v1/realtime/client_secrets"\n'
TOKEN = "hk_dev_5d1c7e9a3b2f4e6d8c0a"
PASSPHRASE = "correct horse battery"
SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZ0m2sQ5k9b7qT1vY3n8pL6wR4xE2cJ0hU5aD9fK1mB owner@laptop"
)
# Commands that need root or a running systemd: each stub logs its argv and succeeds,
# unless a file "<root>/fail-<name>" exists (then it fails, as a flaky network would).
STUBBED = (
    "apt-get",
    "systemctl",
    "useradd",
    "usermod",
    "groupmod",
    "chown",
    "raspi-config",
    "rfkill",
    "sleep",
)
STUB = """#!/bin/bash
echo "$(basename "$0") $*" >>"$HARK_ROOT/calls.log"
[ ! -e "$HARK_ROOT/fail-$(basename "$0")" ] || exit 1
"""
GETENT = """#!/bin/bash
echo "getent $*" >>"$HARK_ROOT/calls.log"
[ "$1 $2" = "passwd 1000" ] && echo "pi:x:1000:1000:,,,:/home/pi:/bin/bash"
exit 0
"""
INSTALL_DEVICE = """#!/bin/bash
echo "$*" >>"$HARK_ROOT/install-device.args"
[ ! -e "$HARK_ROOT/fail-install-device" ] || { echo "pip: network unreachable"; exit 1; }
units="$HARK_ROOT/etc/systemd/system"
mkdir -p "$units" && echo "[Service]" >"$units/hark.service"
"""
# Python 3 stand-in for the index path: `python3 -m venv DIR` makes a pip that records
# its arguments and, for `download`, drops $HARK_FAKE_WHEEL into --dest; anything else
# runs the real Python.
PYTHON3 = """#!/bin/bash
echo "python3 $*" >>"$HARK_ROOT/calls.log"
[ "$1 $2" = "-m venv" ] || exec @PYTHON@ "$@"
if [ "$1 $2" = "-m venv" ]; then
    mkdir -p "$3/bin"
    cat >"$3/bin/pip" <<'PIP'
#!/bin/bash
echo "pip $*" >>"$HARK_ROOT/calls.log"
if [ "$1" = download ]; then
    while [ $# -gt 0 ]; do
        [ "$1" = --dest ] && cp "$HARK_FAKE_WHEEL" "$2/"; shift
    done
fi
PIP
    chmod +x "$3/bin/pip"; touch "$3/bin/python"; chmod +x "$3/bin/python"
fi
"""

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def boot_folder(tmp: Path, release: str) -> Path:
    boot = tmp / "boot" / "firmware"
    files = {
        "config.txt": "dtparam=audio=on\n",
        "cmdline.txt": CMDLINE + "\n",
        "issue.txt": ISSUE[release],
        "bcm2710-rpi-zero-2-w.dtb": "dtb",
    }
    if release == "trixie":
        files["meta-data"] = "instance_id: rpios-image\n"
        files["network-config"] = "network:\n  version: 2\n"
    for name, text in files.items():
        (boot / name).parent.mkdir(parents=True, exist_ok=True)
        (boot / name).write_text(text)
    return boot


def throwaway_root(tmp: Path) -> tuple[Path, dict[str, str]]:
    """A prefix with the few files the scripts edit, and PATH stubs for root-only commands."""
    root = tmp / "root"
    for folder in (
        "etc/sudoers.d",
        "etc/ssh/sshd_config.d",
        "usr/share/zoneinfo/Europe",
        "var/lib/systemd/rfkill",
    ):
        (root / folder).mkdir(parents=True)
    (root / "etc/hostname").write_text("raspberrypi\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\t\traspberrypi\n")
    (root / "usr/share/zoneinfo/Europe/London").write_text("TZif")
    (root / "var/lib/systemd/rfkill/platform-3f300000.mmcnr:wlan").write_text("1\n")
    bin_dir = tmp / "stubs"
    bin_dir.mkdir()
    for name in STUBBED:
        (bin_dir / name).write_text(STUB)
    (bin_dir / "getent").write_text(GETENT)
    (bin_dir / "python3").write_text(PYTHON3.replace("@PYTHON@", sys.executable))
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "HARK_ROOT": str(root), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return root, env


def provision(tmp: Path, release: str, *extra: str) -> Path:
    boot = boot_folder(tmp, release)
    (tmp / "hark.toml").write_text(CONFIG)
    (tmp / "token").write_text(TOKEN + "\n")
    (tmp / "psk").write_text(PASSPHRASE + "\n")
    (tmp / "key.pub").write_text(SSH_KEY + "\n")
    (tmp / "install-device").write_text(INSTALL_DEVICE)
    wheel = tmp / "hark_voice-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    argv = [
        str(boot),
        "--config",
        str(tmp / "hark.toml"),
        "--hostname",
        "hark-kitchen",
        "--token-file",
        str(tmp / "token"),
        "--wifi-ssid",
        "Home Net",
        "--wifi-passphrase-file",
        str(tmp / "psk"),
        "--wifi-country",
        "GB",
        "--timezone",
        "Europe/London",
        "--user",
        "owner",
        "--ssh-key",
        str(tmp / "key.pub"),
        "--install-script",
        str(tmp / "install-device"),
        *extra,
    ]
    if "--from-index" not in extra and "--wheelhouse" not in extra:
        argv += ["--wheel", str(wheel)]
    assert main(argv) == 0
    return boot


def run(script: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def calls(root: Path) -> list[str]:
    log = root / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def card_text(boot: Path) -> str:
    """Every byte left on the boot partition, for secret scans."""
    return "".join(p.read_text(errors="replace") for p in boot.rglob("*") if p.is_file())


def test_bookworm_firstrun_then_firstboot(tmp_path: Path) -> None:
    """firstrun.sh configures the system and hands over; firstboot.sh installs hark and scrubs."""
    boot = provision(tmp_path, "bookworm")
    root, env = throwaway_root(tmp_path)

    done = run(boot / "firstrun.sh", env)
    assert done.returncode == 0, done.stderr
    assert (root / "etc/hostname").read_text() == "hark-kitchen\n"
    assert "127.0.1.1\thark-kitchen" in (root / "etc/hosts").read_text()
    profile_path = root / "etc/NetworkManager/system-connections/hark-wifi.nmconnection"
    assert profile_path.stat().st_mode & 0o777 == 0o600
    profile = configparser.ConfigParser(interpolation=None)
    profile.read_string(profile_path.read_text())
    assert profile["wifi-security"]["psk"] == wpa_psk("Home Net", PASSPHRASE)
    assert not (boot / "hark/wifi.nmconnection").exists()
    assert not (boot / "firstrun.sh").exists()
    cmdline = (boot / "cmdline.txt").read_text()
    assert cmdline == CMDLINE + " cfg80211.ieee80211_regdom=GB\n"
    keys = root / "home/owner/.ssh/authorized_keys"
    assert keys.read_text() == SSH_KEY + "\n" and keys.stat().st_mode & 0o777 == 0o600
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/Europe/London"
    assert (root / "var/lib/systemd/rfkill/platform-3f300000.mmcnr:wlan").read_text() == "0\n"
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.read_string((root / "etc/systemd/system/hark-firstboot.service").read_text())
    assert unit["Unit"]["After"].startswith("network-online.target")
    assert unit["Unit"]["ConditionPathExists"] == "!/var/lib/hark/firstboot.done"
    assert (root / "etc/systemd/system/multi-user.target.wants/hark-firstboot.service").is_symlink()
    if shutil.which("systemd-analyze"):
        unit_file = root / "etc/systemd/system/hark-firstboot.service"
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(unit_file)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert verify.returncode == 0, verify.stderr
    assert "usermod -l owner pi" in calls(root)

    done = run(boot / "hark/firstboot.sh", env)
    assert done.returncode == 0, done.stdout + done.stderr
    token = root / "etc/hark/device-token"
    assert token.read_text().strip() == TOKEN
    assert token.stat().st_mode & 0o777 == 0o600
    assert (root / "etc/hark/hark.toml").read_text() == CONFIG
    log = calls(root)
    assert f"chown hark:hark {token}" in log
    assert any(c.startswith("apt-get install -y") for c in log)
    assert "systemctl enable hark.service" in log and "systemctl restart hark.service" in log
    assert "systemctl enable --now ssh" in log
    args = (root / "install-device.args").read_text().split()
    wheel = str(boot / "hark/wheels/hark_voice-0.1.0-py3-none-any.whl")
    assert args == ["--wheel", wheel, "--root", str(root)]
    assert (root / "var/lib/hark/firstboot.done").exists()
    result = (boot / "hark-firstboot.log").read_text()
    assert "done: hark is installed" in result
    assert not (boot / "hark/device-token").exists()
    scanned = card_text(boot)
    assert TOKEN not in scanned and wpa_psk("Home Net", PASSPHRASE) not in scanned
    assert PASSPHRASE not in scanned and TOKEN not in result

    before = (calls(root), result, token.read_text())
    again = run(boot / "hark/firstboot.sh", env)
    assert again.returncode == 0 and "already done" in again.stdout
    assert (calls(root), (boot / "hark-firstboot.log").read_text(), token.read_text()) == before


def test_trixie_runcmd_and_firstboot_redacts_network_config(tmp_path: Path) -> None:
    """cloud-init's runcmd installs the unit; firstboot strips the Wi-Fi key from network-config."""
    boot = provision(tmp_path, "trixie")
    root, env = throwaway_root(tmp_path)
    runcmd = yaml.safe_load((boot / "user-data").read_text())["runcmd"][0]
    assert runcmd[0] == "bash" and runcmd[1] == "/boot/firmware/hark/firstboot.sh"
    done = run(boot / "hark/firstboot.sh", env, *runcmd[2:])
    assert done.returncode == 0, done.stderr
    assert (root / "etc/systemd/system/hark-firstboot.service").is_file()
    assert "systemctl start --no-block hark-firstboot.service" in calls(root)

    done = run(boot / "hark/firstboot.sh", env)
    assert done.returncode == 0, done.stdout + done.stderr
    net = (boot / "network-config").read_text()
    parsed = yaml.safe_load(net)["network"]
    assert parsed["wifis"]["wlan0"]["access-points"]["Home Net"] is None
    assert "removed by hark first boot" in net
    assert wpa_psk("Home Net", PASSPHRASE) not in card_text(boot)
    assert TOKEN not in card_text(boot)
    assert (root / "etc/hark/device-token").read_text().strip() == TOKEN


def test_failure_is_logged_on_the_card_and_a_rerun_recovers(tmp_path: Path) -> None:
    """A failed install leaves a readable log, no stamp, no token on the card; the next boot
    (a re-run, as after a power cut) finishes the job from the staged token."""
    boot = provision(tmp_path, "bookworm")
    root, env = throwaway_root(tmp_path)
    (root / "fail-install-device").touch()
    done = run(boot / "hark/firstboot.sh", env)
    assert done.returncode == 1
    log = (boot / "hark-firstboot.log").read_text()
    assert "FAILED: install hark" in log and "pip: network unreachable" in log
    assert "== " not in log  # only the failing step's own output
    assert not (root / "var/lib/hark/firstboot.done").exists()
    assert not (boot / "hark/device-token").exists()
    staged = root / "var/lib/hark/staged/device-token"
    assert staged.stat().st_mode & 0o777 == 0o600

    (root / "fail-install-device").unlink()
    done = run(boot / "hark/firstboot.sh", env)
    assert done.returncode == 0, done.stdout
    assert (root / "etc/hark/device-token").read_text().strip() == TOKEN
    assert not staged.exists()
    assert (root / "var/lib/hark/firstboot.done").exists()


def test_apt_failure_retries_then_reports(tmp_path: Path) -> None:
    """apt is retried (update + install) and a persistent failure is reported by step name."""
    boot = provision(tmp_path, "bookworm")
    root, env = throwaway_root(tmp_path)
    (root / "fail-apt-get").touch()
    done = run(boot / "hark/firstboot.sh", env)
    assert done.returncode == 1
    assert "FAILED: install system packages" in (boot / "hark-firstboot.log").read_text()
    assert sum(c.startswith("apt-get update") for c in calls(root)) == 5


def test_missing_token_is_reported(tmp_path: Path) -> None:
    """With no token on the card and none installed, the log says to provision again."""
    boot = provision(tmp_path, "bookworm")
    _, env = throwaway_root(tmp_path)
    (boot / "hark/device-token").unlink()
    done = run(boot / "hark/firstboot.sh", env)
    assert done.returncode == 1
    log = (boot / "hark-firstboot.log").read_text()
    assert "no device token" in log and "--token-file" in log


def test_from_index_without_install_device_on_the_card(tmp_path: Path) -> None:
    """--from-index: first boot downloads exactly that release (a wheel, never an sdist)
    over https, and with no install-device on the card runs the one inside the wheel."""
    boot = provision(
        tmp_path,
        "bookworm",
        "--from-index",
        "hark-voice==0.1.0",
        "--index-url",
        "https://pypi.example/simple",
    )
    shutil.rmtree(boot / "hark/scripts")
    shutil.rmtree(boot / "hark/systemd", ignore_errors=True)
    root, env = throwaway_root(tmp_path)
    wheel = tmp_path / "index" / "hark_voice-0.1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("hark/_install/install-device", INSTALL_DEVICE)
        zf.writestr("hark/_install/hark.service", "[Service]\n")
    env["HARK_FAKE_WHEEL"] = str(wheel)
    done = run(boot / "hark/firstboot.sh", env)
    assert done.returncode == 0, done.stdout + (boot / "hark-firstboot.log").read_text()
    log = calls(root)
    assert (
        "pip download --no-deps --only-binary=:all: --index-url https://pypi.example/simple "
        f"--dest {root}/var/lib/hark/download hark-voice==0.1.0"
    ) in log
    args = (root / "install-device.args").read_text().split()
    assert args == ["--wheel", f"{root}/var/lib/hark/download/{wheel.name}", "--root", str(root)]
    assert not any(c.startswith("useradd") for c in log)  # install-device's job, not a fallback


def test_wheel_without_install_device_fails_clearly(tmp_path: Path) -> None:
    """A wheel that carries no installer (older hark) stops the first boot with a line that
    says why, instead of a half-made install."""
    boot = provision(tmp_path, "bookworm")
    shutil.rmtree(boot / "hark/scripts")
    root, env = throwaway_root(tmp_path)
    done = run(boot / "hark/firstboot.sh", env)
    assert done.returncode == 1
    log = (boot / "hark-firstboot.log").read_text()
    assert "FAILED: install hark" in log and "carries no hark/_install/install-device" in log
    assert not (root / "etc/systemd/system/hark.service").exists()


def _python() -> str | None:
    """The system python3 (>= 3.11, with venv): what builds /opt/hark/venv on the Pi."""
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if candidate and Path(candidate).exists():
            check = subprocess.run(
                [
                    candidate,
                    "-c",
                    "import sys, venv, ensurepip; assert sys.version_info >= (3, 11)",
                ],
                capture_output=True,
                check=False,
            )
            if check.returncode == 0:
                return candidate
    return None


@pytest.mark.slow
def test_real_install_device_from_the_card(tmp_path: Path) -> None:
    """The card's copy of scripts/install-device (taken from this checkout) installs the real
    wheel from the card into the throwaway root, and the unit lands next to the config."""
    repo = Path(__file__).resolve().parents[2]
    python = _python()
    if python is None or not (repo / "scripts/install-device").is_file():
        pytest.skip("needs a system python3 >= 3.11 and scripts/install-device")
    out = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(repo)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    wheels = list(out.glob("hark_voice-*.whl"))
    if built.returncode != 0 or not wheels:
        pytest.skip(f"cannot build a wheel here: {built.stderr[-300:]}")
    boot = boot_folder(tmp_path, "bookworm")
    (tmp_path / "hark.toml").write_text(CONFIG)
    (tmp_path / "token").write_text(TOKEN + "\n")
    argv = [
        str(boot),
        "--config",
        str(tmp_path / "hark.toml"),
        "--hostname",
        "hark-den",
        "--token-file",
        str(tmp_path / "token"),
        "--wheel",
        str(wheels[0]),
    ]
    assert main(argv) == 0
    assert (boot / "hark/scripts/install-device").read_bytes() == (
        repo / "scripts/install-device"
    ).read_bytes()
    assert (boot / "hark/systemd/hark.service").is_file()

    root, env = throwaway_root(tmp_path)
    env["HARK_INSTALL_DEVICE_OPTS"] = (
        f"--no-apt --no-user --no-systemctl --no-deps --python {python}"
    )
    env["PIP_NO_INDEX"] = "1"
    done = run(boot / "hark/firstboot.sh", env)
    result = (boot / "hark-firstboot.log").read_text()
    assert done.returncode == 0, result + (root / "var/lib/hark/firstboot.out").read_text()
    assert (root / "opt/hark/venv/bin/hark").exists()
    assert (
        "ExecStart=/opt/hark/venv/bin/hark"
        in (root / "etc/systemd/system/hark.service").read_text()
    )
    assert (root / "etc/hark/hark.toml").read_text() == CONFIG
    assert (root / "etc/hark/device-token").stat().st_mode & 0o777 == 0o600
    assert not (boot / "hark/device-token").exists()


def test_reprovisioned_card_on_a_used_pi_installs_again(tmp_path: Path) -> None:
    """A new provisioning (its --install-unit hook) clears the old stamp, so the new token and
    config are installed; without it a re-run stays a no-op."""
    boot = provision(tmp_path, "trixie")
    root, env = throwaway_root(tmp_path)
    assert run(boot / "hark/firstboot.sh", env).returncode == 0
    assert (root / "var/lib/hark/firstboot.done").exists()

    (tmp_path / "token").write_text("hk_dev_second_token_0001\n")
    assert (
        main(
            [
                str(boot),
                "--config",
                str(tmp_path / "hark.toml"),
                "--hostname",
                "hark-den",
                "--token-file",
                str(tmp_path / "token"),
                "--install-script",
                str(tmp_path / "install-device"),
            ]
        )
        == 0
    )
    assert run(boot / "hark/firstboot.sh", env, "--install-unit", "--start").returncode == 0
    assert not (root / "var/lib/hark/firstboot.done").exists()
    assert run(boot / "hark/firstboot.sh", env).returncode == 0
    assert (root / "etc/hark/device-token").read_text().strip() == "hk_dev_second_token_0001"
    assert "hark-den" not in (root / "var/lib/hark/firstboot.done").read_text()
