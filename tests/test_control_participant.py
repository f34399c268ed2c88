"""Schedules for PriceCurve events: a shift that can place nothing leaves the load alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway import wire
from gateway.config import parse_config
from gateway.control.decider import Decider
from gateway.control.participant import Participant
from gateway.control.strategies import load_strategies
from gateway.metering.latest import LatestReadings
from gateway.store.control import ControlStore
from gateway.store.database import Database
from gateway.store.readings import ReadingsStore

NOW = 1_780_000_000.0


def curve(start: float) -> wire.PriceCurve:
    import datetime as dt

    raw = {
        "payloadType": "PriceCurve",
        "priceArea": "NO1",
        "targets": [{"resourceId": "boiler", "locationId": "home"}],
        "priceCurveDelta": {
            "points": [
                {
                    "timestamp": dt.datetime.fromtimestamp(start + 3600 * i, dt.UTC).isoformat(),
                    "price": p,
                }
                for i, p in enumerate((0.1, 0.9, 0.2))
            ],
            "energyUnit": "kWh",
            "currency": "NOK",
            "resolution": "01:00:00",
        },
    }
    payload = wire.decode_event_payload(json.dumps(raw).encode())
    assert isinstance(payload, wire.PriceCurve)
    return payload


def participant(db: Database, **boiler: Any) -> Participant:
    config = parse_config(
        {
            "adapters": {"boiler": {"type": "simulated"}},
            "resources": [
                {
                    "resource_id": "boiler",
                    "location_id": "home",
                    "adapter": "boiler",
                    "control": "switch",
                    "rated_kw": 2.0,
                    **boiler,
                }
            ],
        },
        base=Path("/"),
    )
    store = ControlStore(db)
    decider = Decider(config, store, ReadingsStore(db), LatestReadings())
    return Participant(config, store, decider, load_strategies()[0])


async def test_a_need_is_placed_in_the_best_paid_hour(db: Database) -> None:
    start = NOW + 3600
    await participant(db, need_kwh=2.0).schedule("e1", curve(start), now=NOW)
    (row,) = await ControlStore(db).schedules("e1")
    assert row.participation == "shift" and row.runs == ((start + 3600, start + 7200),)
    assert row.window == (start, start + 3 * 3600)


async def test_a_shift_that_can_place_nothing_leaves_the_load_alone(db: Database) -> None:
    start = NOW + 3600
    await participant(db, need_kwh=0.0).schedule("e1", curve(start), now=NOW)
    (row,) = await ControlStore(db).schedules("e1")
    assert row.participation == "report" and row.runs == ()
    assert "left alone" in (row.note or "")
    window = participant(db, need_kwh=2.0, allowed=["03:00-03:01"])
    await window.schedule("e2", curve(start), now=NOW)  # no allowed time inside the event
    (row,) = await ControlStore(db).schedules("e2")
    assert row.participation == "report", row


async def test_a_schedule_is_made_once(db: Database) -> None:
    start = NOW + 3600
    await participant(db, need_kwh=2.0).schedule("e1", curve(start), now=NOW)
    await participant(db, need_kwh=4.0).schedule("e1", curve(start), now=NOW + 60)
    (row,) = await ControlStore(db).schedules("e1")
    assert len(row.runs) == 1 and row.at == NOW
