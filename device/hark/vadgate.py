"""Voice-activity hysteresis and the pre-roll: when per-frame VAD verdicts become "speech".

One implementation for everything that turns webrtcvad verdicts into decisions: the
conversation core opens turns, barges in and ends turns on silence with these gates,
and the echo tests prove "our own voice never opens a gate" on the very same gates
(built from ``hark.conversation.Settings``).

It must stay pure Python (no numpy, no webrtcvad, no I/O) so the sans-I/O core can
import it without pulling in the audio stack.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable
from typing import Literal

log = logging.getLogger(__name__)

GateChange = Literal["opened", "closed"]


class VadGate:
    """Start/stop hysteresis over per-frame VAD verdicts.

    Opens when ``open_voiced`` of the last ``open_window`` frames were voiced (one cough
    or click does not open a turn); closes after ``close_silence_ms`` without a voiced
    frame (a pause between words does not end it).
    """

    def __init__(
        self,
        frame_ms: int = 20,
        open_voiced: int = 4,
        open_window: int = 6,
        close_silence_ms: int = 700,
    ) -> None:
        if not 1 <= open_voiced <= open_window:
            raise ValueError("need 1 <= open_voiced <= open_window")
        self.frame_ms = frame_ms
        self.open_voiced = open_voiced
        self.open_window = open_window
        self.close_silence_ms = close_silence_ms
        self._recent: deque[bool] = deque(maxlen=open_window)
        self._voiced_in_window = 0
        self._silence_ms = 0
        self.is_open = False

    @classmethod
    def from_ms(
        cls, voiced_ms: int, window_ms: int, close_silence_ms: int, frame_ms: int = 20
    ) -> VadGate:
        """A gate from durations: ``voiced_ms`` of voice within ``window_ms`` opens it."""
        voiced = max(1, math.ceil(voiced_ms / frame_ms))
        window = max(voiced, math.ceil(window_ms / frame_ms))
        return cls(frame_ms, voiced, window, close_silence_ms)

    def update(self, voiced: bool) -> GateChange | None:
        """Feed one frame's verdict; return the transition it caused, if any."""
        if len(self._recent) == self._recent.maxlen and self._recent[0]:
            self._voiced_in_window -= 1
        self._recent.append(voiced)
        self._voiced_in_window += voiced
        if not self.is_open:
            if self._voiced_in_window >= self.open_voiced:
                self.is_open = True
                self._silence_ms = 0
                return "opened"
            return None
        self._silence_ms = 0 if voiced else self._silence_ms + self.frame_ms
        if self._silence_ms >= self.close_silence_ms:
            self.is_open = False
            self._recent.clear()
            self._voiced_in_window = 0
            return "closed"
        return None

    def feed(self, verdicts: Iterable[bool]) -> list[GateChange]:
        """``update`` over many frames; the transitions in order."""
        return [c for v in verdicts if (c := self.update(v)) is not None]

    def reset(self) -> None:
        self._recent.clear()
        self._voiced_in_window = 0
        self._silence_ms = 0
        self.is_open = False


class PreRoll:
    """The last ``duration_ms`` of frames, so a turn opened by VAD keeps its first syllable.

    webrtcvad and the ``VadGate`` hysteresis need a few frames before they say "speech";
    those frames are already in here when the gate opens.  Frames count ``frame_ms``
    each unless ``push`` is told their real length; at least one frame is always kept.
    """

    def __init__(self, duration_ms: int, frame_ms: int = 20) -> None:
        self.duration_ms = duration_ms
        self.frame_ms = frame_ms
        self._frames: deque[tuple[bytes, float]] = deque()
        self.held_ms = 0.0

    def push(self, frame: bytes, ms: float | None = None) -> None:
        length_ms = self.frame_ms if ms is None else ms
        self._frames.append((frame, length_ms))
        self.held_ms += length_ms
        while len(self._frames) > 1 and self.held_ms > self.duration_ms + 1e-9:
            self.held_ms -= self._frames.popleft()[1]

    def take(self) -> list[bytes]:
        """Everything held, oldest first; the buffer is empty afterwards."""
        frames = [f for f, _ in self._frames]
        self.clear()
        return frames

    def clear(self) -> None:
        self._frames.clear()
        self.held_ms = 0.0

    def __len__(self) -> int:
        return len(self._frames)
