"""The report outbox: one row per (event id, payload kind), body frozen at queue time.

A row's ``state`` moves only as the table in :mod:`gateway.store.outbox_states`
says: ``pending`` -> ``in_flight`` (claimed, attempts + 1) -> ``delivered`` |
``pending`` (retry later) | ``dead`` (rejected). Every statement here that
changes a state is built from that table (``WHERE state IN (its sources)``).
A row the API answered 2xx for is never sent again; a row left ``in_flight``
by a crash goes back to ``pending`` on start and is sent again, with the same
bytes and the same ``Idempotency-Key``. Delivered rows are never deleted: their
key keeps a report from being queued twice.

Recording outcomes is a unit of work per outcome: one that cannot be recorded
(its row is gone, or no longer ``in_flight``) is left out and named, and the
others are committed. sqlite3 errors become :class:`StoreError` here.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import aiosqlite

from gateway.crashpoints import crashpoint
from gateway.errors import StoreError, describe
from gateway.store.database import Database
from gateway.store.outbox_states import (
    Dead,
    Delivered,
    Outcome,
    Retry,
    RowEvent,
    RowState,
    TransitionError,
    event_of,
    idempotency_key,
    sources,
    target,
    transition,
)

__all__ = ["NewReport", "Outbox", "OutboxItem", "Round"]

STATES = tuple(state.value for state in RowState)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    event_id: str
    kind: str
    body: bytes
    idempotency_key: str
    source: str
    state: str
    attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str | None
    report_id: str | None
    deadline: float | None
    created_at: float
    updated_at: float
    delivered_at: float | None
    kwh_totals: str | None = None
    """JSON, per target the kWh of a body retention dropped (gateway.store.retention)."""
    body_dropped_at: float | None = None
    """When retention dropped the body (``body`` is then empty); None while it is kept."""

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> OutboxItem:
        values = dict(row)
        values["body"] = bytes(values["body"])
        return cls(**values)


def _where(event: RowEvent) -> str:
    """``state IN (...)``: the states ``event`` may leave from, from the table."""
    return "state IN (" + ", ".join(f"'{state}'" for state in sources(event)) + ")"


def _to(event: RowEvent) -> str:
    new = target(event)
    assert new is not None
    return f"'{new}'"


_E = RowEvent
# Claiming names its index: with statistics gathered (ANALYZE, PRAGMA optimize) and many
# delivered rows, SQLite may otherwise walk the whole table in id order looking for due rows.
_CLAIM = (
    f"UPDATE outbox SET state = {_to(_E.CLAIM)}, attempts = attempts + 1, updated_at = ? "  # noqa: S608
    f"WHERE id IN (SELECT id FROM outbox INDEXED BY outbox_due WHERE {_where(_E.CLAIM)} "
    "AND next_attempt_at <= ? ORDER BY id LIMIT ?) RETURNING *"
)
_RECOVER = (
    f"UPDATE outbox SET state = {_to(_E.RECOVER)}, next_attempt_at = ?, updated_at = ? "  # noqa: S608
    f"WHERE {_where(_E.RECOVER)}"
)
_OUTCOME_SQL = {
    _E.DELIVERED: (
        f"UPDATE outbox SET state = {_to(_E.DELIVERED)}, last_status = ?, last_error = NULL, "  # noqa: S608
        f"report_id = ?, delivered_at = ?, updated_at = ? WHERE id = ? AND {_where(_E.DELIVERED)}"
    ),
    _E.RETRY: (
        f"UPDATE outbox SET state = {_to(_E.RETRY)}, last_status = ?, last_error = ?, "  # noqa: S608
        f"next_attempt_at = ?, updated_at = ? WHERE id = ? AND {_where(_E.RETRY)}"
    ),
    _E.DEAD: (
        f"UPDATE outbox SET state = {_to(_E.DEAD)}, last_status = ?, last_error = ?, "  # noqa: S608
        f"updated_at = ? WHERE id = ? AND {_where(_E.DEAD)}"
    ),
}


_INSERT = (
    "INSERT INTO outbox (event_id, kind, body, idempotency_key, source, state, "
    "next_attempt_at, deadline, created_at, updated_at) VALUES {values} "
    "ON CONFLICT (event_id, kind) DO NOTHING"
)
_ROW = "(?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)"
"""One report's values: the parameters of :meth:`NewReport.row`."""
_ENQUEUE = _INSERT.format(values=_ROW)
_ENQUEUE_MANY = _INSERT + " RETURNING event_id, kind"
_MANY = 500
"""Reports per statement in :meth:`Outbox.enqueue_many_in`: 9 parameters each, and SQLite
(>= 3.32) takes 32766 per statement."""


