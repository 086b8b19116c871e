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

    hark = root / "opt" / "hark" / "venv" / "bin" / "hark"
    version = subprocess.run([str(hark), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == "hark 0.1.0"

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
    assert config.exists()
    run(env, "--root", root, "--uninstall", "--purge")
    assert not (root / "etc" / "hark").exists()
    assert not state.exists()
    assert "\nhark:" not in (root / "etc" / "passwd").read_text()


def test_refuses_bad_arguments(target: tuple[Path, dict[str, str]]) -> None:
    """Unknown options and missing wheels fail with a message, before touching anything."""
    root, env = target
    for args in (["--bogus"], ["--root", str(root), "--wheel", "/nonexistent.whl"]):
        result = subprocess.run(
            [str(SCRIPT), *args], capture_output=True, text=True, env=env, check=False
        )
        assert result.returncode != 0
        assert "install-device: error:" in result.stderr
    assert not (root / "opt").exists()
