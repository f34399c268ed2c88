"""Retention: the rules (pure, hypothesis) and a real SQLite file (de-duplication kept, pending
reports never touched, space given back)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from gateway import render
from gateway.store.database import Database, hold_state_dir, open_database
from gateway.store.inbox import Inbox, NewEvent
from gateway.store.outbox import Outbox
from gateway.store.outbox_states import Dead, Delivered, Retry
from gateway.store.retention import Retention
from gateway.store.retention_policy import (
    LEDGER_KEEP,
    MONTH_MARGIN,
    QUARANTINE_KEEP,
    cutoffs,
    report_totals,
)
from gateway.store.schema import MIGRATIONS
from tests.kit.gateway import report_body
from tests.kit.proc import ecgw, offline_config

UTC = dt.UTC


def _first_of_month(year: int, month: int) -> dt.datetime:
    while month > 12:
        year, month = year + 1, month - 12
    return dt.datetime(year, month, 1, tzinfo=UTC)


moments = st.datetimes(
    min_value=dt.datetime(2001, 1, 1), max_value=dt.datetime(2090, 1, 1), timezones=st.just(UTC)
)


@given(now=moments, interval=moments)
def test_a_reports_body_goes_once_the_month_after_its_own_has_ended_seven_days_ago(
    now: dt.datetime, interval: dt.datetime
) -> None:
    deadline = _first_of_month(interval.year, interval.month + 1)  # as report_deadline says
    month_after_ends = _first_of_month(interval.year, interval.month + 2)
    dropped = deadline.timestamp() < cutoffs(now.timestamp()).reports
    assert dropped == (now >= month_after_ends + dt.timedelta(seconds=MONTH_MARGIN))


@given(now=moments, moment=moments)
def test_a_time_inside_a_month_goes_with_that_months_reports(
    now: dt.datetime, moment: dt.datetime
) -> None:
    month_after_ends = _first_of_month(moment.year, moment.month + 2)
    dropped = moment.timestamp() < cutoffs(now.timestamp()).months
    assert dropped == (now >= month_after_ends + dt.timedelta(seconds=MONTH_MARGIN))


@given(now=moments)
def test_quarantined_items_are_kept_at_least_as_long_and_ninety_days(now: dt.datetime) -> None:
    cut = cutoffs(now.timestamp())
    assert cut.quarantine <= cut.months < cut.reports <= now.timestamp() - MONTH_MARGIN
    assert cut.quarantine <= now.timestamp() - QUARANTINE_KEEP


def test_report_totals_sum_each_payloads_points() -> None:
    body = {
        "eventId": "e",
        "payloads": [
            {
                "payloadType": "EnergyUsage",
                "resourceId": "r1",
                "locationId": "l1",
                "points": [{"kiloWattHours": 0.1}, {"kiloWattHours": 0.2}],
            },
            {
                "payloadType": "LocationEnergyUsage",
                "locationId": "l1",
                "meterPointId": "m1",
                "points": [{"kiloWattHours": 3}],
            },
        ],
    }
    assert report_totals(json.dumps(body).encode()) == {
        "EnergyUsage r1/l1": 0.3,
        "LocationEnergyUsage l1/m1": 3.0,
    }
    ack = {"eventId": "e", "payloads": [{"payloadType": "LocationLPCAcknowledgement"}]}
    assert report_totals(json.dumps(ack).encode()) == {}
    assert report_totals(b"") is None
    assert report_totals(b"[1, 2]") is None


JAN = dt.datetime(2026, 1, 15, 12, tzinfo=UTC).timestamp()
FEB_1 = dt.datetime(2026, 2, 1, tzinfo=UTC).timestamp()
MAR_7 = dt.datetime(2026, 3, 7, 23, tzinfo=UTC).timestamp()  # February closed < 7 days ago
MAR_9 = dt.datetime(2026, 3, 9, tzinfo=UTC).timestamp()
MAY_1 = dt.datetime(2026, 5, 1, tzinfo=UTC).timestamp()


async def _delivered(db: Database, event_id: str, report_id: str, kwh: float) -> None:
    outbox = Outbox(db)
    body = report_body(event_id, kwh=kwh)
    assert await outbox.enqueue(
        event_id=event_id, kind="EnergyUsage", body=body, source="planner", now=JAN, deadline=FEB_1
    )
    (item,) = await outbox.claim(now=JAN, limit=1)
    await outbox.record([(item.id, Delivered(201, report_id))], now=JAN + 60)


async def _event(db: Database, event_id: str, state: str) -> None:
    payload = json.dumps({"payloadType": "PriceCurve", "targets": []}).encode()
    await Inbox(db).add(
        NewEvent(event_id=event_id, payload_type="PriceCurve", created_at=None, payload=payload),
        via="webhook",
        at=JAN - 3600,
    )
    await db.write_one("UPDATE events SET plan_state = ? WHERE event_id = ?", (state, event_id))


async def test_a_delivered_report_keeps_its_key_and_report_id_after_its_body_goes(
    tmp_path: Path,
) -> None:
    config = offline_config(tmp_path)
    path = tmp_path / "state" / "ecgw.sqlite3"
    async with open_database(path) as db:
        outbox = Outbox(db)
        await _event(db, "ev-done", "done")
        await _delivered(db, "ev-done", "spark-report-1", 2.5)
        await _event(db, "ev-waiting", "done")  # its report failed once and waits to retry
        assert await outbox.enqueue(
            event_id="ev-waiting",
            kind="EnergyUsage",
            body=report_body("ev-waiting"),
            source="planner",
            now=JAN,
            deadline=FEB_1,
        )
        (item,) = await outbox.claim(now=JAN, limit=1)
        await outbox.record([(item.id, Retry(503, "unavailable", MAR_9 + 3600))], now=JAN)
        await _event(db, "ev-open", "planned")
        for event_id in ("ev-flight", "ev-dead"):  # one being sent now; one Spark refused
            assert await outbox.enqueue(
                event_id=event_id,
                kind="EnergyUsage",
                body=report_body(event_id),
                source="planner",
                now=JAN,
                deadline=FEB_1,
            )
        flight, dead = await outbox.claim(now=JAN, limit=2)
        await outbox.record([(dead.id, Dead(400, "refused"))], now=JAN)

        retention = Retention(db, pause=0.0)
        early = await retention.run_once(now=MAR_7)
        assert sum(early.rows.values()) == 0  # February closed less than 7 days ago
        tally = await retention.run_once(now=MAR_9)
        assert tally.rows["report bodies"] == 1
        assert tally.rows["event payloads"] == 1

        (done,) = await outbox.find("ev-done")
        assert done.body == b"" and done.body_dropped_at == MAR_9
        assert done.state == "delivered" and done.report_id == "spark-report-1"
        assert json.loads(done.kwh_totals or "") == {"EnergyUsage res-1/loc-1": 2.5}
        # de-duplication: the same report queued again is refused, and retry cannot revive it
        again = await outbox.enqueue(
            event_id="ev-done",
            kind="EnergyUsage",
            body=report_body("ev-done", kwh=2.5),
            source="planner",
            now=MAR_9,
            deadline=FEB_1,
        )
        assert again is False
        assert await outbox.retry([done.id], now=MAR_9) == 0
        (waiting,) = await outbox.find("ev-waiting")
        assert waiting.state == "pending" and waiting.body == report_body("ev-waiting")
        for item, state in ((flight, "in_flight"), (dead, "dead")):
            (kept,) = await outbox.find(item.event_id)
            assert kept.state == state and kept.body == report_body(item.event_id)
        # 90 days after it was refused, and its month closed: the dead report's body goes too
        await retention.run_once(now=MAY_1)
        (gone,) = await outbox.find("ev-dead")
        assert gone.body == b"" and gone.last_error == "refused"
        assert (await outbox.find("ev-flight"))[0].body == report_body("ev-flight")
        assert (await outbox.find("ev-waiting"))[0].body == report_body("ev-waiting")
        inbox = Inbox(db)
        assert (await inbox.get("ev-done")).payload == b""  # type: ignore[union-attr]
        assert (await inbox.get("ev-waiting")).payload != b""  # type: ignore[union-attr]
        assert (await inbox.get("ev-open")).payload != b""  # type: ignore[union-attr]
        record = render.outbox_record(done, body=True)
        assert record["body"] is None and "retention" in record["body_dropped"]

    shown = ecgw("outbox", "show", "ev-done", config=config)
    assert shown.returncode == 0, shown.stderr
    (row,) = json.loads(shown.stdout)
    assert row["report_id"] == "spark-report-1"
    assert row["body"] is None and row["body_dropped"].startswith("by retention")
    replan = ecgw("events", "replan", "ev-done", config=config)
    assert replan.returncode == 2
    assert "payload was dropped by retention" in replan.stderr
    stats = ecgw("db", "stats", config=config)
    assert stats.returncode == 0, stats.stderr
    assert "outbox" in stats.stdout and "retention would drop now" in stats.stdout


async def test_the_ledger_keeps_a_slim_report_400_days_after_its_body_went(
    tmp_path: Path,
) -> None:
    """The slim rows (key, Spark's report id, totals) stay LEDGER_KEEP after the body went,
    then go with their event: the file stops growing once the ledger is full."""
    async with open_database(tmp_path / "db.sqlite3") as db:
        outbox = Outbox(db)
        await _event(db, "ev-old", "done")
        await _delivered(db, "ev-old", "spark-report-old", 1.0)
        retention = Retention(db, pause=0.0)
        await retention.run_once(now=MAR_9)  # the body and the payload go
        (slim,) = await outbox.find("ev-old")
        assert slim.body == b"" and slim.report_id == "spark-report-old"
        kept = await retention.run_once(now=MAR_9 + LEDGER_KEEP - 40 * 86400)
        assert kept.rows.get("ledger: reports", 0) == 0
        assert await outbox.find("ev-old") != []  # a year on: still refused if queued again
        gone = await retention.run_once(now=MAR_9 + LEDGER_KEEP + 40 * 86400)
        assert gone.rows["ledger: reports"] == 1
        assert gone.rows["ledger: events"] == 1
        assert await outbox.find("ev-old") == []
        assert await Inbox(db).get("ev-old") is None
        counts = await db.fetchall("SELECT name, n FROM row_counts ORDER BY name")
        assert {r[0]: r[1] for r in counts}["events"] == 0  # the triggers followed


async def test_a_hubs_routed_events_and_site_reports_age_out_the_same_way(
    tmp_path: Path,
) -> None:
    """At a fleet's hub events end ``routed`` or ``unrouted`` (never ``done``): their payloads
    go with their reports' bodies, and an open (``new``) one stays."""
    async with open_database(tmp_path / "hub.sqlite3") as db:
        await _event(db, "ev-routed", "routed")
        await _delivered(db, "ev-routed", "spark-report-hub", 1.0)
        await _event(db, "ev-unrouted", "unrouted")
        await _event(db, "ev-waiting", "new")  # waits for a site's first connection
        tally = await Retention(db, pause=0.0).run_once(now=MAR_9)
        assert tally.rows["report bodies"] == 1 and tally.rows["event payloads"] == 2
        inbox = Inbox(db)
        assert (await inbox.get("ev-routed")).payload == b""  # type: ignore[union-attr]
        assert (await inbox.get("ev-unrouted")).payload == b""  # type: ignore[union-attr]
        assert (await inbox.get("ev-waiting")).payload != b""  # type: ignore[union-attr]
        (slim,) = await Outbox(db).find("ev-routed")
        assert slim.report_id == "spark-report-hub"


async def test_a_resources_latest_command_outlives_retention(tmp_path: Path) -> None:
    """The controller reads each resource's latest sent command at start to know what it
    holds off: retention never drops it, however old; the older ones go."""
    async with open_database(tmp_path / "db.sqlite3") as db:
        insert = (
            "INSERT INTO commands (resource_id, adapter, control, value, reason, state, "
            "requested_at) VALUES (?, 'plug', 'switch', ?, 'cap', ?, ?)"
        )
        await db.write_one(insert, ("boiler", 1.0, "confirmed", JAN - 86400))
        await db.write_one(insert, ("boiler", 0.0, "confirmed", JAN))  # off: still held
        await db.write_one(insert, ("boiler", 1.0, "dry_run", JAN + 60))  # never sent
        tally = await Retention(db, pause=0.0).run_once(now=MAY_1)
        assert tally.rows["commands"] == 2
        rows = await db.fetchall("SELECT value, state FROM commands")
        assert [tuple(r) for r in rows] == [(0.0, "confirmed")]


async def test_incremental_vacuum_gives_the_freed_pages_back_to_the_file_system(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ecgw.sqlite3"
    async with open_database(path) as db:
        outbox = Outbox(db)
        big = b" " * 8000
        async with db.write() as conn:
            for i in range(600):
                body = report_body(f"e{i}")[:-1] + b',"pad":"' + big + b'"}'
                await Outbox.enqueue_in(
                    conn,
                    event_id=f"e{i}",
                    kind="EnergyUsage",
                    body=body,
                    source="planner",
                    now=JAN,
                    deadline=FEB_1,
                )
        claimed = await outbox.claim(now=JAN, limit=1000)
        await outbox.record([(c.id, Delivered(201, f"r{c.id}")) for c in claimed], now=JAN)
        assert await db.truncate_wal()
        full = path.stat().st_size
        tally = await Retention(db, pause=0.0, keep_free_pages=0).run_once(now=MAR_9)
        assert tally.rows["report bodies"] == 600 and tally.pages_freed > 1000
        assert await db.truncate_wal()
        assert path.stat().st_size < full / 4
        assert len(await outbox.items(state="delivered")) == 600


async def test_db_vacuum_turns_an_older_file_to_incremental_and_waits_for_a_stopped_gateway(
    tmp_path: Path,
) -> None:
    config = offline_config(tmp_path)
    path = tmp_path / "state" / "ecgw.sqlite3"
    async with open_database(path):
        pass
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:  # pre-auto_vacuum
        conn.execute("PRAGMA auto_vacuum = NONE")
        conn.execute("VACUUM")
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    async with hold_state_dir(tmp_path / "state"):  # a gateway runs on it
        refused = ecgw("db", "vacuum", config=config)
    assert refused.returncode == 2 and "another gateway" in refused.stderr
    done = ecgw("db", "vacuum", config=config)
    assert done.returncode == 0, done.stderr
    assert "auto_vacuum incremental" in done.stdout
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert "auto_vacuum incremental" in ecgw("db", "stats", config=config).stdout


async def test_a_database_from_before_retention_is_migrated_and_kept_without_vacuum(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        for version, migration in enumerate(MIGRATIONS[:4], start=1):
            conn.executescript(migration)
            conn.execute(f"PRAGMA user_version = {version}")
        conn.execute(
            "INSERT INTO outbox (event_id, kind, body, idempotency_key, source, state, "
            "next_attempt_at, report_id, deadline, created_at, updated_at, delivered_at) "
            "VALUES ('old', 'EnergyUsage', ?, 'k', 'planner', 'delivered', 0, 'spark-9', "
            "?, ?, ?, ?)",
            (report_body("old", kwh=4.0), FEB_1, JAN, JAN, JAN),
        )
    async with open_database(path) as db:
        tally = await Retention(db, pause=0.0, keep_free_pages=0).run_once(now=MAR_9)
        (item,) = await Outbox(db).find("old")
        assert (
            await Outbox(db).enqueue(
                event_id="old", kind="EnergyUsage", body=b"{}", source="manual", now=MAR_9
            )
            is False
        )
    assert tally.rows["report bodies"] == 1 and tally.pages_freed == 0  # no auto_vacuum yet
    assert item.body == b"" and item.report_id == "spark-9"
    assert json.loads(item.kwh_totals or "") == {"EnergyUsage res-1/loc-1": 4.0}
