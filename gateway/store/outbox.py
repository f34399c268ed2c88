"""The report outbox: one row per (event id, payload kind), body frozen at queue time.

States: ``pending`` -> ``in_flight`` (claimed, attempts + 1) -> ``delivered`` |
``pending`` (retry later) | ``dead`` (rejected). A row the API answered 2xx
for is never sent again; a row left ``in_flight`` by a crash goes back to
``pending`` on start and is sent again, with the same bytes and the same
``Idempotency-Key``. Delivered rows are never deleted: their key keeps a
report from being queued twice.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite

from gateway.crashpoints import crashpoint
from gateway.store.database import Database
from gateway.store.outbox_states import Dead, Delivered, Outcome, Retry, idempotency_key

__all__ = ["Outbox", "OutboxItem"]

STATES = ("pending", "in_flight", "delivered", "dead")


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

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> OutboxItem:
        values = dict(row)
        values["body"] = bytes(values["body"])
        return cls(**values)


class Outbox:
    def __init__(self, db: Database) -> None:
        self._db = db

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
        """Queue a report; False (and nothing changes) if its key is already queued."""
        key = idempotency_key(event_id, kind, body)
        async with self._db.write() as conn:
            cur = await conn.execute(
                "INSERT INTO outbox (event_id, kind, body, idempotency_key, source, state, "
                "next_attempt_at, deadline, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?) "
                "ON CONFLICT (event_id, kind) DO NOTHING",
                (event_id, kind, body, key, source, now, deadline, now, now),
            )
            queued = cur.rowcount == 1
        crashpoint("outbox.queued")
        return queued

    async def recover(self, *, now: float) -> int:
        """Rows a crash left ``in_flight`` go back to ``pending``, due now."""
        async with self._db.write() as conn:
            cur = await conn.execute(
                "UPDATE outbox SET state = 'pending', next_attempt_at = ?, updated_at = ? "
                "WHERE state = 'in_flight'",
                (now, now),
            )
            return cur.rowcount

    async def claim(self, *, now: float, limit: int) -> list[OutboxItem]:
        """Up to ``limit`` due rows, oldest first, marked ``in_flight`` (attempts + 1)."""
        return await self.settle((), now=now, limit=limit)

    async def settle(
        self, results: Sequence[tuple[int, Outcome]], *, now: float, limit: int
    ) -> list[OutboxItem]:
        """Record finished attempts and claim up to ``limit`` due rows, in one transaction."""
        if not results and limit <= 0:
            return []
        async with self._db.write() as conn:
            await _record(conn, results, now)
            if limit <= 0:
                return []
            rows = await conn.execute_fetchall(
                "UPDATE outbox SET state = 'in_flight', attempts = attempts + 1, updated_at = ? "
                "WHERE id IN (SELECT id FROM outbox WHERE state = 'pending' "
                "AND next_attempt_at <= ? ORDER BY id LIMIT ?) RETURNING *",
                (now, now, limit),
            )
        return sorted((OutboxItem.from_row(r) for r in rows), key=lambda item: item.id)

    async def record(self, results: Sequence[tuple[int, Outcome]], *, now: float) -> None:
        """Write the outcomes of finished attempts, all in one transaction."""
        if not results:
            return
        async with self._db.write() as conn:
            await _record(conn, results, now)

    async def hand_back(self, ids: Sequence[int], *, now: float, unsent: bool = False) -> None:
        """Claimed rows go back to ``pending``, due now. ``unsent``: the claim's attempt
        never went out, so it is not counted."""
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        undo = 1 if unsent else 0
        async with self._db.write() as conn:
            await conn.execute(
                f"UPDATE outbox SET state = 'pending', next_attempt_at = ?, "  # noqa: S608
                f"attempts = attempts - ?, updated_at = ? "
                f"WHERE state = 'in_flight' AND id IN ({marks})",
                (now, undo, now, *ids),
            )

    async def next_due(self) -> float | None:
        row = await self._db.fetchone(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'"
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
        async with self._db.write() as conn:
            cur = await conn.execute(
                f"UPDATE outbox SET state = 'pending', next_attempt_at = ?, "  # noqa: S608
                f"updated_at = ? WHERE state IN ('dead', 'pending') AND id IN ({marks})",
                (now, now, *ids),
            )
            return cur.rowcount

    async def purge(self, ids: Sequence[int]) -> int:
        """Delete ``dead`` rows, so a corrected report for the same key can be queued."""
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        async with self._db.write() as conn:
            cur = await conn.execute(
                f"DELETE FROM outbox WHERE state = 'dead' AND id IN ({marks})",  # noqa: S608
                tuple(ids),
            )
            return cur.rowcount

    async def pending_before(self, deadline: float) -> list[OutboxItem]:
        """Undelivered rows whose month-end cut-off is before ``deadline``."""
        rows = await self._db.fetchall(
            "SELECT * FROM outbox WHERE state IN ('pending', 'in_flight') "
            "AND deadline IS NOT NULL AND deadline <= ? ORDER BY id",
            (deadline,),
        )
        return [OutboxItem.from_row(r) for r in rows]


_DELIVERED = (
    "UPDATE outbox SET state = 'delivered', last_status = ?, last_error = NULL, "
    "report_id = ?, delivered_at = ?, updated_at = ? WHERE id = ?"
)
_RETRY = (
    "UPDATE outbox SET state = 'pending', last_status = ?, last_error = ?, "
    "next_attempt_at = ?, updated_at = ? WHERE id = ? AND state = 'in_flight'"
)
_DEAD = (
    "UPDATE outbox SET state = 'dead', last_status = ?, last_error = ?, "
    "updated_at = ? WHERE id = ? AND state = 'in_flight'"
)


async def _record(
    conn: aiosqlite.Connection, results: Sequence[tuple[int, Outcome]], now: float
) -> None:
    """Write outcomes with one statement per kind of outcome."""
    rows: dict[str, list[tuple[object, ...]]] = {_DELIVERED: [], _RETRY: [], _DEAD: []}
    for item_id, outcome in results:
        match outcome:
            case Delivered(status=status, report_id=report_id):
                rows[_DELIVERED].append((status, report_id, now, now, item_id))
            case Retry(status=status, error=error, next_attempt_at=next_at):
                rows[_RETRY].append((status, error, next_at, now, item_id))
            case Dead(status=status, error=error):
                rows[_DEAD].append((status, error, now, item_id))
    for sql, params in rows.items():
        if params:
            await conn.executemany(sql, params)
