"""Decide, before anything is acknowledged, which LPC targets the site can hold.

For each target of a ``LocationLPC`` or ``ResourceLPC`` event this gathers what
the pure rules of :mod:`gateway.control.decide` need (is the location meter
configured and reading; the base load per capped interval; is the resource
controllable) and stores the decisions once (:meth:`ControlStore.decide`): the
acknowledgement report is built from them, and the controller holds exactly the
caps acknowledged there, also after a restart.

**Whose target.** A partner runs one gateway per site and every gateway sees
every event of the partner. A target at a location this gateway does not own
(no ``[[locations]]`` or ``[[resources]]`` entry names its ``location_id``) is
*left out* of both lists, so that the gateway that owns it answers alone;
``[lpc] decline_unknown = true`` declines it instead. A target at an owned
location that the config does not name exactly (another meter point, an
unknown resource) is declined: this site answers for its location.

**Base load.** The load that stays on at a location when every controllable
resource behind it is off, per capped interval: the highest hourly mean of
(location energy - the controllable resources' energy) in the same hour of the
day over the last 7 days, in every hour the interval touches (a resolution may
be a day), and never less than the base load now (location
power - the controllable resources' power now; a resource without a fresh
power reading counts its ``rated_kw`` while it reports on). Hourly means
smooth out short peaks: that is what ``lpc.margin_kw`` is for.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence

from gateway import wire
from gateway.config import Config, ResourceConfig
from gateway.control.decide import Cap, Decision, decide_location, decide_resource
from gateway.control.sites import POWER_CHANNEL, Site, power_now, sites_of
from gateway.metering.energy import Limits
from gateway.metering.latest import LatestReadings
from gateway.plugin import ChannelKind
from gateway.store.control import (
    CapRow,
    ControlStore,
    DecisionKind,
    DecisionRow,
    location_key,
    resource_key,
)
from gateway.store.readings import ReadingsStore
from gateway.timeutil import Duration, parse_timespan

__all__ = ["Decider", "caps_of"]

HISTORY_DAYS = 7
HOUR = 3600.0
MAX_POLL = 1.0  # a location meter read less often than this cannot hold a cap


def caps_of(points: Sequence[wire.LPCDataPoint], resolution: str) -> tuple[Cap, ...]:
    """Each point's interval and cap, sorted by start (ValueError: unreadable resolution)."""
    span = parse_timespan(resolution)
    caps = {
        (p.timestamp.timestamp(), (p.timestamp + span).timestamp(), p.max_power_in_kilo_watts)
        for p in points
    }
    return tuple(
        Cap(start, end, max_kw)
        for start, end, max_kw in sorted(caps, key=lambda c: (c[0], c[1], _order(c[2])))
    )


def _order(value: float | None) -> float:
    return -math.inf if value is None or math.isnan(value) else value


