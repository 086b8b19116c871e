"""`hark doctor`'s service line: what systemd says of the running daemon, dropouts included.

This machine does not boot with systemd, so a stand-in `systemctl` answers `show` the
way systemd 252 and 257 do (``Key=value`` lines); the QEMU guest checks the real one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hark.doctor import check_service


def fake_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str) -> Path:
    """A `systemctl` on PATH that prints ``answer``; returns the "booted" marker dir."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "systemctl"
    tool.write_text(f"#!/bin/sh\ncat <<'EOF'\n{answer}\nEOF\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    booted = tmp_path / "systemd-system"
    booted.mkdir()
    return booted


def test_running_service_shows_its_status_line_with_dropouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running daemon that drops audio: the doctor says so, from STATUS, without sudo."""
    booted = fake_systemctl(
        tmp_path,
        monkeypatch,
        "LoadState=loaded\nActiveState=active\nSubState=running\nNRestarts=2\n"
        "StatusText=idle; audio dropouts in the last 60 s: speaker 3",
    )
    [check] = check_service(booted=booted)
    assert check.ok and check.name == "service"
    assert check.detail == (
        "active (running), restarted 2 times: idle; audio dropouts in the last 60 s: speaker 3"
    )


def test_failed_service_fails_the_doctor_with_the_way_to_see_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    booted = fake_systemctl(
        tmp_path,
        monkeypatch,
        "LoadState=loaded\nActiveState=failed\nSubState=failed\nNRestarts=0\n"
        "StatusText=GPIO unavailable: talk button on GPIO 17: no GPIO pin driver here",
    )
    [check] = check_service(booted=booted)
    assert not check.ok
    assert "failed (failed): GPIO unavailable" in check.detail
    assert "journalctl -u hark.service" in check.fix


def test_no_service_no_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not installed as a service, or not booted with systemd (a chroot): no line at all."""
    booted = fake_systemctl(tmp_path, monkeypatch, "LoadState=not-found\nActiveState=inactive")
    assert check_service(booted=booted) == []
    assert check_service(booted=tmp_path / "absent") == []
