"""A clock a test moves by hand: pass ``clock`` where an adapter or the gateway takes one."""

from __future__ import annotations

import math

__all__ = ["ManualClock"]


class ManualClock:
    """Seconds since the epoch that change only when told. ``clock()`` reads it."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = self._checked(start)

    def __call__(self) -> float:
        return self._now

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (never backwards) and return the new time."""
        if not seconds >= 0:
            raise ValueError(f"a clock only moves forward, not by {seconds!r} s")
        self._now = self._checked(self._now + seconds)
        return self._now

    def set(self, at: float) -> None:
        """Jump to ``at``, backwards too: a wall clock corrected by NTP does that."""
        self._now = self._checked(at)

    @staticmethod
    def _checked(at: float) -> float:
        if not math.isfinite(at):
            raise ValueError(f"a time must be finite, not {at!r}")
        return float(at)
