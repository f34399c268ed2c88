"""The hub (``ecgw hub run``) end to end: a real Mosquitto, the sandbox API, real SQLite.

The sites here are bare MQTT clients (what a site's link would publish and read), so each
test checks the hub alone: which topics an event reaches, cut to which targets; which
reports reach the sandbox, and what each site is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import msgspec
import pytest

from gateway.fleet.acl import acl_file
from gateway.fleet.messages import HubAck, SiteReport, decode_ack, encode_message
from gateway.fleet.topics import Topics
from gateway.hub_app import HubGateway
from gateway.sandbox import Sandbox, run_sandbox
from gateway.sandbox.client import api_post
from gateway.sandbox.faults import Fault
from tests.kit.gateway import make_config, sandbox_config, toml, wait_until
from tests.kit.mosquitto import Mosquitto, free_port
from tests.kit.proc import ecgw, offline_config, start_ecgw

pytestmark = pytest.mark.slow

SECRET = "hub-webhook-secret"
TOPICS = Topics()
USERS = {"ecgw-hub": "hub-pw", "site-a": "a-pw", "site-b": "b-pw", "site-c": "c-pw"}
SITES = [
    {"site_id": "site-a", "resources": ["r-a1", "r-a2"], "locations": ["loc-a"]},
    {"site_id": "site-b", "resources": ["r-b1"], "locations": ["loc-b"]},
    {"site_id": "site-c", "resources": ["r-c1"], "locations": ["loc-c"]},
]


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox() as sb:
        yield sb


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    sites_ = [s["site_id"] for s in SITES]
    rules = acl_file(TOPICS, sites_, hub_user="ecgw-hub")  # what `ecgw hub acl` prints
    async with Mosquitto.running(tmp_path / "broker", users=USERS, acl=rules) as mosquitto:
        yield mosquitto


def hub_config(sandbox: Sandbox, broker: Mosquitto, tmp_path: Path) -> dict[str, Any]:
    password = tmp_path / "hub-broker-password"
    password.write_text(USERS["ecgw-hub"] + "\n")
    return sandbox_config(
        sandbox,
        tmp_path / "hub",
        delivery={"timeout": "2s"},
        extra={
            "webhook": {
                "listen": f"127.0.0.1:{free_port()}",
                "path": "/notify",
                "secret": SECRET,
            },
            "hub": {
                "url": broker.url,
                "username": "ecgw-hub",
                "password_file": str(password),
                "client_id": "hub-test",
                "sites": SITES,
            },
        },
    )


@contextlib.asynccontextmanager
async def running_hub(data: dict[str, Any]) -> AsyncIterator[HubGateway]:
    hub = HubGateway(make_config(data))
    task = asyncio.create_task(hub.run(), name="hub-under-test")
    ready = asyncio.create_task(hub.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()
    try:
        yield hub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class FakeSite:
    """A site's side of the broker: what arrives on its events and acks topics."""

    def __init__(self, client: aiomqtt.Client, site_id: str, *, answer: bool) -> None:
        self.client = client
        self.site_id = site_id
        self.answer = answer
        self.events: list[dict[str, Any]] = []
        self.acks: list[HubAck] = []

    async def listen(self) -> None:
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            if not str(message.topic).endswith("/events"):
                self.acks.append(decode_ack(message.payload))
                continue
            event = json.loads(message.payload)
            self.events.append(event)
            if self.answer:  # a report for each of its targets' resources
                targets = event["payload"]["targets"]
                body = usage(event["id"], targets[0]["resourceId"], targets[0]["locationId"])
                await self.report(event["id"], body)

    async def report(self, event_id: str, body: dict[str, Any], kind: str = "EnergyUsage") -> None:
        raw = json.dumps(body, separators=(",", ":")).encode()
        report = SiteReport(event_id, kind, msgspec.Raw(raw))
        await self.client.publish(TOPICS.reports(self.site_id), encode_message(report), qos=1)


