"""Compaction and retention of readings, one channel and one bounded chunk at a time.

Raw readings older than the *horizon* (``now - raw_retention``, down to a whole
minute) become points of the compacted series (``readings_minute``), computed by
the pure :mod:`gateway.metering.compaction`. Each chunk is one short
transaction: read about ``chunk_rows`` raw rows from the channel's hand-over
sample on, compute, insert the new points, save the new hand-over, delete the
raw rows before it. Chained chunks give exactly the series one run over all the
data would (the hand-over contract of that module).

The hand-over sample is settled (kept by the unroll of all the data), so the raw
rows left, which start with it, unroll exactly as the whole series would from
there: raw energy for intervals starting at or after it is unchanged. Its value
in the compacted series' reference is saved too (``handover_value``: the
unrolled counter, or the cumulative kWh), so an interval that starts in the
compacted past and ends in the raw present can be split at that sample (see
:mod:`gateway.store.readings`).

A power channel with a negative sample cannot be compacted (the compacted series
must only grow): it is skipped, logged, and keeps its raw rows until retention
deletes them.

Retention deletes compacted points, and any raw rows, older than ``now -
retention``, in bounded ``DELETE`` statements.

Every chunk and every ``DELETE`` is a maintenance slice (``db.maintenance``): its
own transaction, whose turn comes only when no other writer waits, sized by a
:class:`~gateway.store.maintenance.SliceBudget` to last about
:data:`~gateway.store.maintenance.SLICE_SECONDS` (a chunk reads about
``budget.rows`` raw rows), so a webhook waits at most for the slice in progress.

Readers and compaction share the one connection, so a reader's statements could
run between the statements of a compaction chunk and see it half done (raw rows
deleted, state not yet moved). :class:`Gate` keeps them apart in this process:
any number of readers, or one chunk.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import aiosqlite
import structlog

from gateway.errors import StoreError
from gateway.metering.compaction import (
    compact_counter,
    compact_power,
    counter_handover,
    power_handover,
)
from gateway.plugin import ChannelKind, Unit
from gateway.store.database import Database, MaintenanceSlice
from gateway.store.maintenance import SliceBudget

__all__ = [
    "ChannelInfo",
    "CompactionState",
    "Gate",
    "Tally",
    "compact_channel",
    "expire_channel",
]

log = structlog.get_logger(__name__)

Sample = tuple[float, float]


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """A registered channel, as the ``channels`` table has it."""

    id: int
    adapter: str
    channel: str
    kind: ChannelKind
    unit: Unit
    wrap: float | None

    @property
    def label(self) -> str:
        return f"{self.adapter}/{self.channel}"


@dataclass(frozen=True, slots=True)
class CompactionState:
    """Where one channel's compaction stands.

    ``through``: the compacted series is final for every time before it.
    ``handover_at``: the sample the next run starts from; ``handover_state`` its unroll
    offset (counter) or cumulative kWh (power); ``handover_value`` its value in the
    compacted series. ``raw_from``: raw rows before it are gone or not to be used.
    """

    through: float = -math.inf
    handover_at: float | None = None
    handover_state: float = 0.0
    handover_value: float | None = None
    raw_from: float = -math.inf

    SELECT: ClassVar[str] = (
        "SELECT through, handover_at, handover_state, handover_value, raw_from "
        "FROM compaction WHERE channel_id = ?"
    )

    @classmethod
    def from_row(cls, row: Sequence[Any] | None) -> CompactionState:
        return cls() if row is None else cls(row[0], row[1], row[2], row[3], row[4])

    @classmethod
    async def load(cls, conn: aiosqlite.Connection, channel_id: int) -> CompactionState:
        rows = list(await conn.execute_fetchall(cls.SELECT, (channel_id,)))
        return cls.from_row(rows[0] if rows else None)

    async def save(self, conn: aiosqlite.Connection, channel_id: int) -> None:
        await conn.execute(
            "INSERT INTO compaction (channel_id, through, handover_at, handover_state, "
            "handover_value, raw_from) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (channel_id) DO UPDATE SET through = excluded.through, "
            "handover_at = excluded.handover_at, handover_state = excluded.handover_state, "
            "handover_value = excluded.handover_value, raw_from = excluded.raw_from",
            (
                channel_id,
                self.through,
                self.handover_at,
                self.handover_state,
                self.handover_value,
                self.raw_from,
            ),
        )


class Gate:
    """Many readers at a time, or one compaction chunk.

    A waiting chunk goes first: new readers wait behind it, so a stream of readers
    cannot starve compaction (and a chunk is short, so readers wait little).
    """

    def __init__(self) -> None:
        self.generation = 0  # one more after every chunk: readers' cached state is stale
        self._readers = 0
        self._chunk = False
        self._waiting = 0  # chunks waiting for the readers to finish
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._chunk and not self._waiting)
            self._readers += 1
        try:
            yield
        finally:
            async with self._changed:
                self._readers -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def compacting(self) -> AsyncIterator[None]:
        async with self._changed:
            self._waiting += 1
            try:
                await self._changed.wait_for(lambda: not self._chunk and not self._readers)
            finally:
                self._waiting -= 1
                self._changed.notify_all()  # readers held back by a cancelled wait go on
            self._chunk = True
        try:
            yield
        finally:
            async with self._changed:
                self.generation += 1
                self._chunk = False
                self._changed.notify_all()


@dataclass(slots=True)
class Tally:
    points: int = 0
    raw_deleted: int = 0
    chunks: int = 0


async def compact_channel(
    db: Database,
    gate: Gate,
    info: ChannelInfo,
    *,
    horizon: float,
    max_gap: float,
    budget: SliceBudget,
) -> Tally | None:
    """Compact one channel up to ``horizon`` (a whole minute), a maintenance slice a chunk
    of ``budget.rows`` raw rows.

    None when the channel cannot be compacted (negative power); the failing chunk
    changed nothing.
    """
    tally = Tally()
    try:
        while True:
            async with gate.compacting(), db.maintenance(budget) as part:
                if not await _chunk(part, info, horizon, max_gap, tally):
                    break
    except ValueError as exc:
        log.warning("readings.compaction_skipped", channel=info.label, reason=str(exc))
        return None
    except sqlite3.Error as exc:
        raise StoreError(f"cannot compact readings of {info.label}: {exc}") from exc
    return tally


async def _chunk(
    part: MaintenanceSlice,
    info: ChannelInfo,
    horizon: float,
    max_gap: float,
    tally: Tally,
) -> bool:
    """One chunk, in the slice's transaction. False when the channel is done."""
    conn = part.conn
    state = await CompactionState.load(conn, info.id)
    if state.through >= horizon:
        return False
    start = state.handover_at if state.handover_at is not None else -math.inf
    cut = await _cut(conn, info.id, start, state.through, horizon, part.rows)
    samples = await _samples(conn, info.id, start, cut + max_gap)
    part.touched(len(samples))
    points, new = _compute(info, samples, state, cut, max_gap)
    fresh = [(info.id, at, v if math.isfinite(v) else None) for at, v in points]
    fresh = [p for p in fresh if p[1] >= state.through]
    await conn.executemany(
        "INSERT INTO readings_minute (channel_id, at, value) VALUES (?, ?, ?) "
        "ON CONFLICT (channel_id, at) DO NOTHING",
        fresh,
    )
    if new.handover_at is not None and new.handover_at != state.handover_at:
        cur = await conn.execute(
            "DELETE FROM readings WHERE channel_id = ? AND at < ?", (info.id, new.handover_at)
        )
        tally.raw_deleted += cur.rowcount
        new = replace(new, raw_from=max(new.raw_from, new.handover_at))
    await new.save(conn, info.id)
    tally.points += len(fresh)
    tally.chunks += 1
    return cut < horizon


