"""Reading back just the samples that decide the energy of some intervals.

Every query here is a handful of index seeks per interval edge, never a scan of a
channel's day of readings. The edges go in as bound parameters of a ``VALUES``
table (exact doubles, no text round trip); per edge, correlated ``max(at)`` /
``min(at)`` sub-queries are one primary-key probe each. The statement text only
depends on the number of edges rounded up to a multiple of 8, so it stays in the
connection's statement cache. Neighbourhoods of flagged rows are sub-selects
joined with ``UNION ALL``, chunked under SQLite's limit of 500 terms.

**Counter channels** (:func:`counter_samples`). By the fast-path rule of
:func:`gateway.metering.energy.counter_intervals` the energy is the same (bit
for bit, up to the series' starting offset) on a subsequence holding, for each
edge, the last sample at or before it and the first at or after it, and for
every drop ``i`` the samples ``i-2 .. i+1``. Fetched here:

* per edge the last row at or before it and the first at or after it, each
  within ``max_gap`` (a bracket further away makes the edge unknown anyway),
  and the first three rows at or after the last edge, since a bracket's fate
  depends on the row after it;
* every row flagged ``dropped`` in ``[first edge - max_gap, last edge + max_gap]``
  (through the partial index), with four rows either side, in the same statement;
* again four rows either side of any other flagged row those brought in (a
  second statement, rarely needed), until none is new.

So the first sample returned is the oldest valid row, or neither a drop nor
followed by one: either way it is kept by the unroll of the whole stored series,
and what the unroll decides from there on does not depend on older rows.

Rows older than ``floor`` (the channel's oldest raw row that compaction left in
place) are never returned: older rows are late arrivals the raw series ignores.

**Power channels** (:func:`power_samples`). Integration needs every sample:
all rows in ``[start - max_gap, end + max_gap]`` of each interval, windows merged.

**Compacted series** (:func:`minute_samples`): the points exactly at the edges
and the break markers (NULL, read back as NaN) between the first and last edge.
"""

from __future__ import annotations

import functools
import math
import sqlite3
from collections.abc import Sequence

from gateway.store.database import Database
from gateway.store.readings_writer import chunked_union

__all__ = ["counter_samples", "fetch", "minute_samples", "power_samples"]

Sample = tuple[float, float]
Interval = tuple[float, float]

NEIGHBOURS = 4
"""Rows fetched either side of a flagged row (the energy rule needs two before, one after)."""

_BEFORE = (
    "SELECT * FROM (SELECT at, value, dropped FROM readings "
    "WHERE channel_id = ? AND at <= ? AND at >= ? ORDER BY at DESC LIMIT ?)"
)
_AFTER = (
    "SELECT * FROM (SELECT at, value, dropped FROM readings "
    "WHERE channel_id = ? AND at >= ? AND at <= ? ORDER BY at LIMIT ?)"
)
# ?1 channel, ?2 max_gap, ?3 floor, ?4 last edge, ?5 .. ?6 window of flagged rows, ?7.. edges
_BRACKETS = """
WITH e(t) AS (VALUES {values})
SELECT at, value, dropped FROM readings WHERE channel_id = ?1 AND at IN (
    SELECT (SELECT max(at) FROM readings
            WHERE channel_id = ?1 AND at <= e.t AND at >= max(e.t - ?2, ?3)) FROM e
    UNION
    SELECT (SELECT min(at) FROM readings
            WHERE channel_id = ?1 AND at >= max(e.t, ?3) AND at <= e.t + ?2) FROM e)
UNION ALL
SELECT * FROM (SELECT at, value, dropped FROM readings
               WHERE channel_id = ?1 AND at >= max(?4, ?3) ORDER BY at LIMIT 3)
UNION ALL
SELECT r.at, r.value, r.dropped FROM readings AS f INDEXED BY readings_dropped
JOIN readings AS r ON r.channel_id = ?1 AND r.at IN (
    SELECT at FROM readings WHERE channel_id = ?1 AND at <= f.at AND at >= ?3
    ORDER BY at DESC LIMIT {before})
WHERE f.channel_id = ?1 AND f.dropped AND f.at >= max(?5, ?3) AND f.at <= ?6
UNION ALL
SELECT r.at, r.value, r.dropped FROM readings AS f INDEXED BY readings_dropped
JOIN readings AS r ON r.channel_id = ?1 AND r.at IN (
    SELECT at FROM readings WHERE channel_id = ?1 AND at > f.at ORDER BY at LIMIT {after})
WHERE f.channel_id = ?1 AND f.dropped AND f.at >= max(?5, ?3) AND f.at <= ?6
"""
_FIXED_PARAMS = 6
_EDGE_CHUNK = 512
_RANGE = "SELECT at, value FROM readings WHERE channel_id = ? AND at >= ? AND at <= ? ORDER BY at"
_MINUTE_AT = "SELECT at, value FROM readings_minute WHERE channel_id = ? AND at IN ({marks})"
_MINUTE_BREAKS = (
    "SELECT at, value FROM readings_minute INDEXED BY readings_minute_breaks "
    "WHERE channel_id = ? AND value IS NULL AND at >= ? AND at <= ?"
)
_IN_CHUNK = 500


