"""Event -> report plan: which reports an event asks for, over which targets and intervals, when.

Pure: no I/O, no clock (``now`` is an argument), no logging. The caller logs the notes.

=================  ===============================================  ==============================
event              reports                                          due
=================  ===============================================  ==============================
PriceCurve         ``EnergyUsage`` for the configured targets       last interval end + grace
LocationLPC        ``LocationLPCAcknowledgement`` (every target)    now (none: arrived too late)
                   ``LocationEnergyUsage`` for the acknowledged     last interval end + grace
ResourceLPC        ``ResourceLPCAcknowledgement`` (every target)    now (none: arrived too late)
                   ``EnergyUsage`` for the acknowledged             last interval end + grace
UserEligibility    none: informational
LPCReservation     none: no report is documented
unknown type       none: ignored
=================  ===============================================  ==============================

A target is *configured* when the config names it exactly: a resource by ``resource_id`` at the
event's ``location_id`` (and, for ResourceLPC, the event's meter point when the config names
one); a location by ``(location_id, meter_point_id)``. Anything else is left out (PriceCurve) or
declined (LPC), with a note. Nothing is guessed: a report never carries a target the operator did
not configure.

Each :class:`Target` carries its own resolution and intervals: LPC targets each have their own
points. A job holds every target of one report kind, since Spark wants one report per event and
the outbox keeps one report per ``(event_id, kind)``.

**Only what was done.** Spark pays for reactions, and the gateway can react only to an event it
has. So no report covers an interval that started before the event first reached the gateway
(``received_at``): such intervals are left out of every usage target, with a note. An event none
of whose intervals starts at or after its arrival (the first poll takes the whole history) gets
no report at all, and an LPC event then no acknowledgement either: the plan says why. Nor
does an LPC event whose acknowledgement was not queued before its window ended (the
gateway stopped between deciding and queuing, and started again after the window). A resource
whose participation is ``off`` (from the config, or the operator's override for this event) is
never reported: left out of a PriceCurve, declined in a ResourceLPC.

**Waiting for late readings.** A usage job is due at ``due_at``, but when intervals lack
readings then (an adapter restarting, a device that buffers) its report waits for them until
``wait_until``: ``due_at + reporting.max_wait``, never past the day before the month-end cut-off
of its first interval (so that what is built then still reaches Spark in time). The scheduler
retries it until every interval has data or ``wait_until`` has passed.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, TypeAlias, TypeVar, assert_never

from gateway import wire
from gateway.config import (
    DEFAULT_MAX_KW,
    Config,
    Direction,
    LocationConfig,
    Participation,
    ResourceConfig,
)
from gateway.control.targets import location_key, resource_key
from gateway.timeutil import month_end, parse_timespan

__all__ = [
    "ENERGY_USAGE",
    "LOCATION_ACK",
    "LOCATION_ENERGY_USAGE",
    "RESOURCE_ACK",
    "Interval",
    "Job",
    "Plan",
    "Target",
    "plan_event",
]

ENERGY_USAGE = "EnergyUsage"
LOCATION_ENERGY_USAGE = "LocationEnergyUsage"
LOCATION_ACK = "LocationLPCAcknowledgement"
RESOURCE_ACK = "ResourceLPCAcknowledgement"

Interval: TypeAlias = tuple[float, float]
"""``(start, end)`` in epoch seconds UTC; ``start`` is the event's point timestamp."""

Acknowledgement: TypeAlias = wire.LocationLPCAcknowledgement | wire.ResourceLPCAcknowledgement


@dataclass(frozen=True)
class Target:
    """One resource or location to report on, with where its energy comes from."""

    kind: Literal["resource", "location"]
    resource_id: str | None
    location_id: str
    meter_point_id: str | None
    adapter: str
    channel: str
    resolution: str
    """As the event wrote it, e.g. ``"01:00:00"``."""
    intervals: tuple[Interval, ...]
    """This target's intervals: sorted by start, no duplicates."""
    starts: tuple[dt.datetime, ...] = field(default=(), compare=False)
    """Each interval's start as the event gave it (its first point there; a
    :class:`~gateway.wire.SparkTime` keeps Spark's text): the report's timestamps.
    Empty when unknown; the builder then writes the start in UTC."""
    direction: Direction = "import"
    """Which energy counts, from the config (see :mod:`gateway.metering.energy`)."""
    max_kw: float = DEFAULT_MAX_KW
    """The most power this target can plausibly draw or feed, from the config."""

    @property
    def label(self) -> str:
        if self.kind == "resource":
            return f"resource {self.resource_id!r}"
        return f"location {self.location_id!r} meter point {self.meter_point_id!r}"


