"""What the gateway committed to and did: LPC decisions, device commands, schedules.

* ``lpc_decisions``: per LPC event and target, the decision taken before anything was
  acknowledged, with its reason, and for an acknowledged target the caps to hold
  (``[[start, end, max_kw], ...]``). A decision is taken once (the first insert wins),
  so a restart, a replan or a second pass can never turn a decline into an
  acknowledgement or the reverse: Spark has been told one thing.
* ``commands``: every command the gateway sent to a device, from ``sending`` to
  ``confirmed`` (the device reported the commanded value) or ``failed``; ``dry_run``
  for one computed and not sent.
* ``schedules`` and ``overrides``: per PriceCurve event and resource, the strategy's
  schedule (``[[start, end], ...]``: switched on) and the operator's participation.

sqlite3 errors come out as :class:`~gateway.errors.StoreError` (``Database`` does that).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import aiosqlite

from gateway.control.targets import location_key, resource_key
from gateway.store.database import Database

__all__ = [
    "CapRow",
    "CommandRow",
    "ControlStore",
    "DecisionKind",
    "DecisionRow",
    "ScheduleRow",
    "location_key",
    "resource_key",
]

DecisionKind = Literal["acknowledged", "declined", "left_out"]
CommandState = Literal["sending", "confirmed", "failed", "dry_run"]
CapRow = tuple[float, float, float]
"""``(start, end, max_kw)``: one capped interval."""


@dataclass(frozen=True, slots=True)
class DecisionRow:
    event_id: str
    target: str
    """A stable key for the target: ``location/<location_id>/<meter_point_id>`` or
    ``resource/<resource_id>/<location_id>/<meter_point_id or ''>``."""
    kind: Literal["location", "resource"]
    location_id: str
    meter_point_id: str | None
    resource_id: str | None
    decision: DecisionKind
    reason: str
    caps: tuple[CapRow, ...]
    decided_at: float


@dataclass(frozen=True, slots=True)
class CommandRow:
    id: int
    event_id: str | None
    resource_id: str | None
    adapter: str
    control: str
    value: float
    reason: str
    state: CommandState
    attempts: int
    requested_at: float
    sent_at: float | None
    confirmed_at: float | None
    confirmed_value: float | None
    error: str | None


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    event_id: str
    resource_id: str
    participation: str
    strategy: str
    runs: tuple[tuple[float, float], ...]
    """Switched on over each ``[start, end)``; off in the rest of the window."""
    window: tuple[float, float]
    """The event's window: its first interval's start, its last interval's end."""
    note: str | None
    at: float


class ControlStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- decisions ------------------------------------------------------------------------------

    async def decide(self, rows: Sequence[DecisionRow]) -> list[DecisionRow]:
        """Store ``rows`` unless the event already has decisions; returns what is stored
        for the event (the earlier decisions if there were any: they were acted on)."""
        if not rows:
            return []
        event_id = rows[0].event_id
        async with self._db.write() as conn:
            async with conn.execute(
                "SELECT 1 FROM lpc_decisions WHERE event_id = ? LIMIT 1", (event_id,)
            ) as cur:
                taken = await cur.fetchone() is not None
            if not taken:
                await conn.executemany(
                    "INSERT INTO lpc_decisions (event_id, target, kind, location_id, "
                    "meter_point_id, resource_id, decision, reason, caps, decided_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            r.event_id,
                            r.target,
                            r.kind,
                            r.location_id,
                            r.meter_point_id,
                            r.resource_id,
                            r.decision,
                            r.reason,
                            json.dumps(r.caps),
                            r.decided_at,
                        )
                        for r in rows
                    ],
                )
        return await self.decisions(event_id)

    async def decisions(self, event_id: str) -> list[DecisionRow]:
        rows = await self._db.fetchall(
            "SELECT * FROM lpc_decisions WHERE event_id = ? ORDER BY target", (event_id,)
        )
        return [_decision(r) for r in rows]

    async def held_caps(self, *, now: float) -> list[DecisionRow]:
        """Acknowledged location and resource caps with an interval that has not ended."""
        rows = await self._db.fetchall(
            "SELECT * FROM lpc_decisions WHERE decision = 'acknowledged' ORDER BY event_id, target"
        )
        found = [_decision(r) for r in rows]
        return [d for d in found if any(end > now for _, end, _ in d.caps)]

    # --- commands -------------------------------------------------------------------------------

    async def command_started(
        self,
        *,
        event_id: str | None,
        resource_id: str | None,
        adapter: str,
        control: str,
        value: float,
        reason: str,
        now: float,
        dry_run: bool = False,
    ) -> int:
        rows = await self._db.write_one(
            "INSERT INTO commands (event_id, resource_id, adapter, control, value, reason, state, "
            "requested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                event_id,
                resource_id,
                adapter,
                control,
                value,
                reason,
                "dry_run" if dry_run else "sending",
                now,
            ),
        )
        return int(rows[0][0])

    async def command_sent(self, command_id: int, *, attempts: int, now: float) -> None:
        await self._db.write_one(
            "UPDATE commands SET attempts = ?, sent_at = ? WHERE id = ?",
            (attempts, now, command_id),
        )

    async def command_done(
        self,
        command_id: int,
        *,
        state: Literal["confirmed", "failed"],
        now: float,
        confirmed_value: float | None = None,
        error: str | None = None,
    ) -> None:
        await self._db.write_one(
            "UPDATE commands SET state = ?, confirmed_at = ?, confirmed_value = ?, error = ? "
            "WHERE id = ?",
            (state, now if state == "confirmed" else None, confirmed_value, error, command_id),
        )

    async def interrupted(self, *, now: float) -> int:
        """Commands left ``sending`` by a crash: failed (the device state says the rest)."""
        rows = await self._db.write_one(
            "UPDATE commands SET state = 'failed', error = 'interrupted: the gateway stopped "
            "before the device confirmed' WHERE state = 'sending' RETURNING id"
        )
        del now
        return len(rows)

    async def commands(self, event_id: str | None = None, *, limit: int = 1000) -> list[CommandRow]:
        if event_id is None:
            rows = await self._db.fetchall(
                "SELECT * FROM commands ORDER BY id DESC LIMIT ?", (limit,)
            )
            rows.reverse()
        else:
            rows = await self._db.fetchall(
                "SELECT * FROM commands WHERE event_id = ? ORDER BY id LIMIT ?", (event_id, limit)
            )
        return [CommandRow(**dict(r)) for r in rows]

    async def last_commands(self, resource_ids: Iterable[str]) -> dict[str, CommandRow]:
        """Per resource, its latest command that was sent (not a dry run)."""
        found: dict[str, CommandRow] = {}
        for resource_id in resource_ids:
            row = await self._db.fetchone(
                "SELECT * FROM commands WHERE resource_id = ? "
                "AND state IN ('confirmed', 'sending', 'failed') ORDER BY id DESC LIMIT 1",
                (resource_id,),
            )
            if row is not None:
                found[resource_id] = CommandRow(**dict(row))
        return found

    # --- schedules and overrides --------------------------------------------------------------

    async def put_schedule(self, row: ScheduleRow) -> ScheduleRow:
        """Store a schedule once per (event, resource); returns the stored one."""
        await self._db.write_one(_PUT_SCHEDULE, _schedule_params(row))
        stored = await self.schedules(row.event_id)
        return next(s for s in stored if s.resource_id == row.resource_id)

    @staticmethod
    async def put_schedule_in(conn: aiosqlite.Connection, row: ScheduleRow) -> None:
        """:meth:`put_schedule` inside the caller's write transaction (once per event and
        resource: a schedule already stored stays)."""
        await conn.execute(_PUT_SCHEDULE, _schedule_params(row))

    async def schedules(self, event_id: str) -> list[ScheduleRow]:
        rows = await self._db.fetchall(
            "SELECT * FROM schedules WHERE event_id = ? ORDER BY resource_id", (event_id,)
        )
        return [_schedule(r) for r in rows]

    async def schedules_open(self, *, now: float) -> list[ScheduleRow]:
        """Schedules whose window has not ended."""
        rows = await self._db.fetchall(
            "SELECT * FROM schedules WHERE window_end > ? ORDER BY window_start, resource_id",
            (now,),
        )
        return [_schedule(r) for r in rows]

    async def override(
        self, event_id: str, resource_id: str, participation: str, *, now: float
    ) -> None:
        """The operator's participation for one resource in one event; replaces the
        schedule so that the next pass plans it again."""
        async with self._db.write() as conn:
            await conn.execute(
                "INSERT INTO overrides (event_id, resource_id, participation, at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (event_id, resource_id) DO UPDATE SET "
                "participation = excluded.participation, at = excluded.at",
                (event_id, resource_id, participation, now),
            )
            await conn.execute(
                "DELETE FROM schedules WHERE event_id = ? AND resource_id = ?",
                (event_id, resource_id),
            )

    async def overrides(self, event_id: str) -> dict[str, str]:
        rows = await self._db.fetchall(
            "SELECT resource_id, participation FROM overrides WHERE event_id = ?", (event_id,)
        )
        return {r[0]: r[1] for r in rows}


_PUT_SCHEDULE = (
    "INSERT INTO schedules (event_id, resource_id, participation, strategy, schedule, "
    "window_start, window_end, note, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (event_id, resource_id) DO NOTHING"
)


def _schedule_params(row: ScheduleRow) -> tuple[object, ...]:
    return (
        row.event_id,
        row.resource_id,
        row.participation,
        row.strategy,
        json.dumps(row.runs),
        row.window[0],
        row.window[1],
        row.note,
        row.at,
    )


def _schedule(r: sqlite3.Row) -> ScheduleRow:
    return ScheduleRow(
        event_id=r["event_id"],
        resource_id=r["resource_id"],
        participation=r["participation"],
        strategy=r["strategy"],
        runs=tuple((float(a), float(b)) for a, b in json.loads(r["schedule"])),
        window=(r["window_start"], r["window_end"]),
        note=r["note"],
        at=r["at"],
    )


def _decision(row: sqlite3.Row) -> DecisionRow:
    values = dict(row)
    caps = tuple((float(a), float(b), float(c)) for a, b, c in json.loads(values.pop("caps")))
    return DecisionRow(caps=caps, **values)