@contextlib.asynccontextmanager
async def sites(
    broker: Mosquitto, *, answer: bool = False, only: frozenset[str] | None = None
) -> AsyncIterator[dict[str, FakeSite]]:
    """The sites (``only`` those named), each connected, subscribed, then ``online`` as
    the real site link says it."""
    async with contextlib.AsyncExitStack() as stack:
        found: dict[str, FakeSite] = {}
        tasks = []
        for entry in SITES:
            site_id = entry["site_id"]
            assert isinstance(site_id, str)
            if only is not None and site_id not in only:
                continue
            client = await stack.enter_async_context(
                aiomqtt.Client(
                    broker.host,
                    broker.port,
                    identifier=site_id,
                    clean_session=False,
                    username=site_id,
                    password=USERS[site_id],
                )
            )
            await client.subscribe([(TOPICS.events(site_id), 1), (TOPICS.acks(site_id), 1)])
            await client.publish(TOPICS.status(site_id), b"online", qos=1, retain=True)
            found[site_id] = site = FakeSite(client, site_id, answer=answer)
            tasks.append(asyncio.create_task(site.listen()))
        try:
            yield found
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def register_webhook(sandbox: Sandbox, url: str) -> None:
    async with aiohttp.ClientSession() as session:
        await api_post(
            session, sandbox, "/webhooks", {"webhookUrl": url, "webhookSecret": SECRET, "name": "h"}
        )


def price_curve(*resources: str) -> dict[str, Any]:
    return {
        "payloadType": "PriceCurve",
        "priceArea": "NO5",
        "targets": [{"resourceId": r, "locationId": f"loc-{r[2]}"} for r in resources],
        "priceCurveDelta": {
            "points": [{"timestamp": "2026-11-26T10:00:00Z", "price": 0.5}],
            "energyUnit": "kWh",
            "currency": "NOK",
            "resolution": "01:00:00",
        },
    }


def usage(event_id: str, resource: str, location: str) -> dict[str, Any]:
    return {
        "eventId": event_id,
        "payloads": [
            {
                "payloadType": "EnergyUsage",
                "resourceId": resource,
                "locationId": location,
                "resolution": "01:00:00",
                "points": [{"timestamp": "2026-11-26T10:00:00Z", "kiloWattHours": 1.5}],
            }
        ],
    }


def plan_state(db: Path, event_id: str) -> tuple[str, str | None] | None:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute(
            "SELECT plan_state, plan_note FROM events WHERE event_id = ?", (event_id,)
        ).fetchone()
    return None if row is None else (row[0], row[1])


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return list(conn.execute(sql).fetchall())


async def settled(db: Path, event_id: str) -> tuple[str, str | None]:
    async def done() -> bool:
        state = plan_state(db, event_id)
        return state is not None and state[0] != "new"

    await wait_until(done, timeout=15)
    state = plan_state(db, event_id)
    assert state is not None
    return state