@dataclass(frozen=True, slots=True)
class NewReport:
    """A report to queue (:meth:`Outbox.enqueue_many_in`)."""

    event_id: str
    kind: str
    body: bytes
    source: str
    now: float
    deadline: float | None = None

    def row(self) -> tuple[object, ...]:
        """The parameters of its outbox row (``_ROW``): pending, due now."""
        key = idempotency_key(self.event_id, self.kind, self.body)
        now = self.now
        return (self.event_id, self.kind, self.body, key, self.source, now, self.deadline, now, now)


@dataclass(frozen=True, slots=True)
class Round:
    """One keeper round: the rows claimed, and the outcomes that could not be recorded
    (by outbox id, with the reason)."""

    claimed: list[OutboxItem] = field(default_factory=list)
    unrecorded: dict[int, str] = field(default_factory=dict)


class Outbox:
    def __init__(self, db: Database) -> None:
        self._db = db

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction whose sqlite3 errors come out as StoreError."""
        try:
            async with self._db.write() as conn:
                yield conn
        except sqlite3.Error as exc:
            raise StoreError(f"outbox: cannot write {self._db.path}: {describe(exc)}") from exc

    async def enqueue(
        self,
        *,
        event_id: str,
        kind: str,
        body: bytes,
        source: str,
        now: float,
        deadline: float | None = None,
    ) -> bool:
        """Queue a report; False (and nothing changes) if its key is already queued.

        One statement, its own transaction: one hand-off to SQLite's thread, where a
        ``BEGIN`` ... ``COMMIT`` around it would take three."""
        report = NewReport(event_id, kind, body, source, now, deadline)
        try:
            rows = await self._db.write_one(_ENQUEUE + " RETURNING id", report.row())
        except StoreError as exc:
            raise StoreError(f"outbox: {exc}") from exc
        crashpoint("outbox.queued")
        return bool(rows)

    @staticmethod
    async def enqueue_in(
        conn: aiosqlite.Connection,
        *,
        event_id: str,
        kind: str,
        body: bytes,
        source: str,
        now: float,
        deadline: float | None = None,
    ) -> bool:
        """:meth:`enqueue` inside the caller's write transaction (``Database.write``), so
        that the row commits together with what the caller writes beside it. The caller
        commits, translates errors (``Database.write`` does) and reaches the
        ``outbox.queued`` crash point after the commit."""
        report = NewReport(event_id, kind, body, source, now, deadline)
        cur = await conn.execute(_ENQUEUE, report.row())
        return cur.rowcount == 1

    @staticmethod
    async def enqueue_many_in(
        conn: aiosqlite.Connection, reports: Sequence[NewReport]
    ) -> set[tuple[str, str]]:
        """:meth:`enqueue_in` for many reports, one statement per ``_MANY`` of them (one
        hand-off to SQLite's thread each, where one per report cost more than the commit):
        the (event id, kind) of those queued now; the others were queued before."""
        queued: set[tuple[str, str]] = set()
        for first in range(0, len(reports), _MANY):
            chunk = reports[first : first + _MANY]
            rows = await conn.execute_fetchall(
                _ENQUEUE_MANY.format(values=", ".join([_ROW] * len(chunk))),
                [param for report in chunk for param in report.row()],
            )
            queued.update((row[0], row[1]) for row in rows)
        return queued

    async def recover(self, *, now: float) -> int:
        """Rows a crash left ``in_flight`` go back to ``pending``, due now."""
        async with self._write() as conn:
            cur = await conn.execute(_RECOVER, (now, now))
            return cur.rowcount

    async def claim(self, *, now: float, limit: int) -> list[OutboxItem]:
        """Up to ``limit`` due rows, oldest first, marked ``in_flight`` (attempts + 1)."""
        return (await self.settle((), now=now, limit=limit)).claimed

    async def settle(
        self, results: Sequence[tuple[int, Outcome]], *, now: float, limit: int
    ) -> Round:
        """Record finished attempts and claim up to ``limit`` due rows, in one transaction."""
        if not results and limit <= 0:
            return Round()
        async with self._write() as conn:
            unrecorded = await _record(conn, results, now)
            if limit <= 0:
                return Round(unrecorded=unrecorded)
            rows = await conn.execute_fetchall(_CLAIM, (now, now, limit))
        claimed = sorted((OutboxItem.from_row(r) for r in rows), key=lambda item: item.id)
        return Round(claimed=claimed, unrecorded=unrecorded)

    async def record(self, results: Sequence[tuple[int, Outcome]], *, now: float) -> dict[int, str]:
        """Write the outcomes of finished attempts, all in one transaction; returns those
        that could not be recorded, by outbox id, with the reason."""
        if not results:
            return {}
        async with self._write() as conn:
            return await _record(conn, results, now)

    async def hand_back(self, ids: Sequence[int], *, now: float, unsent: bool = False) -> None:
        """Claimed rows go back to ``pending``, due now. ``unsent``: the claim's attempt
        never went out, so it is not counted."""
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        undo = 1 if unsent else 0
        async with self._write() as conn:
            await conn.execute(
                f"UPDATE outbox SET state = {_to(_E.HAND_BACK)}, next_attempt_at = ?, "  # noqa: S608
                f"attempts = attempts - ?, updated_at = ? "
                f"WHERE {_where(_E.HAND_BACK)} AND id IN ({marks})",
                (now, undo, now, *ids),
            )

    async def next_due(self) -> float | None:
        row = await self._db.fetchone(
            f"SELECT MIN(next_attempt_at) FROM outbox WHERE state = '{RowState.PENDING}'"  # noqa: S608
        )
        return float(row[0]) if row and row[0] is not None else None

    async def counts(self) -> dict[str, int]:
        rows = await self._db.fetchall("SELECT state, COUNT(*) FROM outbox GROUP BY state")
        counts = dict.fromkeys(STATES, 0)
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    async def items(self, *, state: str | None = None, limit: int = 1000) -> list[OutboxItem]:
        if state is None:
            rows = await self._db.fetchall("SELECT * FROM outbox ORDER BY id LIMIT ?", (limit,))
        else:
            rows = await self._db.fetchall(
                "SELECT * FROM outbox WHERE state = ? ORDER BY id LIMIT ?", (state, limit)
            )
        return [OutboxItem.from_row(r) for r in rows]

    async def find(self, ref: str) -> list[OutboxItem]:
        """Rows by numeric id or by event id."""
        if ref.isdigit():
            rows = await self._db.fetchall("SELECT * FROM outbox WHERE id = ?", (int(ref),))
            if rows:
                return [OutboxItem.from_row(r) for r in rows]
        rows = await self._db.fetchall(
            "SELECT * FROM outbox WHERE event_id = ? ORDER BY id", (ref,)
        )
        return [OutboxItem.from_row(r) for r in rows]

    async def retry(self, ids: Sequence[int], *, now: float) -> int:
        """``dead`` or waiting ``pending`` rows become due now. Delivered rows never move."""
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        async with self._write() as conn:
            cur = await conn.execute(
                f"UPDATE outbox SET state = {_to(_E.RETRY_NOW)}, next_attempt_at = ?, "  # noqa: S608
                f"updated_at = ? WHERE {_where(_E.RETRY_NOW)} AND body_dropped_at IS NULL "
                f"AND id IN ({marks})",
                (now, now, *ids),
            )
            return cur.rowcount

    async def purge(self, ids: Sequence[int]) -> int:
        """Delete ``dead`` rows, so a corrected report for the same key can be queued."""
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        async with self._write() as conn:
            cur = await conn.execute(
                f"DELETE FROM outbox WHERE {_where(_E.PURGE)} AND id IN ({marks})",  # noqa: S608
                tuple(ids),
            )
            return cur.rowcount

    async def pending_before(self, deadline: float) -> list[OutboxItem]:
        """Undelivered rows whose month-end cut-off is before ``deadline``."""
        rows = await self._db.fetchall(
            "SELECT * FROM outbox INDEXED BY outbox_due WHERE state IN ('pending', 'in_flight') "
            "AND deadline IS NOT NULL AND deadline <= ? ORDER BY id",
            (deadline,),
        )
        return [OutboxItem.from_row(r) for r in rows]


def _text(value: str) -> str:
    """Text SQLite can store: a lone surrogate (from a peer's escapes) becomes '?'."""
    return value.encode("utf-8", "replace").decode("utf-8")


def _params(outcome: Outcome, item_id: int, now: float) -> tuple[object, ...]:
    match outcome:
        case Delivered(status=status, report_id=report_id):
            rid = None if report_id is None else _text(report_id)
            return (status, rid, now, now, item_id)
        case Retry(status=status, error=error, next_attempt_at=next_at):
            return (status, _text(error), next_at, now, item_id)
        case Dead(status=status, error=error):
            return (status, _text(error), now, item_id)


async def _states(conn: aiosqlite.Connection, ids: Sequence[int]) -> dict[int, RowState]:
    found: dict[int, RowState] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows = await conn.execute_fetchall(
            f"SELECT id, state FROM outbox WHERE id IN ({marks})",  # noqa: S608
            tuple(chunk),
        )
        found.update({int(r[0]): RowState(r[1]) for r in rows})
    return found


async def _record(
    conn: aiosqlite.Connection, results: Sequence[tuple[int, Outcome]], now: float
) -> dict[int, str]:
    """Write outcomes, one statement per kind of outcome. An outcome the table does not
    allow for its row's state now (or whose row is gone) is left out, with its reason."""
    if not results:
        return {}
    states = await _states(conn, [item_id for item_id, _ in results])
    unrecorded: dict[int, str] = {}
    batches: dict[RowEvent, list[tuple[int, tuple[object, ...]]]] = {}
    for item_id, outcome in results:
        event = event_of(outcome)
        state = states.get(item_id)
        if state is None:
            unrecorded[item_id] = "the outbox row no longer exists"
            continue
        try:
            transition(state, event)
        except TransitionError as exc:
            unrecorded[item_id] = str(exc)
            continue
        batches.setdefault(event, []).append((item_id, _params(outcome, item_id, now)))
    for event, rows in batches.items():
        unrecorded.update(await _write_batch(conn, _OUTCOME_SQL[event], rows, now))
    return unrecorded


async def _write_batch(
    conn: aiosqlite.Connection, sql: str, rows: list[tuple[int, tuple[object, ...]]], now: float
) -> dict[int, str]:
    """All rows in one go; if that fails other than for the database itself, row by row,
    each in its own savepoint, so one that cannot be written fails alone (and is handed
    back: ``pending``, sent again with the same key)."""
    await conn.execute("SAVEPOINT outcome_batch")
    try:
        await conn.executemany(sql, [params for _, params in rows])
    except sqlite3.OperationalError:  # locked, full, I/O: the database's trouble, not a row's
        raise
    except (sqlite3.Error, ValueError, TypeError, OverflowError):
        await conn.execute("ROLLBACK TO outcome_batch")
    else:
        await conn.execute("RELEASE outcome_batch")
        return {}
    await conn.execute("RELEASE outcome_batch")
    failed: dict[int, str] = {}
    for item_id, params in rows:
        await conn.execute("SAVEPOINT outcome_row")
        try:
            await conn.execute(sql, params)
        except sqlite3.OperationalError:
            raise
        except (sqlite3.Error, ValueError, TypeError, OverflowError) as exc:
            await conn.execute("ROLLBACK TO outcome_row")
            failed[item_id] = f"cannot be written: {describe(exc)}"
            await conn.execute(
                f"UPDATE outbox SET state = {_to(_E.HAND_BACK)}, next_attempt_at = ?, "  # noqa: S608
                f"updated_at = ? WHERE id = ? AND {_where(_E.HAND_BACK)}",
                (now, now, item_id),
            )
        await conn.execute("RELEASE outcome_row")
    return failed
