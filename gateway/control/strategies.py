"""Strategy plugins: per PriceCurve event and resource, whether and how to react.

A strategy is a pure callable registered under the entry-point group
``gateway.strategies``::

    def strategy(event: StrategyEvent, resource: StrategyResource, now: float) -> Schedule

The name it is registered under is what ``participation`` selects. Built-ins (this
distribution's entry points): ``shift`` places the resource's need into the best-paid
intervals (:func:`gateway.control.shift.place`), ``report`` plans nothing (something else
steers the resource; its use is reported), ``off`` plans nothing and reports nothing.

Strategies are plugin code, so they are contained like adapters: :func:`load_strategies`
finds and imports them, each name failing alone with its reason; :func:`run_strategy`
calls one, turns anything it raises into a failed :class:`Schedule`, and rejects a
result that is not a schedule the runtime can carry out (runs sorted, not overlapping,
inside the event's slots).
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.control.shift import Run, Slot, Window, place
from gateway.errors import describe

__all__ = [
    "GROUP",
    "Schedule",
    "Strategy",
    "StrategyEvent",
    "StrategyResource",
    "check_schedule",
    "load_strategies",
    "off",
    "report",
    "run_strategy",
    "shift",
]

GROUP = "gateway.strategies"
MAX_NOTE = 300
"""A plugin's note is cut to this many characters: it is one line in ``ecgw plan show``."""


@dataclass(frozen=True, slots=True)
class StrategyEvent:
    event_id: str
    slots: tuple[Slot, ...]  # the PriceCurve's points


@dataclass(frozen=True, slots=True)
class StrategyResource:
    resource_id: str
    rated_kw: float | None
    need_kwh: float | None
    allowed: tuple[Window, ...]  # parsed windows (seconds of the UTC day); empty: any time
    participation: str


@dataclass(frozen=True, slots=True)
class Schedule:
    """When to switch the resource on (``runs``), and a one-line note on why.

    ``failed`` is set by :func:`run_strategy` when the strategy raised or its result was
    rejected; the runs are then empty and the note says what went wrong.
    """

    runs: tuple[Run, ...]
    note: str
    failed: bool = False


Strategy = Callable[[StrategyEvent, StrategyResource, float], Schedule]


# --- built-ins ----------------------------------------------------------------------------------


def shift(event: StrategyEvent, resource: StrategyResource, now: float) -> Schedule:
    """The need into the best-paid usable time of the event (see :func:`place`)."""
    need, rated = resource.need_kwh, resource.rated_kw
    if need is None or rated is None:
        return Schedule((), "shift needs rated_kw and need_kwh; nothing placed")
    runs = place(
        need_kwh=need, rated_kw=rated, slots=event.slots, allowed=resource.allowed, now=now
    )
    placed = sum(run.end - run.start for run in runs) * rated / 3600.0
    note = f"placed {placed:.3g} of {need:g} kWh in {len(runs)} run(s)"
    if not placed >= need * (1 - 1e-9):
        note += " (all the usable time left in the event)"
    return Schedule(runs, note)


def report(event: StrategyEvent, resource: StrategyResource, now: float) -> Schedule:
    """Something else steers the resource: nothing to switch, its use is reported."""
    return Schedule((), "steered by something else; reported")


def off(event: StrategyEvent, resource: StrategyResource, now: float) -> Schedule:
    """The resource does not take part: nothing to switch, nothing reported."""
    return Schedule((), "not taking part; not reported")


# --- discovery ----------------------------------------------------------------------------------


def load_strategies(group: str = GROUP) -> tuple[dict[str, Strategy], dict[str, str]]:
    """Every strategy registered in ``group``: ``(strategies, errors)`` keyed by name.

    Each name is in exactly one of the two. A name registered twice, a plugin that
    fails to import (whatever it raises, SystemExit too), or one that is not callable
    is an error naming the distribution; the other strategies load anyway.
    """
    by_name: dict[str, set[tuple[str, str | None]]] = {}
    for ep in importlib.metadata.entry_points(group=group):
        dist = ep.dist.name if ep.dist is not None else None
        by_name.setdefault(ep.name, set()).add((ep.value, dist))
    strategies: dict[str, Strategy] = {}
    errors: dict[str, str] = {}
    for name in sorted(by_name):
        found = sorted(by_name[name], key=lambda pair: (pair[0], pair[1] or ""))
        if len(found) > 1:
            sources = "; ".join(f"{dist or '?'} ({value})" for value, dist in found)
            errors[name] = f"strategy {name!r} is registered more than once: {sources}"
            continue
        value, dist = found[0]
        loaded = _load(name, value, dist, group)
        if isinstance(loaded, str):
            errors[name] = loaded
        else:
            strategies[name] = loaded
    return strategies, errors