async def test_events_reach_exactly_the_owning_sites(
    sandbox: Sandbox, broker: Mosquitto, tmp_path: Path
) -> None:
    data = hub_config(sandbox, broker, tmp_path)
    snooped: list[aiomqtt.Message] = []
    async with (
        sites(broker) as fleet,
        running_hub(data) as hub,
        aiomqtt.Client(
            broker.host, broker.port, identifier="snoop", username="site-c", password="c-pw"
        ) as snoop,
    ):
        await snoop.subscribe(TOPICS.events("site-a"), qos=1)  # the ACL refuses it
        snooping = asyncio.create_task(_collect(snoop, snooped))
        assert hub.webhook_url is not None
        await register_webhook(sandbox, hub.webhook_url)
        db = hub.config.db_path
        shared = await sandbox.create_event(price_curve("r-a1", "r-b1", "r-x9", "r-a2"))
        lonely = await sandbox.create_event(price_curve("r-x8"))

        assert await settled(db, shared["id"]) == ("routed", "to site-a, site-b")
        assert await settled(db, lonely["id"]) == (
            "unrouted",
            "no site owns any of its targets: kept, not sent",
        )
        await wait_until(
            lambda: _true(fleet["site-a"].events and fleet["site-b"].events), timeout=10
        )
        await asyncio.sleep(0.5)  # nothing more may follow
        snooping.cancel()
    assert snooped == []  # site-c could not read site-a's events
    assert [e["id"] for e in fleet["site-a"].events] == [shared["id"]]
    assert [e["id"] for e in fleet["site-b"].events] == [shared["id"]]
    assert fleet["site-c"].events == []
    mine_a = [t["resourceId"] for t in fleet["site-a"].events[0]["payload"]["targets"]]
    mine_b = [t["resourceId"] for t in fleet["site-b"].events[0]["payload"]["targets"]]
    assert mine_a == ["r-a1", "r-a2"]
    assert mine_b == ["r-b1"]
    sent_at = fleet["site-a"].events[0]["createdAt"]
    assert dt.datetime.fromisoformat(sent_at) == dt.datetime.fromisoformat(shared["createdAt"])
    assert (
        fleet["site-a"].events[0]["payload"]["priceCurveDelta"]
        == (shared["payload"]["priceCurveDelta"])
    )
    routes = rows(db, "SELECT event_id, site_id FROM fleet_routes ORDER BY site_id")
    assert routes == [(shared["id"], "site-a"), (shared["id"], "site-b")]


async def _collect(client: aiomqtt.Client, into: list[aiomqtt.Message]) -> None:
    async for message in client.messages:
        into.append(message)


async def _true(value: object) -> bool:
    return bool(value)


