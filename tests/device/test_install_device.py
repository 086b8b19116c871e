"""scripts/install-device in a throwaway root: files, modes, idempotence, uninstall.

apt is switched off (``--no-apt``); ``useradd``/``groupadd``/``usermod``/``userdel``
are stubs on PATH that edit the throwaway root's passwd/group files (as ``-R`` would);
``systemctl --root`` is the real one (an offline enable needs no running systemd).
The venv is real, built with the system Python from a wheel of this checkout.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hark.config import load

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install-device"

STUB = r"""#!/usr/bin/env bash
# Stub for {name}: records argv; with -R DIR edits DIR/etc/passwd and DIR/etc/group.
echo "{name} $*" >> "$STUB_LOG"
root=""; args=()
while [ $# -gt 0 ]; do
  case "$1" in -R) root=$2; shift 2 ;; *) args+=("$1"); shift ;; esac
done
name="${{args[-1]}}"
case "{name}" in
  groupadd) echo "$name:x:$((900 + $(wc -l < "$root/etc/group"))):" >> "$root/etc/group" ;;
  useradd)
    gid=$((900 + $(wc -l < "$root/etc/group")))
    echo "$name:x:$gid:" >> "$root/etc/group"
    echo "$name:x:$gid:$gid::/var/lib/hark:/usr/sbin/nologin" >> "$root/etc/passwd" ;;
  userdel) sed -i "/^$name:/d" "$root/etc/passwd" ;;
