"""The site's link to its hub, against a real Mosquitto and a real SQLite file.

The hub is played by a small peer in the test (an aiomqtt client on the same broker):
it publishes events to the site's ``events`` topic and answers the site's reports on its
``acks`` topic when the test says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt
import msgspec
import pytest

from gateway.backoff import Backoff
from gateway.delivery.api import PostResult
from gateway.delivery.deliverer import Deliverer
from gateway.errors import StoreCorrupt, StoreError, UpstreamUnavailable
from gateway.fleet.broker import BrokerSettings, connect, site_will
from gateway.fleet.broker import ack as puback
from gateway.fleet.messages import HubAck, SiteReport, decode_site_report, encode_message
from gateway.fleet.site import HubUpstream, SiteLink, result_of
from gateway.fleet.topics import Topics
from gateway.store.database import open_database
from gateway.store.inbox import Inbox, NewEvent, Via
from gateway.store.outbox import Outbox, OutboxItem
from tests.kit.gateway import report_body
from tests.kit.live import query
from tests.kit.mosquitto import Mosquitto

SITE = "site-a"
TOPICS = Topics()


def polled(event_id: str, resource: str = "r1") -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "createdAt": "2026-12-01T10:00:00Z",
            "payload": {
                "payloadType": "PriceCurve",
                "targets": [{"resourceId": resource, "locationId": "loc-a"}],
                "priceCurveDelta": {
                    "points": [{"price": 0.25, "timestamp": "2026-12-02T00:00:00Z"}],
                    "resolution": "01:00:00",
                },
                "priceArea": "NO1",
            },
        }
    ).encode()


def connect_to(
    broker: Mosquitto,
) -> Callable[[], contextlib.AbstractAsyncContextManager[aiomqtt.Client]]:
    settings = BrokerSettings(broker.host, broker.port, None, None, None, SITE, timeout=5)
    return functools.partial(connect, settings, will=site_will(TOPICS, SITE))


class FakeHub:
    """The hub's side of the broker: publishes events, collects reports, answers them."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.reports: asyncio.Queue[SiteReport] = asyncio.Queue()
        self.status: asyncio.Queue[bytes] = asyncio.Queue()

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, broker: Mosquitto, password: str | None = None
    ) -> AsyncIterator[FakeHub]:
        async with aiomqtt.Client(
            broker.host,
            broker.port,
            identifier="fake-hub",
            username="fake-hub" if password else None,
            password=password,
        ) as client:
            hub = cls(client)
            await client.subscribe(TOPICS.all_reports, qos=1)
            await client.subscribe(TOPICS.all_status, qos=1)
            task = asyncio.create_task(hub._collect())
            try:
                yield hub
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _collect(self) -> None:
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            if message.topic.value == TOPICS.status(SITE):
                self.status.put_nowait(message.payload)
                continue
            report, _ = decode_site_report(message.payload)
            self.reports.put_nowait(report)

    async def online(self, timeout: float = 15.0) -> None:
        """Until the site says it is online (subscribed: events sent now reach it)."""
        async with asyncio.timeout(timeout):
            while await self.status.get() != b"online":
                pass

    async def event(self, raw: bytes) -> None:
        await self.client.publish(TOPICS.events(SITE), raw, qos=1)

    async def answer(self, ack: HubAck) -> None:
        await self.client.publish(TOPICS.acks(SITE), encode_message(ack), qos=1)

    async def next_report(self, timeout: float = 5.0) -> SiteReport:
        async with asyncio.timeout(timeout):
            return await self.reports.get()


