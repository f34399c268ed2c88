"""Writes gathered while a batch of work is done, committed together in one transaction.

The scheduler plans a burst of events N at a time: each event's plan state, job
records, outbox rows and schedules are gathered here and committed at the end of
the batch (:meth:`WriteBatch.commit`), one ``BEGIN IMMEDIATE`` ... ``COMMIT`` and so
one fsync for N events instead of one or more each. What must follow the commit (a
log line that says something was stored, waking the deliverer) is registered with
:meth:`WriteBatch.after_commit` and runs only once the commit returned: nothing is
acknowledged, logged as done or handed on before it is committed.

A failed commit (StoreError) leaves nothing of the batch stored and runs none of its
follow-ups; everything in it is computed again from what is committed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiosqlite

from gateway.store.database import Database
from gateway.store.outbox import NewReport, Outbox

__all__ = ["RECORD_JOB", "WriteBatch"]

RECORD_JOB = (
    "INSERT INTO report_jobs (event_id, kind, outcome, note, at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (event_id, kind) DO NOTHING"
)
"""A report job's outcome; the first one recorded stays."""

Step = Callable[[aiosqlite.Connection], Awaitable[object]]


class WriteBatch:
    def __init__(self) -> None:
        self._plans: dict[str, tuple[str, str | None, tuple[str, str | None] | None]] = {}
        self._steps: list[Step] = []
        self._after: list[Callable[[], object]] = []
        self._reports: list[NewReport] = []
        self._jobs: list[tuple[str, str, str, str | None, float]] = []
        self.queued: set[tuple[str, str]] = set()
        """After :meth:`commit`: the (event id, kind) of the reports it queued (those not
        in it were queued before)."""

    def set_plan(
        self,
        event_id: str,
        state: str,
        note: str | None,
        *,
        was: tuple[str, str | None] | None = None,
    ) -> None:
        """An event's plan state and note (the last one set for an event wins). ``was``:
        the state and note the batch read; the update applies only if the event still has
        them, so a change committed from outside meanwhile (``ecgw events replan``) stays."""
        self._plans[event_id] = (state, note, was)

    def add(self, step: Step) -> None:
        """A write, run in order inside the batch's transaction."""
        self._steps.append(step)

    def record_job(
        self, event_id: str, kind: str, outcome: str, note: str | None, *, now: float
    ) -> None:
        """A report job's outcome for ``report_jobs`` (once: the first outcome stays), written
        with every other of the batch in one statement."""
        self._jobs.append((event_id, kind, outcome, note, now))

    def queue_report(self, report: NewReport, *, note: str | None) -> None:
        """A report for the outbox and its job's ``queued`` outcome, written with every other
        report of the batch in one statement each (after the steps, before the plans)."""
        self._reports.append(report)
        self.record_job(report.event_id, report.kind, "queued", note, now=report.now)

    def after_commit(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` once the batch is committed (in the order registered)."""
        self._after.append(fn)

    def __len__(self) -> int:
        return len(self._plans) + len(self._steps) + len(self._jobs)

    async def commit(self, db: Database) -> None:
        """Every write in one transaction, then the follow-ups; the batch is empty after."""
        plans, steps, after = self._plans, self._steps, self._after
        reports, jobs = self._reports, self._jobs
        self._plans, self._steps, self._after, self._reports, self._jobs = {}, [], [], [], []
        queued: set[tuple[str, str]] = set()
        if plans or steps or jobs:
            async with db.write() as conn:
                for step in steps:
                    await step(conn)
                if reports:
                    queued = await Outbox.enqueue_many_in(conn, reports)
                if jobs:
                    await conn.executemany(RECORD_JOB, jobs)
                if plans:
                    await conn.executemany(
                        "UPDATE events SET plan_state = ?1, plan_note = ?2 WHERE event_id = ?3 "
                        "AND (?4 IS NULL OR (plan_state = ?4 AND plan_note IS ?5))",
                        [
                            (state, note, event_id, *(was or (None, None)))
                            for event_id, (state, note, was) in plans.items()
                        ],
                    )
        self.queued = queued
        for fn in after:
            fn()
