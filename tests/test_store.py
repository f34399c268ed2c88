"""The SQLite store: durability settings, corruption handling, inbox and outbox rules."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.delivery.policy import Dead, Delivered, Retry
from gateway.errors import StoreCorrupt, StoreError
from gateway.store.database import Database, open_database
from gateway.store.inbox import Inbox, NewEvent
from gateway.store.outbox import Outbox
from gateway.store.schema import MIGRATIONS


def event(event_id: str, **kw: object) -> NewEvent:
    return NewEvent(
        event_id=event_id,
        payload_type="PriceCurve",
        created_at=None,
        payload=b'{"payloadType":"PriceCurve"}',
        **kw,
    )  # type: ignore[arg-type]


async def test_pragmas_and_schema_version(db: Database) -> None:
    assert (await db.fetchone("PRAGMA journal_mode"))[0] == "wal"  # type: ignore[index]
    assert (await db.fetchone("PRAGMA synchronous"))[0] == 2  # FULL  # type: ignore[index]
    assert (await db.fetchone("PRAGMA user_version"))[0] == len(MIGRATIONS)  # type: ignore[index]


async def test_reopen_keeps_data_and_does_not_rerun_migrations(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    async with open_database(path) as db:
        assert await Inbox(db).add(event("e1"), via="webhook", at=1.0)
    async with open_database(path) as db:
        assert await Inbox(db).count() == 1


async def test_garbage_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    garbage = b"this is not a database, but someone's precious file\n" * 200
    path.write_bytes(garbage)
    with pytest.raises(StoreCorrupt, match="left untouched"):
        async with open_database(path):
            pass
    assert path.read_bytes() == garbage


async def test_corrupt_pages_fail_quick_check_and_file_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    async with open_database(path) as db:
        inbox = Inbox(db)
        for i in range(300):
            await inbox.add(event(f"event-{i:04d}"), via="poll", at=float(i))
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(page * 2, min(len(data), page * 6)):  # scribble over b-tree pages
        data[offset] = 0x5A
    path.write_bytes(bytes(data))
    before = path.read_bytes()
    with pytest.raises(StoreError):
        async with open_database(path):
            pass
    assert path.read_bytes() == before


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        async with open_database(path):
            pass


async def test_inbox_deduplicates_by_event_id_and_keeps_first_arrival(db: Database) -> None:
    inbox = Inbox(db)
    assert await inbox.add(
        event("e1", notification_id="n1", notification_type="PriceCurveCreated"),
        via="webhook",
        at=10.0,
    )
    assert not await inbox.add(event("e1", notification_id="n2"), via="webhook", at=11.0)
    sweep = await inbox.begin_sweep()
    new, _ = await inbox.add_polled_page([event("e1")], sweep=sweep, at=12.0)
    assert new == 0
    stored = await inbox.get("e1")
    assert stored is not None
    assert (stored.received_via, stored.received_at, stored.notification_id) == (
        "webhook",
        10.0,
        "n1",
    )
    assert await inbox.count() == 1


async def test_a_sweep_cut_short_is_finished_by_the_next(db: Database) -> None:
    inbox = Inbox(db)
    s1 = await inbox.begin_sweep()
    _, met = await inbox.add_polled_page([event("e3"), event("e2")], sweep=s1, at=1.0)
    assert not met
    # crash here: s1 never completes
    s2 = await inbox.begin_sweep()
    _, met = await inbox.add_polled_page([event("e3"), event("e2")], sweep=s2, at=2.0)
    assert not met, "events of an unfinished sweep are not known ground"
    _, met = await inbox.add_polled_page([event("e1")], sweep=s2, at=2.0)
    await inbox.complete_sweep(s2)
    s3 = await inbox.begin_sweep()
    _, met = await inbox.add_polled_page([event("e4"), event("e3")], sweep=s3, at=3.0)
    assert met


async def test_outbox_one_row_per_key_and_frozen_body(db: Database) -> None:
    outbox = Outbox(db)
    assert await outbox.enqueue(event_id="e1", kind="EnergyUsage", body=b"{}", source="t", now=1)
    assert not await outbox.enqueue(
        event_id="e1", kind="EnergyUsage", body=b'{"other":1}', source="t", now=2
    )
    assert await outbox.enqueue(
        event_id="e1", kind="LocationLPCAcknowledgement", body=b"{}", source="t", now=3
    )
    rows = await outbox.items()
    assert [(r.kind, r.body) for r in rows] == [
        ("EnergyUsage", b"{}"),
        ("LocationLPCAcknowledgement", b"{}"),
    ]
    assert rows[0].idempotency_key != rows[1].idempotency_key


async def test_claim_is_oldest_first_and_due_only(db: Database) -> None:
    outbox = Outbox(db)
    for i in range(5):
        await outbox.enqueue(
            event_id=f"e{i}", kind="EnergyUsage", body=b"{}", source="t", now=float(i)
        )
    claimed = await outbox.claim(now=10.0, limit=3)
    assert [c.event_id for c in claimed] == ["e0", "e1", "e2"]
    assert all(c.state == "in_flight" and c.attempts == 1 for c in claimed)
    await outbox.record(
        [(claimed[0].id, Retry(status=503, error="HTTP 503", next_attempt_at=50.0))], now=11.0
    )
    again = await outbox.claim(now=12.0, limit=10)
    assert [c.event_id for c in again] == ["e3", "e4"]
    assert await outbox.next_due() == 50.0


async def test_delivered_is_final_dead_keeps_status_and_body(db: Database) -> None:
    outbox = Outbox(db)
    for i in range(2):
        await outbox.enqueue(event_id=f"e{i}", kind="EnergyUsage", body=b"{}", source="t", now=0)
    a, b = await outbox.claim(now=1.0, limit=2)
    await outbox.record(
        [
            (a.id, Delivered(status=200, report_id="rep-1")),
            (b.id, Dead(status=400, error='HTTP 400: "resourceId: required"')),
        ],
        now=2.0,
    )
    assert await outbox.retry([a.id, b.id], now=3.0) == 1  # only the dead one moves
    rows = {r.event_id: r for r in await outbox.items()}
    assert rows["e0"].state == "delivered" and rows["e0"].report_id == "rep-1"
    assert rows["e1"].state == "pending" and rows["e1"].last_status == 400
    assert "resourceId" in (rows["e1"].last_error or "")
    assert await outbox.purge([a.id]) == 0  # delivered rows are never purged


async def test_recover_returns_in_flight_rows(db: Database) -> None:
    outbox = Outbox(db)
    await outbox.enqueue(event_id="e", kind="EnergyUsage", body=b"{}", source="t", now=0)
    await outbox.claim(now=1.0, limit=1)
    assert await outbox.recover(now=5.0) == 1
    (row,) = await outbox.items()
    assert (row.state, row.next_attempt_at, row.attempts) == ("pending", 5.0, 1)


async def test_counts_and_deadline_query(db: Database) -> None:
    outbox = Outbox(db)
    await outbox.enqueue(event_id="a", kind="k", body=b"{}", source="t", now=0, deadline=100.0)
    await outbox.enqueue(event_id="b", kind="k", body=b"{}", source="t", now=0, deadline=900.0)
    assert (await outbox.counts())["pending"] == 2
    assert [i.event_id for i in await outbox.pending_before(500.0)] == ["a"]


async def test_a_writer_cancelled_anywhere_leaves_no_transaction_open(db: Database) -> None:
    """Shutdown cancels tasks mid-write; the statement they sent still runs in SQLite's
    thread, so the transaction must be rolled back behind it, or the next writer fails."""
    import asyncio
    import contextlib

    inbox = Inbox(db)
    for step in range(60):
        task = asyncio.create_task(inbox.add(event(f"cut-{step}"), via="poll", at=1.0))
        for _ in range(step % 6):  # cancel at BEGIN, the INSERT, the COMMIT, or later
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert await inbox.add(event(f"next-{step}"), via="poll", at=2.0)
    assert not db.conn.in_transaction
    assert (await db.fetchone("PRAGMA integrity_check"))[0] == "ok"  # type: ignore[index]
