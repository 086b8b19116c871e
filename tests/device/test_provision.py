"""Provisioning real disk images (sfdisk + mkfs.vfat --offset + mtools, no root) and folders."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from hark.provision import main
from hark.provision.inputs import COUNTRIES, wpa_psk

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("sfdisk", "mkfs.vfat", "mcopy", "shellcheck")),
    reason="needs fdisk, dosfstools, mtools and shellcheck",
)

BOOT_START = 8192  # sectors, as Pi OS images lay it out
BOOT_SECTORS = 32768  # 16 MiB FAT
OFFSET = BOOT_START * 512
CMDLINE = (
    "console=serial0,115200 console=tty1 root=PARTUUID=6c586e13-02 rootfstype=ext4 "
    "fsck.repair=yes rootwait quiet"
)
ISSUE = {
    "bookworm": "Raspberry Pi reference 2024-11-19\nGenerated using pi-gen, "
    "https://github.com/RPi-Distro/pi-gen, 891df1e21ed2b6099a2e6a13e26c91dea44b34d4, stage2\n",
    "trixie": "Raspberry Pi reference 2025-11-24\nGenerated using pi-gen, "
    "https://github.com/RPi-Distro/pi-gen, 4b5f7e1c0b1f3d6c2e9a8b7c6d5e4f3a2b1c0d9e, stage2\n",
}
PIGEN_SEEDS = {  # what pi-gen's stage2/04-cloud-init puts on a Trixie boot partition
    "meta-data": "dsmode: local\ninstance_id: rpios-image\n",
    "user-data": "#cloud-config\nssh_pwauth: false\n",
    "network-config": "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n",
}
CONFIG = '[backend]\nurl = "https://keys.example.com/v1/realtime/client_secrets"\n'
TOKEN = "hk_dev_7f3a9c2e5b8d1f4a6c0e"
PASSPHRASE = "correct horse battery"
SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZ0m2sQ5k9b7qT1vY3n8pL6wR4xE2cJ0hU5aD9fK1mB owner@laptop"
)
ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": os.devnull}


def run(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, check=True, capture_output=True, env=ENV)


def boot_files(release: str) -> dict[str, str]:
    files = {
        "config.txt": "# For more options and information see\n"
        "# http://rptl.io/configtxt\ndtparam=audio=on\ncamera_auto_detect=1\n"
        "auto_initramfs=1\ndtoverlay=vc4-kms-v3d\narm_64bit=1\n[all]\n",
        "cmdline.txt": CMDLINE + "\n",
        "issue.txt": ISSUE[release],
        "bcm2710-rpi-zero-2-w.dtb": "\xd0\x0d\xfe\xed dummy dtb",
        "start.elf": "dummy firmware",
        "overlays/README": "overlays\n",
    }
    if release == "trixie":
        files.update(PIGEN_SEEDS)
    return files


def make_image(tmp: Path, release: str, *, fat: bool = True, ext4: bool = False) -> Path:
    """A 40 MiB sparse card image: MBR, FAT boot partition with Pi OS markers, root partition."""
    image = tmp / f"{release}.img"
    with image.open("wb") as fh:
        fh.truncate(40 * 1024 * 1024)
    table = f"label: dos\nstart={BOOT_START}, size={BOOT_SECTORS}, type=c\n"
    table += f"start={BOOT_START + BOOT_SECTORS}, type=83\n"
    subprocess.run(["sfdisk", "-q", str(image)], input=table.encode(), check=True, env=ENV)
    if not fat:
        return image
    run(
        "mkfs.vfat", "--offset", str(BOOT_START), "-n", "bootfs", str(image), str(BOOT_SECTORS // 2)
    )
    if ext4 and shutil.which("mkfs.ext4"):
        run(
            "mkfs.ext4",
            "-q",
            "-F",
            "-E",
            f"offset={(BOOT_START + BOOT_SECTORS) * 512}",
            str(image),
            "8M",
        )
    staging = tmp / f"{release}-files"
    for name, text in boot_files(release).items():
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    run("mmd", "-i", f"{image}@@{OFFSET}", "::/overlays")
    for name in boot_files(release):
        run("mcopy", "-i", f"{image}@@{OFFSET}", str(staging / name), f"::/{name}")
    return image


def make_folder(tmp: Path, release: str) -> Path:
    """A mounted-style boot partition folder with the same markers."""
    folder = tmp / f"{release}-boot"
    for name, text in boot_files(release).items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def mread(image: Path, path: str) -> str:
    return run("mcopy", "-n", "-i", f"{image}@@{OFFSET}", f"::/{path}", "-").stdout.decode()


def mlist(image: Path, folder: str = "") -> set[str]:
    out = subprocess.run(
        ["mdir", "-b", "-i", f"{image}@@{OFFSET}", f"::/{folder}"],
        capture_output=True,
        env=ENV,
        check=False,
    ).stdout.decode()
    return {
        line.rsplit("/", 1)[-1] or line.rstrip("/").rsplit("/", 1)[-1] for line in out.splitlines()
    }


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    files = {
        "config": tmp_path / "hark.toml",
        "token": tmp_path / "token",
        "psk": tmp_path / "wifi-pass",
        "key": tmp_path / "id_ed25519.pub",
    }
    files["config"].write_text(CONFIG)
    files["token"].write_text(TOKEN + "\n")
    files["psk"].write_text(PASSPHRASE + "\n")
    files["key"].write_text(SSH_KEY + "\n")
    files["wheel"] = tmp_path / "wheel" / "hark_voice-0.1.0-py3-none-any.whl"
    files["wheel"].parent.mkdir()
    files["wheel"].write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip
    return files


SOURCES = ("--wheel", "--wheelhouse", "--from-index")


def argv(target: Path, inputs: dict[str, Path], *extra: str, source: bool = True) -> list[str]:
    """The owner's usual command; a stand-in --wheel unless ``extra`` names the source
    (``source=False``: none at all, as typed by an owner who relies on the default)."""
    if source and not any(a in SOURCES for a in extra):
        extra = (*extra, "--wheel", str(inputs["wheel"]))
    return [
        str(target),
        "--config",
        str(inputs["config"]),
        "--hostname",
        "hark-kitchen",
        "--token-file",
        str(inputs["token"]),
        "--wifi-ssid",
        "Home Net",
        "--wifi-passphrase-file",
        str(inputs["psk"]),
        "--wifi-country",
        "GB",
        "--timezone",
        "Europe/London",
        "--user",
        "owner",
        "--ssh-key",
        str(inputs["key"]),
        *extra,
    ]


def shell_ok(script: str, tmp: Path) -> None:
    path = tmp / "script.sh"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)
    done = subprocess.run(["shellcheck", "-s", "bash", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_trixie_image_gets_cloud_init_seed(
    tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A Trixie image gets user-data/network-config/meta-data and ds=nocloud, all valid YAML."""
    image = make_image(tmp_path, "trixie", ext4=True)
    assert main(argv(image, inputs)) == 0
    out = capsys.readouterr()
    assert "cloud-init" in out.out
    assert TOKEN not in out.out + out.err and PASSPHRASE not in out.out + out.err

    user = yaml.safe_load(mread(image, "user-data"))
    assert mread(image, "user-data").startswith("#cloud-config\n")
    assert user["hostname"] == "hark-kitchen" and user["timezone"] == "Europe/London"
    assert user["users"][0]["name"] == "owner"
    assert user["users"][0]["ssh_authorized_keys"] == [SSH_KEY]
    assert user["users"][0]["lock_passwd"] is True
    assert user["runcmd"] == [
        ["bash", "/boot/firmware/hark/firstboot.sh", "--install-unit", "--start"]
    ]
    net = yaml.safe_load(mread(image, "network-config"))["network"]
    assert net["version"] == 2
    wlan = net["wifis"]["wlan0"]
    assert wlan["regulatory-domain"] == "GB"
    assert wlan["access-points"]["Home Net"]["password"] == wpa_psk("Home Net", PASSPHRASE)
    assert PASSPHRASE not in mread(image, "network-config")
    meta = yaml.safe_load(mread(image, "meta-data"))
    instance = meta["instance-id"]
    assert instance.startswith("hark-") and instance[5:].isdigit()

    cmdline = mread(image, "cmdline.txt")
    assert cmdline.count("\n") == 1 and cmdline.endswith("\n")
    assert cmdline.split()[: len(CMDLINE.split())] == CMDLINE.split()
    assert f"ds=nocloud;i={instance}" in cmdline.split()
    assert "cfg80211.ieee80211_regdom=GB" in cmdline.split()
    assert "systemd.run" not in cmdline

    assert mread(image, "hark/device-token").strip() == TOKEN
    assert mread(image, "hark/hark.toml") == CONFIG
    assert "firstrun.sh" not in mlist(image)
    shell_ok(mread(image, "hark/firstboot.sh"), tmp_path)


