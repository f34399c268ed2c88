"""Maintenance gives way to intake: whose write turn is next, and how big a slice is. Pure.

Every write to the database takes a turn on the one writer connection
(:class:`gateway.store.database.Database`). Two kinds of writer ask for turns:

* a *writer* (``db.write()``, ``db.write_one()``): intake and everything that
  answers someone (a webhook, readings, the outbox, the scheduler);
* *maintenance* (``db.maintenance()``): work nobody waits for (compaction,
  expiry, retention, the WAL truncation), done in short slices.

:class:`TurnQueue` decides who goes next when a turn ends: the oldest waiting
writer; maintenance only when no writer waits. So a writer that starts waiting
while a maintenance slice runs goes before the next slice, and waits at most for
the slice in progress. Maintenance cannot be starved for ever: after it has been
passed over ``max_passed`` times in a row it gets one turn.

:class:`SliceBudget` sizes the slices: how many rows the next one may touch so
that it lasts about ``seconds`` (bounded by ``max_rows``), learnt from what the
last slices cost on this machine.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["MAX_PASSED", "SLICE_SECONDS", "SliceBudget", "TurnQueue"]

SLICE_SECONDS = 0.002
"""What a maintenance slice aims to last, its commit included. Measured on the 2-core test
machine: a compaction chunk of 20,000 raw rows took 67 ms (p50) to 160 ms (p99), 2,000 rows
5 ms, 500 rows 1.9 ms, 200 rows 1.2-1.6 ms (with an fsync per commit; about 1 ms of it the
fixed cost of a transaction); bench/maintenance.py prints what the slices cost in a run."""

MAX_PASSED = 32
"""Writer turns that may go before a waiting maintenance slice, in a row."""

T = TypeVar("T")


class TurnQueue(Generic[T]):
    """Who holds the write turn and who waits for it; writers before maintenance.

    ``T`` is whatever identifies a waiter (the async lock uses its futures). Within
    each kind, first come first served.
    """

    def __init__(self, *, max_passed: int = MAX_PASSED) -> None:
        if max_passed < 1:
            raise ValueError("max_passed must be positive")
        self.held = False
        self._writers: deque[T] = deque()
        self._maintenance: deque[T] = deque()
        self._max_passed = max_passed
        self._passed = 0  # writer turns given while maintenance waited, in a row

    @property
    def writers_waiting(self) -> int:
        return len(self._writers)

    @property
    def maintenance_waiting(self) -> int:
        return len(self._maintenance)

    def ask(self, who: T, *, maintenance: bool) -> bool:
        """True: ``who`` holds the turn now. False: it waits until :meth:`release` names it."""
        if not self.held and not self._writers and not self._maintenance:
            self.held = True
            return True
        (self._maintenance if maintenance else self._writers).append(who)
        return False

    def leave(self, who: T) -> None:
        """``who`` no longer waits (it was cancelled before its turn came)."""
        for queue in (self._writers, self._maintenance):
            if who in queue:
                queue.remove(who)
                return

    def release(self) -> T | None:
        """The holder is done: the next holder (now holding the turn), or None (free)."""
        if self._maintenance and (not self._writers or self._passed >= self._max_passed):
            self._passed = 0
            return self._maintenance.popleft()
        if self._writers:
            if self._maintenance:
                self._passed += 1
            return self._writers.popleft()
        self.held = False
        self._passed = 0
        return None


@dataclass(slots=True)
class SliceBudget:
    """How many rows the next maintenance slice may touch.

    Starts at ``first_rows``; after each slice, :meth:`observe` scales it so that a
    slice like the last one would take ``seconds``: down at once when a slice ran
    long (a slow disk shows in the next slice), up by at most half per slice. Never
    below ``min_rows`` (every slice makes progress, however slow the disk) nor above
    ``max_rows``.
    """

    seconds: float = SLICE_SECONDS
    max_rows: int = 20_000
    min_rows: int = 50
    first_rows: int = 200
    rows: int = field(init=False)
    slices: int = field(default=0, init=False)
    """Slices observed; with ``spent`` (their seconds) and ``longest``: what they cost."""
    spent: float = field(default=0.0, init=False)
    longest: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.seconds <= 0 or self.max_rows < 1 or self.min_rows < 1:
            raise ValueError("a slice budget needs positive seconds, max_rows and min_rows")
        self.min_rows = min(self.min_rows, self.max_rows)
        self.rows = self._bounded(self.first_rows)

    def observe(self, rows: int, elapsed: float) -> None:
        """A slice touched ``rows`` rows in ``elapsed`` seconds (its commit included)."""
        self.slices += 1
        self.spent += max(elapsed, 0.0)
        self.longest = max(self.longest, elapsed)
        if rows <= 0 or elapsed <= 0:
            return
        if rows < self.rows and elapsed <= self.seconds:
            return  # a short slice (the data ran out) in time says nothing about a full one
        fit = rows * self.seconds / elapsed
        self.rows = self._bounded(min(fit, self.rows * 1.5))

    def _bounded(self, rows: float) -> int:
        return max(self.min_rows, min(self.max_rows, int(rows)))
