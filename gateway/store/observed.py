"""What ``ecgw status``, ``/healthz`` and ``/metrics`` read from the database.

Cheap queries only (each an index seek, a small ``GROUP BY`` or the ``row_counts``
the triggers keep): a scrape every few seconds, or ``ecgw status`` on a year-old file,
must not cost a pass over a table.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.store.database import Database

__all__ = ["ChannelLatest", "OldestPending", "Observed"]


@dataclass(frozen=True, slots=True)
class ChannelLatest:
    adapter: str
    channel: str
    unit: str
    at: float | None  # the newest raw reading; None if none is kept
    value: float | None


@dataclass(frozen=True, slots=True)
class OldestPending:
    """The oldest report not yet delivered (pending or in flight) and its month-end cut-off."""

    event_id: str
    kind: str
    created_at: float
    deadline: float | None


class Observed:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def usable(self) -> None:
        """A trivial read; raises StoreError if the database cannot answer."""
        await self._db.fetchone("SELECT 1 FROM meta LIMIT 1")

    async def outbox_by_state(self) -> dict[str, int]:
        """Reports per state, from ``row_counts`` (kept by triggers; no count of the rows)."""
        counts = dict.fromkeys(("pending", "in_flight", "delivered", "dead"), 0)
        rows = await self._db.fetchall(
            "SELECT substr(name, 8), n FROM row_counts WHERE name LIKE 'outbox.%'"
        )
        counts.update({str(state): int(n) for state, n in rows})
        return counts

    async def events_total(self) -> int:
        """How many events the inbox holds, from ``row_counts``."""
        row = await self._db.fetchone("SELECT n FROM row_counts WHERE name = 'events'")
        return int(row[0]) if row else 0

    async def oldest_pending(self) -> OldestPending | None:
        row = await self._db.fetchone(
            "SELECT event_id, kind, created_at, deadline FROM outbox "
            # named: with statistics (ANALYZE) SQLite may walk every delivered row by time
            "INDEXED BY outbox_by_state_created "
            "WHERE state IN ('pending', 'in_flight') ORDER BY created_at, id LIMIT 1"
        )
        if row is None:
            return None
        return OldestPending(str(row[0]), str(row[1]), float(row[2]), row[3])

    async def events_by_payload_type(self) -> dict[str, int]:
        rows = await self._db.fetchall(
            "SELECT payload_type, COUNT(*) FROM events GROUP BY payload_type"
        )
        return {str(kind): int(n) for kind, n in rows}

    async def channels(self) -> list[ChannelLatest]:
        """Every registered channel with its newest raw reading (one seek per channel)."""
        rows = await self._db.fetchall(
            "SELECT c.adapter, c.channel, c.unit, r.at, r.value FROM channels c "
            "LEFT JOIN readings r ON r.channel_id = c.id AND r.at = "
            "(SELECT MAX(at) FROM readings WHERE channel_id = c.id) "
            "ORDER BY c.adapter, c.channel"
        )
        return [ChannelLatest(str(a), str(c), str(u), at, v) for a, c, u, at, v in rows]
