"""Place a resource's energy need into the best-paid intervals of a PriceCurve. Pure.

A switched resource is either off or on at its rated power, so its schedule is a set
of runs ``[start, end)`` that never overlap; each second on gives ``rated_kw / 3600``
kWh. :func:`place` fills the highest-priced usable time first (an unknown price counts
as 0; ties go to the earlier time), using the earliest usable part of a slot it only
partly needs, until the need is placed or no usable time is left.

Usable time is the part of a slot that lies after ``now`` and inside one of the
resource's allowed windows of the (UTC) day. Greedy is optimal here: every usable
second is worth its slot's price whatever else is chosen, so taking the best seconds
first gives the best-paid schedule of that length.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["DAY", "Run", "Slot", "place", "usable"]

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Slot:
    """A PriceCurve point's interval and price (None: not given)."""

    start: float
    end: float
    price: float | None


@dataclass(frozen=True, slots=True)
class Run:
    """The resource is switched on over ``[start, end)``."""

    start: float
    end: float


Window = tuple[float, float]  # seconds of the UTC day; end < start wraps midnight


def place(
    *,
    need_kwh: float,
    rated_kw: float,
    slots: Sequence[Slot],
    allowed: Sequence[Window],
    now: float,
) -> tuple[Run, ...]:
    """The runs that place ``need_kwh`` (or as much of it as fits), merged and sorted.

    Nothing is placed for a need or rated power that is not a finite number > 0.
    """
    if not (_positive(need_kwh) and _positive(rated_kw)):
        return ()
    remaining = need_kwh * 3600.0 / rated_kw  # seconds on
    taken: list[Run] = []
    for _, start, end in _by_value(slots, allowed, now):
        for part in _free(Run(start, end), taken):
            if not remaining > 0:
                break
            length = min(part.end - part.start, remaining)
            taken.append(Run(part.start, part.start + length))
            remaining -= length
        if not remaining > 0:
            break
    return _merged(taken)


def usable(slot: Slot, allowed: Sequence[Window], now: float) -> list[Run]:
    """The parts of ``slot`` after ``now`` and inside an allowed window, in time order."""
    start, end = max(slot.start, now), slot.end
    if not (math.isfinite(start) and math.isfinite(end) and start < end):
        return []
    if not allowed:
        return [Run(start, end)]
    parts = [
        Run(max(start, ws), min(end, we))
        for ws, we in _windows(start, end, allowed)
        if max(start, ws) < min(end, we)
    ]
    return list(_merged(parts))


def _by_value(
    slots: Sequence[Slot], allowed: Sequence[Window], now: float
) -> list[tuple[float, float, float]]:
    """Every usable part as (price, start, end), best-paid first, then the earliest."""
    parts = [
        (_price(slot), part.start, part.end)
        for slot in slots
        for part in usable(slot, allowed, now)
    ]
    return sorted(parts, key=lambda p: (-p[0], p[1], p[2]))


def _windows(start: float, end: float, allowed: Sequence[Window]) -> Iterator[Window]:
    """The allowed windows as absolute intervals, on every day that ``[start, end)`` touches."""
    first = math.floor(start / DAY) - 1  # a window wrapping midnight starts the day before
    last = math.floor(end / DAY)
    for day in range(first, last + 1):
        base = day * DAY
        for ws, we in allowed:
            if not (math.isfinite(ws) and math.isfinite(we)) or ws == we:
                continue
            yield (base + ws, base + we) if ws < we else (base + ws, base + DAY + we)


def _free(part: Run, taken: Sequence[Run]) -> list[Run]:
    """``part`` minus the time already taken (slots may overlap), in time order."""
    pieces = [part]
    for used in taken:
        cut = []
        for piece in pieces:
            if used.end <= piece.start or used.start >= piece.end:
                cut.append(piece)
                continue
            if piece.start < used.start:
                cut.append(Run(piece.start, used.start))
            if used.end < piece.end:
                cut.append(Run(used.end, piece.end))
        pieces = cut
    return sorted(pieces, key=lambda r: r.start)


def _merged(runs: Sequence[Run]) -> tuple[Run, ...]:
    """Sorted, with touching or overlapping runs joined."""
    out: list[Run] = []
    for run in sorted(runs, key=lambda r: (r.start, r.end)):
        if not run.start < run.end:
            continue
        if out and run.start <= out[-1].end:
            out[-1] = Run(out[-1].start, max(out[-1].end, run.end))
        else:
            out.append(run)
    return tuple(out)


def _price(slot: Slot) -> float:
    """A slot's price; unknown or not a finite number counts as 0."""
    price = slot.price
    return price if price is not None and math.isfinite(price) else 0.0


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0
