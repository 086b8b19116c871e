"""systemd/hark.service: `systemd-analyze verify` is clean and the exposure score is ≤ 2.0."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.systemd_analyze import directives, exposure, needs_analyze, verify_output

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "hark.service"


def test_unit_declares_the_contract() -> None:
    """Notify type, watchdog, restart policy, EX_CONFIG not restarted, the service user."""
    d = directives(UNIT)
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert d["ExecStart"] == ["/opt/hark/venv/bin/hark run --config /etc/hark/hark.toml"]
    # No /bin/kill (procps): hark reload signals, waits, and fails a refused reload.
    assert d["ExecReload"] == ["/opt/hark/venv/bin/hark reload --pid $MAINPID"]
    assert d["Restart"] == ["on-failure"]
    # A bad config (78) and GPIO that cannot open (69) do not get better by restarting.
    assert set(d["RestartPreventExitStatus"][0].split()) == {"69", "78"}
    assert int(d["WatchdogSec"][0]) > 0
    assert int(d["TimeoutStopSec"][0]) > 5  # the daemon stops within 5 s
    assert d["User"] == ["hark"]
    assert set(d["SupplementaryGroups"][0].split()) == {"audio", "gpio"}
    assert d["StateDirectory"] == ["hark"]
    # lgpio writes notification FIFOs in its working directory; the system is read-only.
    assert "LG_WD=%t/hark" in d["Environment"]
    assert d["RuntimeDirectory"] == ["hark"]
    assert "network-online.target" in d["Wants"][0]
    assert {"network-online.target", "sound.target"} <= set(d["After"][0].split())


@needs_analyze
def test_verify_clean(tmp_path: Path) -> None:
    """`systemd-analyze verify` reports nothing (ExecStart pointed at a binary that exists)."""
    code, output = verify_output(UNIT, "/opt/hark/venv/bin/hark", tmp_path)
    assert code == 0, output
    assert "hark.service" not in output, output


@needs_analyze
def test_security_exposure_at_most_2() -> None:
    """`systemd-analyze security --offline=true` scores the unit ≤ 2.0 (0 best, 10 worst)."""
    score = exposure(UNIT)
    print(f"systemd-analyze security: {score}")
    assert score <= 2.0


MDWE_PROBE = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
# PR_SET_MDWE (65), PR_MDWE_REFUSE_EXEC_GAIN (1): what MemoryDenyWriteExecute=yes enforces.
if libc.prctl(65, 1, 0, 0, 0) != 0:
    print("unsupported"); sys.exit(0)
callback = ctypes.CFUNCTYPE(None, ctypes.c_int)(lambda x: None)
callback(1)  # a libffi closure, as portaudio.quiet_alsa() makes
import numpy as np, soxr, webrtcvad, pyaudio, pydantic_core, websockets
out = soxr.resample(np.zeros(4800, dtype=np.float32), 48000, 24000)
vad = webrtcvad.Vad(2)
vad.is_speech(bytes(960), 48000)
import hark.cli, hark.config, hark.service.loop, hark.net.link, hark.audio.soundcard
import hark.gpio, hark.agents.agent
print("ok", len(out))
"""


def test_libraries_work_without_writable_executable_memory() -> None:
    """MemoryDenyWriteExecute=yes is safe: the audio stack runs under PR_SET_MDWE."""
    import sys

    result = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.stdout.strip() == "unsupported":
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok 2400"
