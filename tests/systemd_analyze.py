"""Reading a unit file, `systemd-analyze verify` and `security --offline`, for both units' tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def directives(unit: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit, in order, by key."""
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def verify_output(unit: Path, exec_path: str, tmp_path: Path) -> tuple[int, str]:
    """Verify a copy whose ExecStart binary exists (verify insists on it)."""
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(exec_path, shutil.which("true") or "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, (result.stdout + result.stderr).strip()


def exposure(unit: Path) -> float:
    """The "Overall exposure level" (0 best, 10 worst) of the unit, offline."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(
        rf"Overall exposure level for {re.escape(unit.name)}: ([0-9.]+)", result.stdout
    )
    assert found, result.stdout + result.stderr
    return float(found.group(1))
