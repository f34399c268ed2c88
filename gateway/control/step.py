"""One controller step for one location: which loads to switch, from what was read.

Pure: the caller reads the location meter and the loads' states, works out the limit
in force (``cap - margin`` of the interval in force or starting within the lead time)
and sends the commands; :func:`step` only decides. It is called about once a second
during a cap, and with ``limit_kw=None`` once the last interval is over.

    no cap                 -> every load the controller holds off comes back on
    cap, meter unread      -> failsafe: every load that is or may be on goes off
    cap, meter read, over  -> off, lowest priority first, then the largest, until the
                              predicted power is at or under the limit
    cap, meter read, under -> held loads back on, highest priority first, while the
       by the hysteresis      prediction plus their rated power stays under limit - hysteresis

The controller switches on only what it switched off (``held``): a load somebody else
turned off stays off. A load is never switched both off and on in one step: a step
that had to switch something off switches nothing on.

Every comparison that leaves a load on or switches one on must be *true* for it to
happen, so a NaN anywhere (power, limit, hysteresis) errs towards off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Command", "Load", "Reading", "contribution", "off_order", "step"]


@dataclass(frozen=True, slots=True)
class Load:
    """One controllable resource behind the location."""

    resource_id: str
    priority: int  # the lowest goes off first
    rated_kw: float  # what it draws when on
    on: bool | None  # switch state as last reported (None: unknown)
    measured_kw: float | None  # its own fresh power reading, if any
    held: bool  # the controller switched it off (it is ours to switch back on)


@dataclass(frozen=True, slots=True)
class Reading:
    """The location meter's latest power and how old it is (None: never read)."""

    power_kw: float | None
    age: float | None


@dataclass(frozen=True, slots=True)
class Command:
    resource_id: str
    on: bool
    reason: str


RELEASE = "cap over"


def contribution(load: Load) -> float:
    """What switching ``load`` off takes off the location's power, in kW.

    Its own reading if it has one, else its rated power unless it is known to be off.
    Never negative, never NaN: a value that cannot be trusted counts as 0, so that the
    controller goes on switching other loads off rather than count on this one.
    """
    if load.measured_kw is not None and math.isfinite(load.measured_kw):
        return max(load.measured_kw, 0.0)
    if load.on is False:
        return 0.0
    return load.rated_kw if math.isfinite(load.rated_kw) and load.rated_kw > 0 else 0.0


def off_order(loads: Sequence[Load]) -> list[Load]:
    """Lowest priority first, then the largest (measured, else rated), then resource_id."""

    def size(load: Load) -> float:
        value = load.measured_kw if load.measured_kw is not None else load.rated_kw
        return value if math.isfinite(value) else 0.0

    return sorted(loads, key=lambda load: (load.priority, -size(load), load.resource_id))


def step(
    *,
    limit_kw: float | None,
    meter: Reading,
    failsafe: float,
    loads: Sequence[Load],
    hysteresis_kw: float,
) -> tuple[Command, ...]:
    """The switch commands for this step (empty: leave everything as it is)."""
    if limit_kw is None:
        return tuple(Command(load.resource_id, True, RELEASE) for load in loads if _returns(load))
    unread = _unread(meter, failsafe)
    if unread is not None:
        reason = f"failsafe: {unread}"
        return tuple(Command(ld.resource_id, False, reason) for ld in loads if ld.on is not False)
    power = meter.power_kw
    assert power is not None  # _unread checked it
    offs = _switch_off(power, limit_kw, loads)
    if offs:
        return offs
    # A negative hysteresis would switch loads on above the limit: it counts as 0. A NaN
    # one, like an infinite one, keeps every held load off.
    hysteresis = math.inf if math.isnan(hysteresis_kw) else max(hysteresis_kw, 0.0)
    return _switch_on(power, limit_kw, hysteresis, loads)


def _returns(load: Load) -> bool:
    """A load the controller holds off and that is not known to be on."""
    return load.held and load.on is not True


def _unread(meter: Reading, failsafe: float) -> str | None:
    """Why the location's power cannot be trusted now, or None if it can."""
    if meter.power_kw is None or meter.age is None:
        return "location power never read"
    if not math.isfinite(meter.power_kw):
        return f"location power reading {meter.power_kw!r} is not a number"
    if not meter.age <= failsafe:
        return f"location power unread for {meter.age:.1f} s"
    return None


def _switch_off(power: float, limit: float, loads: Sequence[Load]) -> tuple[Command, ...]:
    """Off in :func:`off_order` until the predicted power is at or under ``limit``."""
    if power <= limit:
        return ()
    reason = f"cap: location at {power:g} kW, limit {limit:g} kW"
    predicted = power
    commands = []
    for load in off_order(loads):
        if predicted <= limit:
            break
        if load.on is False:
            continue
        commands.append(Command(load.resource_id, False, reason))
        predicted -= contribution(load)
    return tuple(commands)


def _rated(load: Load) -> float:
    """Its rated power for switching it on; an unusable value is infinite (it stays off)."""
    return load.rated_kw if math.isfinite(load.rated_kw) and load.rated_kw >= 0 else math.inf


def _switch_on(
    power: float, limit: float, hysteresis: float, loads: Sequence[Load]
) -> tuple[Command, ...]:
    """Held loads back on, highest priority first, while they fit under the hysteresis."""
    ceiling = limit - hysteresis
    predicted = power
    commands = []
    back = sorted(
        ((_rated(load), load) for load in loads if _returns(load)),
        key=lambda pair: (-pair[1].priority, pair[0], pair[1].resource_id),
    )
    for rated, load in back:
        if not predicted + rated <= ceiling:
            break
        predicted += rated
        commands.append(
            Command(
                load.resource_id, True, f"room under the limit: {predicted:g} <= {ceiling:g} kW"
            )
        )
    return tuple(commands)
