"""The report scheduler: events in the inbox -> report bodies in the outbox.

Each pass re-plans every open event from its stored payload (pure and cheap:
:func:`gateway.reports.planner.plan_event`), builds the jobs that are due from
the stored readings (:func:`gateway.reports.builder.build_report`), and queues
their frozen bodies. Because everything is computed from what was committed,
an event that arrives late, or a restart in the middle of an event, still
yields every interval that has data.

``report_jobs`` remembers the outcome of each (event, kind) job, so none is
built twice; a job's outbox row and its ``report_jobs`` row commit in one
transaction, and the outbox's own key makes a rebuild after a crash harmless.
Event plan states: ``new`` -> ``planned`` -> ``done`` | ``no_report`` |
``invalid``; ``plan_note`` says why.

**What the planner is told.** Each event is planned with its stored arrival
time (``events.received_at``: nothing before it is reported, and an event that
arrived after its window gets no report, its reason in ``plan_note``) and the
operator's participation overrides for it (the ``overrides`` table).

**Waiting for late readings.** A due usage report whose intervals lack readings
is not final at its first build: it is built again every ``retry_every``
(default :data:`RETRY_EVERY`) until every interval has data or the job's
``wait_until`` (``reporting.max_wait`` after it fell due, see the planner) has
passed, and only then queued, or recorded ``empty`` when there is still no data
at all. Nothing about the wait is stored: it follows from the plan and the
readings, so a restart only makes the next build come sooner. The wait and its
reason are in the event's ``plan_note`` while it lasts.

**Quarantine.** Every event, and every job of an event, is a unit of work that
fails alone. Any exception while decoding or planning an event sets the event
``invalid`` with the reason (``gateway.errors.describe``) in ``plan_note``; any
exception while building or checking one job records the job ``invalid`` with
the reason in ``report_jobs.note`` (the event's ``plan_note`` then names the
quarantined kinds). Both are logged as errors with the event id, and the pass
goes on with the next job and event. Only :class:`~gateway.errors.StoreError`
(the database) and cancellation leave a pass; :meth:`ReportScheduler.run` logs a
failed pass (``reports.pass_failed``) and tries again after ``PASS_EVERY``, so the
loop never ends on an error and never spins.

A quarantined event or job stays set aside: its inputs (the stored payload,
the stored readings, the config) are committed, so building it again gives the
same failure, and nothing automatic retries it. After the operator has
removed the cause (a config change, a corrected channel, a new release),
:meth:`ReportJobs.release` puts the event back to ``new`` and forgets its
``invalid`` jobs, and the next pass plans it again.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import aiosqlite
import structlog

from gateway import contract, wire
from gateway.config import Config, Participation
from gateway.crashpoints import crashpoint
from gateway.errors import StoreError, WireError, describe
from gateway.health import Health
from gateway.metering.energy import Energies, Limits
from gateway.reports.builder import BuildResult, Gap, build_report
from gateway.reports.clock import ServerClock, clock_problem
from gateway.reports.manual import report_deadline
from gateway.reports.planner import Job, Target, plan_event
from gateway.store.database import Database
from gateway.store.inbox import Inbox, InboxEvent
from gateway.store.outbox import Outbox
from gateway.store.readings import ReadingsStore
from gateway.timeutil import format_utc

__all__ = ["RETRY_EVERY", "ReportJobs", "ReportScheduler", "build_job", "read_overrides"]

log = structlog.get_logger("gateway.reports")

READ_CONCURRENCY = 4  # targets read at once while building a report
PASS_EVERY = 5.0  # seconds between passes when nothing wakes the scheduler
RETRY_EVERY = 60.0  # seconds between builds of a report that waits for readings
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
            await self.record_in(conn, event_id, kind, outcome, note, now=now)

    @staticmethod
    async def record_in(
        conn: aiosqlite.Connection,
        event_id: str,
        kind: str,
        outcome: str,
        note: str | None,
        *,
        now: float,
    ) -> None:
        """:meth:`record` inside the caller's write transaction."""
        await conn.execute(
            "INSERT INTO report_jobs (event_id, kind, outcome, note, at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (event_id, kind) DO NOTHING",
            (event_id, kind, outcome, note, now),
        )

    async def quarantined_kinds(self, event_id: str) -> list[str]:
        rows = await self._db.fetchall(
            "SELECT kind FROM report_jobs WHERE event_id = ? AND outcome = 'invalid' ORDER BY kind",
            (event_id,),
        )
        return [r[0] for r in rows]

    async def release(self, event_id: str) -> bool:
        """Give a quarantined event another plan; False when nothing of it was set aside.

        Its ``invalid`` jobs are forgotten and the event goes back to ``new`` (if it was
        ``invalid``, or had a quarantined job). Queued and delivered reports are untouched.
        """
        async with self._db.write() as conn:
            jobs = await conn.execute(
                "DELETE FROM report_jobs WHERE event_id = ? AND outcome = 'invalid'", (event_id,)
            )
            event = await conn.execute(
                "UPDATE events SET plan_state = 'new', plan_note = NULL WHERE event_id = ? "
                "AND (plan_state = 'invalid' OR (? AND plan_state IN ('planned', 'done')))",
                (event_id, jobs.rowcount > 0),
            )
            return jobs.rowcount > 0 or event.rowcount > 0

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

    Each target is read with its own limits (``direction``, ``max_kw``): implausible
    readings are rejected there, and how many is noted per target. Up to
    ``READ_CONCURRENCY`` targets are read at once, so one target's SQL overlaps
    another's arithmetic.
    """
    gate = asyncio.Semaphore(READ_CONCURRENCY)
    notes: list[str] = []

    async def one(target: Target) -> Energies | None:
        async with gate:
            try:
                found = await readings.interval_energy(
                    target.adapter,
                    target.channel,
                    target.intervals,
                    max_gap=max_gap,
                    limits=Limits(target.max_kw, target.direction),
                )
            except KeyError:
                notes.append(f"{target.label}: no readings from {target.adapter}/{target.channel}")
                return None
        if found.glitches:
            notes.append(
                f"{target.label}: {found.glitches} reading(s) or interval(s) rejected as "
                f"implausible glitches (beyond {target.max_kw} kW)"
            )
        return found

    results = await asyncio.gather(*(one(t) for t in job.targets))
    energy = {t: r for t, r in zip(job.targets, results, strict=True) if r is not None}
    return build_report(job, energy), notes


async def read_overrides(db: Database, event_id: str) -> dict[str, Participation]:
    """The operator's participation per resource for one event (``ecgw plan override``)."""
    rows = await db.fetchall(
        "SELECT resource_id, participation FROM overrides WHERE event_id = ?", (event_id,)
    )
    # The table's CHECK keeps participation to the three values.
    return {r[0]: cast(Participation, r[1]) for r in rows}