async def test_site_reports_reach_spark_once_and_are_answered(
    sandbox: Sandbox, broker: Mosquitto, tmp_path: Path
) -> None:
    data = hub_config(sandbox, broker, tmp_path)
    data["admin"] = {"listen": "127.0.0.1:0"}
    async with sites(broker) as fleet, running_hub(data) as hub:
        assert hub.webhook_url is not None
        await register_webhook(sandbox, hub.webhook_url)
        db = hub.config.db_path
        event = await sandbox.create_event(price_curve("r-a1", "r-b1"))
        await settled(db, event["id"])
        a, b = fleet["site-a"], fleet["site-b"]
        await a.client.publish(TOPICS.status("site-a"), b"online", qos=1, retain=True)

        # a good report: queued, posted once, answered with Spark's report id
        await a.report(event["id"], usage(event["id"], "r-a1", "loc-a"))
        await wait_until(lambda: _true(a.acks), timeout=15)
        assert len(sandbox.reports) == 1
        assert a.acks == [
            HubAck(event["id"], "EnergyUsage", "delivered", report_id=sandbox.reports[0].id)
        ]
        assert sandbox.reports[0].body == usage(event["id"], "r-a1", "loc-a")

        # site-b names site-a's resource: rejected at once, never posted
        await b.report(event["id"], usage(event["id"], "r-a1", "loc-a"))
        await wait_until(lambda: _true(b.acks), timeout=10)
        assert b.acks[0].outcome == "rejected"
        assert b.acks[0].status == 403
        assert "resource 'r-a1' is not this site's" in (b.acks[0].reason or "")

        # site-c reports for an event never routed to it: rejected
        c = fleet["site-c"]
        await c.report(event["id"], usage(event["id"], "r-c1", "loc-c"))
        await wait_until(lambda: _true(c.acks), timeout=10)
        assert (c.acks[0].outcome, c.acks[0].status) == ("rejected", 403)
        assert "was not routed to site 'site-c'" in (c.acks[0].reason or "")

        # a report that does not decode: answered 400 naming the problem, never posted
        broken = json.dumps({"eventId": event["id"], "kind": "EnergyUsage", "body": {}})
        await b.client.publish(TOPICS.reports("site-b"), broken.encode(), qos=1)
        await wait_until(lambda: _true(len(b.acks) == 2), timeout=10)
        assert (b.acks[1].outcome, b.acks[1].status) == ("rejected", 400)
        assert b.acks[1].reason == "report request: required key missing at eventId"
        del b.acks[1]

        # the delivered report again: answered again, not posted again
        await a.report(event["id"], usage(event["id"], "r-a1", "loc-a"))
        await wait_until(lambda: _true(len(a.acks) == 2), timeout=10)
        assert a.acks[1] == a.acks[0]

        # Spark refuses a report: the site is answered with Spark's status and error
        sandbox.add_faults(Fault(status=422, body='"meterPointId: unknown"'))
        location_usage = {
            "eventId": event["id"],
            "payloads": [
                {
                    "payloadType": "LocationEnergyUsage",
                    "locationId": "loc-a",
                    "meterPointId": "mp-a",
                    "resolution": "01:00:00",
                    "points": [{"timestamp": "2026-11-26T10:00:00Z", "kiloWattHours": 2.0}],
                }
            ],
        }
        await a.report(event["id"], location_usage, kind="LocationEnergyUsage")
        await wait_until(lambda: _true(len(a.acks) == 3), timeout=15)
        assert (a.acks[2].event_id, a.acks[2].kind) == (event["id"], "LocationEnergyUsage")
        assert (a.acks[2].outcome, a.acks[2].status) == ("rejected", 422)
        assert "meterPointId: unknown" in (a.acks[2].reason or "")

        # site-b's own report: its own row (same event, same kind as site-a's)
        await b.report(event["id"], usage(event["id"], "r-b1", "loc-b"))
        await wait_until(lambda: _true(len(b.acks) == 2), timeout=15)
        assert b.acks[1].outcome == "delivered"
        await asyncio.sleep(0.5)
        url = f"{hub.admin_url}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            metrics = await response.text()
    for line in (
        "ecgw_hub_sites_online 3.0",  # each says online as it connects (sites())
        'ecgw_hub_events_total{outcome="routed"} 1.0',
        'ecgw_hub_site_reports_total{outcome="accepted"} 3.0',
        'ecgw_hub_site_reports_total{outcome="rejected"} 3.0',
        "ecgw_hub_answers_owed 0.0",
    ):
        assert line in metrics.splitlines(), line
    assert len(sandbox.reports) == 2
    assert b.acks[1].report_id == sandbox.reports[1].id
    assert not any(r.duplicate for r in sandbox.reports)
    sources = rows(db, "SELECT source, state FROM outbox ORDER BY id")
    assert sources == [
        ("site:site-a", "delivered"),
        ("site:site-a", "dead"),
        ("site:site-b", "delivered"),
    ]
    owed = rows(db, "SELECT COUNT(*) FROM fleet_answers WHERE answered_at IS NULL")
    assert owed == [(0,)]
    seen = rows(db, "SELECT site_id, online FROM fleet_seen ORDER BY site_id")
    assert seen == [("site-a", 1), ("site-b", 1), ("site-c", 1)]


def hub_toml(data: dict[str, Any]) -> str:
    """``data`` as TOML: tests.kit's writer for the plain tables, ``[hub]`` by hand."""
    hub = dict(data["hub"])
    plain = toml({k: v for k, v in data.items() if k != "hub"})
    sites_ = hub.pop("sites")
    text = plain + "[hub]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in hub.items())
    for site in sites_:
        text += "[[hub.sites]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in site.items())
    return text


