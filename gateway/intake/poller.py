"""The poller: ``GET /events`` newest first, paging back until it meets known ground.

Each sweep reads pages until it meets an event stamped by an earlier
*complete* sweep (see :mod:`gateway.store.inbox`) or runs out of pages. On the
first start that is the whole history the API offers; afterwards one page is
normally enough. Runs on start and every ``poll.interval``; a failed sweep is
logged and tried again at the next interval (its progress is kept).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from gateway import wire
from gateway.delivery.api import ApiClient
from gateway.errors import StoreError, UpstreamError, WireError
from gateway.store.inbox import Inbox, NewEvent
from gateway.timeutil import format_utc

__all__ = ["Poller", "to_new_event"]

log = structlog.get_logger("gateway.poller")

MAX_PAGES = 100_000  # a guard against a server that never stops giving nextPage


def to_new_event(event: wire.GetEventResponse) -> NewEvent:
    """An inbox record from a polled event.

    A payload that does not decode is still stored (its raw JSON, type
    ``Unreadable``): the planner records why, and nothing is lost.
    """
    try:
        payload_type = wire.payload_type(wire.decode_event_payload(event.payload))
    except WireError as exc:
        log.warning("poll.event_unreadable", event_id=event.id, error=str(exc))
        payload_type = "Unreadable"
    return NewEvent(
        event_id=event.id,
        payload_type=payload_type,
        created_at=format_utc(event.created_at) if event.created_at else None,
        payload=bytes(event.payload),
    )


class Poller:
    def __init__(
        self,
        api: ApiClient,
        inbox: Inbox,
        *,
        interval: float,
        page_size: int,
        on_event: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self._inbox = inbox
        self._interval = interval
        self._page_size = page_size
        self._on_event = on_event
        self._clock = clock

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except UpstreamError as exc:
                log.warning("poll.failed", error=str(exc), status=exc.status)
            except StoreError as exc:  # the sweep's progress so far is kept
                log.error("poll.store_failed", error=str(exc))
            await asyncio.sleep(self._interval)

    async def sweep(self) -> int:
        """One sweep; returns how many new events it stored."""
        sweep = await self._inbox.begin_sweep()
        page: int | None = None
        total = pages = 0
        while pages < MAX_PAGES:
            reply = await self._api.get_events(page=page, page_size=self._page_size)
            pages += 1
            events = [to_new_event(e) for e in reply.events]
            new, met_known = await self._inbox.add_polled_page(
                events, sweep=sweep, at=self._clock()
            )
            total += new
            for event in events:
                self._on_event(event.event_id)
            page = reply.pagination.next_page
            if met_known or page is None or not reply.events:
                break
        await self._inbox.complete_sweep(sweep)
        log.info("poll.swept", sweep=sweep, pages=pages, new=total)
        return total
