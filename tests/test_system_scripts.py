"""`make system-test`'s scripts (system/) parse and pass shellcheck: they run as root for
half an hour, so a typo should fail here in a second, not there after twenty minutes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEM = Path(__file__).resolve().parents[1] / "system"
SCRIPTS = sorted(
    p for p in SYSTEM.rglob("*") if p.is_file() and (p.suffix == ".sh" or p.name == "run")
)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(SYSTEM)))
def test_system_script_is_clean_bash(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        done = subprocess.run(
            ["shellcheck", "-x", "-S", "warning", str(script)],
            capture_output=True,
            text=True,
            check=False,
            cwd=script.parent,
        )
        assert done.returncode == 0, done.stdout


def test_the_wheelhouse_recipe_is_where_the_system_test_reads_it() -> None:
    """system/roots/prep.sh runs docs/provisioning.md's recipe between these markers."""
    doc = (SYSTEM.parent / "docs" / "provisioning.md").read_text()
    recipe = doc.split("<!-- wheelhouse-recipe -->")[1].split("<!-- /wheelhouse-recipe -->")[0]
    assert "```sh" in recipe and "[device-wheels]" in recipe
