"""The report scheduler: events in the inbox -> report bodies in the outbox.

Advancing an event re-plans it from its stored payload (pure and cheap:
:func:`gateway.reports.planner.plan_event`), builds the jobs that are due from
the stored readings (:func:`gateway.reports.builder.build_report`), and queues
their frozen bodies. Because everything is computed from what was committed,
an event that arrives late, or a restart in the middle of an event, still
yields every interval that has data.

**Work proportional to what changes.** The scheduler keeps, in memory, when each
open event is next due (:class:`gateway.reports.due.Agenda`): the earliest of its
jobs' ``due_at``, a report's next build while it waits for readings, the next look
while reports are held back for the clock. A pass advances only the events whose
time has come, and the loop sleeps until the earliest (at most ``PASS_EVERY``).
Each pass also looks, with two small reads, for what changes an event from outside:
events in state ``new`` (just arrived, or released from quarantine by ``ecgw events
replan``; read by their index) and changed overrides of open events (``ecgw plan
override``); those are due at once. :meth:`ReportScheduler.wake` makes one event
due at once. The agenda is rebuilt from the database (every open event due) at the
first pass, after a failed pass, when the clock went back, and when the clock's
problem (``reports.held_back``) appears or clears.

**Intake first.** A pass for newly arrived events waits for a pause in their arrival
(``LULL``, 50 ms; at most ``LULL_AT_MOST``, 2 s, after the first of them, for a stream
that never pauses): during a burst the webhook has the CPU, and the burst is then planned
in full batches. Planning each event as it came took half the CPU from the webhook while
Spark waited for its answers.

**Batches.** Due events are advanced ``BATCH`` at a time: their job outcomes and
schedules are read once for the batch, and their plan states, job records, outbox
rows and PriceCurve schedules commit in one transaction per batch
(:class:`gateway.store.batch.WriteBatch`); only after it the deliverer is woken and
``reports.queued`` / ``control.scheduled`` are logged. A burst of events costs one
commit per batch. (LPC decisions are still committed one event at a time, by the
decider, before the acknowledgement that depends on them is built.) A plan state is
written only if the event still has the state and note the batch read: a release from
quarantine (``ecgw events replan``) committed while the batch was built stays, and the
next pass finds the event ``new``.

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
readings, so a restart (or a rebuilt agenda) only makes the next build come sooner. The wait and its
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
from collections.abc import Callable, Collection, Mapping, Sequence
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
from gateway.reports.due import Agenda
from gateway.reports.manual import report_deadline
from gateway.reports.planner import LOCATION_ACK, RESOURCE_ACK, Job, Target, plan_event
from gateway.store.batch import RECORD_JOB, WriteBatch
from gateway.store.database import Database
from gateway.store.inbox import Inbox, InboxEvent
from gateway.store.outbox import NewReport
from gateway.store.readings import ReadingsStore
from gateway.timeutil import format_utc

__all__ = ["RETRY_EVERY", "ReportJobs", "ReportScheduler", "build_job", "read_overrides"]

log = structlog.get_logger("gateway.reports")

READ_CONCURRENCY = 4  # targets read at once while building a report
PASS_EVERY = 5.0  # seconds between passes when nothing wakes the scheduler
RETRY_EVERY = 60.0  # seconds between builds of a report that waits for readings
BATCH = 250  # events advanced per transaction
LULL = 0.05  # seconds without a new event before the scheduler plans those that came
LULL_AT_MOST = 2.0  # ...but no longer than this after the first of them (a steady stream)
CLOCK_BACK = 1.0  # seconds the clock may step back before the agenda is rebuilt
OPEN_STATES = ("new", "planned")


class ReportJobs:
    """Outcomes of report jobs: ``queued`` or ``empty`` (no data for any target)."""

    def __init__(self, db: Database) -> None:
        self._db = db

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
        """Record a job's outcome inside the caller's write transaction (once: the first
        outcome stays)."""
        await conn.execute(RECORD_JOB, (event_id, kind, outcome, note, now))

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
class _Known:
    """What a batch's events already have, read once for the whole batch."""

    jobs: Mapping[str, Mapping[str, str]]
    """Event id -> kind -> outcome (``report_jobs``)."""
    scheduled: Mapping[str, frozenset[str]]
    """Event id -> the resources that have a schedule (``schedules``)."""


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

    async def schedule(
        self,
        event_id: str,
        curve: wire.PriceCurve,
        *,
        now: float,
        batch: WriteBatch | None = None,
        scheduled: Collection[str] | None = None,
        overrides: Mapping[str, str] | None = None,
    ) -> None: ...


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
        self._readings = readings
        self._config = config
        self._server_clock = server_clock
        self._on_queued = on_queued
        self._clock = clock
        self._wake = asyncio.Event()
        self._clock_warned: str | None = None
        self._retry_every = retry_every
        self._waiting: dict[tuple[str, str], _Waiting] = {}
        self._agenda = Agenda()
        self._loaded = False  # the agenda holds every open event
        self._woken: set[str] = set()
        self._overrides: dict[str, frozenset[tuple[str, str]]] = {}
        self._last_now: float | None = None
        self._last_problem: str | None = None

    def wake(self, event_id: str | None = None) -> None:
        """A new event arrived, or ``event_id`` changed: it is due at the next pass
        (without an id: only a pass now)."""
        if event_id is not None:
            self._woken.add(event_id)
        self._wake.set()

    @property
    def open_events(self) -> int:
        """Open events on the agenda (after the first pass)."""
        return len(self._agenda)

    def due_at(self, event_id: str) -> float | None:
        """When ``event_id`` is next advanced (None: not open, or not seen yet)."""
        return self._agenda.due_at(event_id)

    async def run(self) -> None:
        while True:
            await self._lull()
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

    async def _lull(self) -> None:
        """While new events keep arriving (a burst), wait for a pause of LULL before planning
        them, LULL_AT_MOST at most: intake goes first, and the burst is planned in full
        batches once it ends. Planning each event as it came took half the CPU from the
        webhook while Spark waited for its answers."""
        if not self._woken:
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + LULL_AT_MOST
        while True:
            seen = len(self._woken)
            await asyncio.sleep(min(LULL, max(until - loop.time(), 0.0)))
            if len(self._woken) == seen or loop.time() >= until:
                return

    async def pass_once(self) -> float | None:
        """Advance every open event that is due; returns when the next one is due, if any."""
        now = self._clock()
        problem = clock_problem(
            now, api_date=self._server_clock.api_date, seen_at=self._server_clock.seen_at
        )
        self._say_clock(problem)
        try:
            if self._must_reload(now, problem):
                await self._reload(now)
            else:
                await self._look_for_changes(now)
            self._last_now, self._last_problem = now, problem
            due = self._agenda.take_due(now)
            for i in range(0, len(due), BATCH):
                await self._advance_batch(due[i : i + BATCH], now, problem)
        except BaseException:
            self._loaded = False  # what was taken and not advanced: found again by a reload
            raise
        return self._agenda.earliest()

    def _must_reload(self, now: float, problem: str | None) -> bool:
        """Rebuild the agenda: never built (or a pass failed), the clock went back (due
        times computed from the old reading would come late), or its problem changed."""
        return (
            not self._loaded
            or (self._last_now is not None and now < self._last_now - CLOCK_BACK)
            or problem != self._last_problem
        )

    async def _reload(self, now: float) -> None:
        self._agenda.clear()
        self._woken.clear()
        for event_id in await self._inbox.ids_by_plan_state(*OPEN_STATES):
            self._agenda.set(event_id, now)
        self._overrides = await self._read_overrides()
        self._waiting.clear()  # a retry time from a clock that stepped back would come late
        self._loaded = True
        log.debug("reports.agenda_loaded", open_events=len(self._agenda))

    async def _look_for_changes(self, now: float) -> None:
        """What makes an event due from outside the agenda: ``wake(event_id)``, a ``new``
        event (arrived, or released from quarantine), a changed override."""
        woken, self._woken = self._woken, set()
        for event_id in woken:
            self._agenda.sooner(event_id, now)
        for event_id in await self._inbox.ids_by_plan_state("new"):
            self._agenda.sooner(event_id, now)
        overrides = await self._read_overrides()
        for event_id, chosen in overrides.items():
            if self._overrides.get(event_id) != chosen:
                self._agenda.sooner(event_id, now)
        self._overrides = overrides

    async def _read_overrides(self) -> dict[str, frozenset[tuple[str, str]]]:
        """The operator's overrides of open events, per event."""
        rows = await self._db.fetchall(
            "SELECT o.event_id, o.resource_id, o.participation FROM overrides o "
            "JOIN events e ON e.event_id = o.event_id WHERE e.plan_state IN ('new', 'planned')"
        )
        found: dict[str, set[tuple[str, str]]] = {}
        for event_id, resource_id, participation in rows:
            found.setdefault(event_id, set()).add((resource_id, participation))
        return {event_id: frozenset(chosen) for event_id, chosen in found.items()}

    async def _advance_batch(
        self, event_ids: Sequence[str], now: float, problem: str | None
    ) -> None:
        """Advance these events; their writes commit together, then each is due again."""
        batch = WriteBatch()
        dues: dict[str, float] = {}
        events = [e for e in await self._inbox.get_many(event_ids) if e.plan_state in OPEN_STATES]
        known = await self._read_known([e.event_id for e in events])
        for event in events:
            with structlog.contextvars.bound_contextvars(event_id=event.event_id):
                due = await self._advance_alone(event, now, problem, batch, known)
            if due is not None:
                dues[event.event_id] = due
            else:
                self._forget(event.event_id)
        await batch.commit(self._db)
        for event_id, due in dues.items():
            self._agenda.set(event_id, due)

    async def _read_known(self, event_ids: Sequence[str]) -> _Known:
        """The job outcomes and schedules of these events: two reads for a batch."""
        jobs: dict[str, dict[str, str]] = {}
        scheduled: dict[str, set[str]] = {}
        if event_ids:
            marks = ",".join("?" * len(event_ids))
            for event_id, kind, outcome in await self._db.fetchall(
                f"SELECT event_id, kind, outcome FROM report_jobs WHERE event_id IN ({marks})",  # noqa: S608
                event_ids,
            ):
                jobs.setdefault(event_id, {})[kind] = outcome
            for event_id, resource_id in await self._db.fetchall(
                f"SELECT event_id, resource_id FROM schedules WHERE event_id IN ({marks})",  # noqa: S608
                event_ids,
            ):
                scheduled.setdefault(event_id, set()).add(resource_id)
        return _Known(jobs, {e: frozenset(r) for e, r in scheduled.items()})

    def _forget(self, event_id: str) -> None:
        self._agenda.drop(event_id)
        self._overrides.pop(event_id, None)
        for key in [k for k in self._waiting if k[0] == event_id]:
            del self._waiting[key]

    async def _advance_alone(
        self, event: InboxEvent, now: float, problem: str | None, batch: WriteBatch, known: _Known
    ) -> float | None:
        """:meth:`_advance`, with any failure but the database's quarantining the event."""
        try:
            return await self._advance(event, now, problem, batch, known)
        except StoreError:
            raise
        except Exception as exc:  # one bad event must not stop the others
            reason = f"quarantined: planning failed: {describe(exc)}"
            batch.set_plan(event.event_id, "invalid", reason, was=_was(event))
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

    async def _advance(
        self, event: InboxEvent, now: float, problem: str | None, batch: WriteBatch, known: _Known
    ) -> float | None:
        """Plan the event and build what is due; its writes go to ``batch``. Returns when
        it is due again, or None once it is closed (``done``, ``no_report``, ``invalid``)."""
        try:
            payload = wire.decode_event_payload(event.payload)
        except WireError as exc:
            batch.set_plan(event.event_id, "invalid", f"unreadable payload: {exc}", was=_was(event))
            log.error("reports.event_unreadable", event_id=event.event_id, error=str(exc))
            return None
        overrides = {r: cast(Participation, p) for r, p in self._overrides.get(event.event_id, ())}
        decisions = await self._take_part(event, payload, now, batch, known, overrides)
        finished_before = known.jobs.get(event.event_id, {})
        plan = plan_event(
            event.event_id,
            payload,
            self._config,
            now=now,
            received_at=event.received_at,
            overrides=overrides,
            decisions=decisions,
            ack_queued=bool({LOCATION_ACK, RESOURCE_ACK} & set(finished_before)),
        )
        if event.plan_state == "new":
            for note in plan.notes:
                log.info("reports.plan_note", note=note)
        if plan.no_report_reason is not None:
            batch.set_plan(event.event_id, "no_report", plan.no_report_reason, was=_was(event))
            log.info("reports.no_report", reason=plan.no_report_reason)
            return None
        outcomes = known.jobs.get(event.event_id, {})
        finished = set(outcomes)
        open_jobs = [job for job in plan.jobs if job.kind not in finished]
        if not open_jobs:
            quarantined = sorted(k for k, o in outcomes.items() if o == "invalid")
            batch.set_plan(
                event.event_id,
                "done",
                _summary([*_quarantine_notes(quarantined), *plan.notes]),
                was=_was(event),
            )
            return None
        due = [job for job in open_jobs if job.due_at <= now]
        if due and problem:
            batch.set_plan(event.event_id, "planned", f"held back: {problem}", was=_was(event))
            return now + PASS_EVERY
        later = [job.due_at for job in open_jobs if job.due_at > now]
        waits: list[str] = []
        for job in due:
            if (wait := await self._unbracketed_until(job, now)) is not None:
                later.append(wait)
                continue
            waiting = self._waiting.get((job.event_id, job.kind))
            if waiting is None or waiting.retry_at <= now:
                waiting = await self._build_alone(job, now, batch)
            if waiting is not None:
                later.append(waiting.retry_at)
                waits.append(waiting.note)
        plan_note = _summary([*waits, *plan.notes])
        if event.plan_state == "new" or plan_note != event.plan_note:
            batch.set_plan(event.event_id, "planned", plan_note, was=_was(event))
        return min(later, default=now if due else None)

    async def _take_part(
        self,
        event: InboxEvent,
        payload: wire.EventPayload,
        now: float,
        batch: WriteBatch,
        known: _Known,
        overrides: Mapping[str, str],
    ) -> Mapping[str, tuple[str, str]] | None:
        """Before planning: the LPC decisions (taken once, stored), or a PriceCurve's
        schedules (made once per resource). None without a participant: every LPC target
        is then declined, since nothing checked that the site can hold it."""
        if self._participant is None:
            return None
        if isinstance(payload, wire.LocationLPC | wire.ResourceLPC):
            return await self._participant.lpc_decisions(event.event_id, payload, now=now)
        if isinstance(payload, wire.PriceCurve):
            await self._participant.schedule(
                event.event_id,
                payload,
                now=now,
                batch=batch,
                scheduled=known.scheduled.get(event.event_id, frozenset()),
                overrides=overrides,
            )
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

    async def _build_alone(self, job: Job, now: float, batch: WriteBatch) -> _Waiting | None:
        """:meth:`_build_and_queue`, with any failure but the database's quarantining the job."""
        try:
            return await self._build_and_queue(job, now, batch)
        except StoreError:
            raise
        except Exception as exc:  # one bad job must not stop the others
            self._waiting.pop((job.event_id, job.kind), None)
            reason = f"quarantined: {describe(exc)}"
            batch.record_job(job.event_id, job.kind, "invalid", reason, now=now)
            log.error(
                "reports.job_quarantined",
                event_id=job.event_id,
                kind=job.kind,
                error=describe(exc),
            )
            return None

    async def _build_and_queue(self, job: Job, now: float, batch: WriteBatch) -> _Waiting | None:
        """Build the job; queue and record it (with ``batch``'s commit), or, while intervals
        lack readings and its wait is not over, say until when it waits (nothing is
        recorded)."""
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
            batch.record_job(job.event_id, job.kind, "empty", note, now=now)
            log.warning("reports.nothing_to_report", kind=job.kind, note=note)
            return None
        try:  # never queue what the API would refuse: that is a bug of ours, kept for a look
            contract.check("PostReportRequest", json.loads(result.body))
        except WireError as exc:
            reason = f"quarantined: breaks the contract: {describe(exc)}"
            batch.record_job(job.event_id, job.kind, "invalid", reason, now=now)
            log.error("reports.breaks_contract", kind=job.kind, error=describe(exc))
            return None
        body, deadline = result.body, report_deadline(result.request, now=now)
        report = NewReport(job.event_id, job.kind, body, "planner", now, deadline)
        batch.queue_report(report, note=note)  # outbox row and job row
        payloads = len(result.request.payloads)

        def after_commit() -> None:
            crashpoint("outbox.queued")
            log.info(
                "reports.queued",
                event_id=job.event_id,
                kind=job.kind,
                new=(job.event_id, job.kind) in batch.queued,
                payloads=payloads,
                note=note,
            )
            self._on_queued()

        batch.after_commit(after_commit)
        return None


def _was(event: InboxEvent) -> tuple[str, str | None]:
    """What the batch read of ``event``: its plan changes only if it still is so."""
    return (event.plan_state, event.plan_note)


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
