"""The hub's tables (docs/fleet.md): its sites, when each was last heard from, every event's
route to a site, and the answer owed to a site for each of its reports.

* ``fleet_sites``: each site and what it owns (ids as JSON arrays), from the config
  (``source = 'config'``) or ``ecgw hub sites import`` (``'import'``); each source's set is
  replaced whole.
* ``fleet_seen``: per site, its last ``status`` (``online`` 1/0, NULL: not said) and when
  the hub last heard anything from it.
* ``fleet_routes``: an event published to a site, recorded after the broker's PUBACK.
* ``fleet_answers``: a site's report is a row of the hub's own outbox (``source =
  'site:<site>'``, ``kind = '<kind>@<site>'``: two sites report the same event with the
  same payload type, and the outbox keys rows by event and kind), committed together with
  an answers row. Once the outbox row is final (``delivered`` or ``dead``) the hub owes the
  site an answer; :meth:`FleetStore.mark_answered` records it was published.

sqlite3 errors leave as :class:`~gateway.errors.StoreError` (``Database`` translates them).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import aiosqlite

from gateway.crashpoints import crashpoint
from gateway.errors import describe
from gateway.fleet.sites import Site, SiteTable
from gateway.store.database import Database
from gateway.store.outbox import Outbox

__all__ = [
    "Accepted",
    "FleetStore",
    "OwedAnswer",
    "Pending",
    "Seen",
    "SiteRow",
    "UNROUTED",
    "hub_kind",
    "site_kind",
    "site_source",
]

SiteSource = Literal["config", "import"]
UNROUTED = "unrouted"
"""The hub's ``events.plan_state`` for an event no site owns: kept and shown, never sent."""
FINAL = ("delivered", "dead")
OPEN = ("pending", "in_flight")


def site_source(site_id: str) -> str:
    """The hub outbox's ``source`` for a site's report."""
    return f"site:{site_id}"


def hub_kind(kind: str, site_id: str) -> str:
    """The hub outbox's ``kind`` for a site's report of ``kind``."""
    return f"{kind}@{site_id}"


def site_kind(stored: str) -> str:
    """The site's own ``kind`` back from :func:`hub_kind` (a site id has no ``@``)."""
    return stored.rpartition("@")[0] or stored


@dataclass(frozen=True, slots=True)
class SiteRow:
    site: Site
    source: SiteSource
    updated_at: float


@dataclass(frozen=True, slots=True)
class Seen:
    online: bool | None
    last_seen: float


@dataclass(frozen=True, slots=True)
class Accepted:
    """A site's report in the hub's outbox: ``new`` if this call queued it; else the
    row that was there (its state may already be final: answer at once)."""

    new: bool
    outbox_id: int
    state: str
    report_id: str | None
    last_status: int | None
    last_error: str | None

    @property
    def final(self) -> bool:
        return self.state in FINAL


@dataclass(frozen=True, slots=True)
class OwedAnswer:
    """A site's report whose outcome is known and not yet published to the site."""

    outbox_id: int
    site_id: str
    event_id: str
    kind: str
    """The site's own kind (as in its ``SiteReport``)."""
    state: str
    report_id: str | None
    last_status: int | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Pending:
    """A site's reports not yet final: how many, and when the oldest was accepted."""

    count: int
    oldest: float


_ACCEPTED = (
    "SELECT id, state, report_id, last_status, last_error FROM outbox "
    "WHERE event_id = ? AND kind = ?"
)


class FleetStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- sites ---------------------------------------------------------------------------------

    async def replace_sites(self, sites: Iterable[Site], source: SiteSource, now: float) -> None:
        """The sites of ``source`` become exactly ``sites``; the other source's stay.
        ValueError (nothing changed) if one of them is the other source's, or claims an id
        one of the other source's sites claims (the running hub reads them as one table:
        a config edited but not yet read by the hub is not what it holds)."""
        sites = list(sites)
        async with self._db.write() as conn:
            rows = await conn.execute_fetchall(
                "SELECT site_id, resources, locations, meter_points FROM fleet_sites "
                "WHERE source != ?",
                (source,),
            )
            others = {
                r[0]: Site(r[0], *(frozenset(json.loads(r[i])) for i in (1, 2, 3))) for r in rows
            }
            for site in sites:
                if site.site_id in others:
                    other = "config" if source == "import" else "import"
                    raise ValueError(f"site {site.site_id!r} is already listed by the {other}")
            SiteTable([*others.values(), *sites])  # ValueError: an id claimed by two sites
            await conn.execute("DELETE FROM fleet_sites WHERE source = ?", (source,))
            await conn.executemany(
                "INSERT INTO fleet_sites (site_id, resources, locations, meter_points, source, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(s.site_id, *_id_columns(s), source, now) for s in sites],
            )

    async def site_rows(self) -> list[SiteRow]:
        rows = await self._db.fetchall(
            "SELECT site_id, resources, locations, meter_points, source, updated_at "
            "FROM fleet_sites ORDER BY site_id"
        )
        return [
            SiteRow(
                Site(r[0], *(frozenset(json.loads(r[i])) for i in (1, 2, 3))),
                r[4],
                float(r[5]),
            )
            for r in rows
        ]

    async def sites(self) -> list[Site]:
        return [row.site for row in await self.site_rows()]

    # --- last seen -----------------------------------------------------------------------------

    async def saw(self, site_id: str, online: bool | None, now: float) -> None:
        """Heard from ``site_id`` at ``now``; ``online`` from its status (None: keep)."""
        await self._db.write_one(_SAW, (site_id, None if online is None else int(online), now))

    async def seen(self) -> dict[str, Seen]:
        rows = await self._db.fetchall("SELECT site_id, online, last_seen FROM fleet_seen")
        return {r[0]: Seen(None if r[1] is None else bool(r[1]), float(r[2])) for r in rows}

    # --- routes --------------------------------------------------------------------------------

    async def record_route(self, event_id: str, site_id: str, now: float) -> None:
        await self.record_routes(event_id, [site_id], now)

    async def record_routes(self, event_id: str, site_ids: Sequence[str], now: float) -> None:
        """``event_id`` reached each of ``site_ids`` (the broker took it); a repeat keeps
        the first time."""
        if not site_ids:
            return
        async with self._db.write() as conn:
            await conn.executemany(
                "INSERT INTO fleet_routes (event_id, site_id, published_at) VALUES (?, ?, ?) "
                "ON CONFLICT (event_id, site_id) DO NOTHING",
                [(event_id, site_id, now) for site_id in site_ids],
            )

    async def routed_to(self, event_id: str, site_id: str) -> bool:
        """Whether the route of ``event_id`` to ``site_id`` is recorded."""
        row = await self._db.fetchone(
            "SELECT 1 FROM fleet_routes WHERE event_id = ? AND site_id = ?", (event_id, site_id)
        )
        return row is not None

    async def routes_for(self, event_id: str) -> list[str]:
        rows = await self._db.fetchall(
            "SELECT site_id FROM fleet_routes WHERE event_id = ? ORDER BY site_id", (event_id,)
        )
        return [r[0] for r in rows]

    async def routed_by_site(self) -> dict[str, int]:
        rows = await self._db.fetchall(
            "SELECT site_id, COUNT(*) FROM fleet_routes GROUP BY site_id"
        )
        return {r[0]: int(r[1]) for r in rows}

    async def unrouted_count(self) -> int:
        row = await self._db.fetchone(
            "SELECT COUNT(*) FROM events WHERE plan_state = ?", (UNROUTED,)
        )
        return int(row[0]) if row else 0

    # --- answers -------------------------------------------------------------------------------

    async def accept_report(
        self, site_id: str, event_id: str, kind: str, body: bytes, now: float
    ) -> Accepted:
        """Queue a site's report in the hub's outbox together with its answers row, in one
        transaction; or, for a report already queued, its row as it is. ValueError (nothing
        written) for an id SQLite cannot store as text."""
        (result,) = await self.accept_reports([(site_id, event_id, kind, body)], now)
        if isinstance(result, Accepted):
            return result
        raise ValueError(result)

    async def accept_reports(
        self,
        reports: Sequence[tuple[str, str, str, bytes]],
        now: float,
        *,
        seen: Sequence[tuple[str, bool | None]] = (),
    ) -> list[Accepted | str]:
        """:meth:`accept_report` for ``(site_id, event_id, kind, body)`` each, in one
        transaction (one commit for a burst). Each report fails alone: its place in the
        result holds why, and the others are committed. ``seen``: :meth:`saw` for each
        ``(site_id, online)``, in order, in the same transaction (the hub's report intake
        commits a batch of messages, status and reports, at once)."""
        async with self._db.write() as conn:
            if seen:
                await conn.executemany(
                    _SAW, [(s, None if online is None else int(online), now) for s, online in seen]
                )
            results = [await _accept_one(conn, *report, now=now) for report in reports]
        if any(isinstance(r, Accepted) and r.new for r in results):
            crashpoint("outbox.queued")
        return results

    async def owed_answers(self, limit: int) -> list[OwedAnswer]:
        """Site reports whose outbox row is final and whose answer is not yet published,
        oldest first."""
        rows = await self._db.fetchall(
            "SELECT a.outbox_id, a.site_id, o.event_id, o.kind, o.state, o.report_id, "
            "o.last_status, o.last_error FROM fleet_answers AS a "
            "JOIN outbox AS o ON o.id = a.outbox_id "
            "WHERE a.answered_at IS NULL AND o.state IN ('delivered', 'dead') "
            "ORDER BY a.outbox_id LIMIT ?",
            (limit,),
        )
        return [
            OwedAnswer(int(r[0]), r[1], r[2], site_kind(r[3]), r[4], r[5], r[6], r[7]) for r in rows
        ]

    async def mark_answered(self, outbox_ids: Sequence[int], now: float) -> int:
        """The answers for these rows were published (the broker took them)."""
        if not outbox_ids:
            return 0
        changed = 0
        async with self._db.write() as conn:
            for start in range(0, len(outbox_ids), 500):
                chunk = outbox_ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                cur = await conn.execute(
                    f"UPDATE fleet_answers SET answered_at = ? "  # noqa: S608 - marks only
                    f"WHERE answered_at IS NULL AND outbox_id IN ({marks})",
                    (now, *chunk),
                )
                changed += cur.rowcount
        return changed

    async def pending_by_site(self) -> dict[str, Pending]:
        """Per site, its reports in the hub's outbox that are not final yet."""
        rows = await self._db.fetchall(
            # From the outbox's state index: only the open rows are read.
            "SELECT a.site_id, COUNT(*), MIN(o.created_at) FROM outbox AS o "
            "JOIN fleet_answers AS a ON a.outbox_id = o.id "
            "WHERE o.state IN ('pending', 'in_flight') GROUP BY a.site_id"
        )
        return {r[0]: Pending(int(r[1]), float(r[2])) for r in rows}


