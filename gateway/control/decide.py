"""May the gateway commit to an LPC target? Pure: ``now`` and every estimate come in.

An acknowledged LPC is a mandatory, instantaneous power ceiling for every interval
it lists, so the gateway acknowledges only what it can hold:

- ``LocationLPC`` (:func:`decide_location`): the location meter reads, and for every
  interval ahead the load that stays on with every controllable resource switched off
  (the *base*, estimated by the caller) plus the safety margin fits under the cap.
- ``ResourceLPC`` (:func:`decide_resource`): the resource can be switched off, and off
  it draws nothing, which meets any cap >= 0.

Intervals that already ended are neither held nor checked; a target with none ahead
is declined. A dry-run gateway switches nothing, so it commits to nothing.

Every comparison that leads to an acknowledgement is written so that it must be
*true* (``need <= cap``, never ``not need > cap``): a NaN or a missing number fails
closed into a decline, never into a commitment.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.timeutil import UTC, format_utc

__all__ = ["Cap", "Decision", "ahead", "decide_location", "decide_resource"]


@dataclass(frozen=True, slots=True)
class Cap:
    """One LPC point: the interval ``[start, end)`` (epoch seconds) and its ceiling."""

    start: float
    end: float
    max_kw: float | None  # the point's maxPowerInKiloWatts (None: not given)


@dataclass(frozen=True, slots=True)
class Decision:
    """Acknowledge or decline, and why (one line, for ``ecgw plan show`` and the log)."""

    acknowledge: bool
    reason: str


DRY_RUN = "dry run: nothing is switched"
NOTHING_AHEAD = "no interval lies ahead"


def ahead(caps: Sequence[Cap], now: float) -> tuple[Cap, ...]:
    """The caps whose interval ends after ``now`` (the ones still to hold)."""
    return tuple(cap for cap in caps if cap.end > now)


def decide_location(
    caps: Sequence[Cap],
    *,
    base_kw: Sequence[float | None],
    margin_kw: float,
    meter_problem: str | None,
    controllable: int,
    dry_run: bool,
    now: float,
) -> Decision:
    """Acknowledge a ``LocationLPC`` target only if every cap ahead can be held.

    ``base_kw[i]`` is the estimated load that stays on during ``caps[i]`` with every
    controllable resource behind the location off (None: unknown); ``meter_problem``
    is why the location meter cannot be used (None: it reads); ``controllable`` is how
    many loads the gateway can switch there (named in the reason).
    """
    if len(base_kw) != len(caps):
        raise ValueError(f"{len(base_kw)} base loads for {len(caps)} caps")
    refused = _common_refusal(caps, dry_run=dry_run, now=now)
    if refused is not None:
        return refused
    if meter_problem is not None:
        return Decision(False, f"the location meter cannot be used: {meter_problem}")
    if not (math.isfinite(margin_kw) and margin_kw >= 0):
        return Decision(False, f"margin {margin_kw!r} kW is not a finite number >= 0")
    tightest: tuple[float, Cap, float] | None = None
    for cap, base in zip(caps, base_kw, strict=True):
        if not cap.end > now:
            continue
        max_kw = _finite(cap.max_kw)  # checked by _common_refusal
        if base is None or not (math.isfinite(base) and base >= 0):
            shown = "unknown" if base is None else f"{base!r} kW, not a usable number"
            return Decision(False, f"{_when(cap)}: the base load is {shown}")
        headroom = max_kw - (base + margin_kw)
        if not headroom >= 0:
            return Decision(
                False,
                f"{_when(cap)}: cap {_kw(max_kw)} is below the base load {_kw(base)}"
                f" + margin {_kw(margin_kw)}",
            )
        if tightest is None or headroom < tightest[0]:
            tightest = (headroom, cap, base)
    if tightest is None:  # unreachable: _common_refusal found a cap ahead
        return Decision(False, NOTHING_AHEAD)
    headroom, cap, base = tightest
    return Decision(
        True,
        f"every interval ahead holds; tightest {_when(cap)}: cap {_kw(_finite(cap.max_kw))}"
        f" >= base load {_kw(base)} + margin {_kw(margin_kw)} ({_kw(headroom)} to spare)"
        f"; {_loads(controllable)} to switch",
    )


def decide_resource(
    caps: Sequence[Cap],
    *,
    controllable: bool,
    rated_kw: float | None,
    dry_run: bool,
    now: float,
) -> Decision:
    """Acknowledge a ``ResourceLPC`` target iff the resource can be switched off.

    Off, it draws nothing, which meets any cap >= 0. ``rated_kw`` only adds to the
    reason: when the resource fits under every cap even when on, nothing needs switching.
    """
    refused = _common_refusal(caps, dry_run=dry_run, now=now)
    if refused is not None:
        return refused
    if not controllable:
        return Decision(False, "the resource has no control: the gateway cannot switch it off")
    reason = "switched off it draws nothing, which meets any cap >= 0"
    lowest = min(_finite(cap.max_kw) for cap in ahead(caps, now))
    if rated_kw is not None and math.isfinite(rated_kw) and 0 <= rated_kw <= lowest:
        reason += f" (on at its rated {_kw(rated_kw)} it meets every cap too)"
    return Decision(True, reason)


def _common_refusal(caps: Sequence[Cap], *, dry_run: bool, now: float) -> Decision | None:
    """The reasons to decline any target: a dry run, nothing ahead, a cap without a value."""
    if dry_run:
        return Decision(False, DRY_RUN)
    for cap in caps:
        if not (math.isfinite(cap.start) and math.isfinite(cap.end) and cap.start < cap.end):
            return Decision(False, f"interval {cap.start!r}..{cap.end!r} is not a valid interval")
    upcoming = ahead(caps, now)
    if not upcoming:
        return Decision(False, NOTHING_AHEAD)
    for cap in upcoming:
        if cap.max_kw is None:
            return Decision(False, f"{_when(cap)}: no cap given (maxPowerInKiloWatts)")
        if not math.isfinite(cap.max_kw):
            return Decision(False, f"{_when(cap)}: cap {cap.max_kw!r} kW is not a finite number")
        if cap.max_kw < 0:
            return Decision(False, f"{_when(cap)}: cap {_kw(cap.max_kw)} is negative")
    return None


def _finite(value: float | None) -> float:
    """A cap value already checked to be a finite number."""
    if value is None or not math.isfinite(value):
        raise ValueError(f"expected a checked cap, got {value!r}")
    return value


def _when(cap: Cap) -> str:
    """The interval's start in UTC ISO (or the raw number if no calendar holds it)."""
    try:
        return format_utc(dt.datetime.fromtimestamp(cap.start, UTC))
    except (OverflowError, ValueError, OSError):
        return f"{cap.start!r}"


def _kw(value: float) -> str:
    return f"{value:g} kW"


def _loads(count: int) -> str:
    return "1 controllable load" if count == 1 else f"{max(count, 0)} controllable loads"
