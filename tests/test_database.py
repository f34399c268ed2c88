"""The database layer: reads never see an open transaction; a full disk is a StoreError.

Real SQLite files under tmp_path. A full disk is made with ``PRAGMA max_page_count`` on
the writer connection (SQLite then fails with SQLITE_FULL exactly as on a full disk);
``tests/test_disk_full.py`` does it with a real small filesystem and a running gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from structlog.testing import capture_logs

from gateway.config import Secret
from gateway.errors import StoreCorrupt, StoreError
from gateway.intake.signature import sign
from gateway.intake.webhook import WebhookSettings, serve_webhook
from gateway.plugin import Channel, ChannelKind, Unit
from gateway.store.database import Database
from gateway.store.inbox import Inbox, NewEvent
from gateway.store.meta import Meta
from gateway.store.outbox import Outbox
from gateway.store.readings import ReadingsStore
from gateway.store.readings_query import fetch

SECRET = "disk-full-secret"


def event(event_id: str, size: int = 64) -> NewEvent:
    return NewEvent(
        event_id=event_id,
        payload_type="PriceCurve",
        created_at=None,
        payload=b'{"payloadType":"PriceCurve","pad":"' + b"x" * size + b'"}',
    )


class _RolledBack(Exception):
    pass


# --- reads and the open transaction --------------------------------------------


async def test_a_read_never_sees_the_open_transaction(db: Database) -> None:
    inbox = Inbox(db)
    assert await inbox.add(event("kept"), via="poll", at=1.0)
    with contextlib.suppress(_RolledBack):
        async with db.write() as conn:
            await conn.execute(
                "INSERT INTO events (event_id, payload_type, received_via, received_at, payload) "
                "VALUES ('ghost', 'PriceCurve', 'poll', 2.0, x'7b7d')"
            )
            await conn.execute("INSERT INTO meta (key, value) VALUES ('ghost', '1')")
            # every way the store reads, while the transaction is open
            seen = [
                await inbox.get("ghost"),
                await inbox.count(),
                [e.event_id for e in await inbox.recent(limit=10)],
                "ghost" in await Meta(db).get_all(),
                await db.fetchone("SELECT 1 FROM events WHERE event_id = 'ghost'"),
                await fetch(db, "SELECT 1 FROM events WHERE event_id = ?", ["ghost"]),
            ]
            raise _RolledBack
    assert seen == [None, 1, ["kept"], False, None, []]
    assert await inbox.get("ghost") is None
    assert await inbox.count() == 1


async def test_a_concurrent_reader_never_sees_a_write_that_is_rolled_back(db: Database) -> None:
    """The shape of the defect: one task writes and fails, another reads meanwhile."""
    inbox, outbox = Inbox(db), Outbox(db)
    inserted, looked = asyncio.Event(), asyncio.Event()

    async def failing_writer() -> None:
        with contextlib.suppress(_RolledBack):
            async with db.write() as conn:
                await conn.execute(
                    "INSERT INTO outbox (event_id, kind, body, idempotency_key, source, state, "
                    "next_attempt_at, created_at, updated_at) "
                    "VALUES ('ghost', 'EnergyUsage', x'7b7d', 'k', 't', 'pending', 0, 0, 0)"
                )
                inserted.set()
                await looked.wait()
                raise _RolledBack

    async def reader() -> list[object]:
        await inserted.wait()
        try:
            return [await outbox.counts(), await outbox.items(), await outbox.next_due()]
        finally:
            looked.set()

    _, seen = await asyncio.gather(failing_writer(), reader())
    counts, items, due = seen
    assert (sum(counts.values()), items, due) == (0, [], None)  # type: ignore[attr-defined]
    assert await outbox.items() == []
    # and a committed write is seen by the very next read
    assert await inbox.add(event("after"), via="webhook", at=3.0)
    assert await inbox.get("after") is not None


async def test_reads_cannot_write(db: Database) -> None:
    with pytest.raises(StoreError, match=r"readonly|read-only|query_only"):
        await db.fetchall("INSERT INTO meta (key, value) VALUES ('x', '1')")


# --- a full disk ------------------------------------------------------------


async def fill_up(db: Database) -> None:
    """Let the database grow by nothing more: SQLite answers SQLITE_FULL as on a full disk."""
    (pages,) = (await db.fetchall("PRAGMA page_count"))[0]
    await db.conn.execute(f"PRAGMA max_page_count = {pages}")


async def make_room(db: Database) -> None:
    await db.conn.execute("PRAGMA max_page_count = 1073741823")


async def test_a_full_disk_is_a_store_error_never_store_corrupt(db: Database) -> None:
    inbox, outbox, meta = Inbox(db), Outbox(db), Meta(db)
    await fill_up(db)
    channels = [Channel(f"c{i}" * 2000, ChannelKind.ENERGY, Unit.WH) for i in range(5)]
    writes: list[Callable[[], Awaitable[object]]] = [
        lambda: inbox.add(event("big", size=20_000), via="webhook", at=1.0),
        lambda: outbox.enqueue(
            event_id="e", kind="EnergyUsage", body=b"x" * 20_000, source="t", now=1
        ),
        lambda: meta.put(big="x" * 20_000),
        lambda: ReadingsStore(db).register_channels("meter", channels),
    ]
    for write in writes:
        with pytest.raises(StoreError) as caught:
            await write()
        assert not isinstance(caught.value, StoreCorrupt)
        assert "full" in str(caught.value) and str(db.path) in str(caught.value)
    assert not db.conn.in_transaction
    assert await inbox.count() == 0
    await make_room(db)  # space returns: the same open database writes again
    assert await inbox.add(event("big", size=20_000), via="webhook", at=2.0)
    assert (await db.fetchone("PRAGMA integrity_check"))[0] == "ok"  # type: ignore[index]


@contextlib.asynccontextmanager
async def webhook(db: Database) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    settings = WebhookSettings(
        host="127.0.0.1",
        port=0,
        path="/notify",
        secret=Secret(SECRET),
        max_body=1024 * 1024,
        read_timeout=2.0,
    )
    async with (
        serve_webhook(settings, Inbox(db), lambda _: None) as url,
        aiohttp.ClientSession() as session,
    ):
        yield url, session


def notification(event_id: str, pad: int = 20_000) -> bytes:
    return json.dumps(
        {
            "notificationId": f"n-{event_id}",
            "eventId": event_id,
            "eventCreatedAtUtc": "2026-11-26T00:00:00Z",
            "notificationSentUtc": "2026-11-26T00:00:00Z",
            "notificationType": "UserEligibilityUpdated",
            "payload": {
                "payloadType": "UserEligibility",
                "lastUpdated": "2026-11-26T00:00:00Z",
                "addedUsers": ["u" * pad],
                "removedUsers": [],
            },
        }
    ).encode()


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> int:
    headers = {"X-Payload-Signature": sign(body, SECRET), "Content-Type": "application/json"}
    async with session.post(url, data=body, headers=headers) as resp:
        return resp.status


async def test_the_webhook_answers_503_on_a_full_disk_and_200_when_space_returns(
    db: Database,
) -> None:
    async with webhook(db) as (url, session):
        await fill_up(db)
        with capture_logs() as logs:
            statuses = [await post(session, url, notification(f"e{i}")) for i in range(3)]
        assert statuses == [503, 503, 503]  # Spark retries a 503
        failures = [entry for entry in logs if entry["event"] == "webhook.store_failed"]
        assert len(failures) == 3
        assert all("full" in str(entry["error"]) for entry in failures)
        assert await Inbox(db).count() == 0
        await make_room(db)
        assert [await post(session, url, notification(f"e{i}")) for i in range(3)] == [200] * 3
    assert await Inbox(db).count() == 3


# --- the WAL does not fill a small disk ----------------------------------------


def wal_size(db: Database) -> int:
    wal = db.path.with_name(db.path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


async def test_the_wal_is_bounded_in_a_burst_and_handed_back_when_idle(db: Database) -> None:
    inbox = Inbox(db)
    peak = 0
    for i in range(300):  # ~3,000 pages written, 3x the auto-checkpoint
        await inbox.add(event(f"burst-{i:05d}", size=40_000), via="poll", at=float(i))
        peak = max(peak, wal_size(db))
    assert 0 < peak <= 5 * 1024 * 1024  # about 1,000 pages (the auto-checkpoint) and one write
    await Meta(db).heartbeat(now=1.0)  # the periodic heartbeat truncates the WAL
    assert wal_size(db) <= 64 * 1024
    assert await inbox.count() == 300


async def test_truncating_the_wal_gives_way_to_a_reader_on_an_old_snapshot(db: Database) -> None:
    inbox = Inbox(db)
    await inbox.add(event("first", size=20_000), via="poll", at=1.0)
    other = sqlite3.connect(db.path, isolation_level=None)  # e.g. `ecgw status` reading
    try:
        other.execute("BEGIN")
        other.execute("SELECT COUNT(*) FROM events").fetchall()  # holds its snapshot
        await inbox.add(event("second", size=20_000), via="poll", at=2.0)
        started = time.monotonic()
        assert not await db.truncate_wal()  # not now: the reader still needs the WAL
        assert time.monotonic() - started < 5.0  # well under the writers' 10 s busy timeout
        assert wal_size(db) > 0
        (timeout,) = (await db.conn.execute_fetchall("PRAGMA busy_timeout"))[0]  # type: ignore[index]
        assert timeout == 10_000  # restored for the writers
        other.execute("COMMIT")
    finally:
        other.close()
    assert await db.truncate_wal()
    assert wal_size(db) == 0
    assert await inbox.count() == 2
