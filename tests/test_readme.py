"""The README shows the code the tests run, and the commands it promises exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_agent_example_is_the_tested_example_file() -> None:
    """The README's Python example is examples/kitchen_agent.py verbatim."""
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README has no Python example"
    assert blocks[0] == (ROOT / "examples" / "kitchen_agent.py").read_text()


def test_readme_make_targets_exist() -> None:
    """Every `make X` the README mentions is a Makefile target."""
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    mentioned = set(re.findall(r"`make ([a-z-]+)`", README)) | set(
        re.findall(r"^make ([a-z-]+)", README, flags=re.M)
    )
    assert mentioned and mentioned <= targets, mentioned - targets


def test_readme_links_resolve() -> None:
    """Relative links in the README point at files in the repository."""
    links = re.findall(r"\]\(([^)#:]+)\)", README)
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing
