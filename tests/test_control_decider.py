"""The decider commits only to what the site can hold, from what the meters said, once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway import wire
from gateway.config import Config, parse_config
from gateway.control.decider import Decider
from gateway.metering.latest import LatestReadings
from gateway.plugin import Channel, ChannelKind, Reading, Unit
from gateway.store.control import ControlStore
from gateway.store.database import Database
from gateway.store.readings import ReadingsStore

NOW = 1_780_000_000.0  # 2026-05-28T20:26:40Z
HOUR = 3600.0
ENERGY = Channel("energy", ChannelKind.ENERGY, Unit.KWH)
POWER = Channel("power", ChannelKind.POWER, Unit.KW)


def config(**extra: Any) -> Config:
    table: dict[str, Any] = {
        "adapters": {
            "meter": {"type": "simulated", "poll_interval": "1s"},
            "a": {"type": "simulated"},
            "b": {"type": "simulated"},
            "dumb": {"type": "simulated"},
        },
        "locations": [{"location_id": "home", "meter_point_id": "mp", "adapter": "meter"}],
        "resources": [
            {
                "resource_id": "a",
                "location_id": "home",
                "adapter": "a",
                "control": "switch",
                "rated_kw": 4.0,
            },
            {
                "resource_id": "b",
                "location_id": "home",
                "adapter": "b",
                "control": "switch",
                "rated_kw": 4.0,
            },
            {"resource_id": "dumb", "location_id": "home", "adapter": "dumb"},
        ],
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(table.get(key), dict):
            table[key] = {**table[key], **value}
        else:
            table[key] = value
    return parse_config(table, base=Path("/"))


def latest(
    meter_kw: float | None = 11.0, *, age: float = 0.5, plugs_kw: float = 4.0, a_age: float = 0.5
) -> LatestReadings:
    found = LatestReadings()
    for name in ("meter", "a", "b", "dumb"):
        found.channels(name, (ENERGY, POWER))
    if meter_kw is not None:
        found.put("meter", [Reading("power", NOW - age, meter_kw)])
    found.put("a", [Reading("power", NOW - a_age, plugs_kw)])
    found.put("b", [Reading("power", NOW - 0.5, plugs_kw)])
    return found


def location_lpc(
    cap: float | None, *, location: str = "home", meter_point: str = "mp", start: float = NOW + 60
) -> wire.LocationLPC:
    raw = {
        "payloadType": "LocationLPC",
        "targets": [
            {
                "locationId": location,
                "meterPointId": meter_point,
                "resolution": "00:15:00",
                "points": [
                    {"timestamp": _iso(start + 900 * i), "maxPowerInKiloWatts": cap}
                    for i in range(2)
                ],
            }
        ],
    }
    payload = wire.decode_event_payload(json.dumps(raw).encode())
    assert isinstance(payload, wire.LocationLPC)
    return payload


def resource_lpc(resource: str, *, location: str = "home", cap: float = 1.0) -> wire.ResourceLPC:
    raw = {
        "payloadType": "ResourceLPC",
        "targets": [
            {
                "resourceId": resource,
                "locationId": location,
                "meterPointId": "mp",
                "resolution": "00:15:00",
                "points": [{"timestamp": _iso(NOW + 60), "maxPowerInKiloWatts": cap}],
            }
        ],
    }
    payload = wire.decode_event_payload(json.dumps(raw).encode())
    assert isinstance(payload, wire.ResourceLPC)
    return payload


def _iso(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


def decider(db: Database, cfg: Config, found: LatestReadings) -> Decider:
    states = {"a": True, "b": True}  # the controller read both switches
    return Decider(
        cfg, ControlStore(db), ReadingsStore(db), found, states=states, clock=lambda: NOW
    )


async def test_a_cap_above_base_load_and_margin_is_acknowledged(db: Database) -> None:
    (row,) = await decider(db, config(), latest()).decide("e1", location_lpc(5.0), now=NOW)
    assert row.decision == "acknowledged", row.reason
    assert [cap for _, _, cap in row.caps] == [5.0, 5.0]


async def test_a_cap_below_base_load_and_margin_is_declined_naming_both(db: Database) -> None:
    (row,) = await decider(db, config(), latest()).decide("e1", location_lpc(3.1), now=NOW)
    assert row.decision == "declined" and row.caps == ()
    assert "3.1 kW" in row.reason and "base load 3 kW" in row.reason and "0.2" in row.reason


async def test_without_a_fresh_meter_reading_nothing_is_acknowledged(db: Database) -> None:
    (never,) = await decider(db, config(), latest(None)).decide("e1", location_lpc(9.0), now=NOW)
    assert never.decision == "declined" and "not read" in never.reason
    (old,) = await decider(db, config(), latest(age=60)).decide("e2", location_lpc(9.0), now=NOW)
    assert old.decision == "declined" and "not read in the last 10 s" in old.reason


async def test_a_meter_polled_less_than_once_a_second_cannot_hold_a_cap(db: Database) -> None:
    cfg = config(adapters={"meter": {"type": "simulated", "poll_interval": "10s"}})
    (row,) = await decider(db, cfg, latest()).decide("e1", location_lpc(9.0), now=NOW)
    assert row.decision == "declined" and "every 10 s" in row.reason


async def test_a_resource_without_a_power_reading_counts_its_rated_power(db: Database) -> None:
    found = latest(a_age=60)  # a's own power reading is stale: not used
    states = {"a": True, "b": True}
    d = Decider(config(), ControlStore(db), ReadingsStore(db), found, states=states)
    (row,) = await d.decide("e1", location_lpc(5.0), now=NOW)
    assert row.decision == "acknowledged", row.reason
    d = Decider(config(), ControlStore(db), ReadingsStore(db), found, states={})
    (row,) = await d.decide("e2", location_lpc(5.0), now=NOW)
    assert row.decision == "declined" and "base" in row.reason  # its draw is unknown


async def test_another_gateways_location_is_left_out_unless_told_to_decline(db: Database) -> None:
    payload = location_lpc(5.0, location="elsewhere")
    (row,) = await decider(db, config(), latest()).decide("e1", payload, now=NOW)
    assert row.decision == "left_out"
    strict = config(lpc={"decline_unknown": True})
    (row,) = await decider(db, strict, latest()).decide("e2", payload, now=NOW)
    assert row.decision == "declined" and "decline_unknown" in row.reason


async def test_an_unknown_meter_point_of_our_location_is_declined(db: Database) -> None:
    payload = location_lpc(5.0, meter_point="other")
    (row,) = await decider(db, config(), latest()).decide("e1", payload, now=NOW)
    assert row.decision == "declined" and "'other'" in row.reason


async def test_caps_that_have_ended_are_neither_checked_nor_held(db: Database) -> None:
    payload = location_lpc(5.0, start=NOW - 900 - 60)  # first ended, second running
    # the running one must fit what the location draws now: 4.6 kW (3 + 2 x 0.8)
    (row,) = await decider(db, config(), latest(4.6, plugs_kw=0.8)).decide("e1", payload, now=NOW)
    assert row.decision == "acknowledged" and len(row.caps) == 1
    payload = location_lpc(5.0, start=NOW - 3 * 900)
    (row,) = await decider(db, config(), latest()).decide("e2", payload, now=NOW)
    assert row.decision == "declined" and "ahead" in row.reason


async def test_a_decision_is_taken_once(db: Database) -> None:
    (first,) = await decider(db, config(), latest()).decide("e1", location_lpc(5.0), now=NOW)
    (again,) = await decider(db, config(), latest(20.0)).decide("e1", location_lpc(5.0), now=NOW)
    assert first == again and again.decision == "acknowledged"


async def test_a_dry_run_declines(db: Database) -> None:
    cfg = config(control={"dry_run": True})
    (row,) = await decider(db, cfg, latest()).decide("e1", location_lpc(9.0), now=NOW)
    assert row.decision == "declined" and "dry run" in row.reason


async def test_resource_caps(db: Database) -> None:
    d = decider(db, config(), latest())
    assert (await d.decide("r1", resource_lpc("a"), now=NOW))[0].decision == "acknowledged"
    (dumb,) = await d.decide("r2", resource_lpc("dumb"), now=NOW)
    assert dumb.decision == "declined"
    (unknown,) = await d.decide("r3", resource_lpc("ghost"), now=NOW)
    assert unknown.decision == "declined" and "'ghost'" in unknown.reason
    (other,) = await d.decide("r4", resource_lpc("ghost", location="elsewhere"), now=NOW)
    assert other.decision == "left_out"
    off = config(
        resources=[
            {
                "resource_id": "a",
                "location_id": "home",
                "adapter": "a",
                "control": "switch",
                "rated_kw": 4.0,
                "participation": "off",
            }
        ]
    )
    (row,) = await decider(db, off, latest()).decide("r5", resource_lpc("a"), now=NOW)
    assert row.decision == "declined" and "participation = off" in row.reason


async def test_the_same_hour_last_week_raises_the_base_load(db: Database) -> None:
    """Yesterday in the capped hour the location drew 6 kW with both loads off: a 5 kW cap
    that fits today's 3 kW base does not fit what this hour has needed."""
    readings = ReadingsStore(db)
    start = NOW + 60
    hour = start - start % HOUR - 86400.0
    async with readings.writer():
        for name in ("meter", "a", "b"):
            await readings.register_channels(name, (ENERGY, POWER))
        for name, kw in (("meter", 6.0), ("a", 0.0), ("b", 0.0)):
            await readings.write(
                name,
                [Reading("energy", hour + t, 100.0 + kw * t / 3600) for t in range(-60, 3661, 60)],
            )
    found = latest()
    states = {"a": False, "b": False}
    d = Decider(config(), ControlStore(db), readings, found, states=states, clock=lambda: NOW)
    (row,) = await d.decide("e1", location_lpc(5.0), now=NOW)
    assert row.decision == "declined" and "base load 6 kW" in row.reason, row.reason


async def test_a_cap_starting_within_the_lead_must_fit_the_power_now(db: Database) -> None:
    """Base 3 kW fits a 5 kW cap, but the location draws 11 kW now and the cap starts in 2 s:
    the loads cannot be off in time, so it is declined; the same cap a minute ahead is not."""
    soon = location_lpc(5.0, start=NOW + 2)
    (row,) = await decider(db, config(), latest()).decide("e1", soon, now=NOW)
    assert row.decision == "declined" and "in time" in row.reason and "11 kW" in row.reason
    (row,) = await decider(db, config(), latest()).decide("e2", location_lpc(5.0), now=NOW)
    assert row.decision == "acknowledged", row.reason
    (row,) = await decider(db, config(), latest(4.0, plugs_kw=0.5)).decide("e3", soon, now=NOW)
    assert row.decision == "acknowledged", row.reason  # 4 kW now: it fits already