@dataclass(frozen=True)
class Job:
    """One report to build for an event, once ``due_at`` has passed."""

    event_id: str
    kind: str
    """The report payload type: one of the four module constants."""
    due_at: float
    resolution: str
    """As the event wrote it; LPC targets with different ones: all, ", "-joined; acks: ""."""
    intervals: tuple[Interval, ...]
    """Every target's intervals, merged: sorted, no duplicates. Empty for acknowledgements."""
    targets: tuple[Target, ...]
    """The targets to read energy for. Empty for acknowledgements."""
    acknowledgement: Acknowledgement | None = None
    """The finished acknowledgement payload, for the two acknowledgement kinds."""
    wait_until: float | None = None
    """Until when a usage report waits for intervals without readings (see the module
    docstring); ``None`` for acknowledgements, which never wait."""


@dataclass(frozen=True)
class Plan:
    jobs: tuple[Job, ...]
    notes: tuple[str, ...]
    """Human-readable, one line each; the caller logs them once."""
    no_report_reason: str | None
    """Why there are no jobs; ``None`` when there are."""


_NO_OVERRIDES: Mapping[str, Participation] = MappingProxyType({})

_DAY = 86400.0


@dataclass(frozen=True)
class _Context:
    """What a plan depends on besides the payload."""

    event_id: str
    config: Config
    now: float
    received_at: float
    overrides: Mapping[str, Participation]
    decisions: Mapping[str, tuple[str, str]] | None = None
    ack_queued: bool | None = None

    def verdict(self, key: str) -> tuple[str, str]:
        """(decision, reason) for an LPC target: what the gateway decided before planning."""
        if self.decisions is None:
            return "declined", "nothing checked that the site can hold it"
        return self.decisions.get(key, ("declined", "no decision was taken for it"))

    def participation(self, res: ResourceConfig) -> tuple[Participation, str]:
        """The resource's participation in this event, and where it comes from."""
        if res.resource_id in self.overrides:
            return self.overrides[res.resource_id], "the operator's override"
        return res.takes_part, "the config"


def plan_event(
    event_id: str,
    payload: wire.EventPayload,
    config: Config,
    *,
    now: float,
    received_at: float,
    overrides: Mapping[str, Participation] = _NO_OVERRIDES,
    decisions: Mapping[str, tuple[str, str]] | None = None,
    ack_queued: bool | None = None,
) -> Plan:
    """The reports ``payload`` asks for, given what ``config`` names.

    ``received_at``: when the event first reached the gateway (``events.received_at``);
    ``overrides``: the operator's participation per resource id for this event;
    ``decisions``: for an LPC event, per target key (:mod:`gateway.control.targets`) what
    the gateway decided before committing: ``acknowledged``, ``declined`` or
    ``left_out`` (another gateway's location: in neither list), with the reason. Without
    them every LPC target is declined: nothing was checked. ``ack_queued``: whether the
    LPC event's acknowledgement is already in the outbox (None: not known, not checked);
    one not queued by the end of the event's window is never sent, and nothing is
    reported for the event: the site did not hold the caps while it was down.
    """
    ctx = _Context(event_id, config, now, received_at, overrides, decisions, ack_queued)
    match payload:
        case wire.PriceCurve():
            return _plan_price_curve(ctx, payload)
        case wire.LocationLPC():
            return _plan_location_lpc(ctx, payload)
        case wire.ResourceLPC():
            return _plan_resource_lpc(ctx, payload)
        case wire.UserEligibility():
            return _no_report("UserEligibility is informational: Spark expects no report")
        case wire.LPCReservation():
            return _no_report("LPCReservation has no documented report: nothing to send")
        case wire.UnknownPayload():
            return _no_report(f"payload type {payload.payload_type!r} is unknown: ignored")
        case _:
            assert_never(payload)


