"""Attack on issue 12's retention (item 1): a system clock far in the future.

The scheduler holds reports back while the clock disagrees with the API's ``Date`` (or
reads before this release); retention trusted the same clock blindly, and from its first
pass at start: a clock 400 days ahead dropped this month's delivered report's body (its
month not closed), a report Spark refused yesterday (quarantined, not yet seen by an
operator) and the event's payload. When the clock came back they were gone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway import app
from gateway.app import Gateway
from gateway.plugin import Channel, ChannelKind, Reading, Unit
from gateway.sandbox import Sandbox, run_sandbox
from gateway.store.database import Database, open_database
from gateway.store.inbox import Inbox, NewEvent
from gateway.store.outbox import Outbox
from gateway.store.outbox_states import Dead, Delivered
from gateway.store.readings import ReadingsStore
from tests.kit.gateway import make_config, report_body, sandbox_config

DAY = 86400.0


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox() as sb:
        yield sb


def _next_month(now: float) -> float:
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp()


async def _this_months_reports(db: Database, now: float) -> None:
    outbox, inbox = Outbox(db), Inbox(db)
    for event_id in ("ev-delivered", "ev-refused"):
        payload = json.dumps({"payloadType": "PriceCurve", "targets": []}).encode()
        await inbox.add(NewEvent(event_id, "PriceCurve", None, payload), via="webhook", at=now)
        await db.write_one("UPDATE events SET plan_state = 'done' WHERE event_id = ?", (event_id,))
        assert await outbox.enqueue(
            event_id=event_id,
            kind="EnergyUsage",
            body=report_body(event_id),
            source="planner",
            now=now,
            deadline=_next_month(now),
        )
    delivered, refused = await outbox.claim(now=now, limit=2)
    await outbox.record(
        [(delivered.id, Delivered(201, "spark-1")), (refused.id, Dead(400, "refused"))],
        now=now,
    )


async def _bodies(path: Path) -> dict[str, bytes]:
    async with open_database(path) as db:
        found = {item.event_id: item.body for item in await Outbox(db).items(limit=10)}
        for event_id in list(found):
            event = await Inbox(db).get(event_id)
            assert event is not None
            found[f"{event_id} payload"] = event.payload
    return found


async def test_retention_does_not_trust_a_clock_far_ahead(sandbox: Sandbox, tmp_path: Path) -> None:
    config = make_config(
        sandbox_config(sandbox, tmp_path / "state", extra={"poll": {"interval": "1s"}})
    )
    now = time.time()
    async with open_database(config.db_path) as db:
        await _this_months_reports(db, now - DAY)
    before = await _bodies(config.db_path)
    assert all(before.values()) and len(before) == 4
    gateway = Gateway(config, clock=lambda: time.time() + 400 * DAY)
    task = asyncio.create_task(gateway.run())
    try:
        await asyncio.wait_for(gateway.ready.wait(), 30)
        await asyncio.sleep(2.0)  # retention's first pass comes at start; the poller's too
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await _bodies(config.db_path) == before


async def test_retention_runs_once_the_apis_clock_agrees(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "RETAIN_RECHECK", 0.2)
    config = make_config(
        sandbox_config(sandbox, tmp_path / "state", extra={"poll": {"interval": "1s"}})
    )
    async with open_database(config.db_path) as db:
        await _this_months_reports(db, time.time() - 100 * DAY)  # months closed long ago
    gateway = Gateway(config)
    task = asyncio.create_task(gateway.run())
    try:
        await asyncio.wait_for(gateway.ready.wait(), 30)
        deadline = time.monotonic() + 10
        while any((await _bodies(config.db_path)).values()):
            assert time.monotonic() < deadline, await _bodies(config.db_path)
            await asyncio.sleep(0.2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_readings_are_not_expired_by_a_clock_far_ahead(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    config = make_config(
        sandbox_config(sandbox, tmp_path / "state", extra={"poll": {"interval": "1s"}})
    )
    now = time.time()
    async with open_database(config.db_path) as db:
        store = ReadingsStore(db)
        await store.register_channels("meter", [Channel("energy", ChannelKind.ENERGY, Unit.KWH)])
        readings = [Reading("energy", now - 3600 + 60 * i, 100.0 + i) for i in range(60)]
        async with store.writer():
            await store.write("meter", readings)
    gateway = Gateway(config, clock=lambda: time.time() + 400 * DAY)
    task = asyncio.create_task(gateway.run())
    try:
        await asyncio.wait_for(gateway.ready.wait(), 30)
        await asyncio.sleep(2.0)  # compaction's first pass comes at start
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    async with open_database(config.db_path) as db:
        row = await db.fetchone(
            "SELECT (SELECT COUNT(*) FROM readings) + (SELECT COUNT(*) FROM readings_minute)"
        )
    assert row is not None and row[0] > 0
