"""Maintenance gives way to intake: the turn order (pure), slice sizes (pure), and on real
SQLite a writer that waits while a maintenance slice runs goes before the next slice.

Ordering tests, not timing tests: who writes when is read from the order of events,
and SQLite's own statement trace on the writer connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

import pytest

from gateway.plugin import Channel, ChannelKind, Reading, Unit
from gateway.store.database import Database
from gateway.store.inbox import Inbox, NewEvent
from gateway.store.maintenance import SliceBudget, TurnQueue
from gateway.store.readings import ReadingsStore

# --- the turn order (pure) ---------------------------------------------------------------------


def test_a_free_turn_is_taken_at_once_by_either_kind() -> None:
    turns: TurnQueue[str] = TurnQueue()
    assert turns.ask("m", maintenance=True)
    assert turns.release() is None
    assert not turns.held
    assert turns.ask("w", maintenance=False)
    assert turns.held


def test_a_waiting_writer_goes_before_waiting_maintenance() -> None:
    turns: TurnQueue[str] = TurnQueue()
    assert turns.ask("slice 1", maintenance=True)
    assert not turns.ask("slice 2", maintenance=True)  # queued first
    assert not turns.ask("webhook", maintenance=False)
    assert not turns.ask("readings", maintenance=False)
    assert (turns.writers_waiting, turns.maintenance_waiting) == (2, 1)
    assert [turns.release() for _ in range(4)] == ["webhook", "readings", "slice 2", None]
    assert not turns.held


def test_nobody_jumps_the_queue_while_the_turn_is_held() -> None:
    turns: TurnQueue[str] = TurnQueue()
    assert turns.ask("w1", maintenance=False)
    assert not turns.ask("w2", maintenance=False)
    assert turns.release() == "w2"  # handed over: still held
    assert turns.held
    assert not turns.ask("m", maintenance=True)
    assert not turns.ask("w3", maintenance=False)
    assert [turns.release() for _ in range(3)] == ["w3", "m", None]


def test_a_waiter_that_leaves_is_never_named() -> None:
    turns: TurnQueue[str] = TurnQueue()
    turns.ask("holder", maintenance=False)
    turns.ask("w", maintenance=False)
    turns.ask("m", maintenance=True)
    turns.leave("w")
    turns.leave("m")
    turns.leave("never queued")  # harmless
    assert turns.release() is None


def test_maintenance_is_not_starved_by_a_stream_of_writers() -> None:
    turns: TurnQueue[str] = TurnQueue(max_passed=3)
    turns.ask("w0", maintenance=False)
    turns.ask("m", maintenance=True)
    order = []
    for i in range(1, 6):
        turns.ask(f"w{i}", maintenance=False)
        order.append(turns.release())
    assert order == ["w1", "w2", "w3", "m", "w4"]  # passed over 3 times, then its turn


def test_max_passed_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_passed"):
        TurnQueue(max_passed=0)


# --- slice sizes (pure) ------------------------------------------------------------------------


def test_a_slow_slice_shrinks_the_next_at_once() -> None:
    budget = SliceBudget(seconds=0.002, first_rows=1000)
    budget.observe(1000, 0.020)  # ten times too long
    assert budget.rows == 100


def test_a_fast_slice_grows_the_next_by_half_at_most() -> None:
    budget = SliceBudget(seconds=0.002, first_rows=1000)
    budget.observe(1000, 0.0001)
    assert budget.rows == 1500
    budget.observe(1500, 0.002)  # on target: stays
    assert budget.rows == 1500


def test_slices_stay_within_their_bounds() -> None:
    budget = SliceBudget(seconds=0.002, max_rows=3000, min_rows=50, first_rows=2000)
    for _ in range(10):
        budget.observe(budget.rows, 0.0001)
    assert budget.rows == 3000
    for _ in range(10):
        budget.observe(budget.rows, 10.0)  # a disk that takes seconds: still progress
    assert budget.rows == 50
    assert SliceBudget(max_rows=7).rows == 7  # a small max wins over the defaults
    assert SliceBudget(max_rows=7).min_rows == 7


def test_a_short_slice_at_the_end_of_the_data_does_not_grow_the_next() -> None:
    budget = SliceBudget(seconds=0.002, first_rows=1000)
    budget.observe(10, 0.001)  # only 10 rows were left; fast, but says nothing
    assert budget.rows == 1000
    budget.observe(10, 0.010)  # even 10 rows ran long: shrink
    assert budget.rows == 50


def test_the_budget_counts_what_slices_cost() -> None:
    budget = SliceBudget()
    budget.observe(100, 0.001)
    budget.observe(0, 0.003)
    assert (budget.slices, budget.longest) == (2, 0.003)
    assert budget.spent == pytest.approx(0.004)


def test_a_budget_needs_positive_figures() -> None:
    with pytest.raises(ValueError, match="positive"):
        SliceBudget(seconds=0)


# --- real SQLite: the write path ------------------------------------------------------------


def event(event_id: str) -> NewEvent:
    return NewEvent(
        event_id=event_id, payload_type="PriceCurve", created_at=None, payload=b'{"p":1}'
    )


async def until(condition: object) -> None:
    """Let other tasks run until ``condition()`` holds (no timing: a bounded spin)."""
    for _ in range(10_000):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError("never came true")


async def test_a_writer_waiting_during_a_slice_goes_before_the_next_slice(db: Database) -> None:
    inbox = Inbox(db)
    order: list[str] = []
    release = asyncio.Event()

    async def slice_a() -> None:
        async with db.maintenance() as part:
            await part.conn.execute("INSERT INTO meta (key, value) VALUES ('a', '1')")
            order.append("slice A")
            await release.wait()

    async def slice_b() -> None:
        async with db.maintenance() as part:
            await part.conn.execute("INSERT INTO meta (key, value) VALUES ('b', '1')")
            order.append("slice B")

    async def webhook() -> None:
        assert await inbox.add(event("e-1"), via="webhook", at=1.0)
        order.append("webhook")

    a = asyncio.create_task(slice_a())
    await until(lambda: order == ["slice A"])
    b = asyncio.create_task(slice_b())  # the next slice asks first...
    await until(lambda: db.turns.maintenance_waiting == 1)
    w = asyncio.create_task(webhook())  # ...then intake, while slice A still runs
    await until(lambda: db.turns.writers_waiting == 1)
    release.set()
    await asyncio.gather(a, b, w)
    assert order == ["slice A", "webhook", "slice B"]
    assert await inbox.count() == 1
    rows = await db.fetchall("SELECT key FROM meta WHERE key IN ('a', 'b') ORDER BY key")
    assert [r[0] for r in rows] == ["a", "b"]


async def test_a_cancelled_waiter_gives_its_turn_away(db: Database) -> None:
    inbox = Inbox(db)
    release = asyncio.Event()
    held = asyncio.Event()

    async def hold() -> None:
        async with db.maintenance():
            held.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await held.wait()
    cancelled = asyncio.create_task(inbox.add(event("gone"), via="webhook", at=1.0))
    later = asyncio.create_task(inbox.add(event("kept"), via="webhook", at=2.0))
    await until(lambda: db.turns.writers_waiting == 2)
    cancelled.cancel()
    release.set()
    assert await later
    with contextlib.suppress(asyncio.CancelledError):
        await cancelled
    await holder
    assert await inbox.get("gone") is None
    assert await inbox.get("kept") is not None
    async with db.maintenance():  # the turn is free again
        pass


COUNTER = Channel("import", ChannelKind.ENERGY, Unit.WH)
T0 = 1_700_000_040.0


@contextlib.asynccontextmanager
async def traced(db: Database) -> AsyncIterator[list[str]]:
    """Every statement the writer connection runs, in order (SQLite's own trace)."""
    statements: list[str] = []
    lock = threading.Lock()

    def trace(sql: str) -> None:
        with lock:
            statements.append(sql)

    await db.conn.set_trace_callback(trace)
    try:
        yield statements
    finally:
        await db.conn.set_trace_callback(None)


async def test_intake_during_compaction_waits_for_the_slice_in_progress_only(
    db: Database,
) -> None:
    """Compaction and a second maintenance loop (say retention) both want the writer; a
    webhook that asks meanwhile goes next: no maintenance slice starts before it."""
    store = ReadingsStore(db, compaction_chunk=60)
    await store.register_channels("meter", [COUNTER])
    async with store.writer():
        samples = [Reading(COUNTER.name, T0 + 10.0 * k, 1000.0 + k) for k in range(6 * 60 * 6)]
        await store.write("meter", samples)  # six hours of 10 s readings
    inbox = Inbox(db)
    compacted = asyncio.Event()

    async def other_maintenance() -> None:
        while not compacted.is_set():
            async with db.maintenance() as part:
                await part.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('x', 1)")

    async def compact() -> None:
        await store.compact(
            now=T0 + 6 * 3600.0, raw_retention=3600.0, retention=86400.0, max_gap=60.0
        )
        compacted.set()

    async with traced(db) as statements:
        tasks = [asyncio.create_task(compact()), asyncio.create_task(other_maintenance())]
        waited = []  # per webhook: maintenance commits between its asking and its insert
        for i in range(20):
            await until(lambda: db.turns.maintenance_waiting >= 1 or compacted.is_set())
            if compacted.is_set():
                break
            asked = len(statements)  # inbox.add asks for its turn before it first yields
            assert await inbox.add(event(f"during-{i}"), via="webhook", at=float(i))
            insert = next(
                n for n, sql in enumerate(statements) if n >= asked and "INSERT INTO events" in sql
            )
            waited.append(statements[asked:insert].count("COMMIT"))
        await asyncio.gather(*tasks)
    assert len(waited) >= 5
    assert max(waited) <= 1  # only the slice that was running when it asked


async def test_maintenance_checkpoints_the_wal_it_writes(db: Database) -> None:
    """With the writer's own auto-checkpoint off, only the maintenance checkpoints keep the
    WAL from growing by every slice (48 slices of 100 KB would make it some 5 MB)."""
    await db.conn.execute("PRAGMA wal_autocheckpoint = 0")
    wal = db.path.with_name(db.path.name + "-wal")
    peak = 0
    for i in range(48):
        async with db.maintenance() as part:
            await part.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (f"k{i % 4}", "x" * 100_000),
            )
        peak = max(peak, wal.stat().st_size)
    assert peak < 2_500_000


async def synchronous(db: Database) -> int:
    rows = list(await db.conn.execute_fetchall("PRAGMA synchronous"))
    return int(rows[0][0])


async def test_a_slice_commits_without_fsync_and_writers_keep_full_sync(db: Database) -> None:
    assert await synchronous(db) == 2  # FULL: every writer's commit is synced
    async with db.maintenance():
        assert await synchronous(db) == 1  # NORMAL: the slice's commit is not
    assert await synchronous(db) == 2
    with contextlib.suppress(RuntimeError):
        async with db.maintenance():
            raise RuntimeError("a slice that fails")
    assert await synchronous(db) == 2
    async with db.write():
        assert await synchronous(db) == 2


async def test_a_slice_cancelled_while_it_waits_or_starts_leaves_full_sync(db: Database) -> None:
    for _ in range(3):  # cancelled at its first await, whichever hand-off that is
        task = asyncio.create_task(db.maintenance().__aenter__())
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    async with db.write():  # the turn is free, and writers still sync
        assert await synchronous(db) == 2