def _compute(
    info: ChannelInfo, samples: list[Sample], state: CompactionState, cut: float, max_gap: float
) -> tuple[list[Sample], CompactionState]:
    """(points before ``cut``, the state after this chunk)."""
    carried = state.handover_state
    if info.kind is ChannelKind.ENERGY:
        wrap = info.wrap
        points = compact_counter(samples, wrap=wrap, max_gap=max_gap, before=cut, offset=carried)
        handover = counter_handover(samples, wrap=wrap, before=cut, offset=carried)
        if handover is None:
            return points, replace(state, through=cut)
        at, offset = handover
        raw = samples[bisect.bisect_left(samples, (at, -math.inf))][1]
        return points, replace(
            state, through=cut, handover_at=at, handover_state=offset, handover_value=raw + offset
        )
    to_kw = info.unit.to_kwh
    points = compact_power(samples, to_kw=to_kw, max_gap=max_gap, before=cut, energy=carried)
    handover = power_handover(samples, to_kw=to_kw, max_gap=max_gap, before=cut, energy=carried)
    if handover is None:
        return points, replace(state, through=cut)
    at, energy = handover
    return points, replace(
        state, through=cut, handover_at=at, handover_state=energy, handover_value=energy
    )


async def _cut(
    conn: aiosqlite.Connection,
    channel_id: int,
    start: float,
    through: float,
    horizon: float,
    chunk_rows: int,
) -> float:
    """Where this chunk ends: the horizon, or a whole minute about ``chunk_rows`` rows on.

    Always past ``through`` (a whole minute), so every chunk makes progress.
    """
    rows = list(
        await conn.execute_fetchall(
            "SELECT at FROM readings WHERE channel_id = ? AND at >= ? ORDER BY at LIMIT 1 OFFSET ?",
            (channel_id, start, chunk_rows),
        )
    )
    if not rows:
        return horizon
    cut = math.floor(float(rows[0][0]) / 60.0) * 60.0
    lower = max(start, through)
    if cut <= lower:
        cut = math.floor(lower / 60.0) * 60.0 + 60.0
    return min(horizon, cut)


