"""Simulation requests from ``ecgw sandbox event`` flags. Pure: ``now`` is passed in.

Each builder returns the body of one ``POST /simulation/events/...`` request (the
``Simulate*EventRequest`` shapes of the OpenAPI document), so the same command works against
the local sandbox and against Spark's own sandbox.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from gateway.sandbox.simulation import DEFAULT_LOCATION, DEFAULT_METER_POINT, DEFAULT_RESOURCE
from gateway.sandbox.state import iso
from gateway.timeutil import format_timespan

__all__ = ["KINDS", "EventFlags", "simulation_request"]

KINDS = {
    "pricecurve": "/simulation/events/pricecurve",
    "location-lpc": "/simulation/events/lpc/locations",
    "resource-lpc": "/simulation/events/lpc/resources",
}
"""Command-line name -> the simulation endpoint under the API's base URL."""


@dataclass(frozen=True, slots=True)
class EventFlags:
    """``targets``: ``RESOURCE/LOCATION/METERPOINT`` parts as given (missing parts default)."""

    targets: tuple[str, ...]
    intervals: int
    length: dt.timedelta
    start: dt.datetime | None
    cap_kw: float
    prices: tuple[float, ...]


def _parts(target: str, names: tuple[str, ...], defaults: tuple[str, ...]) -> dict[str, str]:
    given = target.split("/")
    if len(given) > len(names) or not all(given):
        shape = "/".join(n.upper() for n in names)
        raise ValueError(f"--target: expected {shape} (trailing parts optional), got {target!r}")
    values = [*given, *defaults[len(given) :]]
    return {f"{name}Id": value for name, value in zip(names, values, strict=True)}


def _start(flags: EventFlags, now: dt.datetime) -> dt.datetime:
    """``--start``, else the next whole interval (a full hour for 1 h intervals) that is at
    least one interval (at most a minute) ahead: time for the gateway to see it first."""
    if flags.start is not None:
        return flags.start.astimezone(dt.UTC)
    step = flags.length.total_seconds()
    ahead = now.timestamp() + min(step, 60.0)
    return dt.datetime.fromtimestamp(math.ceil(ahead / step) * step, dt.UTC)


def _price(flags: EventFlags, i: int) -> float:
    if flags.prices:
        return flags.prices[i % len(flags.prices)]
    return round(0.5 + 0.4 * math.cos(2 * math.pi * (i + 0.5) / flags.intervals), 4)


def simulation_request(kind: str, flags: EventFlags, now: dt.datetime) -> dict[str, Any]:
    """The request body for ``kind`` (a key of :data:`KINDS`); ValueError naming the flag."""
    if not 1 <= flags.intervals <= 1440:
        raise ValueError(f"--intervals: expected 1 to 1440, got {flags.intervals}")
    if flags.length <= dt.timedelta(0):
        raise ValueError("--length: must be more than zero")
    if not math.isfinite(flags.cap_kw) or flags.cap_kw < 0:
        raise ValueError(f"--cap: expected kW, zero or more, got {flags.cap_kw}")
    if not all(math.isfinite(p) for p in flags.prices):
        raise ValueError(f"--prices: expected numbers, got {', '.join(map(str, flags.prices))}")
    try:
        start = _start(flags, now)
        stamps = [iso(start + i * flags.length) for i in range(flags.intervals)]
    except OverflowError:
        raise ValueError("--start/--length: the event would end after year 9999") from None
    targets = flags.targets or ("",)
    names: tuple[str, ...]
    defaults: tuple[str, ...]
    if kind == "pricecurve":
        names, defaults = ("resource", "location"), (DEFAULT_RESOURCE, DEFAULT_LOCATION)
        return {
            "targets": [
                _parts(t, names, defaults) if t else _default(names, defaults) for t in targets
            ],
            "priceCurveDelta": {
                "points": [
                    {"price": _price(flags, i), "timestamp": s} for i, s in enumerate(stamps)
                ],
                "resolution": format_timespan(flags.length),
            },
        }
    points = [{"maxPowerInKiloWatts": flags.cap_kw, "timestamp": s} for s in stamps]
    if kind == "location-lpc":
        names, defaults = ("location", "meterPoint"), (DEFAULT_LOCATION, DEFAULT_METER_POINT)
        key, item = "locations", "location"
    elif kind == "resource-lpc":
        names = ("resource", "location", "meterPoint")
        defaults = (DEFAULT_RESOURCE, DEFAULT_LOCATION, DEFAULT_METER_POINT)
        key, item = "resources", "resource"
    else:
        raise ValueError(f"expected one of {', '.join(KINDS)}, got {kind!r}")
    return {
        key: [
            {item: _parts(t, names, defaults) if t else _default(names, defaults), "points": points}
            for t in targets
        ]
    }


def _default(names: tuple[str, ...], defaults: tuple[str, ...]) -> dict[str, str]:
    return {f"{name}Id": value for name, value in zip(names, defaults, strict=True)}
