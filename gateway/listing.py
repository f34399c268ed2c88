"""What ``ecgw outbox list`` and ``ecgw events list`` take and say. Pure: ``now`` is given.

Both list the newest first (reports by when they were queued, events by when they
arrived), at most ``--limit`` rows (default :data:`DEFAULT_LIMIT`), optionally only
one ``--state`` and only those since ``--since``. ``--since`` is either a duration back
from now, written as config durations are (``7d``, ``12h``, ``30m``, ``90s``), or an
ISO-8601 time (``2026-11-01``, ``2026-11-01T08:00``, ``2026-11-01T08:00:00+01:00``;
without an offset it is UTC, as every time the CLI prints). When more rows match than
are shown, :func:`cut_note` says so, with how many match.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from gateway.store.outbox_states import RowState
from gateway.timeutil import UTC, format_utc, parse_duration

__all__ = [
    "DEFAULT_LIMIT",
    "EVENT_STATES",
    "MAX_LIMIT",
    "OUTBOX_STATES",
    "Filter",
    "cut_note",
    "parse_limit",
    "parse_since",
]

DEFAULT_LIMIT = 50
MAX_LIMIT = 2**63 - 1
"""The largest ``LIMIT`` SQLite takes (its INTEGER); a larger ``--limit`` means every row."""
OUTBOX_STATES = tuple(state.value for state in RowState)
EVENT_STATES = ("new", "planned", "done", "no_report", "invalid")
"""An event's ``plan_state``: not planned yet; planned, reports to come; every report
queued or none due; planned, no report to give; set aside (quarantined) with its reason."""


@dataclass(frozen=True, slots=True)
class Filter:
    """Which rows a listing shows: at most ``limit``, newest first."""

    limit: int = DEFAULT_LIMIT
    state: str | None = None
    since: float | None = None  # epoch seconds: rows at or after it


def parse_since(text: str, *, now: float) -> float:
    """Epoch seconds from a duration back from ``now`` or an ISO-8601 time (UTC if no
    offset). ValueError naming what was expected."""
    value = text.strip()
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(value[:-1] + "+00:00" if value[-1:] in "Zz" else value)
    except ValueError:
        raise ValueError(
            "expected a duration back from now (7d, 12h, 30m) or an ISO-8601 time "
            f"(2026-11-01 or 2026-11-01T08:00:00Z), got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_limit(text: str) -> int:
    """``--limit``: a whole number of rows, at least 1 (beyond :data:`MAX_LIMIT`: that)."""
    try:
        limit = int(text)
    except ValueError:
        raise ValueError(f"expected a whole number of rows, got {text!r}") from None
    if limit < 1:
        raise ValueError(f"must be at least 1, got {limit}")
    return min(limit, MAX_LIMIT)


def cut_note(
    shown: int, total: int, what: str, chosen: Filter, *, exact: bool = True
) -> str | None:
    """One line when the listing does not show every row that matches; else None.
    ``exact`` False: ``total`` is where counting stopped ("more than")."""
    if shown >= total:
        return None
    which = f"{chosen.state} {what}" if chosen.state else what
    since = "" if chosen.since is None else f" since {_moment(chosen.since)}"
    of = f"{total:,}" if exact else f"more than {total - 1:,}"
    return (
        f"showing the newest {shown:,} of {of} {which}{since}; use --limit or --since to see others"
    )


def _moment(seconds: float) -> str:
    try:
        return format_utc(dt.datetime.fromtimestamp(math.floor(seconds), UTC))
    except (OverflowError, OSError, ValueError):
        return f"{seconds:.0f} (epoch seconds)"
