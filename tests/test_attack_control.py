"""Taking part, attacked from outside: devices, adapters, plugins and events that lie.

Each test is one finding: the input, and what the gateway must (not) promise or do.
Real parts: SQLite under tmp_path, the real simulated adapter as the device, the real
decider, participant and controller.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from adapters.simulated import SimulatedAdapter, SimulatedConfig
from gateway import wire
from gateway.config import Config, parse_config
from gateway.control.commands import Commander
from gateway.control.controller import Controller
from gateway.control.decider import Decider
from gateway.control.participant import Participant
from gateway.control.step import Load, step
from gateway.control.step import Reading as MeterReading
from gateway.control.strategies import Schedule, StrategyEvent, StrategyResource
from gateway.errors import AdapterError
from gateway.metering.latest import LatestReadings
from gateway.plugin import Channel, ChannelKind, ControllableAdapter, Reading, Unit
from gateway.store.control import ControlStore, DecisionRow
from gateway.store.database import Database
from gateway.store.readings import ReadingsStore

NOW = 1_780_000_000.0  # 2026-05-28T20:26:40Z
HOUR = 3600.0
ENERGY = Channel("energy", ChannelKind.ENERGY, Unit.KWH)
POWER = Channel("power", ChannelKind.POWER, Unit.KW)


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


def site(**extra: Any) -> Config:
    """A metered location with two 4 kW plugs (``a``, ``b``) on simulated adapters."""
    table: dict[str, Any] = {
        "adapters": {
            "meter": {"type": "simulated", "poll_interval": "1s"},
            "a": {"type": "simulated", "power_kw": 4.0},
            "b": {"type": "simulated", "power_kw": 4.0},
        },
        "locations": [{"location_id": "home", "meter_point_id": "mp", "adapter": "meter"}],
        "resources": [
            {
                "resource_id": name,
                "location_id": "home",
                "adapter": name,
                "control": "switch",
                "rated_kw": 4.0,
            }
            for name in ("a", "b")
        ],
    }
    table.update(extra)
    return parse_config(table, base=Path("/"))


class Devices:
    """The running adapters, as the runtime hands them to the commander and controller."""

    def __init__(self, **adapters: ControllableAdapter) -> None:
        self._adapters = adapters

    def controllable(self, name: str) -> ControllableAdapter:
        try:
            return self._adapters[name]
        except KeyError:
            raise AdapterError(f"adapter {name!r} is not configured", adapter=name) from None


@pytest.fixture
async def plugs() -> AsyncIterator[dict[str, SimulatedAdapter]]:
    found = {
        name: SimulatedAdapter(name, SimulatedConfig(type="simulated", power_kw=4.0, on=True))
        for name in ("a", "b")
    }
    for adapter in found.values():
        await adapter.__aenter__()
    yield found
    for adapter in found.values():
        await adapter.__aexit__(None, None, None)


async def settle_commands() -> None:
    """Wait for every command task the controller started (they are named ``control:*``)."""
    tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("control:")]
    if tasks:
        await asyncio.wait(tasks, timeout=5.0)


def price_curve(
    resource: str, *, start: float, slots: int = 4, step_s: int = 900
) -> wire.PriceCurve:
    raw = {
        "payloadType": "PriceCurve",
        "targets": [{"resourceId": resource, "locationId": "home"}],
        "priceCurveDelta": {
            "resolution": str(dt.timedelta(seconds=step_s)).rjust(8, "0"),
            "points": [
                {"timestamp": iso(start + step_s * i), "price": float(i)} for i in range(slots)
            ],
        },
    }
    payload = wire.decode_event_payload(json.dumps(raw).encode())
    assert isinstance(payload, wire.PriceCurve)
    return payload


def location_lpc(
    caps: Sequence[float | None], *, start: float, resolution: str = "00:15:00", span: float = 900
) -> wire.LocationLPC:
    raw = {
        "payloadType": "LocationLPC",
        "targets": [
            {
                "locationId": "home",
                "meterPointId": "mp",
                "resolution": resolution,
                "points": [
                    {"timestamp": iso(start + span * i), "maxPowerInKiloWatts": cap}
                    for i, cap in enumerate(caps)
                ],
            }
        ],
    }
    payload = wire.decode_event_payload(json.dumps(raw).encode())
    assert isinstance(payload, wire.LocationLPC)
    return payload


def resource_lpc(resource: str, cap: float, *, start: float) -> wire.ResourceLPC:
    raw = {
        "payloadType": "ResourceLPC",
        "targets": [
            {
                "resourceId": resource,
                "locationId": "home",
                "meterPointId": "mp",
                "resolution": "00:15:00",
                "points": [{"timestamp": iso(start), "maxPowerInKiloWatts": cap}],
            }
        ],
    }
    payload = wire.decode_event_payload(json.dumps(raw).encode())
    assert isinstance(payload, wire.ResourceLPC)
    return payload


# --- a meter whose clock runs ahead ---------------------------------------------------------------


def test_a_meter_sample_stamped_in_the_future_does_not_freeze_the_location_power() -> None:
    """A meter sends one sample stamped an hour ahead (its clock jumped), then correct ones.

    Before: the future sample stayed "latest" for an hour: every later sample was dropped as
    older, so the controller held loads against a stale power, and its age stayed 0, so the
    failsafe could never fire when the meter then went silent."""
    now = [NOW]
    latest = LatestReadings(clock=lambda: now[0])
    latest.channels("meter", (POWER,))
    latest.put("meter", [Reading("power", NOW + HOUR, 2.0)])  # clock ahead: 2 kW
    now[0] = NOW + 1.0
    latest.put("meter", [Reading("power", NOW + 1.0, 9.0)])  # the truth, a second later
    found = latest.get("meter", "power")
    assert found is not None and found[1] == 9.0, found
    # The meter goes silent: after the failsafe its power counts as unread, and loads go off.
    now[0] = NOW + 30.0
    assert found[0] <= NOW + 1.0
    meter = MeterReading(power_kw=found[1], age=max(now[0] - found[0], 0.0))
    plug = Load("a", 0, 4.0, on=True, measured_kw=4.0, held=False)
    commands = step(limit_kw=4.8, meter=meter, failsafe=10.0, loads=(plug,), hysteresis_kw=0.2)
    assert [(c.resource_id, c.on) for c in commands] == [("a", False)]
    assert commands[0].reason.startswith("failsafe"), commands


# --- a strategy plugin that fails ----------------------------------------------------------------


def _raises(event: StrategyEvent, resource: StrategyResource, now: float) -> Schedule:
    raise RuntimeError("the price oracle is down")


async def test_a_failed_strategy_switches_nothing(
    db: Database, plugs: dict[str, SimulatedAdapter]
) -> None:
    """A shift strategy that raises (or is not installed) leaves the resource alone.

    Before: the failed schedule was stored as ``shift`` with no runs, and the controller
    switched the load off for the whole window ("outside the paid hours") although the
    note promised "nothing switched"."""
    cfg = site(
        resources=[
            {
                "resource_id": "a",
                "location_id": "home",
                "adapter": "a",
                "control": "switch",
                "rated_kw": 4.0,
                "need_kwh": 1.0,
            }
        ]
    )
    store, latest = ControlStore(db), LatestReadings()
    decider = Decider(cfg, store, ReadingsStore(db), latest, clock=lambda: NOW)
    for strategies in ({"shift": _raises}, {}):
        event_id = f"pc-{len(strategies)}"
        participant = Participant(cfg, store, decider, strategies)
        await participant.schedule(event_id, price_curve("a", start=NOW - 60), now=NOW)
        (stored,) = await store.schedules(event_id)
        assert stored.runs == () and stored.participation == "report", stored
    devices = Devices(**plugs)
    commander = Commander(store, devices, confirm_timeout=1.0, attempts=1, clock=lambda: NOW)
    controller = Controller(cfg, store, commander, latest, devices, clock=lambda: NOW)
    await controller.tick()
    await settle_commands()
    assert await store.commands() == []
    state = await plugs["a"].state("switch")
    assert state is not None and state.value == 1.0


# --- a cap interval longer than an hour ----------------------------------------------------------


async def _history(db: Database, hour_kw: dict[float, float]) -> ReadingsStore:
    """A week of energy readings: the meter at ``hour_kw[hour of day]`` (else 1 kW), plugs 0."""
    readings = ReadingsStore(db)
    async with readings.writer():
        for name in ("meter", "a", "b"):
            await readings.register_channels(name, (ENERGY, POWER))
        start = NOW - NOW % HOUR - 8 * 86400.0
        kwh, batch = 100.0, []
        t = start
        while t <= NOW:
            batch.append(Reading("energy", t, kwh))
            kwh += hour_kw.get((t % 86400.0) // HOUR, 1.0) * 300.0 / 3600.0
            t += 300.0
        await readings.write("meter", batch)
        for name in ("a", "b"):
            await readings.write(name, [Reading("energy", r.at, 5.0) for r in batch])
    return readings


def _fresh(meter_kw: float, plugs_kw: float = 0.0) -> LatestReadings:
    latest = LatestReadings(clock=lambda: NOW)
    for name in ("meter", "a", "b"):
        latest.channels(name, (ENERGY, POWER))
    latest.put("meter", [Reading("power", NOW - 0.5, meter_kw)])
    for name in ("a", "b"):
        latest.put(name, [Reading("power", NOW - 0.5, plugs_kw)])
    return latest


async def test_a_day_long_cap_counts_the_base_load_of_every_hour_it_covers(db: Database) -> None:
    """Resolution 1 day, cap 3 kW, starting at midnight. Every evening 18:00-19:00 the
    location drew 6 kW with both plugs off; the night hours 1 kW.

    Before: the base load was estimated for the interval's first hour only (00:00): 1 kW,
    and the cap was acknowledged although the evening needs 6 kW."""
    readings = await _history(db, {18.0: 6.0})
    midnight = NOW - NOW % 86400.0 + 86400.0
    states = {"a": False, "b": False}
    decider = Decider(
        site(), ControlStore(db), readings, _fresh(1.0), states=states, clock=lambda: NOW
    )
    (row,) = await decider.decide(
        "day", location_lpc([3.0], start=midnight, resolution="1.00:00:00"), now=NOW
    )
    assert row.decision == "declined", row.reason
    assert "6 kW" in row.reason, row.reason


# --- a resource whose adapter cannot switch it ---------------------------------------------------


async def test_a_resource_whose_switch_cannot_be_read_is_not_counted_on(
    db: Database, plugs: dict[str, SimulatedAdapter]
) -> None:
    """``b`` names control ``relay``, which its adapter does not have (a config typo), and
    ``a``'s adapter is not running. Neither can be switched off by the gateway.

    Before: the decider trusted the config: a ResourceLPC on ``b`` was acknowledged (its cap
    can never be held), and a LocationLPC was acknowledged on a 3 kW base load although
    both plugs (8 kW) stay on whatever the gateway does."""
    cfg = site(
        resources=[
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
                "control": "relay",
                "rated_kw": 4.0,
            },
        ]
    )
    store, latest = ControlStore(db), _fresh(11.0, plugs_kw=4.0)
    devices = Devices(b=plugs["b"])  # a: not running
    commander = Commander(store, devices, confirm_timeout=1.0, attempts=1, clock=lambda: NOW)
    controller = Controller(cfg, store, commander, latest, devices, clock=lambda: NOW)
    await controller.tick()  # the controller looks at its loads even when nothing is held
    decider = Decider(
        cfg, store, ReadingsStore(db), latest, states=controller.states, clock=lambda: NOW
    )
    (res,) = await decider.decide("r", resource_lpc("b", 1.0, start=NOW + 60), now=NOW)
    assert res.decision == "declined", res.reason
    (loc,) = await decider.decide("l", location_lpc([5.0], start=NOW + 60), now=NOW)
    assert loc.decision == "declined", loc.reason
    # Both plugs readable: the same cap is acknowledged (3 kW base + 0.2 margin <= 5 kW).
    good = site()
    devices = Devices(**plugs)
    commander = Commander(store, devices, confirm_timeout=1.0, attempts=1, clock=lambda: NOW)
    controller = Controller(good, store, commander, latest, devices, clock=lambda: NOW)
    await controller.tick()
    decider = Decider(
        good, store, ReadingsStore(db), latest, states=controller.states, clock=lambda: NOW
    )
    (ok,) = await decider.decide("l2", location_lpc([5.0], start=NOW + 60), now=NOW)
    assert ok.decision == "acknowledged", ok.reason


# --- two resources on one device ------------------------------------------------------------------


async def test_two_resources_on_one_plug_are_not_subtracted_twice(db: Database) -> None:
    """``a1`` and ``a2`` both name adapter ``a`` and its ``switch`` (one 4 kW plug entered
    twice). The location draws 9 kW: 5 kW base + the plug.

    Before: the plug's 4 kW was taken off the location's power once per resource: a base of
    1 kW, and a 2 kW cap was acknowledged on a site whose base load is 5 kW."""
    twice = [
        {
            "resource_id": rid,
            "location_id": "home",
            "adapter": "a",
            "control": "switch",
            "rated_kw": 4.0,
        }
        for rid in ("a1", "a2")
    ]
    latest = _fresh(9.0, plugs_kw=4.0)
    states = {"a1": True, "a2": True}
    decider = Decider(
        site(resources=twice), ControlStore(db), ReadingsStore(db), latest, states=states
    )
    (row,) = await decider.decide("twice", location_lpc([2.0], start=NOW + 60), now=NOW)
    assert row.decision == "declined" and "base load 5 kW" in row.reason, row.reason


# --- a load whose rated_kw understates what it draws -------------------------------------------


async def test_a_load_drawing_more_than_its_rated_kw_is_not_switched_back_and_forth(
    db: Database, plugs: dict[str, SimulatedAdapter]
) -> None:
    """``a`` is configured at 0.5 kW but draws 4 kW and has no power reading of its own. Under
    a 5 kW cap on a 3 kW base the controller switches it off, sees room for 0.5 kW and lets it
    back on, and the location is at 7 kW again. Once that happened it must stay off until the
    cap is over: before, it went on and off every step, each time above the cap."""
    clock = [NOW]
    cfg = site(
        resources=[
            {
                "resource_id": "a",
                "location_id": "home",
                "adapter": "a",
                "control": "switch",
                "rated_kw": 0.5,
            },
        ]
    )
    store = ControlStore(db)
    await store.decide(
        [
            DecisionRow(
                event_id="cap",
                target='["location", "home", "mp"]',
                kind="location",
                location_id="home",
                meter_point_id="mp",
                resource_id=None,
                decision="acknowledged",
                reason="test",
                caps=((NOW - 10, NOW + 600, 5.0),),
                decided_at=NOW - 20,
            )
        ]
    )
    latest = LatestReadings(clock=lambda: clock[0])
    latest.channels("meter", (ENERGY, POWER))
    devices = Devices(**plugs)
    commander = Commander(store, devices, confirm_timeout=1.0, attempts=1, clock=lambda: clock[0])
    controller = Controller(cfg, store, commander, latest, devices, clock=lambda: clock[0])
    over = 0
    for _ in range(12):
        state = await plugs["a"].state("switch")
        draw = 4.0 if state is not None and state.value == 1.0 else 0.0
        over += 3.0 + draw > 5.0
        latest.put("meter", [Reading("power", clock[0], 3.0 + draw)])
        await controller.tick()
        await settle_commands()
        clock[0] += 1.0
    ons = [c for c in await store.commands() if c.value == 1.0]
    assert len(ons) <= 1, [(c.value, c.reason) for c in await store.commands()]
    assert over <= 2  # the first reading, and at most the one time it was let back on
