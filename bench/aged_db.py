"""An aged database: a simulated year of a site, kept as the gateway keeps it.

    python bench/aged_db.py --days 365 --out /tmp/aged.sqlite3
    python bench/aged_db.py --days 30 --out /tmp/aged.sqlite3 --continue

Day by day, from 2025-01-01 (or, with ``--continue``, from where the file's last run
stopped: ``meta`` key ``bench.aged_db.now``), through the gateway's own store code:

* 50 events a day (``Inbox.add_many``): PriceCurve events for two resources, 24 hourly
  prices for the next day; three days a week one of them is a LocationLPC instead.
* 50 reports a day, one per event once its window has ended, built as the builder builds
  them (``wire.EnergyUsage`` / ``LocationLPCAcknowledgement``, ``wire.encode``), queued with
  their job row in one transaction (``Outbox.enqueue_in`` + ``ReportJobs.record_in``, as the
  scheduler does), claimed and delivered (``Outbox.settle``) with a Spark report id; the
  events set ``done`` (the scheduler's ``UPDATE``).
* Taking part: a schedule per PriceCurve event and resource (``ControlStore.put_schedule``'s
  ``INSERT``); per LPC event its decision (``ControlStore.decide``) and four device commands.
* Readings: 20 counter channels (kWh) read every 10 s. The last ``raw_retention`` + 1 h go
  through ``ReadingsStore.write`` (about 350,000 rows) and the gateway's ``compact()``; the
  days before are written as compaction leaves them (one point per whole minute, the
  counter's value there; the hand-over sample and state): with samples on a 10 s grid that
  never decrease this is exactly what ``compact()`` writes (tests/test_aged_db.py compares
  the two). ``compact()`` runs once a simulated day, so the gateway's own expiry deletes
  what is past ``metering.retention`` (62 days).
* Retention (``gateway.store.retention``) once a simulated day, then the WAL checkpoint the
  heartbeat does.

``synchronous = OFF`` on the generator's connection (it only saves fsyncs; the bytes
written are the same). Prints the simulated date, the file's size, and per table rows and
bytes (``ecgw db stats``'s figures), then checks that the oldest delivered report the
ledger keeps (the first month's, on a simulated year) is refused when queued again and
still shows Spark's report id.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import random
import sys
import time
import uuid
from pathlib import Path

import aiosqlite

from gateway import wire
from gateway.config import MeteringConfig
from gateway.db_commands import stats_text
from gateway.plugin import Channel, ChannelKind, Reading, Unit
from gateway.reports.manual import report_deadline
from gateway.reports.scheduler import ReportJobs
from gateway.store.control import ControlStore, DecisionRow
from gateway.store.database import Database, open_database
from gateway.store.inbox import Inbox, NewEvent
from gateway.store.meta import Meta
from gateway.store.outbox import Outbox
from gateway.store.outbox_states import Delivered
from gateway.store.readings import ReadingsStore
from gateway.store.readings_compaction import CompactionState
from gateway.store.retention import Retention
from gateway.store.space import database_stats

DAY = 86400.0
START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp()
ADAPTER = "site"
STEP = 10.0  # seconds between readings
NOW_KEY = "bench.aged_db.now"
LONGEST: dict[str, float] = {}  # per rule, the longest slice of the daily retention passes
RESOURCES = ("heatpump", "charger")
LOCATION, METER_POINT = "loc-1", "mp-1"
_SCHEDULE_SQL = (  # ControlStore.put_schedule's statement
    "INSERT INTO schedules (event_id, resource_id, participation, strategy, schedule, "
    "window_start, window_end, note, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (event_id, resource_id) DO NOTHING"
)
_PLANNED_SQL = "UPDATE events SET plan_state = ?, plan_note = ? WHERE event_id = ?"  # set_plan


def counter(channel: int, at: float) -> float:
    """The counter (kWh) of ``channel`` at ``at``: grows at 0.5-10 kW, never decreases."""
    rate = 0.5 + channel * 0.5
    return 1000.0 * channel + rate * (at - START) / 3600.0


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _event_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def price_curve(window: float, rng: random.Random) -> bytes:
    return json.dumps(
        {
            "payloadType": "PriceCurve",
            "targets": [{"resourceId": r, "locationId": LOCATION} for r in RESOURCES],
            "priceCurveDelta": {
                "points": [
                    {
                        "timestamp": _iso(window + h * 3600),
                        "price": round(rng.uniform(0.05, 0.6), 4),
                    }
                    for h in range(24)
                ],
                "resolution": "01:00:00",
                "energyUnit": "kWh",
                "currency": "EUR",
            },
            "priceArea": "NO1",
        }
    ).encode()


def location_lpc(window: float) -> bytes:
    return json.dumps(
        {
            "payloadType": "LocationLPC",
            "targets": [
                {
                    "locationId": LOCATION,
                    "meterPointId": METER_POINT,
                    "resolution": "00:15:00",
                    "points": [
                        {
                            "timestamp": _iso(window + 17 * 3600 + q * 900),
                            "maxPowerInKiloWatts": 7.0,
                        }
                        for q in range(8)
                    ],
                }
            ],
        }
    ).encode()


def usage_report(event_id: str, window: float, rng: random.Random) -> wire.PostReportRequest:
    stamp = [dt.datetime.fromtimestamp(window + h * 3600, dt.UTC) for h in range(24)]
    return wire.PostReportRequest(
        event_id=event_id,
        payloads=[
            wire.EnergyUsage(
                resource_id=r,
                resolution="01:00:00",
                location_id=LOCATION,
                points=[
                    wire.EnergyCurvePoint(timestamp=s, kilo_watt_hours=round(rng.uniform(0, 3), 3))
                    for s in stamp
                ],
            )
            for r in RESOURCES
        ],
    )


def lpc_ack(event_id: str) -> wire.PostReportRequest:
    target = wire.LPCLocation(location_id=LOCATION, meter_point_id=METER_POINT)
    return wire.PostReportRequest(
        event_id=event_id,
        payloads=[wire.LocationLPCAcknowledgement(acknowledged_targets=[target])],
    )


class Site:
    """The simulated site's writes, one day at a time."""

    def __init__(self, db: Database, readings: ReadingsStore, rng: random.Random) -> None:
        self.db = db
        self.readings = readings
        self.rng = rng
        self.outbox = Outbox(db)
        self.control = ControlStore(db)
        self.waiting: list[tuple[str, str, float]] = []  # (event id, type, window start)

    async def events(self, day: float) -> None:
        """50 events received at noon for tomorrow's window; 3 days a week one is an LPC."""
        window = day + DAY
        lpc_today = int(day // DAY) % 7 in (1, 3, 5)
        new = []
        for i in range(50):
            event_id = _event_id(self.rng)
            lpc = lpc_today and i == 0
            payload = location_lpc(window) if lpc else price_curve(window, self.rng)
            kind = "LocationLPC" if lpc else "PriceCurve"
            new.append(NewEvent(event_id, kind, _iso(day + 43000), payload, f"n-{event_id}", kind))
            self.waiting.append((event_id, kind, window))
        await Inbox(self.db).add_many(new, via="webhook", at=day + 43200)
        await self._take_part(new, window, now=day + 43210)

    async def _take_part(self, events: list[NewEvent], window: float, *, now: float) -> None:
        runs = json.dumps([[window + 3600 * h, window + 3600 * (h + 1)] for h in (2, 3, 4)])
        async with self.db.write() as conn:
            await conn.executemany(
                _SCHEDULE_SQL,
                [
                    (e.event_id, r, "shift", "cheapest", runs, window, window + DAY, None, now)
                    for e in events
                    if e.payload_type == "PriceCurve"
                    for r in RESOURCES
                ],
            )
        for e in events:
            if e.payload_type == "LocationLPC":
                await self._lpc(e.event_id, window, now=now)

    async def _lpc(self, event_id: str, window: float, *, now: float) -> None:
        start = window + 17 * 3600
        caps = tuple((start + q * 900, start + (q + 1) * 900, 7.0) for q in range(8))
        row = DecisionRow(
            event_id=event_id,
            target=f"location/{LOCATION}/{METER_POINT}",
            kind="location",
            location_id=LOCATION,
            meter_point_id=METER_POINT,
            resource_id=None,
            decision="acknowledged",
            reason="base load 2.1 kW + margin under every cap",
            caps=caps,
            decided_at=now,
        )
        await self.control.decide([row])
        for resource, value, at in (
            (RESOURCES[1], 0.0, start),
            (RESOURCES[0], 0.0, start + 60),
            (RESOURCES[1], 1.0, start + 7200),
            (RESOURCES[0], 1.0, start + 7260),
        ):
            cid = await self.control.command_started(
                event_id=event_id,
                resource_id=resource,
                adapter=ADAPTER,
                control=f"{resource}.switch",
                value=value,
                reason="cap held" if value == 0.0 else "cap ended",
                now=at,
            )
            await self.control.command_sent(cid, attempts=1, now=at + 0.2)
            await self.control.command_done(
                cid, state="confirmed", now=at + 1.5, confirmed_value=value
            )

    async def reports(self, now: float) -> None:
        """Reports of the events whose window has ended: queued with their job, delivered."""
        due = [w for w in self.waiting if w[2] + DAY <= now - 3600]
        self.waiting = [w for w in self.waiting if w[2] + DAY > now - 3600]
        for event_id, kind, window in due:
            request = (
                lpc_ack(event_id)
                if kind == "LocationLPC"
                else usage_report(event_id, window, self.rng)
            )
            async with self.db.write() as conn:
                await Outbox.enqueue_in(
                    conn,
                    event_id=event_id,
                    kind=wire.report_kind(request),
                    body=wire.encode(request),
                    source="planner",
                    now=now,
                    deadline=report_deadline(request, now=now),
                )
                await ReportJobs.record_in(
                    conn, event_id, wire.report_kind(request), "queued", None, now=now
                )
        async with self.db.write() as conn:
            await conn.executemany(_PLANNED_SQL, [("done", None, e) for e, _, _ in due])
        results: list[tuple[int, Delivered]] = []
        while True:
            rnd = await self.outbox.settle(results, now=now + 30, limit=64)
            if not rnd.claimed:
                break
            results = [(c.id, Delivered(201, _event_id(self.rng))) for c in rnd.claimed]


async def advance_compacted(
    conn: aiosqlite.Connection, channel_id: int, index: int, to: float, *, start: float
) -> None:
    """Channel ``channel_id`` compacted up to ``to`` (a whole minute), as ``compact()`` would
    leave it had it read ``counter(index, t)`` every 10 s from ``start`` (a whole minute) on:
    a point per whole minute, the raw rows before the hand-over sample (``to`` - 10 s)
    gone, that sample kept."""
    state = await CompactionState.load(conn, channel_id)
    first = state.through if math.isfinite(state.through) else start
    if first >= to:
        return
    points = [(channel_id, m, counter(index, m)) for m in _minutes(first, to)]
    await conn.executemany(
        "INSERT INTO readings_minute (channel_id, at, value) VALUES (?, ?, ?) "
        "ON CONFLICT (channel_id, at) DO NOTHING",
        points,
    )
    handover = to - STEP
    await conn.execute(
        "DELETE FROM readings WHERE channel_id = ? AND at < ?", (channel_id, handover)
    )
    await conn.execute(
        "INSERT INTO readings (channel_id, at, value, dropped) VALUES (?, ?, ?, 0) "
        "ON CONFLICT (channel_id, at) DO NOTHING",
        (channel_id, handover, counter(index, handover)),
    )
    value = counter(index, handover)
    await CompactionState(to, handover, 0.0, value, handover).save(conn, channel_id)


def _minutes(first: float, to: float) -> range:
    return range(int(first), int(to), 60)


async def write_raw(readings: ReadingsStore, channels: int, start: float, end: float) -> None:
    """Readings every 10 s in ``[start, end)`` through ``ReadingsStore.write``, an hour a call."""
    t = start
    while t < end:
        stop = min(t + 3600, end)
        batch = [
            Reading(f"c{i:02d}", at, counter(i, at))
            for at in (t + k * STEP for k in range(int((stop - t) // STEP)))
            for i in range(channels)
        ]
        await readings.write(ADAPTER, batch)
        t = stop


async def generate(
    out: Path, days: int, channels: int, *, resume: bool, retain: bool = True
) -> float:
    metering = MeteringConfig()
    async with open_database(out) as db:
        await db.conn.execute("PRAGMA synchronous = OFF")
        meta = Meta(db)
        stored = await db.fetchone("SELECT value FROM meta WHERE key = ?", (NOW_KEY,))
        if resume != (stored is not None):
            raise SystemExit(
                f"{out}: {'no earlier run to continue' if resume else 'not empty: use --continue'}"
            )
        begin = float(json.loads(stored[0])) if stored else START
        end = begin + days * DAY
        rng = random.Random(int(begin))
        readings = ReadingsStore(db)
        await readings.register_channels(
            ADAPTER, [Channel(f"c{i:02d}", ChannelKind.ENERGY, Unit.KWH) for i in range(channels)]
        )
        ids = {i: (await readings.channel((ADAPTER, f"c{i:02d}"))).id for i in range(channels)}
        site = Site(db, readings, rng)
        retention = Retention(db, pause=0.0)
        raw_start = math.floor((end - metering.raw_retention - 3600) / 60) * 60
        keep_from = end - metering.retention - 2 * DAY  # older minutes would be expired anyway
        async with readings.writer():
            day = begin
            while day < end:
                await site.events(day)
                await site.reports(day + DAY + 3600)
                horizon = min(day + DAY, raw_start)
                if day + DAY > keep_from and horizon > day:
                    async with db.write() as conn:
                        for i, channel_id in ids.items():
                            await advance_compacted(conn, channel_id, i, horizon, start=day)
                    await readings.compact(
                        now=day + DAY,
                        raw_retention=metering.raw_retention,
                        retention=metering.retention,
                        max_gap=metering.max_gap,
                    )
                if retain:
                    tally = await retention.run_once(now=day + DAY + 7200)
                    for rule, ms in tally.longest_ms.items():
                        LONGEST[rule] = max(LONGEST.get(rule, 0.0), ms)
                await db.truncate_wal()
                day += DAY
            await write_raw(readings, channels, raw_start, end)
        await readings.compact(
            now=end,
            raw_retention=metering.raw_retention,
            retention=metering.retention,
            max_gap=metering.max_gap,
        )
        if retain:
            await retention.run_once(now=end)
        await meta.put(**{NOW_KEY: end})
        await db.truncate_wal()
    return end


async def _probe(db: Database, stop: asyncio.Event, waits: list[float]) -> None:
    """A stand-in for the webhook: one small write every 10 ms; how long each took."""
    n = 0
    while not stop.is_set():
        started = time.perf_counter()
        await db.write_one(
            "INSERT INTO meta (key, value) VALUES ('bench.probe', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(n),),
        )
        waits.append((time.perf_counter() - started) * 1000)
        n += 1
        await asyncio.sleep(0.01)


def _spread(name: str, waits: list[float]) -> str:
    ranked = sorted(waits)
    pick = lambda q: ranked[min(len(ranked) - 1, int(q * len(ranked)))]  # noqa: E731
    return (
        f"{name}: {len(ranked)} writes, p50 {pick(0.5):.2f} ms, p99 {pick(0.99):.2f} ms, "
        f"max {ranked[-1]:.2f} ms"
    )


async def catch_up(out: Path, now: float) -> None:
    """One retention pass with the gateway's settings (synchronous=FULL, 5 ms pauses), timed,
    beside a probe writer; the probe alone for as long before it."""
    async with open_database(out) as db:
        stop, alone = asyncio.Event(), []
        probe = asyncio.create_task(_probe(db, stop, alone))
        await asyncio.sleep(3.0)
        stop.set()
        await probe
        stop, beside = asyncio.Event(), []
        probe = asyncio.create_task(_probe(db, stop, beside))
        started = time.perf_counter()
        tally = await Retention(db).run_once(now=now)
        took = time.perf_counter() - started
        stop.set()
        await probe
        await db.truncate_wal()
    print(
        f"catch-up pass: {took:.1f} s, {tally.slices} slices, longest (ms) {tally.longest_ms}, "
        f"{tally.pages_freed} pages given back; rows {tally.rows}"
    )
    print(_spread("probe writer without retention (3 s)", alone))
    print(_spread("probe writer during the catch-up pass", beside))


async def check_oldest_report(out: Path) -> None:
    """The oldest delivered report the ledger keeps (the first month's, on a simulated year;
    the ledger keeps twelve months) is refused when queued again and still shows its id."""
    async with open_database(out) as db:
        row = await db.fetchone(
            "SELECT * FROM outbox WHERE state = 'delivered' ORDER BY created_at, id LIMIT 1"
        )
        if row is None:
            print("no delivered report is left: FAIL")
            return
        item = (await Outbox(db).find(str(row["id"])))[0]
        again = await Outbox(db).enqueue(
            event_id=item.event_id,
            kind=item.kind,
            body=b'{"eventId": "requeued"}',
            source="manual",
            now=time.time(),
        )
        print(
            f"oldest report kept, of {_iso(row['created_at'])[:7]}: {item.event_id} ({item.kind}), "
            f"report id {item.report_id}, body {'dropped' if item.body_dropped_at else 'kept'}, "
            f"kWh totals {item.kwh_totals}; "
            f"queued again: {'ACCEPTED (FAIL)' if again else 'refused (ok)'}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--continue", dest="resume", action="store_true", help="add days to --out")
    parser.add_argument(
        "--no-retention",
        dest="retain",
        action="store_false",
        help="never run retention (a gateway from before it); see --catch-up",
    )
    parser.add_argument(
        "--catch-up",
        action="store_true",
        help="then one retention pass as the gateway runs it, timed, with a writer probing "
        "the write turn every 10 ms (and the same probe before it, without retention)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    end = asyncio.run(
        generate(args.out, args.days, args.channels, resume=args.resume, retain=args.retain)
    )
    took = time.perf_counter() - started
    print(f"simulated up to {_iso(end)} ({args.days} days) in {took:.1f} s")
    if LONGEST:
        print(f"daily retention passes (synchronous=OFF here), longest slice in ms: {LONGEST}")
    for line in stats_text(database_stats(args.out, now=end)):
        print(line)
    if args.catch_up:
        asyncio.run(catch_up(args.out, end))
        for line in stats_text(database_stats(args.out, now=end)):
            print(line)
    asyncio.run(check_oldest_report(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
