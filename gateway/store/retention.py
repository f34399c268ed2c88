"""Retention: drop what the gateway no longer needs, in short slices, and give the space back.

The rules (what goes, when, and what stays) are in :mod:`gateway.store.retention_policy`;
this module holds them as SQL (:data:`RULES`, also read by ``ecgw db stats``) and runs
them. Each slice is one short write transaction of at most ``slice_rows`` rows deleted
(``blob_rows`` for the rows whose body or payload is dropped: each is a page or more), and the
pass waits ``pause`` between slices. Each slice is a maintenance slice
(``Database.maintenance``): its turn comes only when no other writer waits, so the webhook's
and the scheduler's writes wait at most for the slice in progress.

A report's body is read from a snapshot first and its kWh totals computed outside the
transaction; the ``DELETE ... RETURNING`` repeats the rule, so a row that changed in between (a dead
report retried) is left alone. Afterwards, ``PRAGMA incremental_vacuum`` gives the freed
pages back to the file system, ``vacuum_pages`` at a time, keeping ``keep_free_pages``
for the next writes; on a database made before auto_vacuum (see ``ecgw db vacuum``) the
pages stay on SQLite's free list and are reused from there.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from gateway.store.database import Database
from gateway.store.retention_policy import LEDGER_KEEP, Cutoffs, cutoffs, report_totals

__all__ = ["RULES", "Retention", "RetentionTally", "Rule", "params_at"]

_OPEN = "('new', 'planned')"


def _not_open(table: str) -> str:
    return (
        f"NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = {table}.event_id "  # noqa: S608
        f"AND e.plan_state IN {_OPEN})"
    )


@dataclass(frozen=True, slots=True)
class Rule:
    """One kind of row retention drops: ``where`` selects them (parameters ``?1`` the
    reports cutoff, ``?2`` the months cutoff, ``?3`` the quarantine cutoff: :func:`params_at`,
    ``?4`` and up free for the statement); ``blob`` is the column emptied, or None
    when the whole row goes."""

    name: str
    table: str
    where: str
    blob: str | None = None
    index: str | None = None
    """The partial index of the rows still holding ``blob``: named, or SQLite walks the
    years of slim rows by state (it cannot tell the partial index is the smaller)."""

    @property
    def source(self) -> str:
        """``table``, or ``table INDEXED BY index``: what to select the rows from."""
        return self.table if self.index is None else f"{self.table} INDEXED BY {self.index}"


BODIES = Rule(
    "report bodies",
    "outbox",
    "body_dropped_at IS NULL AND ("
    "(state = 'delivered' AND (deadline < ?1 OR (deadline IS NULL AND delivered_at < ?2)))"
    " OR (state = 'dead' AND updated_at < ?3"
    " AND (deadline < ?1 OR (deadline IS NULL AND updated_at < ?2))))",
    blob="body",
    index="outbox_with_body",
)
PAYLOADS = Rule(
    "event payloads",
    "events",
    "payload_dropped_at IS NULL AND plan_state IN ('done', 'no_report', 'routed', 'unrouted')"
    " AND received_at < ?2"
    " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = events.event_id"
    " AND o.body_dropped_at IS NULL)"
    " AND NOT EXISTS (SELECT 1 FROM report_jobs j WHERE j.event_id = events.event_id"
    " AND j.outcome = 'invalid')",
    blob="payload",
    index="events_with_payload",
)
SET_ASIDE = Rule(
    "set-aside events",
    "events",
    "payload_dropped_at IS NULL AND plan_state = 'invalid' AND received_at < ?3",
    blob="payload",
    index="events_with_payload",
)
RULES: tuple[Rule, ...] = (
    BODIES,
    PAYLOADS,
    SET_ASIDE,
    Rule(
        "report jobs",
        "report_jobs",
        f"{_not_open('report_jobs')} AND ((outcome = 'invalid' AND at < ?3)"  # noqa: S608
        " OR (outcome != 'invalid' AND at < ?2 AND NOT EXISTS (SELECT 1 FROM events e"
        " WHERE e.event_id = report_jobs.event_id AND e.payload_dropped_at IS NULL)))",
    ),
    Rule("LPC decisions", "lpc_decisions", f"decided_at < ?2 AND {_not_open('lpc_decisions')}"),
    Rule("schedules", "schedules", f"window_end < ?2 AND {_not_open('schedules')}"),
    Rule("overrides", "overrides", f"at < ?2 AND {_not_open('overrides')}"),
    # A resource's latest sent command stays: after a restart the controller reads it to
    # know which loads it holds off, however long ago it switched them.
    Rule(
        "commands",
        "commands",
        "requested_at < ?2 AND state != 'sending' AND id NOT IN (SELECT MAX(id) FROM commands"
        " WHERE state IN ('confirmed', 'sending', 'failed') GROUP BY resource_id)",
    ),
    # The ledger: slim rows, LEDGER_KEEP before the reports cutoff (?1: the first of this
    # month, 7 days late) after their body or payload went (reports first, then
    # their events, then a hub's answers and routes of them).
    Rule(
        "ledger: reports",
        "outbox",
        f"body_dropped_at IS NOT NULL AND body_dropped_at < ?1 - {LEDGER_KEEP}",
    ),
    Rule(
        "ledger: events",
        "events",
        f"payload_dropped_at IS NOT NULL AND payload_dropped_at < ?1 - {LEDGER_KEEP}"  # noqa: S608
        " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = events.event_id)",
    ),
    Rule(
        "ledger: hub answers",
        "fleet_answers",
        "NOT EXISTS (SELECT 1 FROM outbox o WHERE o.id = fleet_answers.outbox_id)",
    ),
    Rule(
        "ledger: hub routes",
        "fleet_routes",
        "NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = fleet_routes.event_id)",
    ),
)


def params_at(now: float) -> tuple[float, float, float]:
    """The rules' parameters ``?1``-``?3`` at ``now``."""
    cut: Cutoffs = cutoffs(now)
    return (cut.reports, cut.months, cut.quarantine)