# --- PriceCurve --------------------------------------------------------------


def _plan_price_curve(ctx: _Context, curve: wire.PriceCurve) -> Plan:
    delta = curve.price_curve_delta
    if not curve.targets:
        return _no_report("the event has no targets")
    if not delta.points:
        return _no_report("the event has no points")
    try:
        intervals = _intervals((p.timestamp for p in delta.points), delta.resolution)
        starts = _starts((p.timestamp for p in delta.points), intervals)
    except ValueError as exc:
        return _no_report(f"the event's resolution cannot be read: {exc}")
    if (late := _arrived_late(ctx.received_at, intervals)) is not None:
        return _no_report(late)
    notes = _overlap_notes("the price curve", intervals)
    intervals, starts = _after_arrival("the price curve", intervals, starts, ctx, notes)
    resources = {r.resource_id: r for r in ctx.config.resources}
    targets: dict[str, Target] = {}
    off: set[str] = set()
    for t in curve.targets:
        res, why = _match_resource(resources, t.resource_id, t.location_id, None)
        if res is None:
            notes.append(f"{why}: left out")
        elif t.resource_id in targets or t.resource_id in off:
            continue
        elif (off_why := _takes_no_part(ctx, res)) is not None:
            off.add(t.resource_id)
            notes.append(f"{off_why}: left out")
        else:
            targets[t.resource_id] = _resource_target(
                res, t.location_id, res.meter_point_id, delta.resolution, intervals, starts
            )
    if not targets:
        return Plan((), tuple(notes), _nothing_to_report(len(curve.targets), len(off)))
    job = _usage_job(ctx, ENERGY_USAGE, tuple(targets.values()))
    return Plan((job,), tuple(notes), None)


# --- LocationLPC -------------------------------------------------------------


def _plan_location_lpc(ctx: _Context, lpc: wire.LocationLPC) -> Plan:
    if not lpc.targets:
        return _no_report("the event has no targets")
    if not any(t.points for t in lpc.targets):
        return _no_report("the event has no points")
    if (late := _arrived_late(ctx.received_at, _lpc_window(lpc.targets))) is not None:
        return _no_report(late)
    if (over := _window_over_unacknowledged(ctx, _lpc_window(lpc.targets))) is not None:
        return _no_report(over)
    locations: dict[tuple[str, str], LocationConfig] = {}
    for entry in ctx.config.locations:
        locations.setdefault((entry.location_id, entry.meter_point_id), entry)
    meters: dict[str, list[str]] = {}
    for entry in ctx.config.locations:
        meters.setdefault(entry.location_id, []).append(entry.meter_point_id)
    notes: list[str] = []
    acked: list[wire.LPCLocation] = []
    declined: list[wire.LPCLocation] = []
    usage: list[Target] = []
    groups = _group(lpc.targets, lambda t: (t.location_id, t.meter_point_id))
    for (location_id, meter_point_id), group in groups.items():
        item = wire.LPCLocation(location_id=location_id, meter_point_id=meter_point_id)
        name = f"target location {location_id!r} meter point {meter_point_id!r}"
        decision, reason = ctx.verdict(location_key(location_id, meter_point_id))
        if decision != "acknowledged":
            notes.append(f"{name}: {decision.replace('_', ' ')}: {reason}")
            if decision != "left_out":
                declined.append(item)
            continue
        loc = locations.get((location_id, meter_point_id))
        if loc is None:
            why = "is not configured"
            if location_id in meters:
                why = f"is not configured (the location's meter points are {meters[location_id]})"
            notes.append(f"{name} {why}: declined")
            declined.append(item)
            continue
        schedule = _schedule(name, group, ctx, notes)
        if schedule is None:
            declined.append(item)
            continue
        acked.append(item)
        resolution, intervals, starts = schedule
        if intervals:
            usage.append(_location_target(loc, resolution, intervals, starts))
    ack = wire.LocationLPCAcknowledgement(acknowledged_targets=acked, declined_targets=declined)
    return _lpc_plan(ctx, LOCATION_ACK, ack, LOCATION_ENERGY_USAGE, usage, notes)


