"""Is the wall clock believable? Pure: the caller passes what it saw.

Reports are built from readings stamped by this clock, and each point's
interval is chosen by it. A clock that is obviously wrong (before this
release was made, or far from the API's own ``Date`` header) would put
energy in the wrong hours, so the gateway keeps collecting but builds no
report until the clock is sane again.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import time
from collections.abc import Callable

__all__ = [
    "EARLIEST_PLAUSIBLE",
    "MAX_SKEW",
    "ServerClock",
    "clock_problem",
    "parse_http_date",
]

# No correct clock reads earlier than the day this release was made.
EARLIEST_PLAUSIBLE = dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()
MAX_SKEW = 300.0  # seconds between our clock and the API's Date header


def parse_http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def clock_problem(
    now: float, *, api_date: float | None, seen_at: float | None, max_skew: float = MAX_SKEW
) -> str | None:
    """Why the clock cannot be trusted, or None.

    ``api_date`` is the API's ``Date`` header and ``seen_at`` our clock when it
    arrived (HTTP dates have one-second resolution; skews below ``max_skew``
    are ordinary).
    """
    if now < EARLIEST_PLAUSIBLE:
        when = dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="seconds")
        return f"the system clock reads {when}, before this release was made"
    if api_date is not None and seen_at is not None:
        skew = seen_at - api_date
        if abs(skew) > max_skew:
            side = "ahead of" if skew > 0 else "behind"
            return f"the system clock is {abs(skew):.0f} s {side} the API's clock"
    return None


class ServerClock:
    """The API's ``Date`` header as last seen, and our clock at that moment."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.api_date: float | None = None
        self.seen_at: float | None = None

    def observe(self, header: str | None) -> None:
        """Note the header; at most once a second (HTTP dates have whole seconds anyway)."""
        now = self._clock()
        if self.seen_at is not None and now - self.seen_at < 1.0:
            return
        try:
            api_date = parse_http_date(header)
        except (ValueError, OverflowError):  # a date no clock can hold
            api_date = None
        if api_date is not None and math.isfinite(api_date):
            self.api_date, self.seen_at = api_date, now