class Site:
    """A site's inbox, outbox, link and upstream on one database."""

    def __init__(self, db_path: Path, inbox: Inbox, outbox: Outbox, upstream: HubUpstream) -> None:
        self.db_path = db_path
        self.inbox = inbox
        self.outbox = outbox
        self.upstream = upstream
        self.woken: list[str] = []
        self.link: SiteLink | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls,
        broker: Mosquitto,
        db_path: Path,
        *,
        answer_timeout: float = 5.0,
        ack: Callable[[aiomqtt.Client, aiomqtt.Message], object] = puback,
        inbox: type[Inbox] = Inbox,
    ) -> AsyncIterator[Site]:
        async with open_database(db_path) as db:
            upstream = HubUpstream(topic=TOPICS.reports(SITE), answer_timeout=answer_timeout)
            site = cls(db_path, inbox(db), Outbox(db), upstream)
            link = SiteLink(
                site_id=SITE,
                topics=TOPICS,
                connect=connect_to(broker),
                ack=ack,
                inbox=site.inbox,
                on_event=site.woken.append,
                upstream=upstream,
                backoff=Backoff(0.05, 0.2),
            )
            async with link:
                site.link = link
                async with asyncio.timeout(10):
                    await link.connected.wait()
                yield site

    def events(self) -> list[tuple[str, str, str]]:
        return [
            (row[0], row[1], row[2])
            for row in query(
                self.db_path,
                "SELECT event_id, received_via, plan_state FROM events ORDER BY event_id",
            )
        ]

    @contextlib.asynccontextmanager
    async def delivering(self, *, backoff: float = 0.05) -> AsyncIterator[Deliverer]:
        deliverer = Deliverer(
            self.outbox,
            self.upstream,
            concurrency=1,
            backoff_initial=backoff,
            backoff_max=backoff * 4,
            retry_after_max=1.0,
        )
        task = asyncio.create_task(deliverer.run())
        try:
            yield deliverer
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def row(self, done: Callable[[OutboxItem], bool], timeout: float = 10.0) -> OutboxItem:
        async with asyncio.timeout(timeout):
            while True:
                (row,) = await self.outbox.items()
                if done(row):
                    return row
                await asyncio.sleep(0.02)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - the state is the broker's and the link's
            await asyncio.sleep(0.02)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    async with Mosquitto.running(tmp_path / "broker") as running:
        yield running


async def test_events_land_in_the_inbox_once(broker: Mosquitto, tmp_path: Path) -> None:
    async with FakeHub.running(broker) as hub, Site.running(broker, tmp_path / "s.db") as site:
        await hub.event(polled("e1"))
        await hub.event(polled("e1"))  # again: a duplicate
        await hub.event(b'{"id": "bad-1", "createdAt": "yesterday", "payload": {}}')
        await hub.event(polled("e2"))
        await until(lambda: "e2" in site.woken)  # QoS 1 on one session: in order
        assert site.woken == ["e1", "e2"]
        assert site.events() == [
            ("bad-1", "hub", "invalid"),
            ("e1", "hub", "new"),
            ("e2", "hub", "new"),
        ]
        stored = await site.inbox.get("e1")
        assert stored is not None and stored.payload_type == "PriceCurve"


