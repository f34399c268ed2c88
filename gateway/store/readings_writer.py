"""Group commit for readings: many callers, one transaction per batch.

:meth:`GroupCommit.write` queues one call's rows and waits. One background task
(the *flusher*, alive inside ``async with writer.running():``) takes whole calls
off the queue, up to ``max_rows`` rows, and writes them in one ``BEGIN
IMMEDIATE`` ... ``COMMIT``. Every caller of that batch returns once the commit
is done; if it fails, every caller of that batch gets a :class:`StoreError` and
none of their rows is stored. A call is never split over two transactions. The
flusher lingers ``linger`` seconds for a batch to fill before it commits, unless
``max_rows`` are already waiting; while one batch commits the next one gathers.

A duplicate ``(channel, at)`` is ignored: the first row stored wins.

**Drop flags.** Every stored row whose value is below its stored predecessor's
(a counter reset, wrap or glitch) is flagged ``dropped``, so a reader can find
the few rows around which a counter must be looked at closely
(:mod:`gateway.store.readings_query`). :class:`DropFlags` decides the flag from
the newest stored row of the channel, which it remembers; before a channel's
first row since start it is seeded from the database. A row flagged ``dropped``:

* its value is below the newest stored row's;
* it is older than the newest stored row (out of order): then the row after it
  is flagged too, since that row has a new predecessor;
* it is the channel's first row since start (conservative, as asked).

After a failed batch the channels in it are forgotten and seeded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

import structlog

from gateway.errors import StoreError
from gateway.store.database import Database

__all__ = ["DropFlags", "GroupCommit", "Row", "chunked_union"]

log = structlog.get_logger(__name__)

Row = tuple[int, float, float]
"""``(channel id, at, value)``, checked: registered channel, finite numbers."""

MAX_COMPOUND_TERMS = 400
"""Sub-selects per ``UNION ALL`` statement; SQLite refuses more than 500."""

_INSERT = (
    "INSERT INTO readings (channel_id, at, value, dropped) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (channel_id, at) DO NOTHING"
)
_FLAG_SUCCESSOR = (
    "UPDATE readings SET dropped = 1 WHERE channel_id = ?1 AND at = "
    "(SELECT at FROM readings WHERE channel_id = ?1 AND at > ?2 ORDER BY at LIMIT 1)"
)
_NEWEST = (
    "SELECT * FROM (SELECT channel_id, at, value FROM readings "
    "WHERE channel_id = ? ORDER BY at DESC LIMIT 1)"
)


def chunked_union(
    terms: Sequence[tuple[str, tuple[object, ...]]],
) -> list[tuple[str, list[object]]]:
    """``(sql, params)`` statements joining ``terms`` with ``UNION ALL``, each under the limit."""
    statements = []
    for i in range(0, len(terms), MAX_COMPOUND_TERMS):
        chunk = terms[i : i + MAX_COMPOUND_TERMS]
        sql = " UNION ALL ".join(term for term, _ in chunk)
        statements.append((sql, [p for _, params in chunk for p in params]))
    return statements


class DropFlags:
    """Decides each new row's ``dropped`` flag. Pure: fed with what is stored.

    Invariant, with the rows given to :meth:`decide` inserted in that order: every
    stored row whose value is below its predecessor's is flagged.
    """

    def __init__(self) -> None:
        self._newest: dict[int, tuple[float, float] | None] = {}
        self._first: set[int] = set()  # seeded, no row decided since

    def unknown(self, channel_ids: Iterable[int]) -> set[int]:
        """Channels to :meth:`seed` before their rows can be decided."""
        return {c for c in channel_ids if c not in self._newest}

    def seed(self, channel_id: int, newest: tuple[float, float] | None) -> None:
        """The channel's newest stored ``(at, value)``; None when it has no rows."""
        self._newest[channel_id] = newest
        self._first.add(channel_id)

    def forget(self, channel_ids: Iterable[int]) -> None:
        for channel_id in channel_ids:
            self._newest.pop(channel_id, None)
            self._first.discard(channel_id)

    def decide(self, channel_id: int, at: float, value: float) -> tuple[bool, bool]:
        """``(dropped, out_of_order)`` for a row inserted after every row decided before."""
        newest = self._newest[channel_id]
        first = channel_id in self._first
        if first:
            self._first.discard(channel_id)
        if newest is None or at > newest[0]:
            self._newest[channel_id] = (at, value)
            return first or newest is None or value < newest[1], False
        return True, at < newest[0]  # equal: a duplicate, which the insert ignores


@dataclass(eq=False, slots=True)
class _Call:
    rows: list[Row]
    done: asyncio.Future[None]