class Decider:
    def __init__(
        self,
        config: Config,
        store: ControlStore,
        readings: ReadingsStore,
        latest: LatestReadings,
        *,
        states: Mapping[str, bool | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._store = store
        self._readings = readings
        self._latest = latest
        self._clock = clock
        self._sites = {
            (s.location.location_id, s.location.meter_point_id): s
            for s in sites_of(config)
            if s.location is not None
        }
        self._owned = {loc.location_id for loc in config.locations}
        self._owned |= {res.location_id for res in config.resources}
        self._resources = {res.resource_id: res for res in config.resources}
        self._on: Mapping[str, bool | None] = {} if states is None else states
        """The switch states the controller last saw (a live mapping): a resource whose
        state is unknown is not counted on to switch off."""

    async def decide(
        self, event_id: str, payload: wire.LocationLPC | wire.ResourceLPC, *, now: float
    ) -> list[DecisionRow]:
        """The event's decisions: taken now if there are none yet, else the stored ones."""
        stored = await self._store.decisions(event_id)
        if stored:
            return stored
        rows = (
            await self._locations(event_id, payload, now)
            if isinstance(payload, wire.LocationLPC)
            else self._resource_rows(event_id, payload, now)
        )
        return await self._store.decide(rows)

    # --- LocationLPC ---------------------------------------------------------------------------

    async def _locations(
        self, event_id: str, lpc: wire.LocationLPC, now: float
    ) -> list[DecisionRow]:
        groups: dict[tuple[str, str], list[wire.LocationLPCTarget]] = {}
        for target in lpc.targets:
            groups.setdefault((target.location_id, target.meter_point_id), []).append(target)
        rows = []
        for (location_id, meter_point_id), group in groups.items():
            decision, caps = await self._location(location_id, meter_point_id, group, now)
            rows.append(
                DecisionRow(
                    event_id=event_id,
                    target=location_key(location_id, meter_point_id),
                    kind="location",
                    location_id=location_id,
                    meter_point_id=meter_point_id,
                    resource_id=None,
                    decision=decision[0],
                    reason=decision[1],
                    caps=caps if decision[0] == "acknowledged" else (),
                    decided_at=now,
                )
            )
        return rows

    async def _location(
        self, location_id: str, meter_point_id: str, group: list[wire.LocationLPCTarget], now: float
    ) -> tuple[tuple[DecisionKind, str], tuple[CapRow, ...]]:
        if location_id not in self._owned:
            return self._unknown(f"location {location_id!r} is not one of this gateway's"), ()
        site = self._sites.get((location_id, meter_point_id))
        if site is None:
            return ("declined", f"meter point {meter_point_id!r} is not configured here"), ()
        caps = _group_caps(group)
        if isinstance(caps, str):
            return ("declined", caps), ()
        problem = self._meter_problem(site, now)
        if problem is None and (soon := self._too_soon(site, caps, now)) is not None:
            return ("declined", soon), ()
        base = await self._base_loads(site, caps, now) if problem is None else [None] * len(caps)
        decision = decide_location(
            caps,
            base_kw=base,
            margin_kw=self._config.lpc.margin_kw,
            meter_problem=problem,
            controllable=len(self._switchable(site)),
            dry_run=self._config.control.dry_run,
            now=now,
        )
        return _kind(decision), _held(caps, now)

    def _too_soon(self, site: Site, caps: Sequence[Cap], now: float) -> str | None:
        """A cap that starts within ``lpc.lead`` must fit the location's power *now*: loads
        cannot be switched off before it starts (an instantaneous cap allows no catching up)."""
        loc = site.location
        assert loc is not None
        lead = self._config.lpc.lead
        latest = self._latest.get(loc.adapter, loc.power_channel)
        power = None if latest is None else latest[1]
        margin = self._config.lpc.margin_kw
        for cap in caps:
            if cap.end <= now or cap.start >= now + lead or cap.max_kw is None:
                continue
            if power is None or not math.isfinite(power) or not power + margin <= cap.max_kw:
                shown = "unknown" if power is None else f"{power:g} kW"
                return (
                    f"an interval starts within {lead:g} s (lpc.lead) and the location draws "
                    f"{shown} now, above its cap {cap.max_kw:g} kW less the margin: loads "
                    "cannot be switched off in time"
                )
        return None

    def _unknown(self, why: str) -> tuple[DecisionKind, str]:
        if self._config.lpc.decline_unknown:
            return "declined", f"{why} (lpc.decline_unknown)"
        return "left_out", f"{why}: left out of both lists for the gateway that owns it"

    def _meter_problem(self, site: Site, now: float) -> str | None:
        loc = site.location
        assert loc is not None  # only metered sites are decided on
        adapter = self._config.adapters.get(loc.adapter, {})
        poll = adapter.get("poll_interval")
        channel = f"{loc.adapter}/{loc.power_channel}"
        kind = self._latest.kind(loc.adapter, loc.power_channel)
        if kind is None:
            return f"the location meter's power ({channel}) has not been read"
        if kind is not ChannelKind.POWER:
            return f"{channel} is not a power channel"
        latest = self._latest.get(loc.adapter, loc.power_channel)
        failsafe = self._config.lpc.failsafe
        if latest is None or not now - failsafe <= latest[0]:
            return f"the location meter's power ({channel}) was not read in the last {failsafe:g} s"
        if isinstance(poll, str):
            try:
                every = float(Duration.parse(poll))
            except ValueError:
                every = 0.0
            if every > MAX_POLL:
                return (
                    f"the location meter is read every {every:g} s; holding a cap needs "
                    f"a reading at least every {MAX_POLL:g} s (poll_interval)"
                )
        return None

    async def _base_loads(self, site: Site, caps: Sequence[Cap], now: float) -> list[float | None]:
        current = self._base_now(site, now)
        by_hour: dict[float, float | None] = {}
        result: list[float | None] = []
        for cap in caps:
            # An interval may span many hours (resolution up to a day): the cap must hold
            # in each, so the base load is the highest of every hour it touches.
            hour, past = cap.start - cap.start % HOUR, []
            while hour < cap.end:
                if hour not in by_hour:
                    by_hour[hour] = await self._history_base(site, hour, now)
                past.append(by_hour[hour])
                hour += HOUR
            estimates = [x for x in (current, *past) if x is not None]
            result.append(max(estimates) if estimates else None)
        return result

    def _base_now(self, site: Site, now: float) -> float | None:
        loc = site.location
        assert loc is not None  # only metered sites are decided on
        latest = self._latest.get(loc.adapter, loc.power_channel)
        if latest is None or not math.isfinite(latest[1]):
            return None
        drawn = 0.0
        counted: set[tuple[str, str | None]] = set()
        for res in self._switchable(site):
            # Two resources on one adapter share its power reading, two on one control
            # are one switch: a device's draw is taken off the location's power once.
            own = self._latest.kind(res.adapter, POWER_CHANNEL) is ChannelKind.POWER
            key = (res.adapter, None if own else res.control)
            if key in counted:
                continue
            counted.add(key)
            kw = power_now(self._latest, res, self._on.get(res.resource_id), now, self._config)
            if kw is None:
                return None
            drawn += kw
        return latest[1] - drawn

    def _switchable(self, site: Site) -> tuple[ResourceConfig, ...]:
        """The resources behind the site whose switch the controller can read now.

        The config only names a control: the adapter may not be running, may have no such
        control (a typo), or its device may never have reported. What cannot be read
        cannot be trusted to switch off, so its draw stays in the base load."""
        return tuple(r for r in site.resources if self._on.get(r.resource_id) is not None)

    async def _history_base(self, site: Site, hour: float, now: float) -> float | None:
        """The highest hourly mean base load in this hour of the day over the last week."""
        loc = site.location
        assert loc is not None  # only metered sites are decided on
        days = [hour - d * 86400.0 for d in range(1, HISTORY_DAYS + 1)]
        intervals = tuple((start, start + HOUR) for start in sorted(days) if start + HOUR <= now)
        if not intervals:
            return None
        try:
            total = await self._energies(loc.adapter, loc.channel, intervals, loc.max_kw)
            parts = await asyncio.gather(
                *(
                    self._energies(r.adapter, r.channel, intervals, r.max_kw)
                    for r in {(r.adapter, r.channel): r for r in self._switchable(site)}.values()
                )
            )
        except KeyError:  # a channel never registered: no history
            return None
        found = []
        for i in range(len(intervals)):
            values = [total[i], *(p[i] for p in parts)]
            if any(v is None for v in values):
                continue
            base_kwh = values[0] - sum(v for v in values[1:] if v is not None)  # type: ignore[operator]
            found.append(base_kwh / (HOUR / 3600.0))
        return max(found) if found else None

    async def _energies(
        self, adapter: str, channel: str, intervals: tuple[tuple[float, float], ...], max_kw: float
    ) -> list[float | None]:
        found = await self._readings.interval_energy(
            adapter,
            channel,
            intervals,
            max_gap=self._config.metering.max_gap,
            limits=Limits(max_kw, "import"),
        )
        return [None if e is None else e.kwh for e in found]

    # --- ResourceLPC ---------------------------------------------------------------------------

    def _resource_rows(self, event_id: str, lpc: wire.ResourceLPC, now: float) -> list[DecisionRow]:
        groups: dict[tuple[str, str, str | None], list[wire.ResourceLPCTarget]] = {}
        for target in lpc.targets:
            key = (target.resource_id, target.location_id, target.meter_point_id)
            groups.setdefault(key, []).append(target)
        rows = []
        for (resource_id, location_id, meter_point_id), group in groups.items():
            (decision, reason), caps = self._resource(
                resource_id, location_id, meter_point_id, group, now
            )
            rows.append(
                DecisionRow(
                    event_id=event_id,
                    target=resource_key(resource_id, location_id, meter_point_id),
                    kind="resource",
                    location_id=location_id,
                    meter_point_id=meter_point_id,
                    resource_id=resource_id,
                    decision=decision,
                    reason=reason,
                    caps=caps if decision == "acknowledged" else (),
                    decided_at=now,
                )
            )
        return rows

    def _resource(
        self,
        resource_id: str,
        location_id: str,
        meter_point_id: str | None,
        group: list[wire.ResourceLPCTarget],
        now: float,
    ) -> tuple[tuple[DecisionKind, str], tuple[CapRow, ...]]:
        res = self._resources.get(resource_id)
        if res is None or res.location_id != location_id:
            if location_id not in self._owned:
                return self._unknown(f"location {location_id!r} is not one of this gateway's"), ()
            return (
                "declined",
                f"resource {resource_id!r} is not configured at {location_id!r}",
            ), ()
        if res.takes_part == "off":
            return ("declined", "takes no part (participation = off): never reported"), ()
        if meter_point_id is not None and res.meter_point_id not in (None, meter_point_id):
            return ("declined", f"configured with meter point {res.meter_point_id!r}"), ()
        caps = _group_caps(group)
        if isinstance(caps, str):
            return ("declined", caps), ()
        if res.control is not None and self._on.get(res.resource_id) is None:
            return (
                "declined",
                f"its switch ({res.adapter}/{res.control}) cannot be read: the adapter is"
                " not running, has no such control, or the device never reported",
            ), ()
        decision = decide_resource(
            caps,
            controllable=res.control is not None,
            rated_kw=res.rated_kw,
            dry_run=self._config.control.dry_run,
            now=now,
        )
        return _kind(decision), _held(caps, now)


def _group_caps(
    group: Sequence[wire.LocationLPCTarget | wire.ResourceLPCTarget],
) -> tuple[Cap, ...] | str:
    """The caps of one target listed (maybe several times) in an event, or why not."""
    resolutions = {t.resolution for t in group}
    if len(resolutions) != 1:
        return f"listed with resolutions {sorted(resolutions)}"
    try:
        return caps_of([p for t in group for p in t.points], resolutions.pop())
    except ValueError as exc:
        return f"its resolution cannot be read: {exc}"


def _kind(decision: Decision) -> tuple[DecisionKind, str]:
    return ("acknowledged" if decision.acknowledge else "declined"), decision.reason


def _held(caps: Sequence[Cap], now: float) -> tuple[tuple[float, float, float], ...]:
    """The caps to hold: those not yet ended (an acknowledged cap always has a max_kw)."""
    return tuple(
        (c.start, c.end, float(c.max_kw)) for c in caps if c.end > now and c.max_kw is not None
    )