# --- ResourceLPC -------------------------------------------------------------


def _plan_resource_lpc(ctx: _Context, lpc: wire.ResourceLPC) -> Plan:
    if not lpc.targets:
        return _no_report("the event has no targets")
    if not any(t.points for t in lpc.targets):
        return _no_report("the event has no points")
    if (late := _arrived_late(ctx.received_at, _lpc_window(lpc.targets))) is not None:
        return _no_report(late)
    if (over := _window_over_unacknowledged(ctx, _lpc_window(lpc.targets))) is not None:
        return _no_report(over)
    resources = {r.resource_id: r for r in ctx.config.resources}
    notes: list[str] = []
    acked: list[wire.LPCResource] = []
    declined: list[wire.LPCResource] = []
    usage: list[Target] = []
    groups = _group(lpc.targets, lambda t: (t.resource_id, t.location_id, t.meter_point_id))
    for (resource_id, location_id, meter_point_id), group in groups.items():
        item = wire.LPCResource(
            resource_id=resource_id, location_id=location_id, meter_point_id=meter_point_id
        )
        decision, reason = ctx.verdict(resource_key(resource_id, location_id, meter_point_id))
        if decision != "acknowledged":
            notes.append(f"target resource {resource_id!r}: {decision.replace('_', ' ')}: {reason}")
            if decision != "left_out":
                declined.append(item)
            continue
        res, why = _match_resource(resources, resource_id, location_id, meter_point_id)
        if res is not None and (off := _takes_no_part(ctx, res)) is not None:
            res, why = None, off
        if res is None:
            notes.append(f"{why}: declined")
            declined.append(item)
            continue
        schedule = _schedule(f"target resource {resource_id!r}", group, ctx, notes)
        if schedule is None:
            declined.append(item)
            continue
        acked.append(item)
        resolution, intervals, starts = schedule
        if intervals:
            usage.append(
                _resource_target(res, location_id, meter_point_id, resolution, intervals, starts)
            )
    ack = wire.ResourceLPCAcknowledgement(acknowledged_targets=acked, declined_targets=declined)
    return _lpc_plan(ctx, RESOURCE_ACK, ack, ENERGY_USAGE, usage, notes)


# --- arrival and participation -----------------------------------------------


