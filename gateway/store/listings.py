"""The rows ``ecgw outbox list`` and ``ecgw events list`` show, and how many match.

Newest first: reports by ``created_at`` (when queued), events by ``received_at``, the
row id breaking ties (the later insert first). Each query names the index it reads
(migration 5: ``outbox_by_created``, ``outbox_by_state_created``,
``events_by_plan_received``; ``events_by_received`` from the start), so a listing reads
only the rows it shows, in index order, however big the table and whatever statistics
``ANALYZE`` may have gathered; the count reads the same index, not the table, and stops
after :data:`COUNT_CAP` entries. The rows
are read first, then the count (each its own snapshot): a row queued in between makes
the count one higher, never hides a cut.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.listing import Filter
from gateway.store.database import Database
from gateway.store.inbox import InboxEvent
from gateway.store.outbox import OutboxItem

__all__ = ["COUNT_CAP", "Page", "events_page", "outbox_page"]

T = TypeVar("T")


COUNT_CAP = 10_000
"""A listing counts the rows that match up to this many (the count reads index entries,
one per row: beyond this it says "more than")."""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    rows: list[T]
    total: int  # rows that match the filter, shown or not, counted up to COUNT_CAP + 1

    @property
    def exact(self) -> bool:
        return self.total <= COUNT_CAP


@dataclass(frozen=True, slots=True)
class _Table:
    name: str
    at: str  # the time column the listing orders and filters by
    state: str  # the state column
    by_at: str  # index on (at)
    by_state_at: str  # index on (state, at)


_OUTBOX = _Table("outbox", "created_at", "state", "outbox_by_created", "outbox_by_state_created")
_EVENTS = _Table(
    "events", "received_at", "plan_state", "events_by_received", "events_by_plan_received"
)


def queries(table: _Table, chosen: Filter) -> tuple[str, str, tuple[object, ...]]:
    """``(rows sql, count sql, parameters)``; the rows statement takes ``LIMIT ?`` last."""
    where: list[str] = []
    params: list[object] = []
    if chosen.state is not None:
        where.append(f"{table.state} = ?")
        params.append(chosen.state)
    if chosen.since is not None:
        where.append(f"{table.at} >= ?")
        params.append(chosen.since)
    index = table.by_state_at if chosen.state is not None else table.by_at
    source = f"{table.name} INDEXED BY {index}"
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    rows = (
        f"SELECT * FROM {source}{condition} "  # noqa: S608 - names from the constants above
        f"ORDER BY {table.at} DESC, rowid DESC LIMIT ?"
    )
    count = f"SELECT COUNT(*) FROM (SELECT 1 FROM {source}{condition} LIMIT {COUNT_CAP + 1})"  # noqa: S608
    return rows, count, tuple(params)


async def _page(db: Database, table: _Table, chosen: Filter) -> tuple[list[sqlite3.Row], int]:
    rows_sql, count_sql, params = queries(table, chosen)
    rows = await db.fetchall(rows_sql, (*params, chosen.limit))
    count = await db.fetchone(count_sql, params)
    total = int(count[0]) if count else 0
    return rows, max(total, len(rows))


async def outbox_page(db: Database, chosen: Filter) -> Page[OutboxItem]:
    rows, total = await _page(db, _OUTBOX, chosen)
    return Page([OutboxItem.from_row(r) for r in rows], total)


async def events_page(db: Database, chosen: Filter) -> Page[InboxEvent]:
    rows, total = await _page(db, _EVENTS, chosen)
    return Page([InboxEvent.from_row(r) for r in rows], total)
