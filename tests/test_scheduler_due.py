"""The scheduler keeps each open event's next due time (issue 12, item 3).

The agenda, pure. Then the scheduler on a real SQLite file with a given clock and the real
participant (counted: each time it is asked is a time the event was advanced): an event is
not touched before its due time, and it is advanced at once for each reason that makes it
due: its job falls due, it arrives (or ``wake(event_id)``), readings that complete an
interval arrive while its report waits for them, the operator overrides it from another
connection (``ecgw plan override``), its LPC decisions are taken, the clock is wrong or
steps back, it is released from quarantine (``ecgw events replan``), a pass failed. A burst
is planned in batches: one commit per ``BATCH`` events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Collection, Mapping
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from gateway import wire
from gateway.config import Config, load_config
from gateway.control.decider import Decider
from gateway.control.participant import Participant
from gateway.control.strategies import load_strategies
from gateway.metering.latest import LatestReadings
from gateway.reports import scheduler as scheduler_module
from gateway.reports.clock import ServerClock
from gateway.reports.due import Agenda
from gateway.reports.planner import ENERGY_USAGE, LOCATION_ACK
from gateway.reports.scheduler import PASS_EVERY, ReportJobs, ReportScheduler
from gateway.store.batch import WriteBatch
from gateway.store.control import ControlStore
from gateway.store.database import Database, open_database
from gateway.store.inbox import Inbox
from gateway.store.outbox import Outbox
from gateway.store.readings import ReadingsStore
from tests.kit.gateway import toml
from tests.test_report_what_was_done import (
    QUARTER,
    RETRY,
    T0,
    Clock,
    curve,
    lpc,
    store_event,
    store_readings,
)

DUE = T0 + 2 * QUARTER + 300.0  # the usage report of curve() / lpc(): last end + grace
BEFORE = T0 - 60.0  # the events arrive here


# --- the agenda, pure -------------------------------------------------------------------------


def test_the_agenda_gives_the_due_events_earliest_first_and_keeps_the_rest() -> None:
    agenda = Agenda()
    agenda.set("c", 30.0)
    agenda.set("a", 10.0)
    agenda.set("b", 20.0)
    assert agenda.earliest() == 10.0
    assert agenda.take_due(20.0) == ["a", "b"]
    assert len(agenda) == 1 and "c" in agenda and agenda.earliest() == 30.0
    assert agenda.take_due(29.9) == []


def test_a_new_time_replaces_the_old_one_and_sooner_only_brings_it_forward() -> None:
    agenda = Agenda()
    agenda.set("a", 10.0)
    agenda.set("a", 50.0)  # later: the old entry is stale, not due at 10
    assert agenda.take_due(10.0) == [] and agenda.due_at("a") == 50.0
    agenda.sooner("a", 60.0)
    assert agenda.due_at("a") == 50.0
    agenda.sooner("a", 5.0)
    assert agenda.take_due(5.0) == ["a"] and len(agenda) == 0 and agenda.earliest() is None


def test_a_dropped_event_is_never_due_and_the_heap_does_not_grow_without_bound() -> None:
    agenda = Agenda()
    agenda.set("a", 1.0)
    agenda.drop("a")
    assert agenda.take_due(100.0) == [] and agenda.earliest() is None
    for i in range(10_000):
        agenda.set("b", float(i))
    assert len(agenda._heap) <= 2 * len(agenda) + 64  # the bound itself
    assert agenda.take_due(1e9) == ["b"]


# --- the scheduler on a real database ------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "ecgw.toml"
    table = {
        "gateway": {"state_dir": "state"},
        "reporting": {"grace": "5m", "max_wait": "1h"},
        "metering": {"max_gap": "10m"},
        "adapters": {"tank": {"type": "simulated"}, "heater": {"type": "simulated"}},
        "resources": [
            {"resource_id": "hwt-1", "location_id": "loc-1", "adapter": "tank"},
            {"resource_id": "heat-1", "location_id": "loc-1", "adapter": "heater"},
        ],
        "locations": [{"location_id": "loc-1", "meter_point_id": "mp-1", "adapter": "tank"}],
    }
    path.write_text(toml(table))
    return load_config(str(path))


class Counted(Participant):
    """The real participant, counting what it is asked per event (each ask is an advance)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.asked: dict[str, int] = {}
        self.broken = False

    def _count(self, event_id: str) -> None:
        self.asked[event_id] = self.asked.get(event_id, 0) + 1
        if self.broken:
            raise RuntimeError("the strategy plugin crashed")

    async def lpc_decisions(
        self, event_id: str, payload: wire.LocationLPC | wire.ResourceLPC, *, now: float
    ) -> dict[str, tuple[str, str]]:
        self._count(event_id)
        return await super().lpc_decisions(event_id, payload, now=now)

    async def schedule(
        self,
        event_id: str,
        curve: wire.PriceCurve,
        *,
        now: float,
        batch: WriteBatch | None = None,
        scheduled: Collection[str] | None = None,
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        self._count(event_id)
        await super().schedule(
            event_id, curve, now=now, batch=batch, scheduled=scheduled, overrides=overrides
        )


def make(
    db: Database, config: Config, clock: Clock, server_clock: ServerClock | None = None
) -> tuple[ReportScheduler, Counted]:
    store = ControlStore(db)
    readings = ReadingsStore(db)
    latest = LatestReadings(clock=clock)
    decider = Decider(config, store, readings, latest, clock=clock)
    participant = Counted(config, store, decider, load_strategies()[0])
    sched = ReportScheduler(
        db=db,
        readings=readings,
        config=config,
        server_clock=server_clock or ServerClock(clock),
        on_queued=lambda: None,
        clock=clock,
        retry_every=RETRY,
        participant=participant,
    )
    return sched, participant


async def state_of(db: Database, event_id: str) -> tuple[str, str | None]:
    event = await Inbox(db).get(event_id)
    assert event is not None
    return event.plan_state, event.plan_note


async def test_an_open_event_is_not_touched_before_its_report_falls_due(config: Config) -> None:
    clock = Clock(BEFORE)
    async with open_database(config.db_path) as db:
        await store_event(db, "pc", curve("hwt-1"), at=BEFORE)
        sched, asked = make(db, config, clock)
        assert await sched.pass_once() == DUE  # planned; next due when its report is
        assert await state_of(db, "pc") == ("planned", None)
        assert asked.asked == {"pc": 1} and sched.due_at("pc") == DUE
        for now in (BEFORE + PASS_EVERY, T0, T0 + QUARTER, DUE - 1):  # passes in between
            clock.now = now
            assert await sched.pass_once() == DUE
        assert asked.asked == {"pc": 1}  # not re-planned, not asked again
        await store_readings(db, "tank", T0 - 60, T0 + 3 * QUARTER)
        clock.now = DUE + 600  # due, and past the edge's max_gap
        assert await sched.pass_once() == DUE + 600  # queued: look once more, to close it
        assert asked.asked == {"pc": 2}
        assert [(r.event_id, r.kind) for r in await Outbox(db).items()] == [("pc", ENERGY_USAGE)]
        assert await sched.pass_once() is None
        assert (await state_of(db, "pc"))[0] == "done" and sched.open_events == 0


async def test_a_new_event_and_a_woken_one_are_advanced_at_the_next_pass(config: Config) -> None:
    clock = Clock(BEFORE)
    async with open_database(config.db_path) as db:
        await store_event(db, "first", curve("hwt-1"), at=BEFORE)
        sched, asked = make(db, config, clock)
        await sched.pass_once()
        clock.now = BEFORE + 1
        await store_event(db, "second", curve("hwt-1"), at=BEFORE + 1)  # stored, not woken
        await sched.pass_once()
        assert asked.asked == {"first": 1, "second": 1}
        assert await state_of(db, "second") == ("planned", None)
        sched.wake("first")
        clock.now = BEFORE + 2
        await sched.pass_once()
        assert asked.asked == {"first": 2, "second": 1}


async def test_a_report_waiting_for_the_reading_after_its_edge_is_built_when_it_comes(
    config: Config,
) -> None:
    """Read up to just before the last edge (a restart): the report waits, looked at again
    every PASS_EVERY, and is built at the first look after a reading brackets the edge."""
    edge = T0 + 2 * QUARTER
    clock = Clock(DUE)
    async with open_database(config.db_path) as db:
        await store_event(db, "pc", curve("hwt-1"), at=BEFORE)
        await store_readings(db, "tank", T0 - 60, edge - 30)
        sched, asked = make(db, config, clock)
        assert await sched.pass_once() == DUE + PASS_EVERY
        assert await Outbox(db).items() == []
        clock.now = DUE + 1  # not yet due again: not touched
        assert await sched.pass_once() == DUE + PASS_EVERY and asked.asked == {"pc": 1}
        await store_readings(db, "tank", edge + 30, edge + 30)  # the reading after the edge
        clock.now = DUE + PASS_EVERY
        await sched.pass_once()
        (report,) = await Outbox(db).items()
        assert report.kind == ENERGY_USAGE and asked.asked == {"pc": 2}
        assert json.loads(report.body)["payloads"][0]["points"][1]["kiloWattHours"] > 0


async def test_a_report_with_a_gap_is_built_again_every_retry(config: Config) -> None:
    clock = Clock(DUE + 600)
    async with open_database(config.db_path) as db:
        await store_event(db, "gap", curve("hwt-1"), at=BEFORE)
        await store_readings(db, "tank", T0 - 60, T0 + QUARTER + 60)  # the second: none yet
        sched, asked = make(db, config, clock)
        assert await sched.pass_once() == DUE + 600 + RETRY
        clock.now = DUE + 600 + RETRY - 1
        await sched.pass_once()
        assert asked.asked == {"gap": 1}
        await store_readings(db, "tank", T0 + QUARTER + 120, T0 + 3 * QUARTER)
        clock.now = DUE + 600 + RETRY
        await sched.pass_once()
        assert [r.kind for r in await Outbox(db).items()] == [ENERGY_USAGE]


async def test_an_override_from_another_connection_replans_the_event_before_its_due_time(
    config: Config,
) -> None:
    clock = Clock(BEFORE)
    async with open_database(config.db_path) as db:
        await store_event(db, "pc", curve("hwt-1", "heat-1"), at=BEFORE)
        sched, asked = make(db, config, clock)
        await sched.pass_once()
        before = {s.resource_id: s.participation for s in await ControlStore(db).schedules("pc")}
        assert before == {"hwt-1": "report", "heat-1": "report"}
        async with open_database(config.db_path) as cli:  # as `ecgw plan override` does
            await ControlStore(cli).override("pc", "heat-1", "off", now=BEFORE)
        clock.now = BEFORE + 1
        await sched.pass_once()
        assert asked.asked == {"pc": 2}
        after = {s.resource_id: s.participation for s in await ControlStore(db).schedules("pc")}
        assert after == {"hwt-1": "report", "heat-1": "off"}  # the schedule made again
        clock.now = BEFORE + 2
        await sched.pass_once()
        assert asked.asked == {"pc": 2}  # the same override again: nothing to do
        async with open_database(config.db_path) as cli:
            await ControlStore(cli).override("pc", "hwt-1", "off", now=BEFORE)
        clock.now = BEFORE + 3
        assert await sched.pass_once() is None  # every resource off: no report at all
        state, note = await state_of(db, "pc")
        assert state == "no_report" and note is not None and asked.asked == {"pc": 3}


async def test_lpc_decisions_are_taken_when_the_event_arrives_and_acknowledged_at_once(
    config: Config,
) -> None:
    clock = Clock(BEFORE)
    async with open_database(config.db_path) as db:
        await store_event(db, "lpc", lpc(), at=BEFORE)
        sched, asked = make(db, config, clock)
        assert await sched.pass_once() == BEFORE  # the acknowledgement queued: look again
        (decision,) = await ControlStore(db).decisions("lpc")  # taken, stored
        (ack,) = await Outbox(db).items()
        assert ack.kind == LOCATION_ACK
        declined = json.loads(ack.body)["payloads"][0]["declinedTargets"]
        assert decision.decision == "declined" and len(declined) == 1  # the meter is silent
        clock.now = BEFORE + 1
        assert await sched.pass_once() is None  # nothing acknowledged: no usage report
        assert (await state_of(db, "lpc"))[0] == "done"
        clock.now = DUE + 1
        await sched.pass_once()
        assert asked.asked == {"lpc": 2}


async def test_a_clock_problem_holds_reports_back_and_its_end_releases_them(
    config: Config,
) -> None:
    clock = Clock(DUE + 600)
    server = ServerClock(clock)
    server.observe(formatdate(clock.now + 3 * 3600, usegmt=True))  # we are 3 hours behind
    async with open_database(config.db_path) as db:
        await store_event(db, "pc", curve("hwt-1"), at=BEFORE)
        await store_readings(db, "tank", T0 - 60, T0 + 3 * QUARTER)
        sched, asked = make(db, config, clock, server)
        assert await sched.pass_once() == DUE + 600 + PASS_EVERY
        assert "held back" in str((await state_of(db, "pc"))[1])
        assert await Outbox(db).items() == []
        clock.now += 2  # the Date header is sampled at most once a second
        server.observe(formatdate(clock.now, usegmt=True))  # the clock is fixed
        await sched.pass_once()  # the problem cleared: every open event looked at now
        assert [r.kind for r in await Outbox(db).items()] == [ENERGY_USAGE]
        assert asked.asked == {"pc": 2}


async def test_a_clock_that_steps_back_rebuilds_the_agenda(config: Config) -> None:
    """Due times computed from a clock that ran ahead would come late: after the clock
    went back, every open event is looked at again (and due when it should be)."""
    late = DUE + 1800.0  # the clock runs half an hour ahead
    clock = Clock(late)
    async with open_database(config.db_path) as db:
        await store_event(db, "gap", curve("hwt-1"), at=BEFORE)
        await store_readings(db, "tank", T0 - 60, T0 + QUARTER + 60)  # a gap: it waits
        sched, asked = make(db, config, clock)
        assert await sched.pass_once() == late + RETRY
        clock.now = DUE + 600  # fixed: a day back
        assert await sched.pass_once() == DUE + 600 + RETRY  # not `late + RETRY`
        assert asked.asked == {"gap": 2}


async def test_an_event_released_from_quarantine_is_planned_again(config: Config) -> None:
    clock = Clock(BEFORE)
    async with open_database(config.db_path) as db:
        await store_event(db, "pc", curve("hwt-1"), at=BEFORE)
        sched, asked = make(db, config, clock)
        asked.broken = True
        assert await sched.pass_once() is None
        state, note = await state_of(db, "pc")
        assert state == "invalid" and "the strategy plugin crashed" in str(note)
        asked.broken = False  # the operator fixed the cause
        clock.now = BEFORE + 1
        await sched.pass_once()
        assert asked.asked == {"pc": 1}  # set aside: not retried by itself
        async with open_database(config.db_path) as cli:  # as `ecgw events replan` does
            assert await ReportJobs(cli).release("pc")
        clock.now = BEFORE + 2
        assert await sched.pass_once() == DUE
        assert await state_of(db, "pc") == ("planned", None) and asked.asked == {"pc": 2}


async def test_after_a_failed_pass_every_open_event_is_looked_at_again(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(BEFORE)
    async with open_database(config.db_path) as db:
        for name in ("a", "b"):
            await store_event(db, name, curve("hwt-1"), at=BEFORE)
        sched, asked = make(db, config, clock)
        await sched.pass_once()
        sched.wake("a")
        sched.wake("b")

        async def broken(db: Database) -> None:
            raise scheduler_module.StoreError("disk I/O error")

        monkeypatch.setattr(WriteBatch, "commit", lambda self, db: broken(db))
        with pytest.raises(scheduler_module.StoreError):
            await sched.pass_once()
        monkeypatch.undo()
        clock.now = BEFORE + 1
        assert await sched.pass_once() == DUE
        assert asked.asked == {"a": 3, "b": 3} and sched.open_events == 2


async def test_a_burst_is_planned_in_batches_that_share_a_commit(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_module, "BATCH", 50)
    clock = Clock(BEFORE)
    async with open_database(config.db_path) as db:
        new = [
            wire_event(f"pc-{i:03d}", curve("hwt-1") if i != 7 else b'{"payloadType": 1}')
            for i in range(120)
        ]
        await Inbox(db).add_many(new, via="webhook", at=BEFORE)
        sched, asked = make(db, config, clock)
        commits = 0

        def count(sql: str) -> None:
            nonlocal commits
            commits += sql.startswith("COMMIT")

        await db.conn.set_trace_callback(count)
        assert await sched.pass_once() == DUE
        await db.conn.set_trace_callback(None)
        assert commits == 3  # 120 events, 50 a batch: their plans and schedules together
        states = {e.event_id: e.plan_state for e in await Inbox(db).recent(limit=200)}
        assert states.pop("pc-007") == "invalid"  # the bad one fails alone
        assert set(states.values()) == {"planned"} and len(states) == 119
        assert len(asked.asked) == 119
        scheduled = [len(await ControlStore(db).schedules(e)) for e in states]
        assert scheduled == [1] * 119


def wire_event(event_id: str, payload: bytes) -> Any:
    from gateway.store.inbox import NewEvent

    return NewEvent(event_id=event_id, payload_type="PriceCurve", created_at=None, payload=payload)


async def test_a_burst_is_planned_once_it_pauses_and_a_steady_stream_at_most_lull_later(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Intake goes first: while events keep coming (each wakes the scheduler) none is planned;
    a pause of LULL plans them all at once. A stream with no pause is planned LULL_AT_MOST
    after its first event at the latest."""
    monkeypatch.setattr(scheduler_module, "LULL", 0.1)
    monkeypatch.setattr(scheduler_module, "LULL_AT_MOST", 1.0)
    clock = Clock(BEFORE)
    async with open_database(config.db_path) as db:
        sched, asked = make(db, config, clock)
        await sched.pass_once()  # the agenda loaded: nothing open
        runner = asyncio.create_task(sched.run())
        try:
            loop = asyncio.get_running_loop()

            async def arrive(event_id: str) -> None:
                await store_event(db, event_id, curve("hwt-1"), at=BEFORE)
                sched.wake(event_id)

            for i in range(8):  # a burst: an event every 30 ms for 240 ms
                await arrive(f"burst-{i}")
                await asyncio.sleep(0.03)
                assert asked.asked == {}, f"planned during the burst, after event {i}"
            last = loop.time()
            while len(asked.asked) < 8:
                assert loop.time() < last + 2.0, "the burst was not planned after its pause"
                await asyncio.sleep(0.01)
            assert loop.time() >= last + 0.1 - 0.03  # not before the pause
            first = loop.time()
            for i in range(60):  # a stream without a pause of 100 ms
                await arrive(f"stream-{i}")
                await asyncio.sleep(0.04)
                if any(k.startswith("stream") for k in asked.asked):
                    break
            planned_after = loop.time() - first
            assert 0.9 <= planned_after <= 1.6, planned_after  # LULL_AT_MOST after its first
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


async def test_a_batch_queues_its_reports_in_one_statement_and_a_queued_one_stays_refused(
    config: Config,
) -> None:
    """Every report of a batch goes in with one INSERT (and its job rows with one more);
    a report already queued (same event and kind) is refused there, the rest go in."""
    from gateway.store.outbox import NewReport

    async with open_database(config.db_path) as db:
        outbox = Outbox(db)
        assert await outbox.enqueue(event_id="e-1", kind="K", body=b"{}", source="x", now=1.0)
        batch = WriteBatch()
        for i in range(1, 1201):  # more than one statement's worth (500 a statement)
            report = NewReport(f"e-{i}", "K", b'{"i": %d}' % i, "planner", 2.0, 9.0)
            batch.queue_report(report, note=None)
        statements: list[str] = []
        await db.conn.set_trace_callback(statements.append)
        await batch.commit(db)
        await db.conn.set_trace_callback(None)
        inserts = {s for s in statements if s.startswith("INSERT INTO outbox")}
        assert len(inserts) == 3  # 500 + 500 + 200
        assert len(batch.queued) == 1199 and ("e-1", "K") not in batch.queued
        assert (await db.fetchall("SELECT COUNT(*) FROM outbox"))[0][0] == 1200
        first = await db.fetchall("SELECT body FROM outbox WHERE event_id = 'e-1'")
        assert [bytes(r[0]) for r in first] == [b"{}"]  # the report queued before is kept
        jobs = await db.fetchall("SELECT COUNT(*) FROM report_jobs WHERE outcome = 'queued'")
        assert jobs[0][0] == 1200
