"""Job + measured energy -> the ``PostReportRequest`` and the exact bytes the outbox will send.

Pure: no I/O, no clock, no logging. The caller logs the notes and shows the table.

Rules that protect the money:

* An interval without data (``None``) is **left out** of the payload, never sent as 0: a zero
  is a claim that nothing was used. A target with no data at all gets no payload. Every
  interval left out is named in :attr:`BuildResult.gaps`: the scheduler waits for its
  readings (``reporting.max_wait``) before it builds the report for good.
* Each point's timestamp is the event's own point timestamp (``Target.starts``): written
  exactly as Spark wrote it when it is in the contract's UTC form (``T``, ``Z`` or
  ``+00:00``, up to 7 fractional digits), else written in that form: converted to UTC with
  ``T`` and ``Z``, its fractional digits kept up to the 7th (a space for ``T``, a comma, a
  lowercase ``z`` or 9 digits would break the report's ``date-time`` and lose the report);
  a start the event did not write is written in UTC.
* kWh are rounded here and only here, to 6 decimals (1 mWh). Meters resolve at best to the
  watt-hour (0.001 kWh), so 6 decimals keep every watt-hour exact with three digits of margin
  while dropping binary noise such as ``2.4000000000000004``. Spark reads the value as a double,
  so finer digits would carry nothing.
* No value leaves that could not be real: one that is NaN or infinite, beyond the target's
  ``max_kw`` times the interval's hours (plus a float margin, :meth:`Limits.allows`), or
  negative for an ``import`` target, is a bug upstream (the energy core rejects implausible
  readings before this) and is refused with :class:`~gateway.errors.ReportInvalid`, as is
  energy for the wrong interval. The scheduler quarantines such a job; it never crashes.
  A ``net`` target may report a negative value (more exported than imported): the
  contract's ``kiloWattHours`` is a plain double with no minimum.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway import wire
from gateway.errors import ReportInvalid
from gateway.metering.energy import IntervalEnergy, Limits, Quality
from gateway.reports.planner import ENERGY_USAGE, LOCATION_ENERGY_USAGE, Interval, Job, Target

__all__ = ["KWH_DECIMALS", "BuildResult", "Gap", "Row", "build_report"]

KWH_DECIMALS = 6
"""kWh are sent rounded to 1 mWh: exact to the watt-hour with margin (see the module docstring)."""

_ALIGN_TOLERANCE = 1e-3
"""Seconds an IntervalEnergy's bounds may differ from the job's interval (float noise only)."""

Row = tuple[str, float, float | None]
"""(target label, interval start in epoch seconds, kWh as sent or None when left out)."""

Gap = tuple[Target, Interval]
"""A target's interval that has no data (yet): what a waiting report waits for."""


@dataclass(frozen=True)
class BuildResult:
    request: wire.PostReportRequest | None
    """``None`` when there is nothing to report."""
    body: bytes | None
    """``wire.encode(request)``: the frozen bytes the outbox sends."""
    notes: tuple[str, ...]
    table: list[Row]
    """One row per target interval, for display."""
    gaps: tuple[Gap, ...] = ()
    """Every target interval left out for want of data, in target then interval order.
    Empty when the report is complete (and for acknowledgements)."""


def build_report(job: Job, energy: Mapping[Target, Sequence[IntervalEnergy | None]]) -> BuildResult:
    """The report for ``job``; ``energy[target][i]`` is the energy of ``target.intervals[i]``.

    Raises ReportInvalid when ``energy`` is misaligned with the job or holds an impossible value.
    """
    if job.acknowledgement is not None:
        return _finish(job.event_id, [job.acknowledgement], [], [], [])
    if job.kind not in (ENERGY_USAGE, LOCATION_ENERGY_USAGE):
        raise ReportInvalid(f"job kind {job.kind!r} without an acknowledgement cannot be built")
    payloads: list[wire.ReportPayload] = []
    notes: list[str] = []
    table: list[Row] = []
    gaps: list[Gap] = []
    stamps: dict[float, dt.datetime] = {}
    for target in job.targets:
        series = energy.get(target)
        if series is None:
            notes.append(f"{target.label}: no energy was read: payload left out")
            table.extend((target.label, start, None) for start, _ in target.intervals)
            gaps.extend((target, interval) for interval in target.intervals)
            continue
        points = _points(target, series, len(payloads), table, stamps)
        gaps.extend((target, i) for i, v in zip(target.intervals, series, strict=True) if v is None)
        missing = len(target.intervals) - len(points)
        if not points:
            notes.append(f"{target.label}: no data in any interval: payload left out")
            continue
        if missing:
            notes.append(
                f"{target.label}: {missing} of {len(target.intervals)} intervals have no data: "
                "left out, not reported as 0"
            )
        interpolated = sum(1 for v in series if v is not None and v.quality is not Quality.MEASURED)
        if interpolated:
            notes.append(
                f"{target.label}: {interpolated} of {len(points)} values have an interval edge "
                "interpolated between readings"
            )
        payloads.append(_payload(job.kind, target, points))
    return _finish(job.event_id, payloads, notes, table, gaps)