async def test_an_event_never_acknowledged_is_handed_again_and_stored_once(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """The site stores the event and stops before its PUBACK (as a kill -9 there would):
    the broker keeps it in the site's session and hands it again at the next connection."""
    never: list[int] = []

    def lost_ack(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        never.append(message.mid)

    acked: list[str] = []

    def counting_ack(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        acked.append(message.topic.value)
        puback(client, message)

    db_path = tmp_path / "s.db"
    async with FakeHub.running(broker) as hub:
        async with Site.running(broker, db_path, ack=lost_ack) as site:
            await hub.event(polled("e1"))
            await until(lambda: bool(never))
            assert site.woken == ["e1"]
        async with Site.running(broker, db_path, ack=counting_ack) as site:
            await until(lambda: TOPICS.events(SITE) in acked)
            assert site.woken == []  # a duplicate: stored already, nothing to plan
            assert site.events() == [("e1", "hub", "new")]


class FailsOnce(Inbox):
    """The inbox, whose first commit fails (a full disk, say)."""

    failed = False

    async def add(self, event: NewEvent, *, via: Via, at: float) -> bool:
        if not FailsOnce.failed:
            FailsOnce.failed = True
            raise StoreError("database or disk is full")
        return await super().add(event, via=via, at=at)


async def test_an_event_not_stored_is_not_acknowledged_and_comes_again(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """A failed commit leaves the event without its PUBACK; the link reconnects and the
    broker hands it again, and this time it is stored."""
    async with (
        FakeHub.running(broker) as hub,
        Site.running(broker, tmp_path / "s.db", inbox=FailsOnce) as site,
    ):
        await hub.event(polled("e1"))
        await until(lambda: site.woken == ["e1"])
        assert FailsOnce.failed
        assert site.events() == [("e1", "hub", "new")]


class Corrupt(Inbox):
    async def add(self, event: NewEvent, *, via: Via, at: float) -> bool:
        raise StoreCorrupt("database disk image is malformed")


async def test_a_broken_database_stops_the_link_and_goes_to_on_fatal(
    broker: Mosquitto, tmp_path: Path
) -> None:
    fatal: list[BaseException] = []
    async with FakeHub.running(broker) as hub, open_database(tmp_path / "s.db") as db:
        link = SiteLink(
            site_id=SITE,
            topics=TOPICS,
            connect=connect_to(broker),
            ack=puback,
            inbox=Corrupt(db),
            on_event=lambda event_id: None,
            upstream=HubUpstream(topic=TOPICS.reports(SITE), answer_timeout=1.0),
            backoff=Backoff(0.05, 0.2),
            on_fatal=fatal.append,
        )
        async with link:
            async with asyncio.timeout(10):
                await link.connected.wait()
            await hub.event(polled("e1"))
            await until(lambda: bool(fatal))
            await until(lambda: not link.connected.is_set())
            assert isinstance(fatal[0], StoreCorrupt)
            await asyncio.sleep(0.3)  # it does not come back
            assert not link.connected.is_set() and len(fatal) == 1


async def test_a_report_is_delivered_only_when_the_hub_answers(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with FakeHub.running(broker) as hub, Site.running(broker, tmp_path / "s.db") as site:
        body = report_body("e1", resource="r1")
        await site.outbox.enqueue(
            event_id="e1", kind="EnergyUsage", body=body, source="t", now=time.time()
        )
        async with site.delivering():
            report = await hub.next_report()
            assert (report.event_id, report.kind, bytes(report.body)) == ("e1", "EnergyUsage", body)
            await asyncio.sleep(0.3)  # the hub has not answered: nothing is delivered
            (row,) = await site.outbox.items()
            assert row.state == "in_flight"
            await hub.answer(
                HubAck(event_id="e1", kind="EnergyUsage", outcome="delivered", report_id="rep-9")
            )
            row = await site.row(lambda r: r.state == "delivered")
        assert row.report_id == "rep-9"
        assert row.attempts == 1


async def test_a_rejected_report_goes_dead_with_the_reason(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with FakeHub.running(broker) as hub, Site.running(broker, tmp_path / "s.db") as site:
        await site.outbox.enqueue(
            event_id="e1", kind="EnergyUsage", body=report_body("e1"), source="t", now=time.time()
        )
        async with site.delivering():
            await hub.next_report()
            await hub.answer(
                HubAck(
                    event_id="e1",
                    kind="EnergyUsage",
                    outcome="rejected",
                    status=403,
                    reason="resource res-1 is not site-a's",
                )
            )
            row = await site.row(lambda r: r.state == "dead")
        assert row.last_status == 403
        assert "resource res-1 is not site-a's" in (row.last_error or "")


async def test_no_answer_is_retried_and_delivered_once_the_hub_answers(
    broker: Mosquitto, tmp_path: Path
) -> None:
    site_db = tmp_path / "s.db"
    async with (
        FakeHub.running(broker) as hub,
        Site.running(broker, site_db, answer_timeout=0.3) as site,
    ):
        await site.outbox.enqueue(
            event_id="e1", kind="EnergyUsage", body=report_body("e1"), source="t", now=time.time()
        )
        async with site.delivering():
            await hub.next_report()  # first attempt: no answer
            row = await site.row(lambda r: r.attempts >= 1 and r.state == "pending")
            assert "no answer from the hub" in (row.last_error or "")
            again = await hub.next_report()  # the retry publishes the same report
            assert again.event_id == "e1"
            await hub.answer(
                HubAck(event_id="e1", kind="EnergyUsage", outcome="delivered", report_id="rep-1")
            )
            row = await site.row(lambda r: r.state == "delivered")
        assert row.report_id == "rep-1"
        assert row.attempts >= 2


async def test_with_the_broker_down_a_report_is_retried_later(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with Site.running(broker, tmp_path / "s.db") as site:
        assert site.link is not None
        await broker.stop()
        await until(lambda: not site.link.connected.is_set())  # type: ignore[union-attr]
        with pytest.raises(UpstreamUnavailable, match="not connected"):
            await site.upstream.post_report(report_body("e1"), idempotency_key="k")
        await broker.start()  # same port: the link comes back by itself
        async with asyncio.timeout(15):
            await site.link.connected.wait()


async def retained_status(broker: Mosquitto) -> bytes:
    async with aiomqtt.Client(broker.host, broker.port, identifier="status-reader") as client:
        await client.subscribe(TOPICS.status(SITE), qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert message.retain and isinstance(message.payload, bytes)
                return message.payload
    raise AssertionError("no retained status")


async def test_the_site_says_online_and_at_a_clean_stop_offline(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with Site.running(broker, tmp_path / "s.db"):
        assert await retained_status(broker) == b"online"
    assert await retained_status(broker) == b"offline"


# --- HubUpstream without a broker: the publish is a list ----------------------------------


def upstream_with(sent: list[bytes], timeout: float = 0.2, kept: int = 4) -> HubUpstream:
    upstream = HubUpstream(topic="t", answer_timeout=timeout, kept_answers=kept)

    async def publish(topic: str, payload: bytes) -> None:
        sent.append(payload)

    upstream.use(publish)
    return upstream


def delivered(event_id: str, report_id: str = "rep") -> HubAck:
    return HubAck(event_id=event_id, kind="EnergyUsage", outcome="delivered", report_id=report_id)


async def test_an_answer_nobody_waits_for_is_kept_for_the_next_attempt() -> None:
    sent: list[bytes] = []
    upstream = upstream_with(sent)
    with pytest.raises(UpstreamUnavailable, match="no answer"):
        await upstream.post_report(report_body("e1"), idempotency_key="k")
    upstream.hear(delivered("e1", "rep-late"))  # arrives after the attempt gave up
    result = await upstream.post_report(report_body("e1"), idempotency_key="k")
    assert (result.status, result.report_id) == (200, "rep-late")
    assert len(sent) == 1  # the answer was there: not published again
    assert upstream.kept == 0


async def test_an_answer_to_a_report_never_published_is_not_kept() -> None:
    """An answer for a report this site has not sent (another client on the site's
    credentials, or an answer meant for an attempt before a restart) decides nothing: the
    report is published when it is due and waits for its own answer."""
    sent: list[bytes] = []
    upstream = upstream_with(sent, timeout=0.05)
    upstream.hear(
        HubAck(event_id="e1", kind="EnergyUsage", outcome="rejected", status=403, reason="no")
    )
    assert upstream.kept == 0
    with pytest.raises(UpstreamUnavailable, match="no answer"):
        await upstream.post_report(report_body("e1"), idempotency_key="k")
    assert len(sent) == 1


async def test_kept_answers_are_bounded_oldest_first() -> None:
    upstream = upstream_with([], timeout=0.02, kept=2)
    for n in range(3):  # published, no answer in time
        with pytest.raises(UpstreamUnavailable, match="no answer"):
            await upstream.post_report(report_body(f"e{n}"), idempotency_key="k")
    for n in range(3):
        upstream.hear(delivered(f"e{n}"))
    assert upstream.kept == 2
    with pytest.raises(UpstreamUnavailable):  # e0's answer was dropped: published, no answer
        await upstream.post_report(report_body("e0"), idempotency_key="k")
    assert (await upstream.post_report(report_body("e2"), idempotency_key="k")).status == 200


async def test_the_published_report_carries_the_frozen_body() -> None:
    sent: list[bytes] = []
    upstream = upstream_with(sent, timeout=1.0)
    body = report_body("e7", resource="r9")
    attempt = asyncio.create_task(upstream.post_report(body, idempotency_key="k"))
    await until(lambda: bool(sent))
    upstream.hear(delivered("e7", "rep-7"))
    assert (await attempt).report_id == "rep-7"
    report, request = decode_site_report(sent[0])
    assert (report.event_id, report.kind, bytes(report.body)) == ("e7", "EnergyUsage", body)
    assert request.event_id == "e7"


async def test_an_unpublishable_report_is_unavailable() -> None:
    upstream = HubUpstream(topic="t", answer_timeout=1.0)

    async def broken(topic: str, payload: bytes) -> None:
        raise UpstreamUnavailable("publish to the hub's broker: connection lost")

    upstream.use(broken)
    with pytest.raises(UpstreamUnavailable, match="connection lost"):
        await upstream.post_report(report_body("e1"), idempotency_key="k")


@pytest.mark.parametrize(
    ("ack", "expected"),
    [
        (delivered("e1", "rep-1"), PostResult(200, "delivered by the hub", "rep-1", None)),
        (
            HubAck(event_id="e1", kind="K", outcome="rejected", status=409, reason="twice"),
            PostResult(409, "twice", None, None),
        ),
        (
            HubAck(event_id="e1", kind="K", outcome="rejected", reason="not yours"),
            PostResult(422, "rejected by the hub (status None): not yours", None, None),
        ),
        (
            HubAck(event_id="e1", kind="K", outcome="rejected", status=502),
            PostResult(422, "rejected by the hub (status 502): no reason given", None, None),
        ),
    ],
)
def test_what_an_answer_means_to_the_deliverer(ack: HubAck, expected: PostResult) -> None:
    assert result_of(ack) == expected


def test_a_site_report_round_trips() -> None:
    body = report_body("e1")
    raw = encode_message(SiteReport(event_id="e1", kind="EnergyUsage", body=msgspec.Raw(body)))
    report, _ = decode_site_report(raw)
    assert bytes(report.body) == body
