"""``ecgw outbox list`` and ``ecgw events list``: newest first, cut and saying so, indexed."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest

from gateway.listing import (
    EVENT_STATES,
    OUTBOX_STATES,
    Filter,
    cut_note,
    parse_limit,
    parse_since,
)
from gateway.store import listings
from gateway.store.database import Database, open_database
from gateway.store.inbox import Inbox, NewEvent
from gateway.store.listings import _EVENTS, _OUTBOX, events_page, outbox_page, queries
from gateway.store.outbox import Outbox
from gateway.store.schema import MIGRATIONS
from tests.kit.proc import ecgw, offline_config

NOW = 1_780_000_000.0


def test_since_is_a_duration_back_from_now_or_an_iso_time() -> None:
    assert parse_since("7d", now=NOW) == NOW - 7 * 86400
    assert parse_since("12h", now=NOW) == NOW - 12 * 3600
    assert parse_since(" 30m ", now=NOW) == NOW - 1800
    utc = dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()
    assert parse_since("2026-11-01", now=NOW) == utc
    assert parse_since("2026-11-01T00:00:00Z", now=NOW) == utc
    assert parse_since("2026-11-01T00:00", now=NOW) == utc  # no offset: UTC
    assert parse_since("2026-11-01T01:00:00+01:00", now=NOW) == utc
    for bad in ("yesterday", "", "-1d", "7 weeks", "2026-13-01"):
        with pytest.raises(ValueError, match="ISO-8601"):
            parse_since(bad, now=NOW)


def test_limit_is_a_whole_number_of_at_least_one() -> None:
    assert parse_limit("1") == 1
    assert parse_limit("500") == 500
    for bad in ("0", "-3", "ten", "1.5"):
        with pytest.raises(ValueError):
            parse_limit(bad)


def test_the_cut_is_said_with_the_filter_and_only_when_there_is_one() -> None:
    assert cut_note(50, 50, "reports", Filter()) is None
    assert cut_note(3, 3, "reports", Filter(limit=50)) is None
    assert cut_note(50, 12345, "reports", Filter()) == (
        "showing the newest 50 of 12,345 reports; use --limit or --since to see others"
    )
    since = dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp() + 0.75
    note = cut_note(2, 9, "events", Filter(limit=2, state="invalid", since=since))
    assert note == (
        "showing the newest 2 of 9 invalid events since 2026-11-01T00:00:00Z; "
        "use --limit or --since to see others"
    )


def test_states_are_the_tables_states() -> None:
    assert OUTBOX_STATES == ("pending", "in_flight", "delivered", "dead")
    assert set(EVENT_STATES) == {"new", "planned", "done", "no_report", "invalid"}


# --- the store, real SQLite --------------------------------------------------------------------


async def _fill(db: Database, n: int) -> None:
    """``n`` events and reports, the i-th at NOW + i; every third report dead, every fifth
    event set aside; two events share one arrival time (the later insert lists first)."""
    inbox, outbox = Inbox(db), Outbox(db)
    for i in range(n):
        at = NOW + min(i, n - 2)  # the last two arrive at the same moment
        state = "invalid" if i % 5 == 0 else "new"
        await inbox.add(
            NewEvent(f"e{i:03d}", "PriceCurve", None, b"{}", plan_state=state), via="poll", at=at
        )
        await outbox.enqueue(
            event_id=f"e{i:03d}", kind="EnergyUsage", body=b"{}", source="t", now=at
        )
    async with db.write() as conn:
        await conn.execute("UPDATE outbox SET state = 'dead' WHERE id % 3 = 0")


async def test_newest_first_with_filters_and_totals(db: Database) -> None:
    await _fill(db, 30)
    page = await outbox_page(db, Filter(limit=5))
    assert [r.event_id for r in page.rows] == ["e029", "e028", "e027", "e026", "e025"]
    assert page.total == 30
    dead = await outbox_page(db, Filter(limit=3, state="dead"))
    assert [r.id for r in dead.rows] == [30, 27, 24] and dead.total == 10
    recent = await outbox_page(db, Filter(limit=50, since=NOW + 25))
    assert [r.event_id for r in recent.rows] == ["e029", "e028", "e027", "e026", "e025"]
    assert recent.total == 5
    both = await outbox_page(db, Filter(limit=50, state="dead", since=NOW + 20))
    assert [r.id for r in both.rows] == [30, 27, 24, 21] and both.total == 4  # e020 at NOW + 20
    events = await events_page(db, Filter(limit=3))
    assert [e.event_id for e in events.rows] == ["e029", "e028", "e027"]  # e028, e029 tie
    invalid = await events_page(db, Filter(limit=2, state="invalid"))
    assert [e.event_id for e in invalid.rows] == ["e025", "e020"] and invalid.total == 6
    late = await events_page(db, Filter(limit=50, state="new", since=NOW + 26))
    assert [e.event_id for e in late.rows] == ["e029", "e028", "e027", "e026"]
    assert (await events_page(db, Filter(since=NOW + 1000))).total == 0


@pytest.mark.parametrize("table", [_OUTBOX, _EVENTS], ids=["outbox", "events"])
@pytest.mark.parametrize("state", [None, "dead"])
@pytest.mark.parametrize("since", [None, NOW])
async def test_every_listing_reads_an_index_in_order_even_after_analyze(
    db: Database, table: object, state: str | None, since: float | None
) -> None:
    """No pass over the table, no sort of everything that matches: the rows come in index
    order and the scan stops at the limit. ANALYZE must not change that."""
    await _fill(db, 30)
    rows_sql, count_sql, params = queries(table, Filter(state=state, since=since))  # type: ignore[arg-type]
    for analyzed in (False, True):
        if analyzed:
            async with db.write() as conn:
                await conn.execute("ANALYZE")
        rows_plan = [
            r[-1] for r in await db.fetchall("EXPLAIN QUERY PLAN " + rows_sql, (*params, 5))
        ]
        count_plan = [r[-1] for r in await db.fetchall("EXPLAIN QUERY PLAN " + count_sql, params)]
        assert len(rows_plan) == 1 and " USING INDEX " in rows_plan[0], rows_plan
        assert "TEMP B-TREE" not in " ".join(rows_plan)
        reads = [step for step in count_plan if step.startswith(("SCAN ", "SEARCH "))]
        reads = [step for step in reads if "(subquery-" not in step]  # the capped inner read
        assert len(reads) == 1 and "USING COVERING INDEX" in reads[0], count_plan


async def test_migration_5_adds_the_listing_indexes_to_an_old_database(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        for version, migration in enumerate(MIGRATIONS[:4], start=1):
            conn.executescript(migration)
            conn.execute(f"PRAGMA user_version = {version}")
        conn.execute(
            "INSERT INTO events (event_id, payload_type, received_via, received_at, payload) "
            "VALUES ('old-1', 'PriceCurve', 'poll', 5.0, x'7b7d')"
        )
    conn.close()
    async with open_database(path) as db:
        indexes = {r[0] for r in await db.fetchall("SELECT name FROM sqlite_schema")}
        assert {
            "outbox_by_created",
            "outbox_by_state_created",
            "events_by_plan_received",
        } <= indexes
        assert "events_by_plan" not in indexes
        page = await events_page(db, Filter(state="new"))
        assert [e.event_id for e in page.rows] == ["old-1"]
        counts = dict(await db.fetchall("SELECT name, n FROM row_counts"))
        assert counts == {
            "events": 1,
            "outbox.pending": 0,
            "outbox.in_flight": 0,
            "outbox.delivered": 0,
            "outbox.dead": 0,
        }


async def test_counting_stops_at_the_cap_and_says_more_than(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _fill(db, 30)
    monkeypatch.setattr(listings, "COUNT_CAP", 7)
    page = await outbox_page(db, Filter(limit=3))
    assert [r.id for r in page.rows] == [30, 29, 28]
    assert (page.total, page.exact) == (8, False)
    note = cut_note(3, page.total, "reports", Filter(limit=3), exact=page.exact)
    assert (
        note == "showing the newest 3 of more than 7 reports; use --limit or --since to see others"
    )
    small = await outbox_page(db, Filter(limit=3, state="dead", since=NOW + 20))
    assert (small.total, small.exact) == (4, True)


async def test_row_counts_follow_every_insert_move_and_delete(db: Database) -> None:
    """The counts status reads (kept by triggers) equal a real count after each step."""
    from gateway.delivery.policy import Dead, Delivered, Retry
    from gateway.store.observed import Observed

    inbox, outbox, observed = Inbox(db), Outbox(db), Observed(db)

    async def agree() -> None:
        real = dict.fromkeys(OUTBOX_STATES, 0)
        for state, n in await db.fetchall("SELECT state, COUNT(*) FROM outbox GROUP BY state"):
            real[state] = n
        assert await observed.outbox_by_state() == real
        (events,) = await db.fetchone("SELECT COUNT(*) FROM events")  # type: ignore[misc]
        assert await observed.events_total() == events

    await agree()
    await _fill(db, 12)  # inserts, then a bulk UPDATE of states
    await agree()
    await inbox.add_many([NewEvent("e000", "PriceCurve", None, b"{}")] * 3, via="poll", at=NOW)
    assert not await outbox.enqueue(
        event_id="e001", kind="EnergyUsage", body=b"{}", source="t", now=NOW
    )
    await agree()  # duplicates change nothing
    claimed = await outbox.claim(now=NOW + 100, limit=5)
    await agree()
    ids = [item.id for item in claimed]
    await outbox.record(
        [
            (ids[0], Delivered(201, "r1")),
            (ids[1], Retry(503, "busy", NOW + 200)),
            (ids[2], Dead(400, "no")),
        ],
        now=NOW + 101,
    )
    await outbox.hand_back(ids[3:], now=NOW + 102)
    await agree()
    await outbox.retry([3, 6], now=NOW + 103)
    await agree()
    dead = [item.id for item in await outbox.items(state="dead")]
    assert await outbox.purge(dead) == len(dead) > 0
    async with db.write() as conn:
        await conn.execute("DELETE FROM events WHERE event_id IN ('e003', 'e004')")
    await agree()


# --- the commands --------------------------------------------------------------------------------


async def test_the_commands_list_newest_first_and_say_when_cut(tmp_path: Path) -> None:
    config = offline_config(tmp_path)
    async with open_database(tmp_path / "state" / "ecgw.sqlite3") as db:
        await _fill(db, 60)
    listed = ecgw("outbox", "list", "--json", config=config)
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)
    assert [r["id"] for r in records] == list(range(60, 10, -1))  # the default: newest 50
    assert set(records[0]) >= {
        "id", "event_id", "kind", "state", "attempts", "last_status", "last_error",
        "report_id", "source", "idempotency_key", "next_attempt_at", "created_at",
        "delivered_at", "deadline",
    }  # fmt: skip
    assert listed.stderr.strip().splitlines()[-1] == (
        "ecgw: showing the newest 50 of 60 reports; use --limit or --since to see others"
    )
    table = ecgw("events", "list", "--state", "invalid", "--limit", "2", config=config)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[0] == "EVENT_ID" and [ln.split()[0] for ln in lines[1:]] == [
        "e055",
        "e050",
    ]
    assert "showing the newest 2 of 12 invalid events; use --limit" in table.stderr
    everything = ecgw("events", "list", "--json", "--limit", "100", config=config)
    assert len(json.loads(everything.stdout)) == 60 and "showing" not in everything.stderr
    since = dt.datetime.fromtimestamp(NOW + 57, dt.UTC).isoformat()
    recent = ecgw("outbox", "list", "--json", "--since", since, config=config)
    assert [r["event_id"] for r in json.loads(recent.stdout)] == ["e059", "e058", "e057"]
    bad = ecgw("outbox", "list", "--since", "last tuesday", config=config)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "ecgw: error: --since: expected a duration back from now (7d, 12h, 30m) or an ISO-8601 "
        "time (2026-11-01 or 2026-11-01T08:00:00Z), got 'last tuesday'"
    ]
