"""Jittered exponential backoff: one policy for every retry loop on the device.

The link's connect attempts (``hark.net.keys.RetryPolicy``), the app's adapter restarts
(``hark.service.loop``) and the sound card's reopens (``hark.audio.soundcard``) each count their
attempts and wait ``delay_s(attempt)``.  Pure: no clock, no sleeping.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """``initial_s * factor**attempt`` capped at ``max_s``, spread by ± ``jitter``.

    ``jitter`` is a ± fraction (0: the same delays every time); ``slow_s`` is the floor
    the link uses for failures retrying cannot fix soon (revoked device, refused key,
    bad request shape) so they never hammer.
    """

    initial_s: float = 0.5
    max_s: float = 30.0
    jitter: float = 0.25
    factor: float = 2.0
    slow_s: float = 60.0

    def delay_s(self, attempt: int, rand: float | None = None) -> float:
        """The wait before retry number ``attempt`` (0-based).

        ``rand`` is uniform in [0, 1) (None: drawn here when there is jitter to apply).
        """
        base = min(self.max_s, self.initial_s * self.factor ** min(max(attempt, 0), 64))
        if not self.jitter:
            return max(0.0, base)
        if rand is None:
            rand = random.random()
        return max(0.0, base * (1.0 + self.jitter * (2.0 * rand - 1.0)))
