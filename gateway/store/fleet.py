"""The hub's tables (schema v5): sites, when each was last heard from, routes, answers owed.

STAND-IN written on h11-hub so that the hub can be built and tested before h11-store's
FleetStore lands; on merge, h11-store's module replaces this one and the hub follows its
names.

A site's report is queued in the hub's outbox under the kind ``<kind>@<site>``: two sites
may report the same kind for the same event (a PriceCurve routed to both), and the outbox
keeps one row per (event id, kind).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.fleet.messages import SiteReport
from gateway.fleet.sites import Site
from gateway.store.database import Database
from gateway.store.outbox import Outbox

__all__ = ["Accepted", "FleetStore", "OwedAnswer", "outbox_kind", "site_kind"]


def outbox_kind(kind: str, site_id: str) -> str:
    return f"{kind}@{site_id}"


def site_kind(kind: str) -> str:
    """The kind the site named, from the hub's outbox kind."""
    return kind.rpartition("@")[0] or kind


@dataclass(frozen=True, slots=True)
class Accepted:
    """A site report in the hub's outbox: ``new`` if this call queued it."""

    new: bool
    outbox_id: int
    state: str
    report_id: str | None
    last_status: int | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class OwedAnswer:
    outbox_id: int
    site_id: str
    event_id: str
    kind: str
    state: str
    report_id: str | None
    last_status: int | None
    last_error: str | None


def _accepted(row: sqlite3.Row, *, new: bool) -> Accepted:
    return Accepted(
        new=new,
        outbox_id=int(row["id"]),
        state=row["state"],
        report_id=row["report_id"],
        last_status=row["last_status"],
        last_error=row["last_error"],
    )


class FleetStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def replace_sites(self, sites: Iterable[Site], *, source: str, now: float) -> None:
        rows = [
            (
                s.site_id,
                json.dumps(sorted(s.resources)),
                json.dumps(sorted(s.locations)),
                json.dumps(sorted(s.meter_points)),
                source,
                now,
            )
            for s in sites
        ]
        async with self._db.write() as conn:
            await conn.execute("DELETE FROM fleet_sites WHERE source = ?", (source,))
            await conn.executemany(
                "INSERT INTO fleet_sites (site_id, resources, locations, meter_points, source, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (site_id) DO UPDATE SET "
                "resources = excluded.resources, locations = excluded.locations, "
                "meter_points = excluded.meter_points, source = excluded.source, "
                "updated_at = excluded.updated_at",
                rows,
            )

    async def sites(self) -> list[Site]:
        rows = await self._db.fetchall("SELECT * FROM fleet_sites ORDER BY site_id")
        return [
            Site(
                r["site_id"],
                frozenset(json.loads(r["resources"])),
                frozenset(json.loads(r["locations"])),
                frozenset(json.loads(r["meter_points"])),
            )
            for r in rows
        ]

    async def record_route(self, event_id: str, site_id: str, *, now: float) -> None:
        await self._db.write_one(
            "INSERT INTO fleet_routes (event_id, site_id, published_at) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (event_id, site_id, now),
        )

    async def routes_for(self, event_id: str) -> set[str]:
        rows = await self._db.fetchall(
            "SELECT site_id FROM fleet_routes WHERE event_id = ?", (event_id,)
        )
        return {r[0] for r in rows}

    async def accept_report(self, site_id: str, report: SiteReport, *, now: float) -> Accepted:
        """Queue the report with an answer owed to the site, in one transaction; a repeat
        changes nothing and returns the row as it is."""
        kind = outbox_kind(report.kind, site_id)
        async with self._db.write() as conn:
            new = await Outbox.enqueue_in(
                conn,
                event_id=report.event_id,
                kind=kind,
                body=bytes(report.body),
                source=f"site:{site_id}",
                now=now,
            )
            rows = await conn.execute_fetchall(
                "SELECT * FROM outbox WHERE event_id = ? AND kind = ?", (report.event_id, kind)
            )
            row = next(iter(rows))
            if new:
                await conn.execute(
                    "INSERT INTO fleet_answers (outbox_id, site_id) VALUES (?, ?)",
                    (row["id"], site_id),
                )
        return _accepted(row, new=new)

    async def owed_answers(self, *, limit: int = 500) -> list[OwedAnswer]:
        rows = await self._db.fetchall(
            "SELECT a.outbox_id, a.site_id, o.event_id, o.kind, o.state, o.report_id, "
            "o.last_status, o.last_error FROM fleet_answers a JOIN outbox o ON o.id = a.outbox_id "
            "WHERE a.answered_at IS NULL AND o.state IN ('delivered', 'dead') "
            "ORDER BY a.outbox_id LIMIT ?",
            (limit,),
        )
        return [
            OwedAnswer(
                outbox_id=int(r[0]),
                site_id=r[1],
                event_id=r[2],
                kind=site_kind(r[3]),
                state=r[4],
                report_id=r[5],
                last_status=r[6],
                last_error=r[7],
            )
            for r in rows
        ]

    async def answered(self, outbox_ids: Iterable[int], *, now: float) -> None:
        ids = list(outbox_ids)
        if not ids:
            return
        async with self._db.write() as conn:
            await conn.executemany(
                "UPDATE fleet_answers SET answered_at = ? WHERE outbox_id = ?",
                [(now, i) for i in ids],
            )

    async def saw(self, site_id: str, *, online: bool | None, now: float) -> None:
        """A message from the site: its status (``online`` set) or a report (None)."""
        await self._db.write_one(
            "INSERT INTO fleet_seen (site_id, online, last_seen) VALUES (?, ?, ?) "
            "ON CONFLICT (site_id) DO UPDATE SET last_seen = excluded.last_seen, "
            "online = COALESCE(excluded.online, fleet_seen.online)",
            (site_id, None if online is None else int(online), now),
        )
