"""From device to report body: exporting and misbehaving devices give plausible reports.

The field defects: a device reporting negative power (export) stopped the scheduler with
``ReportInvalid: refusing -0.01 kWh``, one reporting +-1e308 with ``OverflowError``, and a
report of 2.78e297 kWh was delivered. Real SQLite, the real simulated adapter, the real
scheduler; only the clocks are given.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import structlog

from adapters.simulated import SimulatedAdapter, SimulatedConfig
from gateway.config import Config, parse_config
from gateway.plugin import Channel, ChannelKind, Reading, Unit
from gateway.reports.clock import ServerClock
from gateway.reports.scheduler import ReportJobs, ReportScheduler
from gateway.store.database import Database, open_database
from gateway.store.inbox import Inbox, NewEvent
from gateway.store.outbox import Outbox
from gateway.store.readings import ReadingsStore

T0 = 1_795_000_020.0  # 2026-11-18, a whole minute
QUARTERS = [T0 + 900.0 * i for i in range(4)]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(tmp_path: Path) -> Config:
    def resource(rid: str, adapter: str, channel: str, **extra: Any) -> dict[str, Any]:
        entry = {"resource_id": rid, "location_id": "loc-1", "adapter": adapter, "channel": channel}
        return {**entry, **extra}

    return parse_config(
        {
            "gateway": {"state_dir": str(tmp_path / "state")},
            "adapters": {"pv": {"type": "simulated"}, "wild": {"type": "simulated"}},
            "resources": [
                resource("pv-meter", "pv", "energy"),
                resource("pv-import", "pv", "power"),
                resource("pv-net", "pv", "power", direction="net", max_kw=10.0),
                resource("wild-1", "wild", "power"),
                resource("wild-2", "wild", "energy", max_kw=5.0),
            ],
        },
        base=tmp_path,
    )


def price_curve(resources: list[str]) -> bytes:
    return json.dumps(
        {
            "payloadType": "PriceCurve",
            "priceArea": "NO5",
            "targets": [{"resourceId": r, "locationId": "loc-1"} for r in resources],
            "priceCurveDelta": {
                "resolution": "00:15:00",
                "points": [
                    {"timestamp": dt.datetime.fromtimestamp(t, dt.UTC).isoformat(), "price": 1.0}
                    for t in QUARTERS
                ],
            },
        }
    ).encode()


async def exporting_pv(store: ReadingsStore) -> None:
    """A 3.6 kW export for the hour, read every 10 s through the simulated adapter."""
    clock = Clock(T0 - 60)
    adapter = SimulatedAdapter(
        "pv", SimulatedConfig(type="simulated", power_kw=-3.6, start_kwh=800.0), clock=clock
    )
    await store.register_channels("pv", adapter.channels())
    readings: list[Reading] = []
    async with adapter:
        while clock.now <= QUARTERS[-1] + 960:
            readings.extend(await adapter.read())
            clock.now += 10.0
    await store.write("pv", readings)


async def wild_device(store: ReadingsStore) -> None:
    """2 kW on power, 2 kW on a counter, with the values a broken device or plugin sends."""
    await store.register_channels(
        "wild",
        [
            Channel("energy", ChannelKind.ENERGY, Unit.KWH),
            Channel("power", ChannelKind.POWER, Unit.KW),
        ],
    )
    power, energy = [], []
    for i in range(0, 3700, 10):
        t = T0 - 30 + i
        power.append(Reading("power", t, 2.0))
        energy.append(Reading("energy", t, 100.0 + 2.0 * i / 3600))
    power[50] = Reading("power", power[50].at, 1e308)
    power[150] = Reading("power", power[150].at, -1e308)
    power[250] = Reading("power", power[250].at, 5e5)
    for k in range(100, len(energy)):  # the counter jumps by 1e9 kWh and stays: no spike
        energy[k] = Reading("energy", energy[k].at, 1e9 + energy[k].value)
    await store.write("wild", power)
    await store.write("wild", energy)


async def setup(db: Database, resources: list[str]) -> None:
    store = ReadingsStore(db)
    async with store.writer():
        await exporting_pv(store)
        await wild_device(store)
    new = NewEvent(
        event_id="pc-1", payload_type="PriceCurve", created_at=None, payload=price_curve(resources)
    )
    await Inbox(db).add(new, via="webhook", at=T0)


async def run_scheduler(db: Database, cfg: Config) -> None:
    scheduler = ReportScheduler(
        db=db,
        readings=ReadingsStore(db),
        config=cfg,
        server_clock=ServerClock(),
        on_queued=lambda: None,
        clock=time.time,
    )
    await scheduler.pass_once()


def points(body: bytes) -> dict[str, list[float]]:
    report = json.loads(body)
    return {p["resourceId"]: [q["kiloWattHours"] for q in p["points"]] for p in report["payloads"]}


async def test_export_is_zero_for_import_and_negative_for_net(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    async with open_database(cfg.db_path) as db:
        await setup(db, ["pv-meter", "pv-import", "pv-net"])
        await run_scheduler(db, cfg)
        (row,) = await Outbox(db).items()
    got = points(row.body)
    assert got["pv-meter"] == [0.0] * 4  # the import register stayed flat
    assert got["pv-import"] == [0.0] * 4  # negative power is no consumption
    assert got["pv-net"] == [-0.9] * 4  # 3.6 kW exported for a quarter of an hour


async def test_absurd_readings_are_rejected_counted_and_never_sent(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    async with open_database(cfg.db_path) as db:
        await setup(db, ["wild-1", "wild-2"])
        with structlog.testing.capture_logs() as logs:
            await run_scheduler(db, cfg)
        (row,) = await Outbox(db).items()
        (job,) = await ReportJobs(db).for_event("pc-1")
    got = points(row.body)
    assert got["wild-1"] == [0.5] * 4  # integrated across the three absurd samples
    # the counter's jump lies in the second quarter: unknown, the others are right
    assert got["wild-2"] == [0.5, 0.5, 0.5]
    report = json.loads(row.body)
    (wild2,) = [p for p in report["payloads"] if p["resourceId"] == "wild-2"]
    stamps = [dt.datetime.fromisoformat(q["timestamp"]).timestamp() for q in wild2["points"]]
    assert stamps == [QUARTERS[0], QUARTERS[2], QUARTERS[3]]
    assert job["outcome"] == "queued"
    note = str(job["note"])
    assert "resource 'wild-1': 3 reading(s) or interval(s) rejected" in note
    assert "resource 'wild-2': 1 reading(s) or interval(s) rejected" in note
    assert "1 of 4 intervals have no data" in note
    (queued,) = [e for e in logs if e["event"] == "reports.queued"]
    assert "rejected as implausible" in queued["note"]