def _iso(epoch: float) -> str:
    moment = dt.datetime.fromtimestamp(epoch, dt.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _arrived_late(received_at: float, window: Sequence[Interval]) -> str | None:
    """Why nothing of the event can be reported, when none of its intervals starts at or
    after its arrival; else None."""
    if not window or any(start >= received_at for start, _ in window):
        return None
    ended = max(end for _, end in window)
    if ended <= received_at:
        return (
            f"arrived at {_iso(received_at)} after its window ended at {_iso(ended)}: "
            "nothing was reacted to"
        )
    last = max(start for start, _ in window)
    return (
        f"arrived at {_iso(received_at)} after its last interval began at {_iso(last)} "
        f"(the window ends at {_iso(ended)}): nothing was reacted to"
    )


def _window_over_unacknowledged(ctx: _Context, window: Sequence[Interval]) -> str | None:
    """Why an LPC event whose acknowledgement was not queued before its window ended gets
    none (nor any report), or None. It happens when the gateway stopped after deciding and
    before queuing, and started again after the window."""
    if ctx.ack_queued is not False or not window:
        return None
    ended = max(end for _, end in window)
    if ctx.now < ended:
        return None
    return (
        f"its window ended at {_iso(ended)} before its acknowledgement was queued "
        "(the gateway was not running): nothing acknowledged, nothing reported"
    )


def _after_arrival(
    name: str,
    intervals: tuple[Interval, ...],
    starts: tuple[dt.datetime, ...],
    ctx: _Context,
    notes: list[str],
) -> tuple[tuple[Interval, ...], tuple[dt.datetime, ...]]:
    """The intervals (and their written starts) that began at or after the event's arrival."""
    keep = [i for i, (start, _) in enumerate(intervals) if start >= ctx.received_at]
    if len(keep) == len(intervals):
        return intervals, starts
    notes.append(
        f"{name}: {len(intervals) - len(keep)} of {len(intervals)} intervals began before "
        f"the event arrived at {_iso(ctx.received_at)}: not reported"
    )
    return tuple(intervals[i] for i in keep), tuple(starts[i] for i in keep if i < len(starts))


def _lpc_window(targets: Iterable[_LPCTarget]) -> tuple[Interval, ...]:
    """Every interval of every target (a resolution that cannot be read: its points only)."""
    window: set[Interval] = set()
    for target in targets:
        try:
            span = parse_timespan(target.resolution)
        except ValueError:
            span = dt.timedelta(0)
        window.update(
            (p.timestamp.timestamp(), (p.timestamp + span).timestamp()) for p in target.points
        )
    return tuple(sorted(window))


def _takes_no_part(ctx: _Context, res: ResourceConfig) -> str | None:
    """Why the resource is not reported in this event, or None when it takes part."""
    participation, source = ctx.participation(res)
    if participation != "off":
        return None
    return f"target resource {res.resource_id!r} takes no part (participation 'off' from {source})"


def _nothing_to_report(count: int, off: int) -> str:
    if not off:
        return _none_configured(count)
    return f"no target takes part: {off} configured resource(s) have participation 'off'"


# --- shared ------------------------------------------------------------------


def _no_report(reason: str) -> Plan:
    return Plan(jobs=(), notes=(), no_report_reason=reason)


def _none_configured(count: int) -> str:
    if count == 1:
        return "the event's only target is not configured"
    return f"none of the event's {count} targets is configured"


def _intervals(stamps: Iterable[dt.datetime], resolution: str) -> tuple[Interval, ...]:
    """Each point's ``[timestamp, timestamp + resolution)``, sorted, duplicates dropped.

    The end is computed on the exact datetime, so an interval's end is bit-equal to the start
    of the interval that follows it.
    """
    span = parse_timespan(resolution)
    return tuple(sorted({(t.timestamp(), (t + span).timestamp()) for t in stamps}))


def _starts(
    stamps: Iterable[dt.datetime], intervals: Sequence[Interval]
) -> tuple[dt.datetime, ...]:
    """Each interval's start as the event wrote it: its first point at that instant."""
    first: dict[float, dt.datetime] = {}
    for t in stamps:
        first.setdefault(t.timestamp(), t)
    return tuple(first[start] for start, _ in intervals)


def _overlap_notes(name: str, intervals: Sequence[Interval]) -> list[str]:
    overlaps = sum(1 for a, b in itertools.pairwise(intervals) if b[0] < a[1])
    if not overlaps:
        return []
    return [
        f"{name} has {overlaps} point(s) closer together than its resolution: "
        "their intervals overlap and each is reported in full"
    ]


def _match_resource(
    resources: dict[str, ResourceConfig],
    resource_id: str,
    location_id: str,
    meter_point_id: str | None,
) -> tuple[ResourceConfig | None, str]:
    """The configured resource for an event target, or None and why not."""
    name = f"target resource {resource_id!r}"
    res = resources.get(resource_id)
    if res is None:
        return None, f"{name} at location {location_id!r} is not configured"
    if res.location_id != location_id:
        return None, (
            f"{name} is configured at location {res.location_id!r}, "
            f"not at the event's {location_id!r}"
        )
    if meter_point_id is not None and res.meter_point_id not in (None, meter_point_id):
        return None, (
            f"{name} is configured with meter point {res.meter_point_id!r}, "
            f"not the event's {meter_point_id!r}"
        )
    return res, ""


def _resource_target(
    res: ResourceConfig,
    location_id: str,
    meter_point_id: str | None,
    resolution: str,
    intervals: tuple[Interval, ...],
    starts: tuple[dt.datetime, ...],
) -> Target:
    return Target(
        kind="resource",
        resource_id=res.resource_id,
        location_id=location_id,
        meter_point_id=meter_point_id,
        adapter=res.adapter,
        channel=res.channel,
        resolution=resolution,
        intervals=intervals,
        starts=starts,
        direction=res.direction,
        max_kw=res.max_kw,
    )


def _location_target(
    loc: LocationConfig,
    resolution: str,
    intervals: tuple[Interval, ...],
    starts: tuple[dt.datetime, ...],
) -> Target:
    return Target(
        kind="location",
        resource_id=None,
        location_id=loc.location_id,
        meter_point_id=loc.meter_point_id,
        adapter=loc.adapter,
        channel=loc.channel,
        resolution=resolution,
        intervals=intervals,
        starts=starts,
        direction=loc.direction,
        max_kw=loc.max_kw,
    )


_LPCTarget: TypeAlias = wire.LocationLPCTarget | wire.ResourceLPCTarget
K = TypeVar("K")
T = TypeVar("T", wire.LocationLPCTarget, wire.ResourceLPCTarget)


def _group(targets: Iterable[T], key: Callable[[T], K]) -> dict[K, list[T]]:
    """Event targets by identity, in event order: Spark may list one target twice."""
    groups: dict[K, list[T]] = {}
    for target in targets:
        groups.setdefault(key(target), []).append(target)
    return groups


def _schedule(
    name: str, group: Sequence[_LPCTarget], ctx: _Context, notes: list[str]
) -> tuple[str, tuple[Interval, ...], tuple[dt.datetime, ...]] | None:
    """One LPC target's resolution, intervals that began at or after the event's arrival and
    their starts (its entries merged), or None: decline it."""
    resolutions = {t.resolution for t in group}
    if len(resolutions) > 1:
        notes.append(f"{name} is listed with resolutions {sorted(resolutions)}: declined")
        return None
    resolution = resolutions.pop()
    try:
        intervals = _intervals((p.timestamp for t in group for p in t.points), resolution)
        starts = _starts((p.timestamp for t in group for p in t.points), intervals)
    except ValueError as exc:
        notes.append(f"{name} has a resolution that cannot be read ({exc}): declined")
        return None
    if not intervals:
        notes.append(f"{name} has no points: acknowledged, nothing to report")
    notes.extend(_overlap_notes(name, intervals))
    intervals, starts = _after_arrival(name, intervals, starts, ctx, notes)
    return resolution, intervals, starts


def _usage_job(ctx: _Context, kind: str, targets: tuple[Target, ...]) -> Job:
    intervals = tuple(sorted({i for t in targets for i in t.intervals}))
    due_at = max(end for _, end in intervals) + ctx.config.reporting.grace
    return Job(
        event_id=ctx.event_id,
        kind=kind,
        due_at=due_at,
        resolution=", ".join(sorted({t.resolution for t in targets})),
        intervals=intervals,
        targets=targets,
        wait_until=_wait_until(due_at, intervals[0][0], ctx.config.reporting.max_wait),
    )


def _wait_until(due_at: float, first_start: float, max_wait: float) -> float:
    """``due_at + max_wait``, but not past the day before the month-end cut-off of the first
    interval, and never before ``due_at``.

    The cut-off (:func:`gateway.reports.manual.report_deadline`) is the end of the month of a
    report's latest point; the first interval's month ends first, so a report built by then
    has at least a day left for delivery whichever of its intervals end up carrying data.
    """
    cutoff = month_end(dt.datetime.fromtimestamp(first_start, dt.UTC)).timestamp() - _DAY
    return max(due_at, min(due_at + max_wait, cutoff))


def _lpc_plan(
    ctx: _Context,
    ack_kind: str,
    ack: Acknowledgement,
    usage_kind: str,
    usage: list[Target],
    notes: list[str],
) -> Plan:
    """The acknowledgement, due now, then the usage report if anything was acknowledged.
    No report at all when no target is this gateway's (both lists empty)."""
    if not ack.acknowledged_targets and not ack.declined_targets:
        return Plan((), tuple(notes), "no target is at a location of this gateway's: nothing sent")
    ack_job = Job(
        event_id=ctx.event_id,
        kind=ack_kind,
        due_at=ctx.now,
        resolution="",
        intervals=(),
        targets=(),
        acknowledgement=ack,
    )
    if not usage:
        notes.append("no target was acknowledged with points: no energy report")
        return Plan((ack_job,), tuple(notes), None)
    return Plan((ack_job, _usage_job(ctx, usage_kind, tuple(usage))), tuple(notes), None)