async def test_hub_killed_while_reports_flow(
    sandbox: Sandbox, broker: Mosquitto, tmp_path: Path
) -> None:
    """kill -9 of ``ecgw hub run`` while sites' reports flow: after a restart every report
    reaches the sandbox once (repeats carry the same Idempotency-Key) and every site is
    answered with Spark's report id."""
    data = hub_config(sandbox, broker, tmp_path)
    path = tmp_path / "hub.toml"
    path.write_text(hub_toml(data))
    config = make_config(data)
    assert config.webhook is not None
    db = config.db_path
    count = 12
    sandbox.add_faults(Fault(delay=0.15, count=2 * count))  # slow: the kill lands mid-flow
    async with sites(broker, answer=True) as fleet:
        proc = await start_ecgw("hub", "run", config=path, log=tmp_path / "hub.log")
        try:
            await wait_until(lambda: _true(_count(db, "fleet_sites") == 3), timeout=30)
            hook = f"http://{config.webhook.listen}{config.webhook.path}"
            await register_webhook(sandbox, hook)
            events = [await sandbox.create_event(price_curve("r-a1", "r-b1")) for _ in range(count)]
            await wait_until(lambda: _true(_count(db, "outbox") >= 4), timeout=30)
            await wait_until(lambda: _true(_acks(fleet) >= 2), timeout=30)
        finally:
            await kill9(proc)
        answered_before = _acks(fleet)
        proc = await start_ecgw("hub", "run", config=path, log=tmp_path / "hub.log")
        try:
            await wait_until(lambda: _true(_answered_all(fleet, count)), timeout=60)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), timeout=15) == 0
    assert answered_before < 2 * count  # the kill came while reports were flowing
    outbox = rows(db, "SELECT idempotency_key, state FROM outbox")
    assert len(outbox) == 2 * count
    assert {state for _, state in outbox} == {"delivered"}
    fresh = [r.idempotency_key for r in sandbox.reports if not r.duplicate]
    assert sorted(fresh) == sorted(key for key, _ in outbox)  # each accepted once
    spark_ids = {
        (r.event_id, r.body["payloads"][0]["resourceId"]): r.id
        for r in sandbox.reports
        if not r.duplicate
    }
    for site_id, resource in (("site-a", "r-a1"), ("site-b", "r-b1")):
        for ack in fleet[site_id].acks:
            assert ack.outcome == "delivered"
            assert ack.report_id == spark_ids[(ack.event_id, resource)]
        assert {a.event_id for a in fleet[site_id].acks} == {e["id"] for e in events}
    assert fleet["site-c"].events == []
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]


async def test_hub_killed_between_publish_and_route_record(
    sandbox: Sandbox, broker: Mosquitto, tmp_path: Path
) -> None:
    """The hub dies after the broker took an event for a site and before it recorded the
    route; the site answers meanwhile. After the restart its report is accepted (the site
    owns the event's target), not rejected as unrouted, and reaches the sandbox once."""
    data = hub_config(sandbox, broker, tmp_path)
    path = tmp_path / "hub.toml"
    path.write_text(hub_toml(data))
    config = make_config(data)
    assert config.webhook is not None
    db = config.db_path
    async with sites(broker, answer=True) as fleet:
        crash = {"ECGW_CRASH_AT": "hub.published"}
        proc = await start_ecgw("hub", "run", config=path, env=crash, log=tmp_path / "hub.log")
        try:
            await wait_until(lambda: _true(_count(db, "fleet_sites") == 3), timeout=30)
            hook = f"http://{config.webhook.listen}{config.webhook.path}"
            await register_webhook(sandbox, hook)
            event = await sandbox.create_event(price_curve("r-a1"))
            assert await asyncio.wait_for(proc.wait(), timeout=30) == -signal.SIGKILL
        finally:
            await kill9(proc)
        assert _count(db, "fleet_routes") == 0
        await wait_until(lambda: _true(fleet["site-a"].events), timeout=10)  # it answers
        proc = await start_ecgw("hub", "run", config=path, log=tmp_path / "hub.log")
        try:
            await wait_until(lambda: _true(fleet["site-a"].acks), timeout=30)
            await asyncio.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), timeout=15) == 0
    assert {(a.event_id, a.outcome) for a in fleet["site-a"].acks} == {(event["id"], "delivered")}
    assert [r.event_id for r in sandbox.reports if not r.duplicate] == [event["id"]]
    assert plan_state(db, event["id"]) == ("routed", "to site-a")


