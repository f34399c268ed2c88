"""The poller: ``GET /events`` newest first, paging back until it meets known ground.

Each sweep reads pages until it meets an event stamped by an earlier
*complete* sweep (see :mod:`gateway.store.inbox`) or runs out of pages. On the
first start that is the whole history the API offers; afterwards one page is
normally enough. Runs on start and every ``poll.interval``; a failed sweep is
logged and tried again at the next interval (its progress is kept).

One bad event fails alone. An event that does not match the contract (an id
that is not a string, an unreadable ``createdAt``, a timestamp or resolution
out of range, nesting too deep) is stored *quarantined*: ``plan_state``
``invalid``, ``plan_note`` the reason, the whole event as it arrived in
``payload``; it is logged once with its id and never planned. An event without
a usable id is kept the same way under ``unreadable:<sha256 of its bytes>``,
so that it is visible in ``ecgw events list`` and stored once however often
it is polled. The other events of the page are stored as usual.

A page that cannot be read at all (not JSON, ``"events": null``) fails the
sweep: logged with the status and reason, tried again next interval. Paging
stops, with a log line and without completing the sweep, when a reply names
another page than the one asked for (``currentPage`` is not ``page``: a server
or cache that ignores ``page``), when ``nextPage`` repeats a page asked for
already, points back or lies beyond ``totalPages``, and when the sweep would go
past its bound: ``totalPages`` as the first reply gave it, plus one (events
arrive newest first, so a page may be added while paging), and never more than
:data:`MAX_SWEEP_EVENTS` events' worth of pages (``ceil(MAX_SWEEP_EVENTS /
page_size)``).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable

import structlog

from gateway import wire
from gateway.delivery.api import ApiClient
from gateway.errors import StoreError, UpstreamError, WireError, describe
from gateway.health import Health
from gateway.store.inbox import Inbox, NewEvent
from gateway.timeutil import format_utc

__all__ = ["QUARANTINED", "Poller", "next_page", "to_new_event"]

log = structlog.get_logger("gateway.poller")

MAX_SWEEP_EVENTS = 1_000_000
"""One sweep reads at most this many events' worth of pages (a server that never stops
giving nextPage); a history longer than this is read over several sweeps' intervals."""
QUARANTINED = "invalid"
"""The ``plan_state`` of an event that arrived broken: kept with its reason, never planned."""
UNREADABLE = "Unreadable"
"""The ``payload_type`` of a quarantined event."""


def to_new_event(raw: bytes) -> NewEvent:
    """An inbox record from one polled event as it arrived: decoded, or quarantined."""
    try:
        event, payload = wire.decode_polled_event(raw)
    except WireError as exc:
        return _quarantined(raw, str(exc))
    return NewEvent(
        event_id=event.id,
        payload_type=wire.payload_type(payload),
        created_at=format_utc(event.created_at) if event.created_at else None,
        payload=bytes(event.payload),
    )


def _quarantined(raw: bytes, reason: str) -> NewEvent:
    event_id = wire.polled_event_id(raw)
    if event_id is None:
        event_id = "unreadable:" + hashlib.sha256(raw).hexdigest()[:32]
        shown = wire.unusable_id_text(raw)
        its = f"its id {shown} is not usable" if shown is not None else "it has no id"
        reason = f"{reason}; {its}, kept under this key"
    return NewEvent(
        event_id=event_id,
        payload_type=UNREADABLE,
        created_at=None,
        payload=raw,
        plan_state=QUARANTINED,
        plan_note=f"quarantined: {reason} (payload holds the event as received)",
    )


def max_pages(page_size: int) -> int:
    """The absolute bound on the pages of one sweep: :data:`MAX_SWEEP_EVENTS` worth."""
    return -(-MAX_SWEEP_EVENTS // max(page_size, 1))


def next_page(
    pagination: wire.Pagination,
    requested: int | None,
    seen: set[int],
    bound: int | None = None,
) -> tuple[int | None, str | None]:
    """The page to read after this one, or ``(None, why)`` when paging must stop early.

    ``(None, None)`` is the normal end. Pages count from 1; ``requested`` is the page
    asked for (``None``: the first, unnamed), ``seen`` holds the pages asked for so far
    and ``bound`` the last page this sweep may ask for.
    """
    answered = pagination.current_page
    if requested is not None and answered is not None and answered != requested:
        return None, f"asked for page {requested}, the reply is page {answered}"
    after = pagination.next_page
    if after is None:
        return None, None
    current = answered or requested or 1
    if after in seen or after == current:
        return None, f"nextPage {after} repeats a page already read"
    if after < current:
        return None, f"nextPage {after} points back from page {current}"
    if pagination.total_pages is not None and after > pagination.total_pages:
        return None, f"nextPage {after} is beyond totalPages {pagination.total_pages}"
    if bound is not None and after > bound:
        return None, f"nextPage {after} is beyond this sweep's bound of {bound} pages"
    return after, None


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
        health: Health | None = None,
    ) -> None:
        self._health = health
        self._api = api
        self._inbox = inbox
        self._interval = interval
        self._page_size = page_size
        self._on_event = on_event
        self._clock = clock

    async def run(self) -> None:
        while True:
            error: str | None = None
            try:
                await self.sweep()
            except UpstreamError as exc:
                log.warning("poll.failed", error=str(exc), status=exc.status)
                error = str(exc)
            except WireError as exc:  # the API client decodes only a 200's body
                log.warning("poll.failed", error=describe(exc), status=200)
                error = describe(exc)
            except StoreError as exc:  # the sweep's progress so far is kept
                log.error("poll.store_failed", error=str(exc))
            if self._health is not None:
                self._health.polled(error)
            await asyncio.sleep(self._interval)

    async def sweep(self) -> int:
        """One sweep; returns how many new events it stored."""
        sweep = await self._inbox.begin_sweep()
        page: int | None = None
        seen: set[int] = set()
        total = pages = 0
        bound = max_pages(self._page_size)
        while True:
            reply = await self._api.get_events(page=page, page_size=self._page_size)
            pages += 1
            seen.add(page or reply.pagination.current_page or 1)  # the page asked for
            if pages == 1 and reply.pagination.total_pages is not None:
                bound = min(bound, max(reply.pagination.total_pages, 1) + 1)
            new, met_known = await self._store_page(reply, sweep)
            total += new
            if met_known or not reply.events:
                break
            page, stop = next_page(reply.pagination, page, seen, bound)
            if stop:
                log.warning("poll.paging_stopped", sweep=sweep, pages=pages, new=total, reason=stop)
                return total  # not complete: the next sweep reads these pages again
            if page is None:
                break
        await self._inbox.complete_sweep(sweep)
        log.info("poll.swept", sweep=sweep, pages=pages, new=total)
        return total

    async def _store_page(self, reply: wire.GetEventsResponse, sweep: int) -> tuple[int, bool]:
        """Store a page; (events stored new, met an event of a complete sweep)."""
        events = [to_new_event(bytes(raw)) for raw in reply.events]
        bad = [e for e in events if e.plan_state == QUARANTINED]
        unseen = [e for e in bad if await self._inbox.get(e.event_id) is None]
        new, met_known = await self._inbox.add_polled_page(events, sweep=sweep, at=self._clock())
        for event in unseen:  # logged once, when first stored
            log.warning("poll.event_quarantined", event_id=event.event_id, reason=event.plan_note)
        for event in events:
            if event.plan_state != QUARANTINED:
                self._on_event(event.event_id)
        return new, met_known
