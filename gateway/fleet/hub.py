"""The hub's three loops over one broker connection (docs/fleet.md):

* **router**: each new event in the inbox goes to every site that owns one of its targets
  (``SiteTable.route``), on the site's events topic, QoS 1, up to PUBLISH_WINDOW awaiting
  their PUBACK at once; the routes the broker took are recorded together (one commit), then
  the event is ``routed`` (or ``unrouted``: no site owns any of its
  targets; kept and shown, never sent). Routes not recorded (a crash, the broker gone) are
  published again on the next pass: a site takes a repeat as a duplicate.
* **report intake**: every site's reports through the shared subscription, acknowledged by
  hand, a batch at a time (one message and whatever else is queued): each is checked
  alone, the good ones and the sites heard from are committed together, then all are
  PUBACKed. A report that does not decode, names what is not the site's, or answers an event
  not routed to the site is answered ``rejected`` at once, logged, and never reaches Spark;
  a good one is committed to the outbox (with the answer it is owed) and only then
  PUBACKed. A repeat of a report already delivered or dead is answered again at once.
  Sites' ``status`` messages (and every report) update when each was last heard from.
* **acker**: for each site report whose outbox row is delivered or dead and not yet
  answered, publishes the answer (PUBLISH_WINDOW at once) and marks those the broker
  took answered, one commit per look. Woken after each
  delivery round; it looks every second at least.

The connection is the caller's (``gateway.hub_app``): :meth:`Hub.serve` runs the loops on
one connected client until the connection fails (an ``aiomqtt.MqttError`` leaves it), and
the caller connects again. Nothing here holds state that a reconnect could lose: the next
pass reads it all from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiomqtt
import msgspec
import structlog

from gateway import wire
from gateway.crashpoints import crashpoint
from gateway.errors import WireError
from gateway.fleet.broker import cancel_requests, raise_dropped_cancellation
from gateway.fleet.messages import HubAck, decode_site_report, encode_message, event_message
from gateway.fleet.sites import SiteTable
from gateway.fleet.topics import OFFLINE, ONLINE, Topics
from gateway.store.database import Database
from gateway.store.fleet import UNROUTED, Accepted, FleetStore, OwedAnswer
from gateway.store.inbox import Inbox, InboxEvent
from gateway.store.outbox import Outbox, Round
from gateway.store.outbox_states import Outcome

__all__ = ["Hub", "HubCounts", "NotifyingOutbox"]

log = structlog.get_logger("gateway.fleet.hub")

ACKER_FLOOR = 1.0
"""Seconds between the acker's looks at the store when nothing wakes it."""
ROUTER_FLOOR = 5.0
"""Seconds between router passes when nothing wakes it (an event stored by another process)."""
SITES_FRESH = 5.0
"""Seconds a read of the sites table is used before it is read again (``ecgw hub sites
import`` on a running hub takes effect within this)."""

ANSWERS_PER_LOOK = 500
"""Answers the acker reads from the store at a time."""
PUBLISH_WINDOW = 100
"""Publishes awaiting the broker's PUBACK at once (the router's to many sites, the
acker's answers): the connection's ``max_inflight``."""
OWNERS_KEPT = 64
"""Events whose owners the report intake keeps decoded (see ``Hub._owners``)."""
REPORTS_PER_COMMIT = 500
"""Messages the report intake takes from the queue at once: their reports are
committed together (one fsync), then acknowledged."""
SEEN_EVERY = 5.0
"""Seconds between writes of a site's last seen from its reports."""
UNKNOWN_REPORT_ID = "unknown"
"""The report id a ``delivered`` answer carries when Spark's 2xx named none."""

Ack = Callable[[aiomqtt.Client, aiomqtt.Message], bool]
"""Sends the PUBACK of a message received with manual acknowledgement (False: the
connection is gone, and the broker delivers the message again)."""


@dataclass
class HubCounts:
    """Since the hub started: what the metrics show."""

    routed: int = 0
    unrouted: int = 0
    accepted: int = 0
    rejected: int = 0
    answered: int = 0
    owed: int = 0
    """Answers owed at the acker's last look (delivered or dead, not yet published)."""
    status: dict[str, str] = field(default_factory=dict)
    """Each site's last status: ``online`` or ``offline``."""