def test_bookworm_image_gets_firstrun_and_nm_profile(
    tmp_path: Path, inputs: dict[str, Path]
) -> None:
    """A Bookworm image gets firstrun.sh via systemd.run= and a NetworkManager keyfile."""
    image = make_image(tmp_path, "bookworm")
    assert main(argv(image, inputs)) == 0

    cmdline = mread(image, "cmdline.txt")
    assert cmdline.count("\n") == 1
    args = cmdline.split()
    assert args[: len(CMDLINE.split())] == CMDLINE.split()
    assert args[-3:] == [
        "systemd.run=/boot/firmware/firstrun.sh",
        "systemd.run_success_action=reboot",
        "systemd.unit=kernel-command-line.target",
    ]
    assert "ds=nocloud" not in cmdline

    profile = configparser.ConfigParser(interpolation=None)
    profile.read_string(mread(image, "hark/wifi.nmconnection"))
    assert profile["connection"]["type"] == "wifi"
    assert profile["wifi"]["ssid"] == "Home Net"
    assert profile["wifi"]["mode"] == "infrastructure"
    assert profile["wifi-security"]["key-mgmt"] == "wpa-psk"
    assert profile["wifi-security"]["psk"] == wpa_psk("Home Net", PASSPHRASE)
    assert profile["ipv4"]["method"] == "auto"

    firstrun = mread(image, "firstrun.sh")
    assert "hark-kitchen" in firstrun and SSH_KEY in firstrun
    assert TOKEN not in firstrun and PASSPHRASE not in firstrun
    shell_ok(firstrun, tmp_path)
    shell_ok(mread(image, "hark/firstboot.sh"), tmp_path)
    assert "user-data" not in mlist(image)