def _finish(
    event_id: str,
    payloads: list[wire.ReportPayload],
    notes: list[str],
    table: list[Row],
    gaps: list[Gap],
) -> BuildResult:
    if not payloads:
        notes.append("no target has any data: nothing to report")
        return BuildResult(None, None, tuple(notes), table, tuple(gaps))
    request = wire.PostReportRequest(event_id=event_id, payloads=payloads)
    return BuildResult(request, wire.encode(request), tuple(notes), table, tuple(gaps))


def _points(
    target: Target,
    series: Sequence[IntervalEnergy | None],
    index: int,
    table: list[Row],
    stamps: dict[float, dt.datetime],
) -> list[wire.EnergyCurvePoint]:
    """The points of the intervals with data, in interval order; one table row per interval.

    ``stamps`` caches interval starts as datetimes: targets of one job share them.
    """
    if len(series) != len(target.intervals):
        raise ReportInvalid(
            f"{target.label}: {len(series)} energy values for {len(target.intervals)} intervals"
        )
    label = target.label
    limits = Limits(target.max_kw, target.direction)
    points: list[wire.EnergyCurvePoint] = []
    written = dict(zip((s for s, _ in target.intervals), target.starts, strict=False))
    for (start, end), value in zip(target.intervals, series, strict=True):
        if value is None:
            kwh = None
        else:
            kwh = _kwh(target, limits, (start, end), value, (index, len(points)))
        table.append((label, start, kwh))
        if kwh is not None:
            stamp = written.get(start) or stamps.get(start)
            if stamp is None:
                stamp = stamps[start] = _utc(start)
            points.append(wire.EnergyCurvePoint(timestamp=stamp, kilo_watt_hours=kwh))
    return points


def _kwh(
    target: Target,
    limits: Limits,
    interval: tuple[float, float],
    value: IntervalEnergy,
    at: tuple[int, int],
) -> float:
    """The value as sent: checked, rounded to 1 mWh, never ``-0.0``.

    ``at`` is (payload, point) index, for the error's field.
    """
    start, end = interval
    index, point = at
    aligned = (
        abs(value.start - start) <= _ALIGN_TOLERANCE and abs(value.end - end) <= _ALIGN_TOLERANCE
    )
    if aligned and limits.allows(value.kwh, end - start):
        return round(value.kwh, KWH_DECIMALS) + 0.0
    where = f"payloads[{index}].points[{point}].kiloWattHours"
    if not aligned:
        raise ReportInvalid(
            f"{target.label}: energy for [{value.start}, {value.end}) "
            f"given for interval [{start}, {end})",
            field=where,
        )
    raise ReportInvalid(
        f"{target.label}: refusing {value.kwh!r} kWh for the interval at {_utc(start)}: "
        f"not possible for {target.direction} at most {target.max_kw} kW",
        field=where,
    )


def _payload(kind: str, target: Target, points: list[wire.EnergyCurvePoint]) -> wire.ReportPayload:
    if kind == LOCATION_ENERGY_USAGE:
        if target.meter_point_id is None:
            raise ReportInvalid(f"{target.label}: a LocationEnergyUsage needs a meter point")
        return wire.LocationEnergyUsage(
            location_id=target.location_id,
            meter_point_id=target.meter_point_id,
            resolution=target.resolution,
            points=points,
        )
    if target.resource_id is None:
        raise ReportInvalid(f"{target.label}: an EnergyUsage needs a resource id")
    return wire.EnergyUsage(
        resource_id=target.resource_id,
        location_id=target.location_id,
        meter_point_id=target.meter_point_id,
        resolution=target.resolution,
        points=points,
    )


def _utc(epoch: float) -> dt.datetime:
    """The event's timestamp back from epoch seconds, to the microsecond, in UTC."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC)
