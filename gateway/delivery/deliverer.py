"""The delivery loop: claim due reports, POST them, record the outcomes.

Up to ``delivery.concurrency`` requests in flight. Rows are claimed a batch
ahead (``in_flight`` means "claimed by the running gateway"; a crash hands
them back on the next start), so a finished request's slot is refilled at
once instead of waiting for a database commit. Outcomes are recorded in
batches: one transaction for every attempt that finished since the last
write, and a report counts as delivered only once that commit is done.
While the breaker holds delivery back, claimed rows are handed back.
Decisions come from :mod:`gateway.delivery.policy`; this module only loops.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Callable
from typing import Any

import structlog

from gateway.crashpoints import crashpoint
from gateway.delivery.api import ApiClient
from gateway.delivery.policy import (
    Breaker,
    Dead,
    Delivered,
    Outcome,
    Retry,
    classify,
    parse_retry_after,
)
from gateway.errors import UpstreamError, UpstreamUnavailable
from gateway.store.outbox import Outbox, OutboxItem

__all__ = ["Deliverer"]

log = structlog.get_logger("gateway.delivery")

IDLE_RECHECK = 1.0  # seconds: pick up rows queued by other processes (ecgw report submit)
DEADLINE_WARNING = 3 * 86400.0  # warn about reports still pending this close to month end
DEADLINE_CHECK_EVERY = 600.0


class Deliverer:
    def __init__(
        self,
        outbox: Outbox,
        api: ApiClient,
        *,
        concurrency: int,
        backoff_initial: float,
        backoff_max: float,
        retry_after_max: float,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._outbox = outbox
        self._api = api
        self._concurrency = concurrency
        self._initial = backoff_initial
        self._max = backoff_max
        self._retry_after_max = retry_after_max
        self._clock = clock
        self._rand = rand
        self._breaker = Breaker(initial=backoff_initial, maximum=backoff_max)
        self._wake = asyncio.Event()
        self._inflight: dict[asyncio.Task[Outcome], OutboxItem] = {}
        self._ready: collections.deque[OutboxItem] = collections.deque()
        self._next_deadline_check = 0.0

    def wake(self) -> None:
        """Something was queued: look for due reports now."""
        self._wake.set()

    async def run(self) -> None:
        recovered = await self._outbox.recover(now=self._clock())
        if recovered:
            log.warning("outbox.recovered_in_flight", count=recovered)
        try:
            while True:
                await self._step()
        finally:
            await asyncio.shield(self._abandon())

    async def _step(self) -> None:
        now = self._clock()
        if now >= self._next_deadline_check:
            await self._warn_deadlines(now)
            self._next_deadline_check = now + DEADLINE_CHECK_EVERY
        done = [t for t in self._inflight if t.done()]
        results = [(self._inflight.pop(t).id, t.result()) for t in done]
        for _, outcome in results:  # the breaker hears of failures before more are sent
            self._hear(outcome, now)
        if self._ready and self._breaker.failures:
            await self._outbox.hand_back([i.id for i in self._ready], now=now, unsent=True)
            self._ready.clear()
        self._start(now)
        claimed = 0
        want = self._wanted(now)
        if want and not await self._due(now):
            want = 0
        if results or want:
            items = await self._outbox.settle(results, now=now, limit=want)
            for item_id, outcome in results:  # logged once committed
                self._log(item_id, outcome, now)
            self._ready.extend(items)
            claimed = len(items)
            self._start(now)
        await self._wait(now, claimed=claimed)

    def _wanted(self, now: float) -> int:
        """How many rows to claim: enough to keep every slot busy and one batch ready."""
        if self._breaker.failures:  # probing: one at a time, nothing claimed ahead
            return self._breaker.allowance(now, self._concurrency - len(self._inflight))
        return max(2 * self._concurrency - len(self._inflight) - len(self._ready), 0)

    def _start(self, now: float) -> None:
        allowed = self._breaker.allowance(now, self._concurrency - len(self._inflight))
        started = 0
        while self._ready and started < allowed:
            item = self._ready.popleft()
            task = asyncio.create_task(self._attempt(item), name=f"deliver:{item.id}")
            self._inflight[task] = item
            started += 1
        self._breaker.started(started)

    async def _due(self, now: float) -> bool:
        due = await self._outbox.next_due()
        return due is not None and due <= now

    async def _wait(self, now: float, *, claimed: int) -> None:
        if claimed and not self._breaker.failures:
            return  # there may be more due right away
        timeout = IDLE_RECHECK
        if now < self._breaker.resumes_at():
            timeout = self._breaker.resumes_at() - now
        elif len(self._inflight) < self._concurrency:
            due = await self._outbox.next_due()
            if due is not None:
                timeout = min(timeout, max(due - now, 0.0))
        self._wake.clear()
        wake = asyncio.ensure_future(self._wake.wait())
        waiters: set[asyncio.Future[Any]] = {wake, *self._inflight}
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()

    def _hear(self, outcome: Outcome, now: float) -> None:
        match outcome:
            case Delivered():
                self._breaker.succeeded()
            case Retry(next_attempt_at=next_at):
                self._breaker.failed(now=now, rand=self._rand(), not_before=next_at)
            case _:
                pass  # a rejection says the API is up; it neither opens nor closes the breaker

    def _log(self, item_id: int, outcome: Outcome, now: float) -> None:
        match outcome:
            case Delivered(report_id=report_id):
                log.info("outbox.delivered", outbox_id=item_id, report_id=report_id)
            case Retry(status=status, error=error, next_attempt_at=next_at):
                log.warning(
                    "outbox.retry",
                    outbox_id=item_id,
                    status=status,
                    error=error,
                    retry_in=round(next_at - now, 3),
                )
            case Dead(status=status, error=error):
                log.error("outbox.dead", outbox_id=item_id, status=status, error=error)

    async def _attempt(self, item: OutboxItem) -> Outcome:
        structlog.contextvars.bind_contextvars(event_id=item.event_id, outbox_id=item.id)
        try:
            result = await self._api.post_report(item.body, idempotency_key=item.idempotency_key)
        except UpstreamError as exc:
            retry_after = exc.retry_after if isinstance(exc, UpstreamUnavailable) else None
            return self._classify(item, None, str(exc), retry_after)
        except Exception as exc:  # a bug must not strand the row in_flight
            log.exception("delivery.unexpected_error")
            return self._classify(item, None, f"internal error: {type(exc).__name__}", None)
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

    async def _abandon(self) -> None:
        """At shutdown: stop the attempts in flight and hand their rows back."""
        tasks = list(self._inflight)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        finished = [
            (self._inflight[t].id, t.result())
            for t in tasks
            if not t.cancelled() and t.exception() is None
        ]
        await self._outbox.record(finished, now=self._clock())
        now = self._clock()
        await self._outbox.hand_back([item.id for item in self._inflight.values()], now=now)
        await self._outbox.hand_back([item.id for item in self._ready], now=now, unsent=True)
        self._inflight.clear()
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