def _count(db: Path, table: str) -> int:
    if not db.exists():
        return 0
    try:
        return int(rows(db, f"SELECT COUNT(*) FROM {table}")[0][0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def _acks(fleet: dict[str, FakeSite]) -> int:
    return sum(len(site.acks) for site in fleet.values())


def _answered_all(fleet: dict[str, FakeSite], count: int) -> bool:
    return all(len({a.event_id for a in fleet[s].acks}) == count for s in ("site-a", "site-b"))


async def kill9(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
    await proc.wait()


def test_hub_run_without_a_hub_table_is_one_line(tmp_path: Path) -> None:
    done = ecgw("hub", "run", config=offline_config(tmp_path))
    assert done.returncode == 2
    assert done.stderr == "ecgw: error: hub: ecgw hub needs a [hub] table (docs/fleet.md)\n"


async def test_hub_connects_again_after_the_broker_restarts(
    sandbox: Sandbox, broker: Mosquitto, tmp_path: Path
) -> None:
    """The broker goes away (and comes back with no memory): events that arrive meanwhile
    wait in the inbox, and are routed once the hub has connected again."""
    data = hub_config(sandbox, broker, tmp_path)
    async with running_hub(data) as hub:
        assert hub.webhook_url is not None
        await register_webhook(sandbox, hub.webhook_url)
        db = hub.config.db_path
        async with sites(broker, only=frozenset({"site-a"})):  # heard from: events go to it
            seen = "SELECT online FROM fleet_seen WHERE site_id = 'site-a'"
            await wait_until(lambda: _true(rows(db, seen) == [(1,)]), timeout=10)
        await broker.stop()
        event = await sandbox.create_event(price_curve("r-a1"))
        await wait_until(lambda: _true(plan_state(db, event["id"]) is not None), timeout=10)
        await asyncio.sleep(0.5)
        assert plan_state(db, event["id"]) == ("new", None)  # not routed: no broker
        await broker.start()
        assert await settled(db, event["id"]) == ("routed", "to site-a")
    # published and PUBACKed by the new broker (whether an offline site gets it depends on
    # the broker keeping its session: this one has no persistence)
    assert rows(db, "SELECT event_id, site_id FROM fleet_routes") == [(event["id"], "site-a")]


async def test_a_site_never_connected_gets_its_event_once_it_first_connects(
    sandbox: Sandbox, broker: Mosquitto, tmp_path: Path
) -> None:
    """The broker drops (and still acknowledges) a message for a client id it has no
    session for: the hub holds the event for a site it has never heard from."""
    data = hub_config(sandbox, broker, tmp_path)
    async with sites(broker, only=frozenset({"site-a"})) as early, running_hub(data) as hub:
        assert hub.webhook_url is not None
        await register_webhook(sandbox, hub.webhook_url)
        db = hub.config.db_path
        event = await sandbox.create_event(price_curve("r-a1", "r-b1"))
        waiting = ("new", "waiting for the first connection of site-b")
        await wait_until(lambda: _true(plan_state(db, event["id"]) == waiting), timeout=15)
        await wait_until(lambda: _true(early["site-a"].events), timeout=10)
        assert rows(db, "SELECT site_id FROM fleet_routes") == [("site-a",)]
        async with sites(broker, only=frozenset({"site-b"})) as late:
            assert await settled(db, event["id"]) == ("routed", "to site-a, site-b")
            await wait_until(lambda: _true(late["site-b"].events), timeout=10)
        await asyncio.sleep(0.3)
    assert [e["id"] for e in early["site-a"].events] == [event["id"]]  # once, not again
    assert [t["resourceId"] for t in late["site-b"].events[0]["payload"]["targets"]] == ["r-b1"]
