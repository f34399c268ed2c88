"""Small facts about the running gateway, kept in the ``meta`` table for ``ecgw status``."""

from __future__ import annotations

import json

from gateway.store.database import Database

__all__ = ["Meta"]


class Meta:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, **values: object) -> None:
        async with self._db.write() as conn:
            await conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(key, json.dumps(value)) for key, value in values.items()],
            )

    async def get_all(self) -> dict[str, object]:
        rows = await self._db.fetchall("SELECT key, value FROM meta ORDER BY key")
        result: dict[str, object] = {}
        for key, value in rows:
            try:
                result[key] = json.loads(value)
            except ValueError:
                result[key] = value
        return result

    async def started(self, *, pid: int, now: float, webhook_url: str | None) -> None:
        await self.put(
            **{
                "gateway.pid": pid,
                "gateway.started_at": now,
                "gateway.heartbeat": now,
                "gateway.webhook_url": webhook_url,
                "gateway.stopped_at": None,
                "gateway.stop_reason": None,
            }
        )

    async def stopped(self, *, now: float, reason: str) -> None:
        """Record a clean stop: ``ecgw status`` then says stopped, whatever owns the PID."""
        await self.put(**{"gateway.stopped_at": now, "gateway.stop_reason": reason})

    async def heartbeat(self, *, now: float) -> None:
        """Record that the gateway is alive, then hand the WAL's space back to the disk.

        The heartbeat is the gateway's periodic tidy-up: between two beats the WAL is
        bounded by SQLite's auto-checkpoint; at each beat it is emptied (a TRUNCATE
        checkpoint, skipped for this beat if a reader holds an old snapshot).
        """
        await self.put(**{"gateway.heartbeat": now})
        await self._db.truncate_wal()
