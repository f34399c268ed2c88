"""The site as the controller sees it: each location meter and the controllable
resources behind it, and what a resource draws now. Pure (reads the in-memory
latest readings only)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.config import Config, LocationConfig, ResourceConfig
from gateway.metering.latest import LatestReadings
from gateway.plugin import ChannelKind

__all__ = ["POWER_CHANNEL", "Site", "power_now", "sites_of"]

POWER_CHANNEL = "power"
"""A resource's own power is read from its adapter's channel of this name, if it has one."""


@dataclass(frozen=True, slots=True)
class Site:
    location: LocationConfig | None
    """The location meter; None for controllable resources behind no configured meter
    (they can be shifted and capped one by one, never under a location cap)."""
    resources: tuple[ResourceConfig, ...]
    """The resources at this location and meter point that have a control."""


def sites_of(config: Config) -> list[Site]:
    """Every configured location meter with its controllable resources (maybe none), then
    one site per location of the controllable resources no meter covers."""
    sites = []
    covered: set[str] = set()
    for loc in config.locations:
        behind = tuple(
            res
            for res in config.resources
            if res.control is not None
            and res.location_id == loc.location_id
            and res.meter_point_id in (None, loc.meter_point_id)
            and res.resource_id not in covered
        )
        covered |= {res.resource_id for res in behind}
        sites.append(Site(loc, behind))
    rest: dict[str, list[ResourceConfig]] = {}
    for res in config.resources:
        if res.control is not None and res.resource_id not in covered:
            rest.setdefault(res.location_id, []).append(res)
    sites += [Site(None, tuple(group)) for group in rest.values()]
    return sites


def power_now(
    latest: LatestReadings, res: ResourceConfig, on: bool | None, now: float, config: Config
) -> float | None:
    """What ``res`` draws now in kW: its own fresh power reading if its adapter has one,
    else ``rated_kw`` while it reports on, 0 while off; None if that is not known."""
    if latest.kind(res.adapter, POWER_CHANNEL) is ChannelKind.POWER:
        found = latest.get(res.adapter, POWER_CHANNEL)
        if found is not None and now - found[0] <= config.lpc.failsafe and math.isfinite(found[1]):
            return max(found[1], 0.0)
    if on is None:
        return None
    return (res.rated_kw or 0.0) if on else 0.0
