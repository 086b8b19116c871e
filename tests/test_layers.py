"""The import boundaries of docs/architecture.md, read from the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / "device" / "hark"

# module (dotted) -> top-level names (or hark modules, "hark.x") it must not import
FORBIDDEN: dict[str, set[str]] = {
    "hark.events": {"hark.*"},
    "hark.ports": {"asyncio", "websockets", "pyaudio", "gpiozero", "systemd", "soxr", "numpy"},
    "hark.config": {"hark.*"},
    "hark.backoff": {"asyncio", "hark.*"},
    "hark.vadgate": {"asyncio", "numpy", "hark.*"},
    "hark.durations": {"asyncio", "numpy", "hark.*"},
    "hark.audio.pcm": {"asyncio", "pyaudio"},
    # The spotter: bytes in, words out, on the capture thread; no loop, no device.
    "hark.audio.wake": {"asyncio", "pyaudio", "numpy", "soxr", "hark.conversation"},
    "hark.net.keys": {
        "hark.conversation",
        "hark.audio.soundcard",
        "hark.gpio",
        "hark.service.loop",
    },
    "hark.realtime": {"asyncio", "websockets"},
    "hark.conversation": {
        "asyncio",
        "time",
        "websockets",
        "pyaudio",
        "gpiozero",
        "systemd",
        "numpy",
        "hark.audio.pcm",
        "hark.net.link",
        "hark.audio.soundcard",
        "hark.gpio",
        "hark.service.loop",
        "hark.cli",
    },
    "hark.history": {
        "asyncio",
        "numpy",
        "hark.audio.pcm",
        "hark.net.link",
        "hark.audio.soundcard",
        "hark.gpio",
        "hark.service.loop",
    },
    "hark.net.link": {"hark.conversation", "hark.audio.soundcard", "hark.gpio"},
    "hark.net.webrtc": {"hark.conversation", "hark.audio.soundcard", "hark.gpio"},
    "hark.audio.soundcard": {"hark.conversation", "hark.net.link", "hark.gpio"},
    "hark.gpio": {"hark.conversation", "hark.net.link", "hark.audio.soundcard"},
    "hark.service.loop": {
        "websockets",
        "pyaudio",
        "gpiozero",
        "systemd",
        "soxr",
        "webrtcvad",
        "numpy",
    },
}
# The layers of docs/architecture.md: the core (sans-I/O) at the bottom, then the
# adapters (audio, net, agents, gpio), each knowing only the core, and the service on
# top wiring them together.  A package's every module obeys its line.
CORE = (
    "hark.events",
    "hark.ports",
    "hark.config",
    "hark.defaults",
    "hark.durations",
    "hark.conversation",
    "hark.realtime",
    "hark.vadgate",
    "hark.history",
    "hark.backoff",
)
ABOVE_CORE = ("hark.audio", "hark.net", "hark.agents", "hark.service", "hark.gpio", "hark.cli")
LAYERS: dict[str, set[str]] = {
    **{core: {*ABOVE_CORE, "hark.testing"} for core in CORE},
    "hark.audio": {"hark.net", "hark.agents", "hark.service", "hark.conversation", "hark.gpio"},
    "hark.net": {"hark.audio", "hark.agents", "hark.service", "hark.conversation", "hark.gpio"},
    "hark.agents": {"hark.audio", "hark.net", "hark.service", "hark.conversation"},
    "hark.gpio": {"hark.audio", "hark.net", "hark.agents", "hark.service", "hark.conversation"},
    "hark.service": {"hark.cli", "hark.demo", "hark.doctor", "hark.testing"},
}
# Exceptions to a wildcard above: what a module may import all the same.
ALLOWED: dict[str, set[str]] = {"hark.config": {"hark.defaults"}}
# Only the link and the codec speak WebSocket; nothing but the CLI (the
# composition root, for `hark demo`) may use the fakes.
ONLY_IN: dict[str, set[str]] = {
    "websockets": {"hark.net.link", "hark.realtime", "hark.net.keys"},
    # The webrtc extra: one module, imported by the wiring only when configured.
    "aiortc": {"hark.net.webrtc"},
    "aioice": {"hark.net.webrtc"},
    "av": {"hark.net.webrtc"},
    "hark.testing": {"hark.cli", "hark.testing", "hark.demo"},
}


def imports_of(path: Path) -> set[str]:
    """Every module name imported anywhere in the file (absolute form)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside a package
                base = ".".join(path.relative_to(path.parents[node.level]).parts[:-1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{alias.name}" for alias in node.names)
    return names


def matches(name: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        return name.startswith(pattern[:-1])
    return name == pattern or name.startswith(pattern + ".")


def module_path(module: str) -> Path:
    """The file of a dotted hark module name: ``hark.a.b`` is a/b.py or a/b/__init__.py."""
    base = DEVICE.parent.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def module_name(path: Path) -> str:
    parts = path.relative_to(DEVICE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def device_modules() -> list[Path]:
    return sorted(DEVICE.rglob("*.py"))


NAMED = sorted(set(FORBIDDEN) | set(ALLOWED) | {m for where in ONLY_IN.values() for m in where})


@pytest.mark.parametrize("module", NAMED)
def test_every_module_the_rules_name_exists(module: str) -> None:
    """A rule naming a module that moved or went away would pass silently: it fails here."""
    assert module_path(module).is_file(), f"{module} ({module_path(module)}) does not exist"


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_module_respects_its_forbidden_imports(module: str) -> None:
    """Each device module imports none of what the architecture table forbids it."""
    allowed = ALLOWED.get(module, set())
    bad = {
        n
        for n in imports_of(module_path(module))
        for p in FORBIDDEN[module]
        if matches(n, p) and not any(matches(n, a) for a in allowed)
    }
    assert not bad, f"{module} must not import {sorted(bad)}"


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_each_layer_imports_only_what_is_below_it(layer: str) -> None:
    """No arrow back up and none sideways between adapters: each package's modules, checked."""
    base = module_path(layer)
    paths = sorted(base.parent.rglob("*.py")) if base.name == "__init__.py" else [base]
    bad = {
        f"{module_name(p)} imports {n}"
        for p in paths
        for n in imports_of(p)
        for f in LAYERS[layer]
        if matches(n, f)
    }
    assert not bad, sorted(bad)


@pytest.mark.parametrize("target", sorted(ONLY_IN))
def test_restricted_imports_stay_in_their_modules(target: str) -> None:
    """websockets stays in the link and codec; the fakes stay out of production code."""
    offenders = [
        module_name(p)
        for p in device_modules()
        if module_name(p) not in ONLY_IN[target] and any(matches(n, target) for n in imports_of(p))
    ]
    assert not offenders, f"{target} imported by {offenders}"


@pytest.mark.parametrize("package", ["sim/hark_sim", "backend/hark_backend"])
def test_other_side_of_the_wire_never_imports_hark(package: str) -> None:
    """hark_sim and hark_backend are separate deployables: their bugs must not agree with hark's."""
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / package).rglob("*.py")
        if any(matches(n, "hark") for n in imports_of(p))
    ]
    assert not offenders, offenders