def test_reprovisioning_does_not_stack_hooks(tmp_path: Path, inputs: dict[str, Path]) -> None:
    """Provisioning the same card twice leaves one hook and the original arguments."""
    image = make_image(tmp_path, "trixie")
    assert main(argv(image, inputs)) == 0
    assert main(argv(image, inputs, "--release", "bookworm")) == 0
    args = mread(image, "cmdline.txt").split()
    assert args.count("systemd.run=/boot/firmware/firstrun.sh") == 1
    assert not any(a.startswith("ds=nocloud") for a in args)
    assert args.count("cfg80211.ieee80211_regdom=GB") == 1
    assert args[: len(CMDLINE.split())] == CMDLINE.split()


def test_folder_target_and_modes(tmp_path: Path, inputs: dict[str, Path]) -> None:
    """A mounted folder target gets the same files; secrets are created 0600."""
    folder = make_folder(tmp_path, "bookworm")
    assert main(argv(folder, inputs)) == 0
    assert (folder / "hark" / "device-token").stat().st_mode & 0o777 == 0o600
    assert (folder / "hark" / "wifi.nmconnection").stat().st_mode & 0o777 == 0o600
    assert (folder / "hark" / "hark.toml").stat().st_mode & 0o077 != 0  # not secret
    assert (folder / "cmdline.txt").read_text().count("\n") == 1


