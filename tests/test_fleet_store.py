"""gateway.store.fleet on real SQLite files: sites, last seen, routes, and the answers owed
to sites for their reports in the hub's outbox; and the v4 -> v5 migration keeping events."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.fleet.sites import Site
from gateway.store.database import Database, open_database
from gateway.store.fleet import UNROUTED, Accepted, FleetStore, Pending, Seen, site_kind
from gateway.store.outbox import Outbox
from gateway.store.outbox_states import Dead, Delivered
from gateway.store.schema import MIGRATIONS

BODY = b'{"eventId":"ev-1","payloads":[]}'


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    async with open_database(tmp_path / "hub.sqlite3") as database:
        yield database


def site(site_id: str, *resources: str) -> Site:
    return Site(site_id, frozenset(resources), frozenset({f"loc-{site_id}"}))


async def test_each_source_replaces_only_its_own_sites(db: Database) -> None:
    store = FleetStore(db)
    await store.replace_sites([site("a", "r1", "r2")], "config", now=1.0)
    await store.replace_sites([site("b", "r3"), site("c")], "import", now=2.0)
    await store.replace_sites([site("c", "r9")], "import", now=3.0)  # b is gone, c changed
    rows = await store.site_rows()
    assert [(r.site.site_id, r.source, r.updated_at) for r in rows] == [
        ("a", "config", 1.0),
        ("c", "import", 3.0),
    ]
    assert rows[0].site == site("a", "r1", "r2")  # the JSON columns come back as sets
    assert await store.sites() == [site("a", "r1", "r2"), site("c", "r9")]
    with pytest.raises(ValueError, match="'a' is already listed by the config"):
        await store.replace_sites([site("a")], "import", now=4.0)
    assert await store.sites() == [site("a", "r1", "r2"), site("c", "r9")]  # unchanged


async def test_saw_keeps_the_latest_time_and_the_last_status_said(db: Database) -> None:
    store = FleetStore(db)
    await store.saw("a", True, now=10.0)
    await store.saw("a", None, now=20.0)  # a report: heard from, status unchanged
    await store.saw("b", False, now=5.0)
    await store.saw("b", None, now=4.0)  # late: the time does not go back
    assert await store.seen() == {"a": Seen(True, 20.0), "b": Seen(False, 5.0)}


async def test_routes_are_recorded_once_each(db: Database) -> None:
    store = FleetStore(db)
    await store.record_route("ev-1", "b", now=1.0)
    await store.record_routes("ev-1", ["a", "b"], now=2.0)
    await store.record_routes("ev-2", ["a"], now=3.0)
    assert await store.routes_for("ev-1") == ["a", "b"]
    assert await store.routes_for("ev-3") == []
    assert await store.routed_by_site() == {"a": 2, "b": 1}
    rows = await db.fetchall("SELECT published_at FROM fleet_routes WHERE site_id = 'b'")
    assert [r[0] for r in rows] == [1.0]


async def test_unrouted_events_are_counted(db: Database) -> None:
    async with db.write() as conn:
        for n, state in enumerate([UNROUTED, "routed", UNROUTED]):
            await conn.execute(
                "INSERT INTO events (event_id, payload_type, received_via, received_at, "
                "payload, plan_state) VALUES (?, 'PriceCurve', 'webhook', 0, x'7b7d', ?)",
                (f"ev-{n}", state),
            )
    assert await FleetStore(db).unrouted_count() == 2


async def test_a_report_is_queued_with_its_answer_row_and_a_repeat_returns_the_row(
    db: Database,
) -> None:
    store = FleetStore(db)
    first = await store.accept_report("a", "ev-1", "EnergyUsage", BODY, now=100.0)
    assert first.new and first.state == "pending" and not first.final
    # Another site's report of the same event and kind is its own row.
    other = await store.accept_report("b", "ev-1", "EnergyUsage", BODY, now=101.0)
    assert other.new and other.outbox_id != first.outbox_id
    (item,) = await Outbox(db).find(str(first.outbox_id))
    assert (item.source, item.kind, item.body) == ("site:a", "EnergyUsage@a", BODY)
    again = await store.accept_report("a", "ev-1", "EnergyUsage", BODY, now=102.0)
    assert not again.new and again.outbox_id == first.outbox_id
    answers = await db.fetchall("SELECT outbox_id, site_id, answered_at FROM fleet_answers")
    assert sorted(tuple(r) for r in answers) == [
        (first.outbox_id, "a", None),
        (other.outbox_id, "b", None),
    ]
    assert await store.pending_by_site() == {"a": Pending(1, 100.0), "b": Pending(1, 101.0)}


async def test_answers_are_owed_once_the_row_is_final_until_marked(db: Database) -> None:
    store, outbox = FleetStore(db), Outbox(db)
    a = await store.accept_report("a", "ev-1", "EnergyUsage", BODY, now=1.0)
    b = await store.accept_report("b", "ev-1", "EnergyUsage+LocationEnergyUsage", BODY, now=2.0)
    c = await store.accept_report("b", "ev-2", "EnergyUsage", BODY, now=3.0)
    assert await store.owed_answers(limit=10) == []  # nothing is final yet
    await outbox.claim(now=5.0, limit=10)
    await outbox.record(
        [(a.outbox_id, Delivered(201, "rep-1")), (b.outbox_id, Dead(400, "bad target"))], now=6.0
    )
    owed = await store.owed_answers(limit=10)
    assert [(o.outbox_id, o.site_id, o.event_id, o.kind, o.state) for o in owed] == [
        (a.outbox_id, "a", "ev-1", "EnergyUsage", "delivered"),
        (b.outbox_id, "b", "ev-1", "EnergyUsage+LocationEnergyUsage", "dead"),
    ]
    assert (owed[0].report_id, owed[0].last_status) == ("rep-1", 201)
    assert (owed[1].last_status, owed[1].last_error) == (400, "bad target")
    assert await store.pending_by_site() == {"b": Pending(1, 3.0)}  # c is in flight
    # A repeat of a final report says so at once.
    repeat = await store.accept_report("a", "ev-1", "EnergyUsage", BODY, now=7.0)
    assert (repeat.new, repeat.final, repeat.state, repeat.report_id) == (
        False,
        True,
        "delivered",
        "rep-1",
    )
    assert await store.owed_answers(limit=1) == owed[:1]
    assert await store.mark_answered([a.outbox_id], now=8.0) == 1
    assert await store.mark_answered([a.outbox_id], now=9.0) == 0  # once
    assert [o.outbox_id for o in await store.owed_answers(limit=10)] == [b.outbox_id]
    await store.mark_answered([b.outbox_id, c.outbox_id], now=10.0)
    assert await store.owed_answers(limit=10) == []


def test_site_kind_undoes_the_hub_kind() -> None:
    assert (
        site_kind("EnergyUsage+LocationEnergyUsage@site-a.1") == "EnergyUsage+LocationEnergyUsage"
    )
    assert site_kind("EnergyUsage") == "EnergyUsage"


async def test_a_v4_database_migrates_to_the_fleet_schema_keeping_every_event(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[:4]:
        conn.executescript(migration)
    conn.execute("PRAGMA user_version = 4")
    events = [
        (f"ev-{n}", "PriceCurve", f"2026-01-0{n % 9 + 1}T00:00:00Z", via, float(n),
         f"n-{n}" if via == "webhook" else None, "EventCreated" if via == "webhook" else None,
         n if via == "poll" else None, f'{{"n":{n}}}'.encode(), state, note)
        for n, (via, state, note) in enumerate(
            [("webhook", "planned", None), ("poll", "invalid", "bad"), ("poll", "new", None)] * 40
        )
    ]  # fmt: skip
    conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", events)
    conn.execute(
        "INSERT INTO outbox (event_id, kind, body, idempotency_key, source, state, "
        "next_attempt_at, created_at, updated_at) "
        "VALUES ('ev-0', 'EnergyUsage', x'7b7d', 'k', 'scheduler', 'pending', 0, 0, 0)"
    )
    conn.close()
    async with open_database(path) as db:
        rows = await db.fetchall(
            "SELECT event_id, payload_type, created_at, received_via, received_at, "
            "notification_id, notification_type, poll_sweep, payload, plan_state, plan_note "
            "FROM events ORDER BY received_at"
        )
        assert [tuple(r) for r in rows] == events
        assert (await db.fetchone("PRAGMA user_version"))[0] == len(MIGRATIONS) == 7
        counted = await db.fetchone("SELECT n FROM row_counts WHERE name = 'events'")
        assert counted is not None and counted[0] == len(events)
        assert len(await Outbox(db).items()) == 1
        async with db.write() as write:  # 'hub' is now a way in
            await write.execute(
                "INSERT INTO events (event_id, payload_type, received_via, received_at, payload) "
                "VALUES ('ev-hub', 'PriceCurve', 'hub', 1, x'7b7d')"
            )
        counted = await db.fetchone("SELECT n FROM row_counts WHERE name = 'events'")
        assert counted is not None and counted[0] == len(events) + 1  # the trigger is back
        names = {r[0] for r in await db.fetchall("SELECT name FROM sqlite_master")}
        assert {
            "events_by_received",
            "events_by_plan_received",
            "events_with_payload",
            "events_count_insert",
            "events_count_delete",
            "fleet_answers_owed",
        } <= names
        assert await FleetStore(db).sites() == []


async def test_a_burst_is_one_transaction_and_a_bad_report_fails_alone(db: Database) -> None:
    store = FleetStore(db)
    results = await store.accept_reports(
        [
            ("a", "ev-1", "EnergyUsage", BODY),
            ("a", "ev-\ud800", "EnergyUsage", BODY),  # a lone surrogate: not storable text
            ("b", "ev-1", "EnergyUsage", BODY),
            ("a", "ev-1", "EnergyUsage", BODY),  # a repeat within the burst
        ],
        now=1.0,
    )
    first, bad, other, repeat = results
    assert isinstance(first, Accepted) and isinstance(other, Accepted) and first.new and other.new
    assert isinstance(bad, str) and bad.startswith("cannot be stored: UnicodeEncodeError")
    assert isinstance(repeat, Accepted) and not repeat.new
    assert repeat.outbox_id == first.outbox_id
    assert len(await Outbox(db).items()) == 2
    count = await db.fetchone("SELECT COUNT(*) FROM fleet_answers")
    assert count is not None and count[0] == 2
    with pytest.raises(ValueError, match="cannot be stored"):
        await store.accept_report("a", "ev-\udfff", "EnergyUsage", BODY, now=2.0)
