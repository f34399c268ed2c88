"""The report scheduler: events in the inbox -> report bodies in the outbox.

Each pass re-plans every open event from its stored payload (pure and cheap:
:func:`gateway.reports.planner.plan_event`), builds the jobs that are due from
the stored readings (:func:`gateway.reports.builder.build_report`), and queues
their frozen bodies. Because everything is computed from what was committed,
an event that arrives late, or a restart in the middle of an event, still
yields every interval that has data.

``report_jobs`` remembers the outcome of each (event, kind) job, so none is
built twice; the outbox's own key makes a rebuild after a crash harmless.
Event plan states: ``new`` -> ``planned`` -> ``done`` | ``no_report`` |
``invalid``; ``plan_note`` says why.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence

import structlog

from gateway import contract, wire
from gateway.config import Config
from gateway.delivery.api import ServerClock
from gateway.errors import StoreError, WireError
from gateway.metering.energy import IntervalEnergy
from gateway.reports.builder import BuildResult, build_report
from gateway.reports.clock import clock_problem
from gateway.reports.manual import report_deadline
from gateway.reports.planner import Job, Target, plan_event
from gateway.store.database import Database
from gateway.store.inbox import Inbox, InboxEvent
from gateway.store.outbox import Outbox
from gateway.store.readings import ReadingsStore

__all__ = ["ReportJobs", "ReportScheduler", "build_job"]

log = structlog.get_logger("gateway.reports")

READ_CONCURRENCY = 4  # targets read at once while building a report
PASS_EVERY = 5.0  # seconds between passes when nothing wakes the scheduler
OPEN_STATES = ("new", "planned")


class ReportJobs:
    """Outcomes of report jobs: ``queued`` or ``empty`` (no data for any target)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def finished_kinds(self, event_id: str) -> set[str]:
        rows = await self._db.fetchall(
            "SELECT kind FROM report_jobs WHERE event_id = ?", (event_id,)
        )
        return {r[0] for r in rows}

    async def record(
        self, event_id: str, kind: str, outcome: str, note: str | None, *, now: float
    ) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                "INSERT INTO report_jobs (event_id, kind, outcome, note, at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (event_id, kind) DO NOTHING",
                (event_id, kind, outcome, note, now),
            )

    async def for_event(self, event_id: str) -> list[dict[str, object]]:
        rows = await self._db.fetchall(
            "SELECT kind, outcome, note, at FROM report_jobs WHERE event_id = ? ORDER BY at",
            (event_id,),
        )
        return [dict(r) for r in rows]


async def build_job(
    job: Job, readings: ReadingsStore, *, max_gap: float
) -> tuple[BuildResult, list[str]]:
    """Energy for every target of ``job`` from the stored readings, then the report.

    Up to ``READ_CONCURRENCY`` targets are read at once, so one target's SQL overlaps
    another's arithmetic.
    """
    gate = asyncio.Semaphore(READ_CONCURRENCY)
    notes: list[str] = []

    async def one(target: Target) -> Sequence[IntervalEnergy | None] | None:
        async with gate:
            try:
                return await readings.interval_energy(
                    target.adapter, target.channel, target.intervals, max_gap=max_gap
                )
            except KeyError:
                notes.append(f"{target.label}: no readings from {target.adapter}/{target.channel}")
                return None

    results = await asyncio.gather(*(one(t) for t in job.targets))
    energy = {t: r for t, r in zip(job.targets, results, strict=True) if r is not None}
    return build_report(job, energy), notes


