"""The gateway's one backoff: capped exponential growth with equal jitter.

Every retry loop uses it (delivery attempts, the delivery breaker, adapter
restarts, device reconnects), so that there is one schedule to reason about:

    step(n)  = min(maximum, initial * 2**(n-1))       n = 1, 2, 3, ... failures so far
    delay(n) = step(n) / 2 + rand * step(n) / 2       rand uniform in [0, 1)

Equal jitter, not full jitter: a delay is never shorter than half its step, so a
loop that keeps failing can never spin, and many retrying peers still spread out.
:func:`backoff_delay` is pure (``rand`` comes in); :class:`Backoff` keeps the
failure count and draws ``rand`` itself, for loops that do not test the numbers.
"""

from __future__ import annotations

import math
import random

__all__ = ["Backoff", "backoff_delay", "backoff_step"]

_MAX_EXPONENT = 62  # 2**62 s is far past any cap; keeps the float finite for any attempt


def backoff_step(attempt: int, *, initial: float, maximum: float) -> float:
    """The un-jittered ceiling after ``attempt`` consecutive failures (0 when ``attempt`` < 1)."""
    if attempt < 1:
        return 0.0
    exponent = min(attempt - 1, _MAX_EXPONENT)
    return min(maximum, initial * math.ldexp(1.0, exponent))


def backoff_delay(attempt: int, *, initial: float, maximum: float, rand: float) -> float:
    """Seconds to wait after ``attempt`` consecutive failures; ``rand`` in [0, 1)."""
    step = backoff_step(attempt, initial=initial, maximum=maximum)
    return step / 2 + min(max(rand, 0.0), 1.0) * step / 2


class Backoff:
    """Consecutive failures of one loop, and how long to wait after the latest.

    ``next()`` records a failure and returns the delay; ``reset()`` after a success.
    """

    def __init__(
        self, initial: float = 0.5, maximum: float = 30.0, *, rng: random.Random | None = None
    ) -> None:
        if not (math.isfinite(initial) and math.isfinite(maximum)) or initial <= 0 or maximum <= 0:
            raise ValueError("backoff initial and maximum must be finite and positive")
        self.initial = initial
        self.maximum = maximum
        self.failures = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def next(self) -> float:
        self.failures += 1
        return backoff_delay(
            self.failures, initial=self.initial, maximum=self.maximum, rand=self._rng.random()
        )

    def reset(self) -> None:
        self.failures = 0