async def fetch(db: Database, sql: str, params: Sequence[object]) -> list[sqlite3.Row]:
    """One query in one trip to the reader's thread (a snapshot of what is committed)."""
    return await db.fetchall(sql, params)


@functools.lru_cache(maxsize=_EDGE_CHUNK // 8)
def _brackets_sql(edges: int) -> str:
    first = _FIXED_PARAMS + 1
    values = ",".join(f"(?{i})" for i in range(first, first + edges))
    return _BRACKETS.format(values=values, before=NEIGHBOURS + 1, after=NEIGHBOURS)


def _padded(edges: list[float]) -> list[float]:
    """``edges``, the last repeated up to a multiple of 8: few distinct statement texts."""
    return edges + [edges[-1]] * (-len(edges) % 8)


def _edges(intervals: Sequence[Interval]) -> list[float]:
    return sorted({t for interval in intervals for t in interval})


async def _union(
    db: Database, terms: list[tuple[str, tuple[object, ...]]]
) -> list[tuple[float, float, int]]:
    rows: list[tuple[float, float, int]] = []
    for sql, params in chunked_union(terms):
        rows.extend((r[0], r[1], r[2]) for r in await fetch(db, sql, params))
    return rows


async def _brackets(
    db: Database, channel_id: int, edges: list[float], max_gap: float, floor: float
) -> list[tuple[float, float, int]]:
    """Edge brackets, three rows from the last edge on, flagged rows in the window with
    their neighbourhoods."""
    rows: list[tuple[float, float, int]] = []
    window = (edges[0] - max_gap, edges[-1] + max_gap)
    for i in range(0, len(edges), _EDGE_CHUNK):
        chunk = _padded(edges[i : i + _EDGE_CHUNK])
        params = (channel_id, max_gap, floor, edges[-1], *window, *chunk)
        found = await fetch(db, _brackets_sql(len(chunk)), params)
        rows.extend((r[0], r[1], r[2]) for r in found)
    return rows


async def counter_samples(
    db: Database,
    channel_id: int,
    intervals: Sequence[Interval],
    *,
    max_gap: float,
    floor: float = -math.inf,
) -> list[Sample]:
    """The subsequence :func:`counter_intervals` needs for ``intervals`` (see module doc)."""
    edges = _edges(intervals)
    if not edges:
        return []
    found: dict[float, tuple[float, int]] = {}
    rows = await _brackets(db, channel_id, edges, max_gap, floor)
    lo, hi = max(edges[0] - max_gap, floor), edges[-1] + max_gap
    done = {at for at, _, dropped in rows if dropped and lo <= at <= hi}  # neighbours came along
    while rows:
        for at, value, dropped in rows:
            found[at] = (value, dropped)
        todo = sorted({at for at, _, dropped in rows if dropped and at not in done})
        done.update(todo)
        terms: list[tuple[str, tuple[object, ...]]] = []
        for x in todo:
            terms.append((_BEFORE, (channel_id, x, floor, NEIGHBOURS + 1)))
            terms.append((_AFTER, (channel_id, x, math.inf, NEIGHBOURS + 1)))
        rows = await _union(db, terms) if terms else []
    return [(at, found[at][0]) for at in sorted(found)]


def _windows(intervals: Sequence[Interval], pad: float) -> list[Interval]:
    """``[start - pad, end + pad]`` of each interval, overlapping ones merged."""
    merged: list[Interval] = []
    for start, end in sorted((s - pad, e + pad) for s, e in intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


async def power_samples(
    db: Database,
    channel_id: int,
    intervals: Sequence[Interval],
    *,
    max_gap: float,
    floor: float = -math.inf,
) -> list[Sample]:
    """Every row within ``max_gap`` of each interval: integration needs them all."""
    samples: list[Sample] = []
    for lo, hi in _windows(intervals, max_gap):
        if hi < floor:
            continue
        rows = await fetch(db, _RANGE, (channel_id, max(lo, floor), hi))
        samples.extend((r[0], r[1]) for r in rows)
    return samples


async def minute_samples(
    db: Database, channel_id: int, intervals: Sequence[Interval]
) -> list[Sample]:
    """Compacted points at the edges, and break markers (NaN) between the first and last edge."""
    edges = _edges(intervals)
    if not edges:
        return []
    found: dict[float, float] = {}
    for i in range(0, len(edges), _IN_CHUNK):
        chunk = edges[i : i + _IN_CHUNK]
        sql = _MINUTE_AT.format(marks=",".join("?" * len(chunk)))
        for at, value in await fetch(db, sql, (channel_id, *chunk)):
            found[at] = math.nan if value is None else value
    for at, _ in await fetch(db, _MINUTE_BREAKS, (channel_id, edges[0], edges[-1])):
        found[at] = math.nan
    return sorted(found.items())