def test_dry_run_writes_nothing_and_redacts(
    tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run lists every file, shows secrets as <redacted>, and leaves the card as it was."""
    image = make_image(tmp_path, "trixie")
    before = image.read_bytes()
    assert main(argv(image, inputs, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert image.read_bytes() == before
    assert "would write hark/device-token: <redacted>" in out
    assert "would write network-config: <redacted>" in out
    assert "would write cmdline.txt:" in out and "ds=nocloud" in out
    assert TOKEN not in out and PASSPHRASE not in out
    assert wpa_psk("Home Net", PASSPHRASE) not in out


def test_token_minted_by_backend_admin(
    tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """--backend-admin runs the command, takes its last line as the token, never echoes it."""
    admin = tmp_path / "fake-backend"
    admin.write_text("#!/bin/sh\necho \"device $3 added\"\necho 'hk_minted_0123456789abcdef'\n")
    admin.chmod(0o755)
    folder = make_folder(tmp_path, "bookworm")
    args = argv(folder, inputs)
    i = args.index("--token-file")
    args[i : i + 2] = ["--backend-admin", f"{admin} device add kitchen --db sqlite:///x.db"]
    assert main(args) == 0
    assert (folder / "hark" / "device-token").read_text().strip() == "hk_minted_0123456789abcdef"
    out = capsys.readouterr()
    assert "hk_minted" not in out.out + out.err


def test_wheel_and_support_files_go_on_the_card(tmp_path: Path, inputs: dict[str, Path]) -> None:
    """--wheel copies the wheel; install-device and hark.service come from the options."""
    wheel = tmp_path / "hark_voice-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip
    script = tmp_path / "install-device"
    script.write_text("#!/bin/bash\necho install\n")
    unit = tmp_path / "hark.service"
    unit.write_text("[Service]\nType=notify\n")
    image = make_image(tmp_path, "trixie")
    extra = ("--wheel", str(wheel), "--install-script", str(script), "--unit", str(unit))
    assert main(argv(image, inputs, *extra)) == 0
    assert "hark_voice-0.1.0-py3-none-any.whl" in mlist(image, "hark/wheels")
    assert mread(image, "hark/scripts/install-device") == script.read_text()
    assert mread(image, "hark/systemd/hark.service") == unit.read_text()
    firstboot = mread(image, "hark/firstboot.sh")
    assert "INSTALL_FROM=wheel" in firstboot
    assert "WHEEL_NAME=hark_voice-0.1.0-py3-none-any.whl" in firstboot


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("--hostname", "bad_host"), "--hostname"),
        (("--hostname", "dash-"), "--hostname"),
        (("--hostname", "a" * 64), "--hostname"),
        (("--wifi-ssid", "x" * 33), "1-32 bytes"),
        (("--wifi-country", "XX"), "--wifi-country"),
        (("--timezone", "Mars/Olympus"), "--timezone"),
        (("--user", "root"), "--user"),
        (("--hostname", "hark-kitchen\n"), "--hostname"),  # "$" matches before a final \n
        (("--user", "owner\n"), "--user"),
        (("--timezone", "Europe/London\n"), "--timezone"),
    ],
)
def test_bad_inputs_are_refused_before_writing(
    tmp_path: Path,
    inputs: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    change: tuple[str, str],
    expected: str,
) -> None:
    """Each bad input exits 2 with a line naming the option, and nothing is written."""
    folder = make_folder(tmp_path, "bookworm")
    args = argv(folder, inputs)
    args[args.index(change[0]) + 1] = change[1]
    assert main(args) == 2
    assert expected in capsys.readouterr().err
    assert not (folder / "hark").exists()


def test_short_passphrase_missing_token_and_bad_key(
    tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A 7-character passphrase, no token and a private key are all reported at once."""
    folder = make_folder(tmp_path, "bookworm")
    inputs["psk"].write_text("short12\n")
    inputs["key"].write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n")
    args = argv(folder, inputs)
    i = args.index("--token-file")
    del args[i : i + 2]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "8-63 characters" in err and "short12" not in err
    assert "no device token" in err
    assert "PRIVATE key" in err
    assert not (folder / "hark").exists()


def test_a_trailing_newline_is_never_part_of_a_value() -> None:
    """Every validating pattern matches the whole value: a final newline is refused."""
    from hark.provision.inputs import (
        InputError,
        check_hostname,
        check_timezone,
        check_token,
        check_username,
    )

    assert check_hostname("hark-kitchen") == "hark-kitchen"
    assert check_username("owner") == "owner"
    for check, value in ((check_hostname, "kitchen\n"), (check_username, "owner\n"),
                         (check_timezone, "Europe/London\n")):  # fmt: skip
        with pytest.raises(InputError):
            check(value)
    assert wpa_psk("Home", "AB" * 32) == "ab" * 32  # 64 hex digits are the PSK itself
    with pytest.raises(InputError, match="got 65"):  # not a PSK with a newline in it
        wpa_psk("Home", "AB" * 32 + "\n")
    with pytest.raises(InputError, match="one word"):
        check_token("hk_dev_1\nhk_dev_2", "--token-file t")


def test_files_that_are_not_utf8_are_named(
    tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A passphrase, key or token file that is not UTF-8 (and a wheel whose name would not
    survive firstboot.sh) is a clear error naming the file: exit 2, no traceback, and
    nothing of the passphrase shown."""
    folder = make_folder(tmp_path, "bookworm")
    inputs["psk"].write_bytes(b"correct h\xf6rse battery\n")  # Latin-1, not UTF-8
    inputs["key"].write_bytes(b"ssh-ed25519 AAAA\xff owner\n")
    assert main(argv(folder, inputs)) == 2
    err = capsys.readouterr().err
    assert f"--wifi-passphrase-file {inputs['psk']}: not UTF-8 text" in err
    assert f"--ssh-key {inputs['key']}: not UTF-8 text" in err
    assert "rse battery" not in err and "\\xf6" not in err and "0xf6" not in err
    assert not (folder / "hark").exists()

    inputs["psk"].write_text(PASSPHRASE + "\n")
    inputs["key"].write_text(SSH_KEY + "\n")
    inputs["token"].write_bytes(b"hk_dev_\xff\n")
    assert main(argv(folder, inputs)) == 2
    assert f"--token-file {inputs['token']}: not UTF-8 text" in capsys.readouterr().err

    inputs["token"].write_text(TOKEN + "\n")
    wheel = tmp_path / "hark_voice-0.1.0-py3-none-any\udcff.whl"  # a Latin-1 byte in the name
    wheel.write_bytes(b"PK")
    assert main(argv(folder, inputs, "--wheel", str(wheel))) == 2
    assert "a wheel's file name has only ASCII letters" in capsys.readouterr().err
    house = tmp_path / "wheels"
    house.mkdir()
    (house / "hark_voice-0.1.0-py3-none-any.whl").write_bytes(b"PK")
    (house / "numpy-2.0-cp311-none-any (1).whl").write_bytes(b"PK")
    assert main(argv(folder, inputs, "--wheelhouse", str(house))) == 2
    assert "'numpy-2.0-cp311-none-any (1).whl': a wheel's file name" in capsys.readouterr().err
    assert not (folder / "hark").exists()


def test_a_backend_url_with_a_space_is_refused(
    tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The card never gets a config whose backend URL the device cannot use (exit 78)."""
    inputs["config"].write_text(CONFIG.replace("client_secrets", "client secrets"))
    folder = make_folder(tmp_path, "bookworm")
    assert main(argv(folder, inputs)) == 78
    assert "backend.url: must not contain a space" in capsys.readouterr().err
    assert not (folder / "hark").exists()


def test_invalid_config_is_refused(
    tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A config hark.config rejects exits 78 naming the field; the card is untouched."""
    inputs["config"].write_text('[backend]\nurl = "http://keys.example.com/x"\ncolour = 1\n')
    image = make_image(tmp_path, "bookworm")
    before = image.read_bytes()
    assert main(argv(image, inputs)) == 78
    err = capsys.readouterr().err
    assert "backend.url" in err and "backend.colour" in err
    assert image.read_bytes() == before


def test_wrong_targets_are_refused(
    tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """No FAT, no partition table, not Pi OS, and a root filesystem are each refused by name."""
    cases: list[tuple[Path, str]] = []
    nofat = tmp_path / "nofat"
    nofat.mkdir()
    cases.append((make_image(nofat, "bookworm", fat=False), "no FAT filesystem"))
    blank = tmp_path / "blank.img"
    blank.write_bytes(b"\0" * 4096)
    cases.append((blank, "no MBR partition table"))
    plain = tmp_path / "usb-stick"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    cases.append((plain, "not a Raspberry Pi OS boot partition"))
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "os-release").write_text("ID=debian\n")
    (rootfs / "boot" / "firmware").mkdir(parents=True)
    (rootfs / "boot" / "firmware" / "cmdline.txt").write_text(CMDLINE)
    cases.append((rootfs, "ROOT filesystem"))
    for target, expected in cases:
        assert main(argv(target, inputs)) == 1, target
        err = capsys.readouterr().err
        assert expected in err, err
    assert "boot/firmware" in err  # the root-fs refusal says where the boot partition is


def test_unknown_release_needs_override(
    tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Without issue.txt or cloud-init seeds the release is not guessed; --release decides."""
    folder = make_folder(tmp_path, "bookworm")
    (folder / "issue.txt").unlink()
    assert main(argv(folder, inputs)) == 1
    assert "--release" in capsys.readouterr().err
    assert main(argv(folder, inputs, "--release", "trixie")) == 0
    assert (folder / "user-data").is_file()


def test_country_list_matches_tzdata() -> None:
    """The embedded ISO 3166 list is the one tzdata ships (when this machine has it)."""
    tab = Path("/usr/share/zoneinfo/iso3166.tab")
    if not tab.exists():
        pytest.skip("no tzdata iso3166.tab")
    codes = {ln.split("\t")[0] for ln in tab.read_text().splitlines() if ln and ln[0] != "#"}
    assert codes == COUNTRIES


def test_wpa_psk_known_vector() -> None:
    """The PSK derivation matches IEEE 802.11i's test vector (wpa_passphrase output)."""
    assert wpa_psk("IEEE", "password") == (
        "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
    )


def test_bare_fat_partition_image(tmp_path: Path, inputs: dict[str, Path]) -> None:
    """A partition device or bare FAT image (no MBR, /dev/sdb1 style) is used at offset 0."""
    image = tmp_path / "sdb1.img"
    with image.open("wb") as fh:
        fh.truncate(16 * 1024 * 1024)
    run("mkfs.vfat", "-n", "bootfs", str(image))
    staging = tmp_path / "files"
    run("mmd", "-i", str(image), "::/overlays")
    for name, text in boot_files("bookworm").items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_text(text)
        run("mcopy", "-i", str(image), str(staging / name), f"::/{name}")
    assert main(argv(image, inputs)) == 0
    cmdline = run("mcopy", "-n", "-i", str(image), "::/cmdline.txt", "-").stdout.decode()
    assert "systemd.run=/boot/firmware/firstrun.sh" in cmdline


def test_wheelhouse_too_big_for_the_partition(
    tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A wheelhouse bigger than the FAT partition's free space is refused before any write."""
    house = tmp_path / "wheelhouse"
    house.mkdir()
    with (house / "hark_voice-0.1.0-py3-none-any.whl").open("wb") as fh:
        fh.truncate(20 * 1024 * 1024)  # sparse: never really copied
    image = make_image(tmp_path, "bookworm")
    before = image.read_bytes()
    assert main(argv(image, inputs, "--wheelhouse", str(house))) == 1
    assert "MiB free" in capsys.readouterr().err
    assert image.read_bytes() == before


def test_wheelhouse_is_copied_file_by_file(tmp_path: Path, inputs: dict[str, Path]) -> None:
    """Every wheel of --wheelhouse lands in hark/wheels and firstboot installs from the folder."""
    house = tmp_path / "wheelhouse"
    house.mkdir()
    for name in ("hark_voice-0.1.0-py3-none-any.whl", "numpy-2.1.0-cp311-manylinux_aarch64.whl"):
        (house / name).write_bytes(b"PK\x05\x06" + b"\0" * 18)
    image = make_image(tmp_path, "trixie")
    assert main(argv(image, inputs, "--wheelhouse", str(house))) == 0
    assert {"hark_voice-0.1.0-py3-none-any.whl", "numpy-2.1.0-cp311-manylinux_aarch64.whl"} <= (
        mlist(image, "hark/wheels")
    )
    assert "INSTALL_FROM=wheelhouse" in mread(image, "hark/firstboot.sh")


def test_reprovisioning_removes_leftovers(tmp_path: Path, inputs: dict[str, Path]) -> None:
    """Re-provisioning without Wi-Fi or with another wheel leaves no stale profile or wheel."""
    folder = make_folder(tmp_path, "bookworm")
    old = tmp_path / "hark_voice-0.0.9-py3-none-any.whl"
    old.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    assert main(argv(folder, inputs, "--wheel", str(old))) == 0
    (folder / "hark-firstboot.log").write_text("old result\n")
    args = argv(folder, inputs)
    i = args.index("--wifi-ssid")
    del args[i : i + 6]  # no Wi-Fi this time
    new = tmp_path / "hark_voice-0.1.0-py3-none-any.whl"
    new.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    assert main([*args, "--wheel", str(new)]) == 0
    assert not (folder / "hark" / "wifi.nmconnection").exists()
    assert not (folder / "hark-firstboot.log").exists()
    assert [p.name for p in (folder / "hark" / "wheels").iterdir()] == [new.name]
    assert "hark-wifi" not in (folder / "firstrun.sh").read_text()


def test_odd_ssid_survives_both_formats(tmp_path: Path) -> None:
    """An SSID with quotes, ';', '#', '\\' and non-ASCII reaches NetworkManager and netplan
    byte-exact (NM keyfile byte-list form; netplan as a JSON-quoted YAML string)."""
    from hark.provision import render
    from hark.provision.inputs import Wifi

    ssid = 'Café "5G"; #1 \\o/'
    wifi = Wifi(ssid, wpa_psk(ssid, PASSPHRASE), "FR")
    profile = configparser.ConfigParser(interpolation=None)
    profile.read_string(render.nmconnection(wifi))
    raw = profile["wifi"]["ssid"]
    assert bytes(int(b) for b in raw.rstrip(";").split(";")) == ssid.encode()
    net = yaml.safe_load(render.network_config(wifi))["network"]
    assert list(net["wifis"]["wlan0"]["access-points"]) == [ssid]


def test_minimal_firstrun_is_clean_shell(tmp_path: Path) -> None:
    """firstrun.sh without Wi-Fi, user or time zone still passes bash -n and shellcheck."""
    from hark.provision import render

    shell_ok(render.firstrun_sh("hark", None, None, None), tmp_path)


def test_wrapper_script_runs_the_module() -> None:
    """scripts/provision-sd runs python -m hark.provision (here: --help, exit 0)."""
    wrapper = Path(__file__).resolve().parents[2] / "scripts" / "provision-sd"
    done = subprocess.run([str(wrapper), "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "--wifi-ssid" in done.stdout


# --------------------------------------------------------------------------- where hark comes from


def test_default_is_this_checkouts_wheel_never_a_name_on_an_index(
    tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """With no source option the wheel of this checkout is built (in a temporary copy) and
    goes on the card: first boot installs it, never `hark-voice==…` from a public index."""
    repo = Path(__file__).resolve().parents[2]
    before = sorted(p.name for p in repo.iterdir())
    folder = make_folder(tmp_path, "bookworm")
    code = main(argv(folder, inputs, source=False))
    err = capsys.readouterr().err
    if code == 2 and "cannot build the wheel" in err:
        pytest.skip(f"no build backend reachable here: {err.strip()}")
    assert code == 0, err
    wheels = list((folder / "hark" / "wheels").iterdir())
    assert [w.name for w in wheels] == ["hark_voice-0.1.0-py3-none-any.whl"]
    import zipfile

    with zipfile.ZipFile(wheels[0]) as zf:
        names = set(zf.namelist())
    assert {"hark/_install/install-device", "hark/_install/hark.service"} <= names
    firstboot = (folder / "hark" / "firstboot.sh").read_text()
    assert "INSTALL_FROM=wheel" in firstboot
    assert "PACKAGE_SPEC=''" in firstboot
    assert "hark-voice==" not in "".join(
        p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file()
    )
    assert sorted(p.name for p in repo.iterdir()) == before  # no build/ or egg-info


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (("--index-url", "https://pypi.example/simple"), "--index-url goes with --from-index"),
        (("--from-index", "hark-voice"), "NAME==VERSION"),
        (("--from-index", "hark-voice>=0.1"), "NAME==VERSION"),
        (("--from-index", "hark-voice[sim]==0.1.0"), "NAME==VERSION"),
        (("--from-index", "hark-voice==0.1.0\n"), "NAME==VERSION"),
        (
            ("--from-index", "hark-voice==0.1.0", "--index-url", "http://pypi.example/simple"),
            "must be an https:// URL",
        ),
    ],
)
def test_index_only_by_explicit_exact_release_over_https(
    tmp_path: Path,
    inputs: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    expected: str,
) -> None:
    """An index is used only for --from-index NAME==VERSION, and only over https."""
    folder = make_folder(tmp_path, "bookworm")
    args = argv(folder, inputs, *extra, source="--from-index" not in extra)
    assert main(args) == 2
    assert expected in capsys.readouterr().err
    assert not (folder / "hark").exists()


def test_from_index_is_passed_to_first_boot(tmp_path: Path, inputs: dict[str, Path]) -> None:
    """--from-index with an https index: the first boot fetches exactly that release."""
    folder = make_folder(tmp_path, "bookworm")
    extra = ("--from-index", "hark-voice==0.1.0", "--index-url", "https://pypi.example/simple")
    assert main(argv(folder, inputs, *extra)) == 0
    firstboot = (folder / "hark" / "firstboot.sh").read_text()
    assert "INSTALL_FROM=index" in firstboot
    assert "PACKAGE_SPEC=hark-voice==0.1.0" in firstboot
    assert "INDEX_URL=https://pypi.example/simple" in firstboot
    assert not (folder / "hark" / "wheels").exists()