class NotifyingOutbox(Outbox):
    """The outbox the hub's deliverer uses: after each recorded round, ``on_settled`` runs
    (the acker looks for answers owed: set it to :meth:`Hub.settled`)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.on_settled: Callable[[], None] = lambda: None

    async def settle(
        self, results: Sequence[tuple[int, Outcome]], *, now: float, limit: int
    ) -> Round:
        done = await super().settle(results, now=now, limit=limit)
        if results:
            self.on_settled()
        return done

    async def record(self, results: Sequence[tuple[int, Outcome]], *, now: float) -> dict[int, str]:
        unrecorded = await super().record(results, now=now)
        if results:
            self.on_settled()
        return unrecorded


def _first(grouped: BaseExceptionGroup[BaseException]) -> BaseException:
    first = grouped.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


def _keys(raw: bytes) -> tuple[str, str] | None:
    """``eventId`` and ``kind`` of a report that does not decode, if it names them."""

    class _Keys(msgspec.Struct, rename="camel"):
        event_id: str
        kind: str

    if wire.too_deep(raw, wire.MAX_DEPTH):  # msgspec would raise RecursionError skipping it
        return None
    try:
        keys = msgspec.json.decode(raw, type=_Keys)
    except msgspec.MsgspecError:
        return None
    if not (0 < len(keys.event_id) <= 256 and 0 < len(keys.kind) <= 256):
        return None
    return keys.event_id, keys.kind


class Hub:
    def __init__(
        self,
        *,
        inbox: Inbox,
        store: FleetStore,
        topics: Topics,
        ack: Ack,
        on_queued: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._inbox = inbox
        self._store = store
        self._topics = topics
        self._ack = ack
        self._on_queued = on_queued
        self._clock = clock
        self._route_kick = asyncio.Event()
        self._answer_kick = asyncio.Event()
        self._table: SiteTable | None = None
        self._table_at = 0.0
        self._seen_at: dict[str, float] = {}
        self._sightings: list[tuple[str, bool | None]] = []
        """Sites heard from in the report intake's batch (status: online or not; a
        report: None), written together before the batch is acknowledged."""
        self._owners: dict[str, frozenset[str]] = {}
        """Per new event whose routes are not all recorded yet, the sites that own one of
        its targets (for the reports that come back before the record); cleared with
        each read of the sites table."""
        self.counts = HubCounts()

    # --- wake-ups ----------------------------------------------------------------------

    def wake(self, event_id: str | None = None) -> None:
        """A new event is in the inbox (the webhook's and the poller's ``on_event``)."""
        del event_id
        self._route_kick.set()

    def settled(self) -> None:
        """The deliverer recorded a round: answers may be owed."""
        self._answer_kick.set()

    @property
    def subscriptions(self) -> list[str]:
        return [self._topics.shared_reports, self._topics.all_status]

    async def sites(self) -> SiteTable:
        """The sites table, read again when older than SITES_FRESH."""
        now = time.monotonic()
        if self._table is None or now - self._table_at >= SITES_FRESH:
            self._table = SiteTable(await self._store.sites())
            self._table_at = now
            self._owners.clear()
        return self._table

    # --- the connection ----------------------------------------------------------------

    async def serve(self, client: aiomqtt.Client) -> None:
        """Subscribe and run the three loops on ``client`` until one fails (a lost
        connection: the caller connects again)."""
        before = cancel_requests()
        await client.subscribe([(topic, 1) for topic in self.subscriptions])
        raise_dropped_cancellation(before)
        log.info("hub.connected", subscriptions=self.subscriptions)
        try:
            async with asyncio.TaskGroup() as loops:
                loops.create_task(self._loop(self._route, client, self._route_kick, ROUTER_FLOOR))
                loops.create_task(self._loop(self._answer, client, self._answer_kick, ACKER_FLOOR))
                loops.create_task(self._take_reports(client))
        except BaseExceptionGroup as grouped:  # the first failure, as itself: a StoreCorrupt
            raise _first(grouped) from None  # stays fatal, a lost connection an MqttError

    async def _loop(
        self,
        work: Callable[[aiomqtt.Client], Awaitable[None]],
        client: aiomqtt.Client,
        kick: asyncio.Event,
        floor: float,
    ) -> None:
        while True:
            kick.clear()
            await work(client)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(floor):
                    await kick.wait()

    # --- router ------------------------------------------------------------------------

    async def route_pass(self, client: aiomqtt.Client) -> None:
        await self._route(client)

    async def _route(self, client: aiomqtt.Client) -> None:
        table = await self.sites()
        seen = set(await self._store.seen())
        for event in await self._inbox.by_plan_state("new"):
            with structlog.contextvars.bound_contextvars(event_id=event.event_id):
                await self._route_one(client, table, event, seen)

    async def _route_one(
        self, client: aiomqtt.Client, table: SiteTable, event: InboxEvent, seen: set[str]
    ) -> None:
        try:
            payload = wire.decode_event_payload(event.payload)
        except WireError as exc:
            await self._inbox.set_plan(event.event_id, "invalid", f"unreadable payload: {exc}")
            log.error("hub.event_unreadable", error=str(exc))
            return
        owners = table.owners(payload)
        if not owners:
            note = "no site owns any of its targets: kept, not sent"
            await self._inbox.set_plan(event.event_id, UNROUTED, note)
            self.counts.unrouted += 1
            log.warning("hub.event_unrouted", payload_type=event.payload_type)
            return
        done = set(await self._store.routes_for(event.event_id))
        # A site never heard from has no session at the broker yet: a message published to
        # it now would be dropped (and still acknowledged). It gets the event once its first
        # status or report has been seen; the event stays ``new`` until then.
        absent = sorted(site for site in owners if site not in seen and site not in done)
        pending = sorted(owners - done - set(absent))
        try:  # cut only when there is a site to send to: an event that waits for a site
            # never connected is looked at on every pass, for as long as it waits
            routes = table.route(payload, event.payload) if pending else {}
        except (msgspec.MsgspecError, KeyError, ValueError, RecursionError) as exc:
            # never stops the router: an event it cannot cut is kept, not retried each pass
            await self._inbox.set_plan(event.event_id, "invalid", f"cannot cut its targets: {exc}")
            log.error("hub.event_unreadable", error=str(exc))
            return
        todo = [(s, routes[s]) for s in pending]
        messages = [
            (self._topics.events(s), event_message(event.event_id, event.created_at, cut))
            for s, cut in todo
        ]
        failed = await self._publish_all(client, messages)  # each awaited to its PUBACK
        if todo:
            crashpoint("hub.published")
        took = [s for (s, _), error in zip(todo, failed, strict=True) if error is None]
        await self._store.record_routes(event.event_id, took, self._clock())  # one commit
        _raise_first(failed)
        sites = sorted(owners)
        if absent:
            note = "waiting for the first connection of " + ", ".join(absent)
            if event.plan_note != note:
                await self._inbox.set_plan(event.event_id, "new", note)
                log.warning("hub.event_waits_for_sites", sites=absent)
            return
        await self._inbox.set_plan(event.event_id, "routed", "to " + ", ".join(sites))
        self.counts.routed += 1
        log.info("hub.event_routed", sites=sites, payload_type=event.payload_type)

    # --- report intake -----------------------------------------------------------------

    async def _take_reports(self, client: aiomqtt.Client) -> None:
        """One message, then whatever else is queued already (up to REPORTS_PER_COMMIT):
        their reports are checked one by one, committed together, then acknowledged."""
        async for message in client.messages:
            batch = [message]
            while len(client.messages) and len(batch) < REPORTS_PER_COMMIT:
                batch.append(await anext(client.messages))
            good: list[_Good] = []
            for each in batch:
                topic = str(each.topic)
                if self._topics.site_of_status(topic) is not None:
                    await self._status(topic, each)
                else:
                    good += await self._report(client, topic, each)
            sightings, self._sightings = self._sightings, []
            await self._accept(client, good, sightings)  # one commit for the batch
            if any(online for _, online in sightings):
                self._route_kick.set()  # events may wait for a site's first connection
            for each in batch:
                if each.qos > 0:
                    self._ack(client, each)  # only now: what it said is committed

    async def _status(self, topic: str, message: aiomqtt.Message) -> None:
        site_id = self._topics.site_of_status(topic)
        raw = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
        if raw not in (ONLINE, OFFLINE) or site_id is None or await self._unknown(site_id):
            log.warning("hub.status_ignored", topic=topic, status=repr(raw[:40]))
            return
        self._sightings.append((site_id, raw == ONLINE))  # committed with the batch
        self.counts.status[site_id] = raw.decode()

    async def _heard(self, site_id: str) -> None:
        """A report from the site, whatever it is worth: its last seen, written at most
        every SEEN_EVERY seconds, with its batch (not one more commit per report)."""
        now = self._clock()
        if now - self._seen_at.get(site_id, -SEEN_EVERY) < SEEN_EVERY:
            return
        if not await self._unknown(site_id):
            self._sightings.append((site_id, None))  # committed with the batch
            self._seen_at[site_id] = now

    async def _unknown(self, site_id: str) -> bool:
        return (await self.sites()).get(site_id) is None

    async def _report(
        self, client: aiomqtt.Client, topic: str, message: aiomqtt.Message
    ) -> list[_Good]:
        """The report, if it passes its checks, to be committed with its batch; else
        answered (if the site may be answered) and logged, and nothing."""
        raw = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
        site_id = self._topics.site_of_report(topic)
        if site_id is None:
            log.error("hub.report_ignored", topic=topic, reason="not a site's reports topic")
            return []
        with structlog.contextvars.bound_contextvars(site=site_id):
            await self._heard(site_id)
            return await self._check(client, site_id, raw)

    async def _check(self, client: aiomqtt.Client, site_id: str, raw: bytes) -> list[_Good]:
        try:
            report, request = decode_site_report(raw)
        except WireError as exc:
            keys = _keys(raw)
            log.error("hub.report_rejected", status=400, reason=str(exc))
            self.counts.rejected += 1
            if keys is not None and not await self._unknown(site_id):
                await self._reject(client, site_id, *keys, status=400, reason=str(exc))
            return []
        table = await self.sites()
        problems = table.foreign(site_id, request)
        if not problems and not await self._routed(table, report.event_id, site_id):
            problems = [f"event {report.event_id!r} was not routed to site {site_id!r}"]
        if problems:
            reason = "; ".join(problems)
            log.error("hub.report_rejected", event_id=report.event_id, status=403, reason=reason)
            self.counts.rejected += 1
            if table.get(site_id) is not None:  # a stranger gets no answer on a site's topic
                await self._reject(
                    client, site_id, report.event_id, report.kind, status=403, reason=reason
                )
            return []
        return [_Good(site_id, report.event_id, report.kind, bytes(report.body))]

    async def _accept(
        self,
        client: aiomqtt.Client,
        good: Sequence[_Good],
        sightings: Sequence[tuple[str, bool | None]],
    ) -> None:
        """Commit the checked reports of a batch and the sites heard from together; answer
        each repeat of a report already delivered or dead at once, and reject one that
        cannot be stored."""
        if not good and not sightings:
            return
        rows = [(g.site_id, g.event_id, g.kind, g.body) for g in good]
        results = await self._store.accept_reports(rows, self._clock(), seen=sightings)
        new = False
        for report, accepted in zip(good, results, strict=True):
            with structlog.contextvars.bound_contextvars(site=report.site_id):
                new |= await self._accepted(client, report, accepted)
        if new:
            self._on_queued()

    async def _accepted(
        self, client: aiomqtt.Client, report: _Good, accepted: Accepted | str
    ) -> bool:
        """Log (and answer, if it is owed an answer now) one report of a committed batch;
        True if it is new in the outbox."""
        site_id, event_id, kind = report.site_id, report.event_id, report.kind
        if isinstance(accepted, str):  # SQLite cannot store it: this report alone fails
            log.error("hub.report_rejected", event_id=event_id, status=400, reason=accepted)
            self.counts.rejected += 1
            await self._reject(client, site_id, event_id, kind, status=400, reason=accepted)
            return False
        if accepted.new:
            self.counts.accepted += 1
            log.info("hub.report_accepted", event_id=event_id, kind=kind)
            return True
        log.info("hub.report_repeated", event_id=event_id, kind=kind, state=accepted.state)
        if accepted.state == "delivered":
            rid = accepted.report_id or UNKNOWN_REPORT_ID
            answer = HubAck(event_id, kind, "delivered", report_id=rid)
            await client.publish(self._topics.acks(site_id), encode_message(answer), qos=1)
        elif accepted.state == "dead":
            await self._reject(
                client,
                site_id,
                event_id,
                kind,
                status=accepted.last_status,
                reason=accepted.last_error or "rejected",
            )
        return False

    async def _routed(self, table: SiteTable, event_id: str, site_id: str) -> bool:
        """Whether the event went to the site: its route is recorded or, if not yet (the
        hub stopped between the broker's PUBACK and the record, and the router has not
        published it again), the event is in the inbox and the site owns one of its
        targets."""
        if await self._store.routed_to(event_id, site_id):
            return True
        event = await self._inbox.get(event_id)
        if event is None or event.plan_state != "new":
            return False
        owners = self._owners.get(event_id)
        if owners is None:  # decoded once per event, not once per report
            try:
                payload = wire.decode_event_payload(event.payload)
            except WireError:
                return False
            if len(self._owners) >= OWNERS_KEPT:
                self._owners.clear()
            owners = self._owners[event_id] = frozenset(table.owners(payload))
        return site_id in owners

    async def _reject(
        self,
        client: aiomqtt.Client,
        site_id: str,
        event_id: str,
        kind: str,
        *,
        status: int | None,
        reason: str,
    ) -> None:
        answer = HubAck(event_id, kind, "rejected", status=status, reason=reason[:2000])
        await client.publish(self._topics.acks(site_id), encode_message(answer), qos=1)

    # --- acker -------------------------------------------------------------------------

    async def _answer(self, client: aiomqtt.Client) -> None:
        """Publish the answers owed, PUBLISH_WINDOW at a time in flight, and mark those
        the broker took in one commit per look."""
        while owed := await self._store.owed_answers(ANSWERS_PER_LOOK):
            self.counts.owed = len(owed)
            answers = [_answer_of(row) for row in owed]
            messages = [
                (self._topics.acks(row.site_id), encode_message(answer))
                for row, answer in zip(owed, answers, strict=True)
            ]
            failed = await self._publish_all(client, messages)
            sent = [(r, a) for r, a, e in zip(owed, answers, failed, strict=True) if e is None]
            await self._store.mark_answered([row.outbox_id for row, _ in sent], self._clock())
            self.counts.answered += len(sent)
            self.counts.owed -= len(sent)
            for row, answer in sent:
                log.info(
                    "hub.report_answered",
                    site=row.site_id,
                    event_id=row.event_id,
                    kind=row.kind,
                    outcome=answer.outcome,
                )
            _raise_first(failed)
        self.counts.owed = 0

    async def _publish_all(
        self, client: aiomqtt.Client, messages: Sequence[tuple[str, bytes]]
    ) -> list[Exception | None]:
        """Publish each ``(topic, payload)`` at QoS 1, up to PUBLISH_WINDOW awaiting their
        PUBACK at once; in order, None for each the broker took, else why not."""
        window = asyncio.Semaphore(PUBLISH_WINDOW)

        async def one(topic: str, payload: bytes) -> None:
            async with window:
                await client.publish(topic, payload, qos=1)

        results = await asyncio.gather(*(one(*m) for m in messages), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # a cancellation is not a failed publish
        return [r if isinstance(r, Exception) else None for r in results]


@dataclass(frozen=True, slots=True)
class _Good:
    """A site's report that passed the checks, waiting for its batch's commit."""

    site_id: str
    event_id: str
    kind: str
    body: bytes


def _answer_of(row: OwedAnswer) -> HubAck:
    if row.state == "delivered":  # Spark's 2xx without an id: say so, not rejected
        rid = row.report_id or UNKNOWN_REPORT_ID
        return HubAck(row.event_id, row.kind, "delivered", report_id=rid)
    return HubAck(
        row.event_id,
        row.kind,
        "rejected",
        status=row.last_status,
        reason=(row.last_error or "rejected by the API")[:2000],
    )


def _raise_first(failed: Sequence[Exception | None]) -> None:
    """After what succeeded is recorded: the first failure (a lost connection) as itself."""
    for error in failed:
        if error is not None:
            raise error
