"""The delivery pipeline: claim due reports, POST them, record the outcomes.

``delivery.concurrency`` workers each take the next claimed report and send
it; they never wait on the database while claimed reports are ready. One
keeper records what the workers finished and claims more, in one transaction
per round: a report counts as delivered only once that commit is done. Rows
are claimed ahead, ``CLAIM_PER_WORKER`` per worker, so that the workers keep
sending while a round commits (``in_flight`` means "claimed by the running
gateway"; a crash hands them back on the next start). While the breaker holds
delivery back, claimed rows are handed back and one worker at a time probes.
Decisions come from :mod:`gateway.delivery.policy`; this module only loops.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from gateway.crashpoints import crashpoint
from gateway.delivery.api import PostResult
from gateway.delivery.policy import (
    Breaker,
    BreakerState,
    Dead,
    Delivered,
    Outcome,
    Retry,
    classify,
    parse_retry_after,
    signal_for,
)
from gateway.errors import StoreError, UpstreamError, UpstreamUnavailable, describe
from gateway.health import Health
from gateway.store.outbox import Outbox, OutboxItem

__all__ = ["Deliverer", "ReportTransport"]

log = structlog.get_logger("gateway.delivery")

IDLE_RECHECK = 1.0  # seconds: pick up rows queued by other processes (ecgw report submit)
DEADLINE_WARNING = 3 * 86400.0  # warn about reports still pending this close to month end
DEADLINE_CHECK_EVERY = 600.0
# Reports claimed per worker (sent or waiting): enough that the workers never wait while
# the keeper commits a round. Measured at 16 workers (bench/delivery.py): with 2 per worker
# they had 12.8 requests in flight on average and nothing ready a third of the time; with 8,
# 15.3 in flight.
CLAIM_PER_WORKER = 8


class ReportTransport(Protocol):
    """What delivery needs of its upstream: Spark's API (:class:`~gateway.delivery.api.ApiClient`)
    or, on a site in a fleet, the hub (:class:`~gateway.fleet.site.HubUpstream`). Any answer
    is a PostResult; a transport failure raises UpstreamError."""

    async def post_report(self, body: bytes, *, idempotency_key: str) -> PostResult: ...


class Deliverer:
    def __init__(
        self,
        outbox: Outbox,
        api: ReportTransport,
        *,
        concurrency: int,
        backoff_initial: float,
        backoff_max: float,
        retry_after_max: float,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        health: Health | None = None,
    ) -> None:
        self._health = health
        self._outbox = outbox
        self._api = api
        self._concurrency = concurrency
        self._initial = backoff_initial
        self._max = backoff_max
        self._retry_after_max = retry_after_max
        self._clock = clock
        self._rand = rand
        self._breaker = Breaker(initial=backoff_initial, maximum=backoff_max)
        self._ready: collections.deque[OutboxItem] = collections.deque()  # claimed, not sent
        self._sending: dict[int, OutboxItem] = {}  # by outbox id
        self._finished: list[tuple[OutboxItem, Outcome]] = []  # sent, not yet recorded
        self._keeper_kick = asyncio.Event()  # outcomes to record, or something was queued
        self._workers_kick = asyncio.Condition()  # more ready, or the breaker moved
        self._next_deadline_check = 0.0

    def wake(self) -> None:
        """Something was queued: look for due reports now."""
        self._keeper_kick.set()

    async def run(self) -> None:
        recovered = await self._outbox.recover(now=self._clock())
        if recovered:
            log.warning("outbox.recovered_in_flight", count=recovered)
        try:
            async with asyncio.TaskGroup() as tasks:
                for n in range(self._concurrency):
                    tasks.create_task(self._worker(), name=f"delivery-worker:{n}")
                tasks.create_task(self._keeper(), name="delivery-keeper")
        finally:
            await asyncio.shield(self._abandon())

    # --- workers: send ---------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            item, probe = await self._take()
            self._sending[item.id] = item
            outcome = await self._attempt(item)  # cancelled: the row stays for _abandon
            del self._sending[item.id]
            if self._health is not None:
                error = outcome.error if isinstance(outcome, Retry | Dead) else None
                self._health.delivered(type(outcome).__name__.lower(), outcome.status, error)
            moved = self._hear(outcome, probe=probe, now=self._clock())
            self._finished.append((item, outcome))
            self._keeper_kick.set()
            if moved:  # paused, or open again: every waiting worker must look
                async with self._workers_kick:
                    self._workers_kick.notify_all()

    async def _take(self) -> tuple[OutboxItem, bool]:
        """The next claimed report, once the breaker lets one more go out; True if it
        goes out as the breaker's probe."""
        async with self._workers_kick:
            while True:
                now = self._clock()
                free = self._concurrency - len(self._sending)
                if self._ready and self._breaker.allowance(now, free) > 0:
                    return self._ready.popleft(), self._breaker.start()
                if now < self._breaker.resumes_at():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._breaker.resumes_at() - now):
                            await self._workers_kick.wait()
                else:
                    await self._workers_kick.wait()

    # --- keeper: record and claim ----------------------------------------------------------

    async def _keeper(self) -> None:
        while True:
            try:
                await self._keep()
            except StoreError as exc:  # e.g. the database busy for long: try again soon
                log.error("delivery.store_failed", error=str(exc))
                await asyncio.sleep(IDLE_RECHECK)

    async def _keep(self) -> None:
        while True:
            self._keeper_kick.clear()
            now = self._clock()
            if now >= self._next_deadline_check:
                await self._warn_deadlines(now)
                self._next_deadline_check = now + DEADLINE_CHECK_EVERY
            results, self._finished = self._finished, []
            if self._ready and now < self._breaker.resumes_at():  # paused: give them back
                unsent = list(self._ready)
                self._ready.clear()  # before the await: no worker may take one meanwhile
                try:
                    await self._outbox.hand_back([i.id for i in unsent], now=now, unsent=True)
                except StoreError:
                    self._ready.extendleft(reversed(unsent))  # still claimed: keep them
                    raise
            want = self._wanted(now)
            if want and not results and not await self._due(now):
                want = 0  # nothing to record and nothing due: no write transaction
            claimed = 0
            if results or want:
                try:
                    done = await self._outbox.settle(_by_id(results), now=now, limit=want)
                except StoreError:
                    self._finished[:0] = results  # not recorded: keep them for the next try
                    raise
                for item, outcome in results:  # logged once committed
                    _log(item, outcome, now, done.unrecorded.get(item.id))
                self._ready.extend(done.claimed)
                claimed = len(done.claimed)
                if claimed:
                    async with self._workers_kick:
                        self._workers_kick.notify(claimed)
            if claimed or self._finished:
                continue  # there may be more right away
            await self._idle(now)

    def _wanted(self, now: float) -> int:
        """How many rows to claim: enough to keep every worker busy while the keeper commits."""
        busy = len(self._sending) + len(self._ready)
        if self._breaker.state is not BreakerState.CLOSED:  # one probe, nothing claimed ahead
            return 0 if busy else self._breaker.allowance(now, 1)
        return max(CLAIM_PER_WORKER * self._concurrency - busy, 0)

    async def _due(self, now: float) -> bool:
        due = await self._outbox.next_due()
        return due is not None and due <= now

    async def _idle(self, now: float) -> None:
        timeout = IDLE_RECHECK
        if now < self._breaker.resumes_at():
            timeout = min(timeout, self._breaker.resumes_at() - now)
        elif not self._ready and len(self._sending) < self._concurrency:
            due = await self._outbox.next_due()
            if due is not None:
                timeout = min(timeout, max(due - now, 0.0))
        try:
            async with asyncio.timeout(timeout):
                await self._keeper_kick.wait()
        except TimeoutError:
            pass

    # --- one attempt -----------------------------------------------------------------------

    async def _attempt(self, item: OutboxItem) -> Outcome:
        structlog.contextvars.bind_contextvars(event_id=item.event_id, outbox_id=item.id)
        try:
            result = await self._api.post_report(item.body, idempotency_key=item.idempotency_key)
        except UpstreamError as exc:
            retry_after = exc.retry_after if isinstance(exc, UpstreamUnavailable) else None
            return self._classify(item, None, str(exc), retry_after)
        except Exception as exc:  # a bug must not strand the row in_flight
            log.exception("delivery.unexpected_error")
            return self._classify(item, None, f"internal error: {describe(exc)}", None)
        crashpoint("delivery.sent")
        if 200 <= result.status < 300:
            crashpoint("delivery.answered_2xx")
        retry_after = parse_retry_after(
            result.retry_after, now=self._clock(), cap=self._retry_after_max
        )
        error = f"HTTP {result.status}: {result.body}" if result.status >= 300 else ""
        return self._classify(item, result.status, error, retry_after, result.report_id)

    def _classify(
        self,
        item: OutboxItem,
        status: int | None,
        error: str,
        retry_after: float | None,
        report_id: str | None = None,
    ) -> Outcome:
        return classify(
            status,
            error=error,
            attempt=item.attempts,
            now=self._clock(),
            retry_after=retry_after,
            initial=self._initial,
            maximum=self._max,
            rand=self._rand(),
            report_id=report_id,
        )

    def _hear(self, outcome: Outcome, *, probe: bool, now: float) -> bool:
        """Tell the breaker; True if it moved (paused, probe over, or closed again)."""
        not_before = outcome.next_attempt_at if isinstance(outcome, Retry) else 0.0
        return self._breaker.apply(
            signal_for(outcome, probe=probe), now=now, rand=self._rand(), not_before=not_before
        )

    async def _abandon(self) -> None:
        """At shutdown: record what finished, hand back what was claimed or cut off."""
        now = self._clock()
        results, self._finished = self._finished, []
        unrecorded = await self._outbox.record(_by_id(results), now=now)
        for item, outcome in results:
            _log(item, outcome, now, unrecorded.get(item.id))
        await self._outbox.hand_back(list(self._sending), now=now)
        await self._outbox.hand_back([i.id for i in self._ready], now=now, unsent=True)
        self._sending.clear()
        self._ready.clear()

    async def _warn_deadlines(self, now: float) -> None:
        for item in await self._outbox.pending_before(now + DEADLINE_WARNING):
            log.warning(
                "outbox.month_end_near",
                event_id=item.event_id,
                kind=item.kind,
                outbox_id=item.id,
                hours_left=round(((item.deadline or now) - now) / 3600, 1),
            )


def _by_id(results: list[tuple[OutboxItem, Outcome]]) -> list[tuple[int, Outcome]]:
    return [(item.id, outcome) for item, outcome in results]


def _log(item: OutboxItem, outcome: Outcome, now: float, unrecorded: str | None) -> None:
    """One line per outcome: recorded, or why not. The keeper logs it, outside the worker's
    context, so the event is named here."""
    ids = {"event_id": item.event_id, "kind": item.kind, "outbox_id": item.id}
    if unrecorded is not None:
        log.error(
            "outbox.outcome_not_recorded",
            **ids,
            outcome=type(outcome).__name__.lower(),
            status=outcome.status,
            reason=unrecorded,
        )
        return
    match outcome:
        case Delivered(report_id=report_id):
            log.info("outbox.delivered", **ids, report_id=report_id)
        case Retry(status=status, error=error, next_attempt_at=next_at):
            log.warning(
                "outbox.retry", **ids, status=status, error=error, retry_in=round(next_at - now, 3)
            )
        case Dead(status=status, error=error):
            log.error("outbox.dead", **ids, status=status, error=error)
