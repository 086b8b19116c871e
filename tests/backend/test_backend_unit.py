"""systemd/hark-backend.service: verify is clean, exposure ≤ 2.0, the operational contract."""

from __future__ import annotations

from pathlib import Path

from tests.systemd_analyze import directives, exposure, needs_analyze, verify_output

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "hark-backend.service"
EXEC = "/opt/hark/venv/bin/hark-backend"


def test_unit_declares_the_contract() -> None:
    """Loopback serve, the SQLite state dir, the key as a credential, no restart on EX_CONFIG."""
    d = directives(UNIT)
    (exec_start,) = d["ExecStart"]
    assert exec_start.startswith(f"{EXEC} serve ")
    assert "--host 127.0.0.1" in exec_start
    assert not any(env.startswith("OPENAI_API_KEY") for env in d["Environment"])
    assert d["LoadCredential"] == ["openai-key:/etc/hark-backend/openai-key"]
    assert d["StateDirectory"] == ["hark-backend"]
    assert "HARK_BACKEND_DB=sqlite:////var/lib/hark-backend/devices.db" in d["Environment"]
    assert d["RestartPreventExitStatus"] == ["78"]
    assert d["User"] == ["hark-backend"]
    assert d["ProtectSystem"] == ["strict"]
    assert d["NoNewPrivileges"] == ["yes"]
    assert d["CapabilityBoundingSet"] == [""]
    assert d["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert "@system-service" in d["SystemCallFilter"]


def test_cli_accepts_the_units_arguments() -> None:
    """The ExecStart flags are ones ``hark-backend serve`` knows."""
    from hark_backend.cli import build_parser

    (exec_start,) = directives(UNIT)["ExecStart"]
    args = build_parser().parse_args(exec_start.split()[1:])
    assert (args.host, args.port) == ("127.0.0.1", 8080)


@needs_analyze
def test_verify_clean(tmp_path: Path) -> None:
    """`systemd-analyze verify` reports nothing (ExecStart pointed at a binary that exists)."""
    code, output = verify_output(UNIT, EXEC, tmp_path)
    assert code == 0, output
    assert "hark-backend.service" not in output, output


@needs_analyze
def test_security_exposure_at_most_2() -> None:
    """`systemd-analyze security --offline=true` scores the unit ≤ 2.0 (0 best, 10 worst)."""
    assert exposure(UNIT) <= 2.0
