"""hark.vadgate: the one VAD hysteresis and pre-roll, pure Python, shared by core and echo tests."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hark.vadgate import PreRoll, VadGate

V, Q = True, False


@pytest.mark.parametrize(
    ("gate_args", "verdicts", "changes"),
    [
        ((20, 3, 5, 100), [V, Q, Q, Q, Q, V, Q], []),  # blips never reach 3 of 5
        ((20, 3, 5, 100), [V, Q, V, Q, V], ["opened"]),
        ((20, 2, 3, 100), [V, V, *[Q] * 4, V, *[Q] * 5], ["opened", "closed"]),
        ((20, 2, 3, 100), [V, V, *[Q] * 5, V, V], ["opened", "closed", "opened"]),
        ((20, 1, 1, 40), [V, Q, Q], ["opened", "closed"]),
    ],
)
def test_gate_transitions(
    gate_args: tuple[int, int, int, int], verdicts: list[bool], changes: list[str]
) -> None:
    """N voiced of the last M open the gate; close_silence_ms without voice closes it."""
    assert VadGate(*gate_args).feed(verdicts) == changes


@pytest.mark.parametrize(
    ("voiced_ms", "window_ms", "frame_ms", "expected"),
    [(80, 120, 20, (4, 6)), (60, 60, 20, (3, 3)), (150, 190, 20, (8, 10)), (10, 0, 20, (1, 1))],
)
def test_from_ms_rounds_up_to_whole_frames(
    voiced_ms: int, window_ms: int, frame_ms: int, expected: tuple[int, int]
) -> None:
    """Durations become frame counts, rounded up; the window never shrinks below the voice."""
    gate = VadGate.from_ms(voiced_ms, window_ms, 700, frame_ms)
    assert (gate.open_voiced, gate.open_window) == expected


def test_reset_forgets_everything() -> None:
    """After reset the gate needs its full N voiced frames again."""
    gate = VadGate(20, 2, 3, 100)
    gate.feed([V, V])
    gate.reset()
    assert not gate.is_open and gate.feed([V]) == [] and gate.feed([V]) == ["opened"]


@pytest.mark.parametrize(
    ("duration_ms", "pushes", "kept"),
    [
        (60, [(b"a", None), (b"b", None), (b"c", None), (b"d", None)], [b"b", b"c", b"d"]),
        (50, [(b"a", None), (b"b", None), (b"c", None)], [b"b", b"c"]),
        (60, [(b"a", 40.0), (b"b", 40.0)], [b"b"]),  # 80 ms would exceed 60
        (10, [(b"a", None), (b"b", None)], [b"b"]),  # always at least one frame
    ],
)
def test_preroll_keeps_at_most_duration_ms(
    duration_ms: int, pushes: list[tuple[bytes, float | None]], kept: list[bytes]
) -> None:
    """The pre-roll holds the latest frames up to ``duration_ms`` and empties on take."""
    roll = PreRoll(duration_ms, frame_ms=20)
    for frame, ms in pushes:
        roll.push(frame, ms)
    assert roll.take() == kept
    assert len(roll) == 0 and roll.held_ms == 0


def test_vadgate_imports_without_the_audio_stack() -> None:
    """The core's dependency stays lean: importing hark.vadgate pulls no numpy or webrtcvad."""
    code = (
        "import sys, hark.vadgate, hark.conversation; "
        "print(sorted(m for m in ('numpy', 'webrtcvad', 'soxr', 'hark.audio.pcm')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