class ReportScheduler:
    def __init__(
        self,
        *,
        db: Database,
        readings: ReadingsStore,
        config: Config,
        server_clock: ServerClock,
        on_queued: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._inbox = Inbox(db)
        self._outbox = Outbox(db)
        self._jobs = ReportJobs(db)
        self._readings = readings
        self._config = config
        self._server_clock = server_clock
        self._on_queued = on_queued
        self._clock = clock
        self._wake = asyncio.Event()
        self._clock_warned: str | None = None

    def wake(self, event_id: str | None = None) -> None:
        """A new event arrived (or anything else worth a look)."""
        del event_id
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                next_due = await self.pass_once()
            except StoreError as exc:  # e.g. the database busy for long: try again soon
                log.error("reports.pass_failed", error=str(exc))
                next_due = None
            timeout = PASS_EVERY
            if next_due is not None:
                timeout = min(timeout, max(next_due - self._clock(), 0.0))
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def pass_once(self) -> float | None:
        """Advance every open event; returns when the next job falls due, if any."""
        now = self._clock()
        problem = clock_problem(
            now, api_date=self._server_clock.api_date, seen_at=self._server_clock.seen_at
        )
        self._say_clock(problem)
        dues: list[float] = []
        for state in OPEN_STATES:
            for event in await self._inbox.by_plan_state(state):
                with structlog.contextvars.bound_contextvars(event_id=event.event_id):
                    due = await self._advance(event, now, problem)
                if due is not None:
                    dues.append(due)
        return min(dues, default=None)

    def _say_clock(self, problem: str | None) -> None:
        if problem != self._clock_warned:
            if problem:
                log.error(
                    "reports.held_back",
                    reason=problem,
                    detail="readings are still collected; reports wait for a sane clock",
                )
            else:
                log.info("reports.clock_ok")
            self._clock_warned = problem

    async def _advance(self, event: InboxEvent, now: float, problem: str | None) -> float | None:
        try:
            payload = wire.decode_event_payload(event.payload)
        except WireError as exc:
            await self._inbox.set_plan(event.event_id, "invalid", f"unreadable payload: {exc}")
            log.error("reports.event_unreadable", error=str(exc))
            return None
        plan = plan_event(event.event_id, payload, self._config, now=now)
        if event.plan_state == "new":
            for note in plan.notes:
                log.info("reports.plan_note", note=note)
        if plan.no_report_reason:
            await self._inbox.set_plan(event.event_id, "no_report", plan.no_report_reason)
            log.info("reports.no_report", reason=plan.no_report_reason)
            return None
        finished = await self._jobs.finished_kinds(event.event_id)
        open_jobs = [job for job in plan.jobs if job.kind not in finished]
        if not open_jobs:
            await self._inbox.set_plan(event.event_id, "done", _summary(plan.notes))
            return None
        if event.plan_state == "new":
            await self._inbox.set_plan(event.event_id, "planned", _summary(plan.notes))
        due = [job for job in open_jobs if job.due_at <= now]
        if due and problem:
            await self._inbox.set_plan(event.event_id, "planned", f"held back: {problem}")
            return now + PASS_EVERY
        for job in due:
            await self._build_and_queue(job, now)
        later = [job.due_at for job in open_jobs if job.due_at > now]
        return min(later, default=now if due else None)

    async def _build_and_queue(self, job: Job, now: float) -> None:
        result, notes = await build_job(job, self._readings, max_gap=self._config.metering.max_gap)
        note = _summary([*notes, *result.notes])
        if result.request is None or result.body is None:
            await self._jobs.record(job.event_id, job.kind, "empty", note, now=now)
            log.warning("reports.nothing_to_report", kind=job.kind, note=note)
            return
        try:  # never queue what the API would refuse: that is a bug of ours, kept for a look
            contract.check("PostReportRequest", json.loads(result.body))
        except WireError as exc:
            await self._jobs.record(job.event_id, job.kind, "invalid", str(exc), now=now)
            log.error("reports.breaks_contract", kind=job.kind, error=str(exc))
            return
        queued = await self._outbox.enqueue(
            event_id=job.event_id,
            kind=job.kind,
            body=result.body,
            source="planner",
            now=now,
            deadline=report_deadline(result.request, now=now),
        )
        await self._jobs.record(job.event_id, job.kind, "queued", note, now=now)
        log.info(
            "reports.queued",
            kind=job.kind,
            new=queued,
            payloads=len(result.request.payloads),
            note=note,
        )
        self._on_queued()


def _summary(notes: Sequence[str]) -> str | None:
    return "; ".join(notes) if notes else None