_SAW = (
    "INSERT INTO fleet_seen (site_id, online, last_seen) VALUES (?, ?, ?) "
    "ON CONFLICT (site_id) DO UPDATE SET last_seen = MAX(last_seen, excluded.last_seen), "
    "online = COALESCE(excluded.online, online)"
)


async def _accept_one(
    conn: aiosqlite.Connection, site_id: str, event_id: str, kind: str, body: bytes, *, now: float
) -> Accepted | str:
    """One report inside the caller's transaction, in a savepoint of its own; the reason
    if it cannot be stored (the database's own trouble is raised)."""
    stored_kind = hub_kind(kind, site_id)
    await conn.execute("SAVEPOINT accept_report")
    try:
        new = await Outbox.enqueue_in(
            conn,
            event_id=event_id,
            kind=stored_kind,
            body=body,
            source=site_source(site_id),
            now=now,
        )
        rows = list(await conn.execute_fetchall(_ACCEPTED, (event_id, stored_kind)))
        row = rows[0]
        if new:
            await conn.execute(
                "INSERT INTO fleet_answers (outbox_id, site_id) VALUES (?, ?)", (row[0], site_id)
            )
    except sqlite3.OperationalError:  # locked, full, I/O: the database's, not the report's
        raise
    except (sqlite3.Error, ValueError) as exc:  # ValueError: text SQLite cannot take (UTF-8)
        await conn.execute("ROLLBACK TO accept_report")
        await conn.execute("RELEASE accept_report")
        return f"cannot be stored: {describe(exc)}"
    await conn.execute("RELEASE accept_report")
    return Accepted(new, int(row[0]), row[1], row[2], row[3], row[4])


def _id_columns(site: Site) -> tuple[str, str, str]:
    def column(ids: frozenset[str]) -> str:
        return json.dumps(sorted(ids))

    return column(site.resources), column(site.locations), column(site.meter_points)