@dataclass(frozen=True)
class _Waiting:
    """A due report that waits for readings: when to build it again, and why it waits."""

    retry_at: float
    note: str


class Participant(Protocol):
    """What the scheduler asks before it plans an event (:mod:`gateway.control.participant`)."""

    async def lpc_decisions(
        self, event_id: str, payload: wire.LocationLPC | wire.ResourceLPC, *, now: float
    ) -> Mapping[str, tuple[str, str]]: ...

    async def schedule(self, event_id: str, curve: wire.PriceCurve, *, now: float) -> None: ...


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
        retry_every: float = RETRY_EVERY,
        participant: Participant | None = None,
        health: Health | None = None,
    ) -> None:
        self._health = health
        self._participant = participant
        self._db = db
        self._inbox = Inbox(db)
        self._jobs = ReportJobs(db)
        self._readings = readings
        self._config = config
        self._server_clock = server_clock
        self._on_queued = on_queued
        self._clock = clock
        self._wake = asyncio.Event()
        self._clock_warned: str | None = None
        self._retry_every = retry_every
        self._waiting: dict[tuple[str, str], _Waiting] = {}

    def wake(self, event_id: str | None = None) -> None:
        """A new event arrived (or anything else worth a look)."""
        del event_id
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                next_due = await self.pass_once()
            except Exception as exc:  # the database busy for long, or a row it cannot read
                # Events and jobs fail alone inside a pass; what reaches here is outside any
                # one of them. Keep the gateway up (intake and delivery go on), say so every
                # pass, and try again in PASS_EVERY: never a hot loop, never an exit.
                log.error("reports.pass_failed", error=describe(exc))
                next_due = None
            if self._health is not None:
                self._health.next_report_due = next_due
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
        advanced: set[str] = set()
        for state in OPEN_STATES:
            for event in await self._inbox.by_plan_state(state):
                advanced.add(event.event_id)
                with structlog.contextvars.bound_contextvars(event_id=event.event_id):
                    due = await self._advance_alone(event, now, problem)
                if due is not None:
                    dues.append(due)
        self._waiting = {k: w for k, w in self._waiting.items() if k[0] in advanced}
        return min(dues, default=None)

    async def _advance_alone(
        self, event: InboxEvent, now: float, problem: str | None
    ) -> float | None:
        """:meth:`_advance`, with any failure but the database's quarantining the event."""
        try:
            return await self._advance(event, now, problem)
        except StoreError:
            raise
        except Exception as exc:  # one bad event must not stop the others
            reason = f"quarantined: planning failed: {describe(exc)}"
            await self._inbox.set_plan(event.event_id, "invalid", reason)
            log.error("reports.event_quarantined", event_id=event.event_id, error=describe(exc))
            return None

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
            log.error("reports.event_unreadable", event_id=event.event_id, error=str(exc))
            return None
        decisions = await self._take_part(event, payload, now)
        plan = plan_event(
            event.event_id,
            payload,
            self._config,
            now=now,
            received_at=event.received_at,
            overrides=await read_overrides(self._db, event.event_id),
            decisions=decisions,
        )
        if event.plan_state == "new":
            for note in plan.notes:
                log.info("reports.plan_note", note=note)
        if plan.no_report_reason is not None:
            await self._inbox.set_plan(event.event_id, "no_report", plan.no_report_reason)
            log.info("reports.no_report", reason=plan.no_report_reason)
            return None
        finished = await self._jobs.finished_kinds(event.event_id)
        open_jobs = [job for job in plan.jobs if job.kind not in finished]
        if not open_jobs:
            quarantined = await self._jobs.quarantined_kinds(event.event_id)
            await self._inbox.set_plan(
                event.event_id, "done", _summary([*_quarantine_notes(quarantined), *plan.notes])
            )
            return None
        due = [job for job in open_jobs if job.due_at <= now]
        if due and problem:
            await self._inbox.set_plan(event.event_id, "planned", f"held back: {problem}")
            return now + PASS_EVERY
        later = [job.due_at for job in open_jobs if job.due_at > now]
        waits: list[str] = []
        for job in due:
            if (wait := await self._unbracketed_until(job, now)) is not None:
                later.append(wait)
                continue
            waiting = self._waiting.get((job.event_id, job.kind))
            if waiting is None or waiting.retry_at <= now:
                waiting = await self._build_alone(job, now)
            if waiting is not None:
                later.append(waiting.retry_at)
                waits.append(waiting.note)
        plan_note = _summary([*waits, *plan.notes])
        if event.plan_state == "new" or plan_note != event.plan_note:
            await self._inbox.set_plan(event.event_id, "planned", plan_note)
        return min(later, default=now if due else None)

    async def _take_part(
        self, event: InboxEvent, payload: wire.EventPayload, now: float
    ) -> Mapping[str, tuple[str, str]] | None:
        """Before planning: the LPC decisions (taken once, stored), or a PriceCurve's
        schedules (made once per resource). None without a participant: every LPC target
        is then declined, since nothing checked that the site can hold it."""
        if self._participant is None:
            return None
        if isinstance(payload, wire.LocationLPC | wire.ResourceLPC):
            return await self._participant.lpc_decisions(event.event_id, payload, now=now)
        if isinstance(payload, wire.PriceCurve):
            await self._participant.schedule(event.event_id, payload, now=now)
        return None

    async def _unbracketed_until(self, job: Job, now: float) -> float | None:
        """When to look again at a due job whose last edge no reading follows yet, or None.

        Each target's last interval end needs a reading after it. In steady running one
        is there long before ``reporting.grace`` has passed; after a restart (a report
        came due while the gateway was down) the meters have not been read again yet, and
        building now would leave out the interval whose end fell in the outage. So a job
        whose channel was read within ``metering.max_gap`` before that end, but not since,
        waits for the next reading, no longer than ``max_gap`` past the end: a reading
        later than that could not bracket the edge anyway.
        """
        max_gap = self._config.metering.max_gap
        deadlines: list[float] = []
        for target in job.targets:
            if not target.intervals:
                continue
            last_end = target.intervals[-1][1]
            if now >= last_end + max_gap:
                continue
            latest = await self._readings.latest_at((target.adapter, target.channel))
            # Read shortly before the edge and not yet after it: a reading may still come
            # that brackets the edge. Never read near it (a dead device): nothing to wait for.
            if latest is not None and last_end - max_gap <= latest < last_end:
                deadlines.append(last_end + max_gap)
        if not deadlines:
            return None
        log.debug("reports.waiting_for_readings", kind=job.kind, until=max(deadlines))
        return min(now + PASS_EVERY, max(deadlines))

    async def _build_alone(self, job: Job, now: float) -> _Waiting | None:
        """:meth:`_build_and_queue`, with any failure but the database's quarantining the job."""
        try:
            return await self._build_and_queue(job, now)
        except StoreError:
            raise
        except Exception as exc:  # one bad job must not stop the others
            self._waiting.pop((job.event_id, job.kind), None)
            reason = f"quarantined: {describe(exc)}"
            await self._jobs.record(job.event_id, job.kind, "invalid", reason, now=now)
            log.error(
                "reports.job_quarantined",
                event_id=job.event_id,
                kind=job.kind,
                error=describe(exc),
            )
            return None

    async def _build_and_queue(self, job: Job, now: float) -> _Waiting | None:
        """Build the job; queue and record it, or, while intervals lack readings and its
        wait is not over, say until when it waits (nothing is recorded)."""
        result, notes = await build_job(job, self._readings, max_gap=self._config.metering.max_gap)
        key = (job.event_id, job.kind)
        wait_until = job.wait_until if job.wait_until is not None else job.due_at
        if result.gaps and now < wait_until:
            waiting = _Waiting(
                retry_at=min(now + self._retry_every, wait_until),
                note=_wait_note(job, result.gaps, wait_until),
            )
            if key not in self._waiting:
                log.info("reports.waiting_for_data", kind=job.kind, note=waiting.note)
            self._waiting[key] = waiting
            return waiting
        self._waiting.pop(key, None)
        waited = []
        if result.gaps and wait_until > job.due_at:
            waited = [
                f"the wait for missing readings ended at {_iso(wait_until)}: built with what exists"
            ]
        note = _summary([*notes, *result.notes, *waited])
        if result.request is None or result.body is None:
            await self._jobs.record(job.event_id, job.kind, "empty", note, now=now)
            log.warning("reports.nothing_to_report", kind=job.kind, note=note)
            return None
        try:  # never queue what the API would refuse: that is a bug of ours, kept for a look
            contract.check("PostReportRequest", json.loads(result.body))
        except WireError as exc:
            reason = f"quarantined: breaks the contract: {describe(exc)}"
            await self._jobs.record(job.event_id, job.kind, "invalid", reason, now=now)
            log.error("reports.breaks_contract", kind=job.kind, error=describe(exc))
            return None
        async with self._db.write() as conn:  # the outbox row and its job row commit together
            queued = await Outbox.enqueue_in(
                conn,
                event_id=job.event_id,
                kind=job.kind,
                body=result.body,
                source="planner",
                now=now,
                deadline=report_deadline(result.request, now=now),
            )
            await ReportJobs.record_in(conn, job.event_id, job.kind, "queued", note, now=now)
        crashpoint("outbox.queued")
        log.info(
            "reports.queued",
            kind=job.kind,
            new=queued,
            payloads=len(result.request.payloads),
            note=note,
        )
        self._on_queued()
        return None


def _iso(epoch: float) -> str:
    return format_utc(dt.datetime.fromtimestamp(epoch, dt.UTC))


def _wait_note(job: Job, gaps: Sequence[Gap], wait_until: float) -> str:
    """``EnergyUsage report waits for readings of 3 interval(s) (resource 'a': 2 of 4, ...)
    until ...``: what the event's plan note says while the report waits."""
    missing = collections.Counter(target for target, _ in gaps)
    where = ", ".join(f"{t.label}: {n} of {len(t.intervals)}" for t, n in missing.items())
    return (
        f"{job.kind} report waits for readings of {len(gaps)} interval(s) ({where}) "
        f"until {_iso(wait_until)} at the latest, then is built with what exists"
    )


def _quarantine_notes(kinds: Sequence[str]) -> list[str]:
    return [f"{kind} report quarantined (see its job)" for kind in kinds]


def _summary(notes: Sequence[str]) -> str | None:
    return "; ".join(notes) if notes else None
