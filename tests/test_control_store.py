"""Decisions are taken once per event: what Spark was told never changes."""

from __future__ import annotations

from gateway.store.control import ControlStore, DecisionRow, ScheduleRow, location_key
from gateway.store.database import Database


def row(event_id: str, decision: str, at: float) -> DecisionRow:
    return DecisionRow(
        event_id=event_id,
        target=location_key("loc", "mp"),
        kind="location",
        location_id="loc",
        meter_point_id="mp",
        resource_id=None,
        decision=decision,  # type: ignore[arg-type]
        reason=f"{decision} at {at}",
        caps=((100.0, 110.0, 5.0),) if decision == "acknowledged" else (),
        decided_at=at,
    )


async def test_the_first_decision_of_an_event_stands(db: Database) -> None:
    store = ControlStore(db)
    first = await store.decide([row("e1", "acknowledged", 1.0)])
    again = await store.decide([row("e1", "declined", 2.0)])
    assert first == again and again[0].decision == "acknowledged"
    assert again[0].caps == ((100.0, 110.0, 5.0),)


async def test_held_caps_are_the_acknowledged_ones_not_yet_ended(db: Database) -> None:
    store = ControlStore(db)
    await store.decide([row("e1", "acknowledged", 1.0)])
    await store.decide([row("e2", "declined", 1.0)])
    assert [d.event_id for d in await store.held_caps(now=109.0)] == ["e1"]
    assert await store.held_caps(now=110.0) == []


async def test_an_override_replaces_the_schedule(db: Database) -> None:
    store = ControlStore(db)
    sched = ScheduleRow("e1", "r1", "shift", "shift", ((0.0, 10.0),), (0.0, 60.0), None, 1.0)
    assert await store.put_schedule(sched) == sched
    changed = ScheduleRow("e1", "r1", "shift", "shift", ((10.0, 20.0),), (0.0, 60.0), None, 2.0)
    assert await store.put_schedule(changed) == sched  # stored once
    assert [s.event_id for s in await store.schedules_open(now=59.0)] == ["e1"]
    assert await store.schedules_open(now=60.0) == []
    await store.override("e1", "r1", "off", now=3.0)
    assert await store.overrides("e1") == {"r1": "off"}
    assert await store.schedules("e1") == []