def _load(name: str, value: str, dist: str | None, group: str) -> Strategy | str:
    """The strategy behind one entry point, or why it cannot be used."""
    what = f"strategy {name!r} from distribution {dist!r}" if dist else f"strategy {name!r}"
    try:
        obj = importlib.metadata.EntryPoint(name, value, group).load()
    except BaseException as exc:  # plugin code: SystemExit at import is its failure too
        if isinstance(exc, KeyboardInterrupt):
            raise
        return f"{what} failed to import: {describe(exc)}"
    if not callable(obj):
        return f"{what} is not callable ({value}): got {type(obj).__name__}"
    return obj  # type: ignore[no-any-return]  # a callable; run_strategy checks its result


# --- running one --------------------------------------------------------------------------------


def run_strategy(
    fn: Strategy,
    event: StrategyEvent,
    resource: StrategyResource,
    now: float,
    *,
    name: str | None = None,
) -> Schedule:
    """``fn(event, resource, now)``, contained: never raises for what the plugin does.

    An exception becomes a failed schedule with no runs and the error as its note; a
    result that :func:`check_schedule` rejects becomes a failed schedule naming why.
    ``name`` (default: the function's ``__name__``) names the strategy in those notes.
    """
    if name is None:
        found = getattr(fn, "__name__", None)
        name = found if isinstance(found, str) else "?"
    try:
        result: object = fn(event, resource, now)
    except (Exception, SystemExit) as exc:
        return Schedule((), _cut(f"strategy {name} failed: {describe(exc)}"), failed=True)
    try:
        problem = check_schedule(result, event.slots)
    except Exception as exc:  # a result whose values raise when looked at (float subclasses)
        problem = f"looking at the result raised {describe(exc)}"
    if problem is not None or not isinstance(result, Schedule):
        return Schedule((), _cut(f"strategy {name} rejected: {problem}"), failed=True)
    return Schedule(result.runs, _cut(result.note), result.failed is True)


def check_schedule(result: object, slots: Sequence[Slot]) -> str | None:
    """What makes ``result`` unusable as a schedule for an event with ``slots``, or None."""
    if not isinstance(result, Schedule):
        return f"expected a Schedule, got {type(result).__name__}"
    note: object = result.note
    runs: object = result.runs
    if not isinstance(note, str):
        return f"the note is a {type(note).__name__}, not a str"
    if not isinstance(runs, tuple):
        return f"runs is a {type(runs).__name__}, not a tuple"
    covered = _covered(slots)
    previous_end = -math.inf
    for i, run in enumerate(runs):
        if not isinstance(run, Run):
            return f"runs[{i}] is a {type(run).__name__}, not a Run"
        start, end = _number(run.start), _number(run.end)
        if start is None or end is None or not start < end:
            return f"runs[{i}] {_brief(run.start)}..{_brief(run.end)} is not an interval"
        if start < previous_end:
            return f"runs[{i}] starts before the run before it ends (unsorted or overlapping)"
        if not any(s <= start and end <= e for s, e in covered):
            return f"runs[{i}] {start:g}..{end:g} lies outside the event's intervals"
        previous_end = end
    return None


def _covered(slots: Sequence[Slot]) -> list[tuple[float, float]]:
    """The time the slots cover, as sorted, merged intervals."""
    spans = sorted((s.start, s.end) for s in slots if math.isfinite(s.start) and s.start < s.end)
    merged: list[tuple[float, float]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _number(value: object) -> float | None:
    """``value`` if it is a finite int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def _brief(value: object) -> str:
    """A plugin's value for a note: its repr, cut short (an int may have 400 digits)."""
    text = repr(value)
    return text if len(text) <= 24 else text[:23] + "…"


def _cut(note: str) -> str:
    line = " ".join(note.split())
    return line if len(line) <= MAX_NOTE else line[: MAX_NOTE - 1] + "…"