@dataclass(slots=True)
class RetentionTally:
    """What one pass did: rows per rule, transactions, pages given back."""

    rows: dict[str, int] = field(default_factory=dict)
    slices: int = 0
    pages_freed: int = 0
    longest_ms: dict[str, float] = field(default_factory=dict)
    """Per rule (and ``vacuum``), the longest slice in milliseconds: its reads, its wait for
    the write turn and its transaction; about what a webhook queued behind it waits."""

    def add(self, rule: str, count: int) -> None:
        self.rows[rule] = self.rows.get(rule, 0) + count

    def took(self, what: str, started: float) -> None:
        ms = round((time.perf_counter() - started) * 1000, 2)
        self.longest_ms[what] = max(self.longest_ms.get(what, 0.0), ms)


class Retention:
    def __init__(
        self,
        db: Database,
        *,
        slice_rows: int = 100,
        blob_rows: int = 16,
        pause: float = 0.005,
        vacuum_pages: int = 128,
        keep_free_pages: int = 256,
    ) -> None:
        self._db = db
        self._slice = slice_rows
        self._blob_rows = blob_rows
        self._pause = pause
        self._vacuum_pages = vacuum_pages
        self._keep = keep_free_pages

    async def run_once(self, *, now: float) -> RetentionTally:
        """One pass over every rule, then the space given back."""
        params = params_at(now)
        tally = RetentionTally()
        for rule in RULES:
            limit = self._slice if rule.blob is None else self._blob_rows
            while True:
                started = time.perf_counter()
                if rule is BODIES:
                    count = await self._drop_bodies(params, now, limit)
                elif rule.blob is not None:
                    count = await self._empty(rule, params, now, limit)
                else:
                    count = await self._delete(rule, params, limit)
                tally.took(rule.name, started)
                tally.add(rule.name, count)
                if count:
                    tally.slices += 1
                if count < limit:
                    break
                await asyncio.sleep(self._pause)
        tally.pages_freed = await self.give_back(tally)
        return tally

    async def _drop_bodies(self, params: tuple[float, float, float], now: float, limit: int) -> int:
        """Bodies are frozen: their totals are computed from a snapshot, before the write."""
        rows = await self._db.fetchall(
            f"SELECT id, body FROM {BODIES.source} WHERE {BODIES.where} ORDER BY id LIMIT ?4",  # noqa: S608
            (*params, limit),
        )
        if not rows:
            return 0
        totals = {int(r[0]): _totals_json(bytes(r[1])) for r in rows}
        marks = ",".join(f"?{4 + k}" for k in range(len(totals)))
        return await self._slim(
            BODIES,
            f"id IN ({marks}) AND {BODIES.where}",
            (*params, *totals),
            now,
            totals,
        )

    async def _empty(
        self, rule: Rule, params: tuple[float, float, float], now: float, limit: int
    ) -> int:
        return await self._slim(
            rule,
            f"rowid IN (SELECT rowid FROM {rule.source} WHERE {rule.where} LIMIT ?4)",  # noqa: S608
            (*params, limit),
            now,
        )

    async def _slim(
        self,
        rule: Rule,
        where: str,
        params: tuple[object, ...],
        now: float,
        totals: dict[int, str | None] | None = None,
    ) -> int:
        """Empty ``rule.blob`` of the rows ``where`` picks, by deleting and inserting them
        again without it: an ``UPDATE`` that shrinks a row leaves it alone on its page (SQLite
        rebalances a page when a delete empties it, not when a row shrinks), so a year of
        slim rows would still take a page each."""
        assert rule.blob is not None
        async with self._db.maintenance() as part:
            conn = part.conn
            rows = list(
                await conn.execute_fetchall(
                    f"DELETE FROM {rule.table} WHERE {where} RETURNING *",  # noqa: S608
                    params,
                )
            )
            if not rows:
                return 0
            columns = list(rows[0].keys())
            slim = []
            for row in rows:
                values = dict(row)
                values[rule.blob] = b""
                values[f"{rule.blob}_dropped_at"] = now
                if totals is not None:
                    values["kwh_totals"] = totals.get(int(values["id"]))
                slim.append(tuple(values[c] for c in columns))
            await conn.executemany(
                f"INSERT INTO {rule.table} ({', '.join(columns)}) "  # noqa: S608
                f"VALUES ({', '.join('?' * len(columns))})",
                slim,
            )
            part.touched(len(rows))
            return len(rows)

    async def _delete(self, rule: Rule, params: tuple[float, float, float], limit: int) -> int:
        async with self._db.maintenance() as part:
            cur = await part.conn.execute(
                f"DELETE FROM {rule.table} WHERE rowid IN "  # noqa: S608
                f"(SELECT rowid FROM {rule.source} WHERE {rule.where} LIMIT ?4)",
                (*params, limit),
            )
            part.touched(cur.rowcount)
            return cur.rowcount

    async def give_back(self, tally: RetentionTally | None = None) -> int:
        """``PRAGMA incremental_vacuum`` in slices while more than ``keep_free_pages`` are
        free; returns the pages given back (0 on a file without auto_vacuum)."""
        mode = await self._db.fetchone("PRAGMA auto_vacuum")
        if mode is None or int(mode[0]) != 2:  # 2: INCREMENTAL
            return 0
        first: int | None = None
        before: int | None = None
        while True:
            row = await self._db.fetchone("PRAGMA freelist_count")
            free = int(row[0]) if row else 0
            first = free if first is None else first
            if free <= self._keep or (before is not None and free >= before):
                return first - free  # done, or the free list no longer shrinks
            before = free
            spare = free - self._keep
            step = min(spare, self._vacuum_pages)
            started = time.perf_counter()
            async with self._db.maintenance() as part:
                conn = part.conn
                # executescript: sqlite3's execute() steps the pragma once, which moves one
                # page whatever N says. It commits the (empty) BEGIN first; the pragma then
                # runs as its own transaction, still in our write turn.
                await conn.executescript(f"PRAGMA incremental_vacuum({step})")
            if tally is not None:
                tally.took("vacuum", started)
            await asyncio.sleep(self._pause)


def _totals_json(body: bytes) -> str | None:
    totals = report_totals(body)
    return None if totals is None else json.dumps(totals, sort_keys=True)