class GroupCommit:
    """The batching writer. ``async with running():`` owns the flusher task."""

    def __init__(self, db: Database, *, max_rows: int, linger: float) -> None:
        if max_rows < 1 or linger < 0:
            raise ValueError("max_rows must be positive and linger not negative")
        self._db = db
        self._max_rows = max_rows
        self._linger = linger
        self._flags = DropFlags()
        self._queue: deque[_Call] = deque()
        self._queued_rows = 0
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.batches = 0
        """Transactions committed since start."""
        self.rows = 0
        """Rows committed since start (duplicates included; the database ignored those)."""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the flusher. Leaving normally writes what is queued first."""
        if self._task is not None:
            raise RuntimeError("the readings writer is already running")
        self._stopping = False
        task = asyncio.create_task(self._flusher(), name="readings.flush")
        self._task = task
        try:
            yield
        except BaseException:
            task.cancel()
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                log.error("readings.flusher_failed", error=repr(task.exception()))
            raise
        else:
            self._stopping = True  # the flusher stops lingering, drains the queue and ends
            self._wake.set()
            self._full.set()
            await task
        finally:
            self._task = None
            self._fail_queued(StoreError("the readings writer stopped before writing these"))

    async def write(self, rows: list[Row]) -> None:
        """Queue ``rows`` and return once they are committed (StoreError if not)."""
        if self._task is None or self._task.done() or self._stopping:
            raise RuntimeError("the readings writer is not running (use `async with writer()`)")
        if not rows:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Call(rows, done))
        self._queued_rows += len(rows)
        self._wake.set()
        if self._queued_rows >= self._max_rows:
            self._full.set()
        await done

    async def _flusher(self) -> None:
        try:
            while True:
                await self._wake.wait()
                if not self._stopping and self._queued_rows < self._max_rows:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._linger):
                            await self._full.wait()
                batch = self._take()
                if batch:
                    await self._commit(batch)
                elif self._stopping:
                    return
        finally:
            self._fail_queued(StoreError("the readings writer stopped before writing these"))

    def _take(self) -> list[_Call]:
        batch: list[_Call] = []
        rows = 0
        while self._queue and (not batch or rows + len(self._queue[0].rows) <= self._max_rows):
            call = self._queue.popleft()
            batch.append(call)
            rows += len(call.rows)
        self._queued_rows -= rows
        if not self._queue and not self._stopping:
            self._wake.clear()
        if self._queued_rows < self._max_rows and not self._stopping:
            self._full.clear()
        return batch

    async def _commit(self, batch: list[_Call]) -> None:
        rows = [row for call in batch for row in call.rows]
        try:
            await self._transaction(rows)
        except BaseException as exc:
            self._flags.forget({row[0] for row in rows})
            for call in batch:
                _fail(call.done, exc)
            if not isinstance(exc, Exception):
                raise
            log.warning("readings.write_failed", rows=len(rows), error=str(exc))
            return
        self.batches += 1
        self.rows += len(rows)
        for call in batch:
            if not call.done.done():
                call.done.set_result(None)

    async def _transaction(self, rows: list[Row]) -> None:
        async with self._db.write() as conn:
            try:
                unknown = sorted(self._flags.unknown({row[0] for row in rows}))
                seeds: dict[int, tuple[float, float]] = {}
                for sql, args in chunked_union([(_NEWEST, (c,)) for c in unknown]):
                    async with conn.execute(sql, args) as cur:
                        seeds.update({r[0]: (r[1], r[2]) for r in await cur.fetchall()})
                for channel_id in unknown:
                    self._flags.seed(channel_id, seeds.get(channel_id))
                params, successors = self._decide(rows)
                await conn.executemany(_INSERT, params)
                if successors:
                    await conn.executemany(_FLAG_SUCCESSOR, successors)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write readings to {self._db.path}: {exc}") from exc

    def _decide(
        self, rows: list[Row]
    ) -> tuple[list[tuple[int, float, float, int]], list[tuple[int, float]]]:
        decide = self._flags.decide
        params: list[tuple[int, float, float, int]] = []
        successors: list[tuple[int, float]] = []
        for channel_id, at, value in rows:
            dropped, out_of_order = decide(channel_id, at, value)
            params.append((channel_id, at, value, int(dropped)))
            if out_of_order:
                successors.append((channel_id, at))
        return params, successors

    def _fail_queued(self, error: StoreError) -> None:
        while self._queue:
            _fail(self._queue.popleft().done, error)
        self._queued_rows = 0
        self._full.clear()


def _fail(done: asyncio.Future[None], exc: BaseException) -> None:
    """Fail one caller's future with its own StoreError (a shared instance would mix tracebacks)."""
    if done.done():
        return
    if isinstance(exc, StoreError):
        message = str(exc)
    else:  # cancelled or a bug: the transaction may or may not have committed
        message = f"the readings writer stopped ({type(exc).__name__}); these may not be stored"
    error = StoreError(message)
    error.__cause__ = exc
    done.set_exception(error)