async def _samples(
    conn: aiosqlite.Connection, channel_id: int, start: float, end: float
) -> list[Sample]:
    """Raw rows in ``[start, end]`` and the three after (compaction needs them past the cut).

    One statement (one hand-off to SQLite's thread): a slice's fixed cost is mostly those."""
    rows = await conn.execute_fetchall(
        "SELECT at, value FROM readings WHERE channel_id = ?1 AND at >= ?2 AND at <= ?3 "
        "UNION ALL SELECT * FROM (SELECT at, value FROM readings "
        "WHERE channel_id = ?1 AND at > ?3 ORDER BY at LIMIT 3) ORDER BY at",
        (channel_id, start, end),
    )
    return [(r[0], r[1]) for r in rows]


async def expire_channel(
    db: Database, gate: Gate, info: ChannelInfo, *, cutoff: float, budget: SliceBudget
) -> tuple[int, int]:
    """Delete compacted points and raw rows older than ``cutoff``: (points, raw rows).

    In maintenance slices of ``budget.rows`` rows (one ``DELETE`` each)."""
    try:
        points = await _delete_before(db, gate, "readings_minute", info.id, cutoff, budget)
        raw = await _delete_before(db, gate, "readings", info.id, cutoff, budget)
        if raw:
            async with gate.compacting(), db.maintenance(budget) as part:
                state = await CompactionState.load(part.conn, info.id)
                if cutoff > state.raw_from:
                    await replace(state, raw_from=cutoff).save(part.conn, info.id)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot expire readings of {info.label}: {exc}") from exc
    return points, raw


async def _delete_before(
    db: Database, gate: Gate, table: str, channel_id: int, cutoff: float, budget: SliceBudget
) -> int:
    deleted = 0
    while True:
        async with gate.compacting(), db.maintenance(budget) as part:
            cur = await part.conn.execute(
                f"DELETE FROM {table} WHERE channel_id = ?1 AND at IN "  # noqa: S608
                f"(SELECT at FROM {table} WHERE channel_id = ?1 AND at < ?2 ORDER BY at LIMIT ?3)",
                (channel_id, cutoff, part.rows),
            )
            part.touched(cur.rowcount)
        deleted += cur.rowcount
        if cur.rowcount < part.rows:
            return deleted
