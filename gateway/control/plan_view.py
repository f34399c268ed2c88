"""What ``ecgw plan show`` prints: per target the decision and its reason, the
schedule, every command sent and its confirmation, and per capped interval the
cap and the highest location power measured in it (from the raw readings: after
``metering.raw_retention`` they are compacted and the peak is no longer known).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

from gateway import wire
from gateway.config import Config
from gateway.errors import WireError
from gateway.render import iso
from gateway.store.control import CommandRow, ControlStore, DecisionRow, ScheduleRow
from gateway.store.database import Database
from gateway.store.inbox import Inbox
from gateway.store.readings import ReadingsStore
from gateway.timeutil import parse_timespan

__all__ = ["event_window", "plan_record"]


def event_window(payload: wire.EventPayload) -> tuple[float, float] | None:
    """The first interval's start and the last interval's end of an event, if it has points."""
    spans: list[tuple[float, float]] = []
    try:
        if isinstance(payload, wire.PriceCurve):
            step = parse_timespan(payload.price_curve_delta.resolution)
            spans = [
                (p.timestamp.timestamp(), (p.timestamp + step).timestamp())
                for p in payload.price_curve_delta.points
            ]
        elif isinstance(payload, wire.LocationLPC | wire.ResourceLPC):
            for target in payload.targets:
                step = parse_timespan(target.resolution)
                spans += [
                    (p.timestamp.timestamp(), (p.timestamp + step).timestamp())
                    for p in target.points
                ]
    except ValueError:
        return None
    if not spans:
        return None
    return min(s for s, _ in spans), max(e for _, e in spans)


async def plan_record(db: Database, config: Config, event_id: str) -> dict[str, Any] | None:
    """The plan of one event as a JSON-ready record; None if the inbox has no such event."""
    event = await Inbox(db).get(event_id)
    if event is None:
        return None
    store = ControlStore(db)
    decisions = await store.decisions(event_id)
    schedules = await store.schedules(event_id)
    commands = await store.commands(event_id)
    overrides = await store.overrides(event_id)
    window = None
    with contextlib.suppress(WireError):
        window = event_window(wire.decode_event_payload(event.payload))
    readings = ReadingsStore(db)
    record: dict[str, Any] = {
        "event_id": event.event_id,
        "payload_type": event.payload_type,
        "received_at": iso(event.received_at),
        "window": None if window is None else {"start": iso(window[0]), "end": iso(window[1])},
        "dry_run": config.control.dry_run,
        "plan_state": event.plan_state,
        "plan_note": event.plan_note,
        "targets": [await _target(d, config, readings) for d in decisions],
        "schedules": [_schedule(s) for s in schedules],
        "overrides": overrides,
        "commands": [_command(c) for c in commands],
    }
    return record


async def _target(d: DecisionRow, config: Config, readings: ReadingsStore) -> dict[str, Any]:
    record: dict[str, Any] = {
        "kind": d.kind,
        "location_id": d.location_id,
        "meter_point_id": d.meter_point_id,
        "resource_id": d.resource_id,
        "decision": d.decision,
        "reason": d.reason,
        "decided_at": iso(d.decided_at),
        "intervals": [],
    }
    peaks: list[float | None] = [None] * len(d.caps)
    if d.kind == "location" and d.caps:
        peaks = await _peaks(d, config, readings)
    record["intervals"] = [
        {"start": iso(s), "end": iso(e), "cap_kw": cap, "highest_kw": peak}
        for (s, e, cap), peak in zip(d.caps, peaks, strict=True)
    ]
    return record


async def _peaks(d: DecisionRow, config: Config, readings: ReadingsStore) -> list[float | None]:
    loc = next(
        (
            x
            for x in config.locations
            if (x.location_id, x.meter_point_id) == (d.location_id, d.meter_point_id)
        ),
        None,
    )
    if loc is None:
        return [None] * len(d.caps)
    ref = (loc.adapter, loc.power_channel)
    try:
        info = await readings.channel(ref)
        samples = await readings.samples_for(ref, [(s, e) for s, e, _ in d.caps], max_gap=0.0)
    except KeyError:
        return [None] * len(d.caps)
    factor = info.unit.to_kwh
    peaks: list[float | None] = []
    for s, e, _ in d.caps:
        inside = [v * factor for at, v in samples if s <= at < e and math.isfinite(v)]
        peaks.append(round(max(inside), 3) if inside else None)
    return peaks


def _schedule(s: ScheduleRow) -> dict[str, Any]:
    return {
        "resource_id": s.resource_id,
        "participation": s.participation,
        "strategy": s.strategy,
        "window": {"start": iso(s.window[0]), "end": iso(s.window[1])},
        "on": [{"start": iso(a), "end": iso(b)} for a, b in s.runs],
        "note": s.note,
    }


def _command(c: CommandRow) -> dict[str, Any]:
    return {
        "id": c.id,
        "resource_id": c.resource_id,
        "adapter": c.adapter,
        "control": c.control,
        "value": c.value,
        "reason": c.reason,
        "state": c.state,
        "attempts": c.attempts,
        "requested_at": iso(c.requested_at),
        "sent_at": iso(c.sent_at),
        "confirmed_at": iso(c.confirmed_at),
        "confirmed_value": c.confirmed_value,
        "error": c.error,
    }