esac
"""


def _python() -> str:
    """An interpreter with venv+ensurepip: the system's python3 if it is >= 3.11."""
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
    pytest.skip("no system python3 >= 3.11 with venv/ensurepip")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout (pip wheel --no-deps; offline when an index mirror exists)."""
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    wheels = list(out.glob("hark_voice-*.whl"))
    if result.returncode != 0 or not wheels:
        pytest.skip(f"cannot build a wheel here: {result.stderr[-500:]}")
    return wheels[0]


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A throwaway root with passwd/group files, and an env with the stubs first on PATH."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc" / "group").write_text("root:x:0:\naudio:x:29:\n")
    (root / "etc" / "udev").mkdir()
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name in ("useradd", "groupadd", "usermod", "userdel", "apt-get"):
        path = stubs / name
        path.write_text(STUB.format(name=name))
        path.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{stubs}:{env['PATH']}"
    env["STUB_LOG"] = str(tmp_path / "stub.log")
    env["PIP_NO_INDEX"] = "1"  # prove the --wheel path needs no network
    yield root, env


def run(env: dict[str, str], *args: str | Path) -> str:
    result = subprocess.run(
        [str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_script_is_clean_bash() -> None:
    """The script parses, and shellcheck (when installed) has nothing to say."""
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck"):
        result = subprocess.run(
            ["shellcheck", str(SCRIPT)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout


def test_install_into_throwaway_root(
    wheel: Path, target: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """A wheel install leaves a runnable venv, config, state dir, user, unit and enable link."""
    root, env = target
    args = ("--root", root, "--wheel", wheel, "--no-deps", "--no-apt", "--python", _python())
    out = run(env, *args)
    assert "installed hark 0.1.0" in out

    # The console scripts name the venv where it runs (/opt/hark), not where it was built
    # (<root>/opt/hark): systemd would fail with 203/EXEC.
    venv = root / "opt" / "hark" / "venv"
    hark = venv / "bin" / "hark"
    assert hark.read_text().splitlines()[0] == "#!/opt/hark/venv/bin/python"
    assert str(root) not in "".join(
        p.read_text(errors="replace") for p in (venv / "bin").iterdir() if not p.is_symlink()
    )
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "from hark.cli import main; main(['--version'])"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert version.stdout.strip() == "hark 0.1.0"
    # Debian's python3-pyaudio/-systemd/-lgpio are seen from the venv.
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    # `hark` on PATH, GPIO chips for group gpio.
    assert os.readlink(root / "usr" / "local" / "bin" / "hark") == "/opt/hark/venv/bin/hark"
    rule = (root / "etc" / "udev" / "rules.d" / "60-hark-gpio.rules").read_text()
    assert 'KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"' in rule

    config = root / "etc" / "hark" / "hark.toml"
    assert config.read_text() == (ROOT / "examples" / "hark.toml").read_text()
    assert mode(config) == 0o640
    assert mode(root / "etc" / "hark") == 0o750
    load(config)  # the installed example is a valid config

    passwd = (root / "etc" / "passwd").read_text()
    groups = (root / "etc" / "group").read_text()
    assert "\nhark:" in passwd
    assert "\ngpio:" in groups
    log = (tmp_path / "stub.log").read_text()
    assert "--groups audio,gpio" in log
    assert "apt-get" not in log

    state = root / "var" / "lib" / "hark"
    assert mode(state) == 0o700
    if os.geteuid() == 0:
        uid = int(next(x for x in passwd.splitlines() if x.startswith("hark:")).split(":")[2])
        assert state.stat().st_uid == uid
        assert config.stat().st_uid == 0

    unit = root / "etc" / "systemd" / "system" / "hark.service"
    assert "ExecStart=/opt/hark/venv/bin/hark run --config /etc/hark/hark.toml" in (
        unit.read_text()
    )
    if shutil.which("systemctl"):
        link = root / "etc" / "systemd" / "system" / "multi-user.target.wants" / "hark.service"
        assert link.is_symlink()
        assert os.readlink(link) == "/etc/systemd/system/hark.service"
    assert (root / "opt" / "hark" / "share" / "doc" / "config.md").exists()
    assert "no device token yet" in out

    # Idempotent: a second run keeps an edited config and installs a token.
    config.write_text(config.read_text().replace('level = "info"', 'level = "debug"'))
    token = tmp_path / "token"
    token.write_text("tok_123\n")
    out = run(env, *args, "--token-file", token)
    assert "kept the existing /etc/hark/hark.toml" in out
    assert 'level = "debug"' in config.read_text()
    installed_token = root / "etc" / "hark" / "device-token"
    assert installed_token.read_text() == "tok_123\n"
    assert mode(installed_token) == 0o600
    assert (root / "etc" / "passwd").read_text().count("\nhark:") == 1
    assert "usermod" in (tmp_path / "stub.log").read_text()

    # Uninstall keeps config and state; --purge removes them and the user.
    run(env, "--root", root, "--uninstall")
    assert not (root / "opt" / "hark").exists()
    assert not unit.exists()
    assert not (root / "usr" / "local" / "bin" / "hark").is_symlink()
    assert not (root / "etc" / "udev" / "rules.d" / "60-hark-gpio.rules").exists()
    assert config.exists()
    run(env, "--root", root, "--uninstall", "--purge")
    assert not (root / "etc" / "hark").exists()
    assert not state.exists()
    assert "\nhark:" not in (root / "etc" / "passwd").read_text()


def test_wheelhouse_install_into_throwaway_root(
    wheel: Path, target: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """--wheelhouse DIR: hark-voice from that folder and nowhere else (pip's --no-index
    and --find-links are install options: they go after `install`)."""
    root, env = target
    house = tmp_path / "wheelhouse"
    house.mkdir()
    shutil.copy(wheel, house)
    args = ("--root", root, "--wheelhouse", house, "--no-deps", "--no-apt", "--no-systemctl")
    out = run(env, *args, "--python", _python())
    assert "installing hark-voice from" in out and "installed hark 0.1.0" in out
    assert (root / "opt" / "hark" / "venv" / "bin" / "hark").exists()


def test_extras_are_installed_and_remembered(
    wheel: Path, target: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """--extras wake,frontend installs those parts; an upgrade without --extras keeps
    them (the manifest remembers), and --extras "" goes back to the device alone."""
    root, env = target
    args = ("--root", root, "--wheel", wheel, "--no-deps", "--no-apt", "--no-systemctl")
    run(env, *args, "--python", _python(), "--extras", "wake,frontend")
    manifest = root / "etc" / "hark" / "installed-by-install-device"
    assert manifest.read_text().splitlines().count("extras device,wake,frontend") == 1
    run(env, *args, "--python", _python())
    assert manifest.read_text().splitlines().count("extras device,wake,frontend") == 1
    run(env, *args, "--python", _python(), "--extras", "")
    assert manifest.read_text().splitlines()[-1] == "extras device"


def test_refuses_bad_arguments(target: tuple[Path, dict[str, str]]) -> None:
    """Unknown options and missing wheels fail with a message, before touching anything."""
    root, env = target
    for args in (
        ["--bogus"],
        ["--root", str(root), "--wheel", "/nonexistent.whl"],
        ["--root", str(root), "--extras", "wake,bogus"],
    ):
        result = subprocess.run(
            [str(SCRIPT), *args], capture_output=True, text=True, env=env, check=False
        )
        assert result.returncode != 0
        assert "install-device: error:" in result.stderr
    assert not (root / "opt").exists()


# --------------------------------------------------------------------------- on "/" itself
#
# The real root's layout (R="" inside the script), every write caught: a private mount
# namespace with an overlay over each folder the script writes to, so the host is
# never touched and whatever is left behind shows up in the overlays' upper dirs.

OVERLAID = ("/etc", "/opt", "/usr/local", "/var/lib")
APT_STUBS = {
    # Nothing installed yet, as on a fresh Raspberry Pi OS Lite; every package has a
    # candidate (python3-lgpio too, as in Pi OS's archive).
    "dpkg-query": "exit 1",
    "apt-cache": 'echo "  Candidate: 1.0"',
    "apt-get": 'echo "apt-get $*" >> "$STUB_LOG"',
    "apt-mark": 'echo "apt-mark $*" >> "$STUB_LOG"',
}
# What shadow's useradd/userdel keep as backups on any Debian: not ours to remove.
SHADOW_BACKUPS = {"etc/passwd-", "etc/group-", "etc/shadow-", "etc/gshadow-", "etc/.pwd.lock"}


def _namespaces_usable() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


needs_root_namespace = pytest.mark.skipif(
    not _namespaces_usable(), reason="needs root and unshare (a private mount namespace)"
)


class RealRoot:
    """Runs install-device as on a real device (no --root), writes caught in overlays."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.log = tmp / "stub.log"
        stubs = tmp / "stubs"
        stubs.mkdir()
        for name, body in APT_STUBS.items():
            (stubs / name).write_text(f"#!/bin/bash\n{body}\n")
            (stubs / name).chmod(0o755)
        self.env = dict(os.environ)
        self.env["PATH"] = f"{stubs}:{self.env['PATH']}"
        self.env["STUB_LOG"] = str(self.log)
        self.env["PIP_NO_INDEX"] = "1"
        self.mounts = []
        for folder in OVERLAID:
            name = folder.strip("/").replace("/", "_")
            upper, work = tmp / "upper" / name, tmp / "work" / name
            upper.mkdir(parents=True)
            work.mkdir(parents=True)
            self.mounts.append(
                f"mount -t overlay overlay -o lowerdir={folder},upperdir={upper},workdir={work}"
                f" {folder}"
            )
        # No host udev or systemd to poke from inside the namespace.
        for folder in ("/run/udev", "/run/systemd"):
            self.mounts.append(f"[ ! -d {folder} ] || mount -t tmpfs tmpfs {folder}")
        # A device has udev; a container may not: give it the folder (not counted as ours).
        self.made = (
            set() if Path("/etc/udev/rules.d").is_dir() else {"etc/udev", "etc/udev/rules.d"}
        )
        self.mounts.append("mkdir -p /etc/udev/rules.d")

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        script = "set -e\n" + "\n".join(self.mounts) + '\nexec "$@"\n'
        argv = ["unshare", "-m", "--propagation", "private", "bash", "-c", script, "ns"]
        return subprocess.run(
            [*argv, str(SCRIPT), *map(str, args)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=600,
            check=False,
        )

    def written(self) -> dict[str, Path]:
        """Every path the overlays hold that differs from the host's own."""
        out: dict[str, Path] = {}
        for folder in OVERLAID:
            upper = self.tmp / "upper" / folder.strip("/").replace("/", "_")
            for path in sorted(upper.rglob("*")):
                rel = folder.strip("/") + "/" + str(path.relative_to(upper))
                host = Path("/") / rel
                if path.is_dir() and not path.is_symlink():
                    if not host.is_dir():
                        out[rel] = path
                elif path.is_symlink():
                    if not host.is_symlink() or os.readlink(host) != os.readlink(path):
                        out[rel] = path
                elif not host.is_file() or host.read_bytes() != path.read_bytes():
                    out[rel] = path
        return out


@needs_root_namespace
def test_real_root_install_uninstall_and_purge(wheel: Path, tmp_path: Path) -> None:
    """On "/" (R=""): Debian's bindings instead of compilers, `hark` on PATH, the udev rule;
    --uninstall removes hark (it used to fail on `${R:?}` after removing the unit) and
    --purge leaves nothing behind."""
    real = RealRoot(tmp_path)
    done = real.run("--wheel", wheel, "--no-deps", "--no-systemctl", "--python", _python())
    assert done.returncode == 0, done.stdout + done.stderr
    apt = [line for line in real.log.read_text().splitlines() if line.startswith("apt-get install")]
    assert len(apt) == 1
    wanted = set(apt[0].split()) - {"apt-get", "install", "-y", "-q", "--no-install-recommends"}
    assert wanted == {
        "python3",
        "python3-venv",
        "python3-pyaudio",
        "python3-systemd",
        "alsa-utils",
        "python3-lgpio",
        "espeak-ng",
        "libspeexdsp1",
    }
    written = real.written()
    assert os.readlink(written["usr/local/bin/hark"]) == "/opt/hark/venv/bin/hark"
    assert "etc/udev/rules.d/60-hark-gpio.rules" in written
    assert "opt/hark/venv/bin/hark" in written
    assert "done; check it with: sudo -u hark hark doctor" in done.stdout

    done = real.run("--uninstall")
    assert done.returncode == 0, done.stdout + done.stderr
    written = real.written()
    assert not any(p.startswith(("opt/hark", "usr/local/bin/hark")) for p in written)
    assert "etc/systemd/system/hark.service" not in written
    assert "etc/udev/rules.d/60-hark-gpio.rules" not in written
    assert "etc/hark/hark.toml" in written  # kept without --purge

    done = real.run("--purge")
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(real.written()) <= SHADOW_BACKUPS | real.made
    for name in ("passwd", "group", "shadow", "gshadow"):
        text = (Path("/") / "etc" / name).read_text() if name in ("passwd", "group") else ""
        upper = tmp_path / "upper" / "etc" / name
        if upper.exists():
            assert not [ln for ln in upper.read_text().splitlines() if ln.startswith("hark:")]
        assert "\nhark:" not in text
    marked = [ln for ln in real.log.read_text().splitlines() if ln.startswith("apt-mark")]
    assert marked and "python3-pyaudio" in marked[0]


def test_owner_doctor_is_told_to_run_as_the_service_user(tmp_path: Path) -> None:
    """/etc/hark is root:hark 0750 and the token hark's 0600: the owner's plain `hark doctor`
    cannot read them, and says the one command that can (and checks what the service can)."""
    etc = tmp_path / "etc-hark"  # as installed: a folder the owner cannot even enter
    etc.mkdir(mode=0o750)
    config = etc / "hark.toml"
    config.write_text('[backend]\nurl = "https://keys.example.com/v1/realtime/client_secrets"\n')
    config.chmod(0o640)
    code = "import sys; from hark.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        # Root reads anything: the file becomes someone else's, and the doctor runs in a
        # user namespace where this process is an ordinary user without capabilities.
        if not shutil.which("unshare"):
            pytest.skip("needs unshare to run as an ordinary user")
        os.chown(config, 65534, 65534)
        os.chown(etc, 65534, 65534)
        argv = ["unshare", "--user", "--map-user=65534", "--map-group=65534", "--", *argv]
    done = subprocess.run(
        [*argv, "doctor", "--quiet", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if "unshare:" in done.stderr:
        pytest.skip(f"no user namespaces here: {done.stderr.strip()}")
    assert done.returncode == 78, done.stdout + done.stderr
    assert "FAIL config" in done.stdout and "ermission denied" in done.stdout
    assert "fix: run it as the service user: sudo -u hark hark doctor" in done.stdout


@pytest.mark.parametrize("missing", ["starlette", "uvicorn"])
@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("from hark.cli import main; sys.exit(main(['demo']))", "hark demo: needs the simulator"),
        ("from hark_sim.__main__ import main; sys.exit(main([]))", "hark-sim: the simulator's"),
    ],
)
def test_demo_and_sim_without_the_sim_extra_say_so(entry: str, expected: str, missing: str) -> None:
    """A device install has the `hark demo` command and the `hark-sim` script but not the
    [sim] extra: one line that says so and how to get it, exit 69, no traceback."""
    hide = f"import sys; sys.modules[{missing!r}] = None; "  # as if never installed
    done = subprocess.run(
        [sys.executable, "-c", hide + entry],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 69, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), done.stderr
    assert f"'{missing}'" in lines[0] and "[sim]" in lines[0]


def test_wheel_carries_the_installer_and_the_unit(wheel: Path) -> None:
    """A first boot from a wheel alone (no checkout on the card) has the hardened unit and
    install-device: the wheel carries them, byte for byte the checkout's."""
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        for member, source in (
            ("hark/_install/install-device", "scripts/install-device"),
            ("hark/_install/hark.service", "systemd/hark.service"),
            ("hark/_install/hark.toml", "examples/hark.toml"),
            ("hark/_install/config.md", "docs/config.md"),
        ):
            assert zf.read(member) == (ROOT / source).read_bytes(), member


def test_device_wheels_is_device_less_what_debian_provides() -> None:
    """`device-wheels` (the offline wheelhouse's extra) is `device` without PyAudio and
    systemd-python, which a Pi gets from Debian: the two lists must not drift apart."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    native = {"pyaudio>=0.2.13", "systemd-python>=235"}
    assert native <= set(extras["device"])
    assert sorted(extras["device-wheels"]) == sorted(set(extras["device"]) - native)
