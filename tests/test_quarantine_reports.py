"""Report jobs fail alone: a poison event or job is set aside with its reason, the rest go on.

Real SQLite files; the poison is stored exactly as the webhook or the poller stores an event.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway.config import Config, load_config
from gateway.plugin import Channel, ChannelKind, Reading, Unit
from gateway.reports.clock import ServerClock
from gateway.reports.scheduler import ReportJobs, ReportScheduler
from gateway.sandbox import Sandbox, run_sandbox
from gateway.store.database import Database, open_database
from gateway.store.inbox import Inbox, NewEvent
from gateway.store.outbox import Outbox
from gateway.store.readings import ReadingsStore
from tests.kit.gateway import make_config, running, sandbox_config, toml, wait_until
from tests.kit.proc import ecgw

T0 = 1_795_000_020.0  # 2026-11-18, a whole minute


def price_curve(resource: str, stamps: list[str], resolution: str = "00:15:00") -> bytes:
    return json.dumps(
        {
            "payloadType": "PriceCurve",
            "priceArea": "NO5",
            "targets": [{"resourceId": resource, "locationId": "loc-1"}],
            "priceCurveDelta": {
                "resolution": resolution,
                "points": [{"timestamp": s, "price": 1.0} for s in stamps],
            },
        }
    ).encode()


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


POISONS = {
    "year-9999": price_curve("hwt-1", ["9999-12-31T23:00:00Z"], "01:00:00"),
    "huge-resolution": price_curve("hwt-1", [iso(T0)], "99999999.00:00:00"),
}


def config_table(state_dir: str) -> dict[str, Any]:
    return {
        "gateway": {"state_dir": state_dir},
        "adapters": {"tank": {"type": "simulated"}, "odd": {"type": "simulated"}},
        "resources": [
            {"resource_id": "hwt-1", "location_id": "loc-1", "adapter": "tank"},
            {"resource_id": "odd-1", "location_id": "loc-1", "adapter": "odd"},
        ],
    }


async def store_events(db: Database, events: dict[str, bytes]) -> None:
    inbox = Inbox(db)
    for event_id, payload in events.items():
        new = NewEvent(
            event_id=event_id, payload_type="PriceCurve", created_at=None, payload=payload
        )
        await inbox.add(new, via="webhook", at=T0)


async def store_readings(db: Database, t0: float = T0) -> None:
    """2 kW for 30 minutes on ``tank``; ``odd`` has a counter whose stored wrap is poison."""
    store = ReadingsStore(db)
    energy = Channel("energy", ChannelKind.ENERGY, Unit.KWH)
    await store.register_channels("tank", [energy])
    await store.register_channels("odd", [energy])
    rows = [Reading("energy", t0 - 60 + 60 * i, 2.0 * i / 60) for i in range(33)]
    async with store.writer():
        await store.write("tank", rows)
        await store.write("odd", [*rows[:5], Reading("energy", t0 + 240, 0.0), *rows[6:]])
    async with db.write() as conn:  # a database edited by hand, or written by a buggy version
        await conn.execute("UPDATE channels SET wrap = -1 WHERE adapter = 'odd'")


@pytest.fixture
async def setup(tmp_path: Path) -> tuple[Path, Config]:
    path = tmp_path / "ecgw.toml"
    path.write_text(toml(config_table("state")))
    config = load_config(str(path))
    async with open_database(config.db_path) as db:
        await store_events(db, POISONS)
        await store_events(
            db,
            {
                "normal": price_curve("hwt-1", [iso(T0), iso(T0 + 900)]),
                "odd-job": price_curve("odd-1", [iso(T0), iso(T0 + 900)]),
            },
        )
        await store_readings(db)
    return path, config


class Ticks:
    """A clock that counts its readings: each scheduler pass reads it first."""

    def __init__(self) -> None:
        self.count = 0
        self.moved = asyncio.Event()

    def __call__(self) -> float:
        self.count += 1
        self.moved.set()
        return time.time()

    async def reach(self, n: int) -> None:
        while self.count < n:
            self.moved.clear()
            await self.moved.wait()


def scheduler(db: Database, config: Config) -> ReportScheduler:
    return ReportScheduler(
        db=db,
        readings=ReadingsStore(db),
        config=config,
        server_clock=ServerClock(),
        on_queued=lambda: None,
        clock=time.time,
    )


async def test_poison_events_are_set_aside_and_the_normal_one_is_reported(
    setup: tuple[Path, Config],
) -> None:
    path, config = setup
    async with open_database(config.db_path) as db:
        with structlog.testing.capture_logs() as logs:
            await scheduler(db, config).pass_once()
        assert [r.event_id for r in await Outbox(db).items()] == ["normal"]
    for event_id in POISONS:
        shown = json.loads(ecgw("events", "show", event_id, config=path).stdout)
        assert shown["plan_state"] == "invalid", shown
        # Refused when the stored payload is decoded again (the wire's bounds name the field),
        # or, were it to get past them, when planning it overflows.
        note = shown["plan_note"]
        assert "payload.priceCurveDelta" in note or "OverflowError" in note, note
        assert any(e.get("event_id") == event_id and e["log_level"] == "error" for e in logs), logs
    normal = json.loads(ecgw("events", "show", "normal", config=path).stdout)
    assert normal["jobs"][0]["outcome"] == "queued"


async def test_a_job_that_raises_is_quarantined_with_its_reason(
    setup: tuple[Path, Config],
) -> None:
    _, config = setup
    async with open_database(config.db_path) as db:
        sched = scheduler(db, config)
        await sched.pass_once()  # plans and builds the due jobs
        await sched.pass_once()  # finds every job finished: the event is done
        (job,) = await ReportJobs(db).for_event("odd-job")
        event = await Inbox(db).get("odd-job")
    assert job["outcome"] == "invalid"
    assert "ValueError" in str(job["note"]) and "wrap" in str(job["note"])
    assert event is not None and event.plan_state == "done"
    assert "EnergyUsage report quarantined" in str(event.plan_note)


async def test_quarantined_work_is_not_retried_in_a_loop(setup: tuple[Path, Config]) -> None:
    _, config = setup
    async with open_database(config.db_path) as db:
        sched = scheduler(db, config)
        await sched.pass_once()
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                assert await sched.pass_once() is None
        assert [e for e in logs if e["log_level"] in ("error", "warning")] == []
        assert {e.event_id for e in await Inbox(db).by_plan_state("invalid")} == set(POISONS)


async def test_an_operator_releases_a_quarantined_job(setup: tuple[Path, Config]) -> None:
    _, config = setup
    async with open_database(config.db_path) as db:
        await scheduler(db, config).pass_once()
        async with db.write() as conn:  # the operator fixes the cause
            await conn.execute("UPDATE channels SET wrap = NULL WHERE adapter = 'odd'")
        assert await ReportJobs(db).release("odd-job")
        assert not await ReportJobs(db).release("normal")  # nothing quarantined there
        await scheduler(db, config).pass_once()
        (job,) = await ReportJobs(db).for_event("odd-job")
        assert job["outcome"] == "queued"
        assert {r.event_id for r in await Outbox(db).items()} == {"normal", "odd-job"}


async def test_ecgw_events_replan_releases_a_quarantined_event(
    setup: tuple[Path, Config],
) -> None:
    path, config = setup
    async with open_database(config.db_path) as db:
        await scheduler(db, config).pass_once()
    done = ecgw("events", "replan", "year-9999", config=path)
    assert done.returncode == 0, done.stderr
    assert "planned again" in done.stdout
    missing = ecgw("events", "replan", "no-such-event", config=path)
    assert missing.returncode == 2 and "no-such-event" in missing.stderr
    async with open_database(config.db_path) as db:
        event = await Inbox(db).get("year-9999")
        assert event is not None and (event.plan_state, event.plan_note) == ("new", None)
        await scheduler(db, config).pass_once()  # the same failure: set aside again
        await scheduler(db, config).pass_once()
        assert (await Inbox(db).get("year-9999")).plan_state == "invalid"  # type: ignore[union-attr]


async def test_a_pass_that_fails_outside_any_event_does_not_end_the_loop(
    setup: tuple[Path, Config],
) -> None:
    """A row the inbox cannot read (a hand-edited database: payload as TEXT) fails every
    pass; the scheduler says so and stays up instead of taking the gateway down."""
    _, config = setup
    async with open_database(config.db_path) as db:
        async with db.write() as conn:
            await conn.execute(
                "INSERT INTO events (event_id, payload_type, received_via, received_at, payload) "
                "VALUES ('text-row', 'PriceCurve', 'webhook', ?, 'not bytes')",
                (T0,),
            )
        ticks = Ticks()
        sched = ReportScheduler(
            db=db,
            readings=ReadingsStore(db),
            config=config,
            server_clock=ServerClock(),
            on_queued=lambda: None,
            clock=ticks,
        )
        with structlog.testing.capture_logs() as logs:
            task = asyncio.create_task(sched.run())
            async with asyncio.timeout(10):
                for n in (2, 3):  # each tick starts a pass: the loop outlived the one before
                    await ticks.reach(n - 1)
                    sched.wake()
                    await ticks.reach(n)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert len([e for e in logs if e["event"] == "reports.pass_failed"]) >= 2
    (failed, *_) = [e for e in logs if e["event"] == "reports.pass_failed"]
    assert failed["log_level"] == "error" and "TypeError" in failed["error"]


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox() as sb:
        yield sb


@pytest.mark.slow
async def test_the_gateway_stays_up_across_restarts_with_poison_stored(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    data = sandbox_config(sandbox, tmp_path / "state", extra=config_table(str(tmp_path / "state")))
    config = make_config(data)
    t1 = (time.time() // 900 - 4) * 900  # recent: raw readings, not yet compacted
    async with open_database(config.db_path) as db:
        await store_events(db, POISONS)
        await store_readings(db, t1)
    for restart in range(2):
        async with running(config) as gateway:
            if restart == 1:  # a normal event arriving after the poison, on the second start
                async with open_database(config.db_path) as db:
                    await store_events(db, {"normal": price_curve("hwt-1", [iso(t1)])})
                assert gateway._scheduler is not None
                gateway._scheduler.wake()
            await wait_until(functools.partial(_planned, config, restart), timeout=20)
            await asyncio.sleep(0.3)  # a few more loop turns: it must still be running
    async with open_database(config.db_path) as db:
        assert [r.event_id for r in await Outbox(db).items()] == ["normal"]


async def _planned(config: Config, restart: int) -> bool:
    async with open_database(config.db_path) as db:
        invalid = {e.event_id for e in await Inbox(db).by_plan_state("invalid")}
        queued = [r.event_id for r in await Outbox(db).items()]
    return invalid == set(POISONS) and (restart == 0 or queued == ["normal"])
