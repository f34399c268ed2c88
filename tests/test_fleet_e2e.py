"""The fleet end to end, real parts only (issue 11's acceptance tests).

A real Mosquitto with TLS on loopback (a throwaway CA), a password per site and the
access rules ``ecgw hub acl`` printed; the sandbox API; one hub (``ecgw hub run``) and
three sites (``ecgw run`` with ``[upstream] mode = "hub"`` and simulated adapters), each
its own process with its own database. The sandbox pushes each event to the hub's
webhook, signed; each site's inbox is read with ``ecgw events list --json``.

* A PriceCurve for resources at two sites reaches exactly those two; each site's report
  reaches the sandbox once and validates; the third site receives nothing; no site's
  config holds API credentials. A site that reports another site's resource is answered
  ``rejected`` and nothing reaches the sandbox; the ACL keeps a site from reading
  another site's events.
* The broker is down for 30 s while reports are due (and events arrive at the hub): once
  it is back (same port, same config, its sessions kept on disk) nothing is lost and the
  sandbox accepts each report once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import pytest

from gateway import contract
from gateway.fleet.messages import HubAck, SiteReport, decode_ack, encode_message
from gateway.fleet.topics import Topics
from gateway.sandbox import Sandbox, run_sandbox
from tests.kit.gateway import sandbox_config, toml, wait_until
from tests.kit.live import ECGW, GatewayProcess, query
from tests.kit.mosquitto import Mosquitto, TlsFiles, free_port, make_tls_files
from tests.kit.proc import start_ecgw
from tests.test_fleet_hub import SECRET, hub_toml, register_webhook

pytestmark = pytest.mark.slow

TOPICS = Topics()
HUB_USER = "ecgw-hub"
SITES = ("site-a", "site-b", "site-c")
PASSWORDS = {HUB_USER: "hub-broker-pw", "site-a": "a-broker-pw", "site-b": "b-broker-pw"}
PASSWORDS["site-c"] = "c-broker-pw"


@dataclass(frozen=True)
class Owned:
    """What one site owns: one resource at one location with one meter point."""

    resource: str
    location: str
    meter_point: str


OWNED = {
    "site-a": Owned("r-a1", "loc-a", "707057500000000001"),
    "site-b": Owned("r-b1", "loc-b", "707057500000000002"),
    "site-c": Owned("r-c1", "loc-c", "707057500000000003"),
}


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


def price_curve(sites: tuple[str, ...], start: float, intervals: int) -> dict[str, Any]:
    """A PriceCurve of ``intervals`` 10 s intervals from ``start`` for the sites' resources."""
    return {
        "payloadType": "PriceCurve",
        "priceArea": "NO1",
        "targets": [
            {"resourceId": OWNED[s].resource, "locationId": OWNED[s].location} for s in sites
        ],
        "priceCurveDelta": {
            "points": [{"timestamp": iso(start + 10 * i), "price": 0.5} for i in range(intervals)],
            "energyUnit": "kWh",
            "currency": "NOK",
            "resolution": "00:00:10",
        },
    }


def location_lpc(site: str) -> dict[str, Any]:
    """A LocationLPC for tomorrow (acknowledged at once; no usage report due today)."""
    start = math.ceil(time.time() / 3600) * 3600 + 86400
    owned = OWNED[site]
    return {
        "payloadType": "LocationLPC",
        "targets": [
            {
                "locationId": owned.location,
                "meterPointId": owned.meter_point,
                "resolution": "01:00:00",
                "points": [{"timestamp": iso(start), "maxPowerInKiloWatts": 60.0}],
            }
        ],
    }


# --- the fleet ------------------------------------------------------------------------------


async def run_ecgw(*args: str, config: Path) -> str:
    """``ecgw ARGS -c CONFIG`` as a process; its stdout (AssertionError if it fails)."""
    process = await asyncio.create_subprocess_exec(
        *ECGW,
        *args,
        "-c",
        str(config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, f"ecgw {' '.join(args)}: {err.decode()}"
    return out.decode()


def hub_table(sandbox: Sandbox, broker_url: str, tls: TlsFiles, tmp_path: Path) -> dict[str, Any]:
    password = tmp_path / "hub-broker-password"
    password.write_text(PASSWORDS[HUB_USER] + "\n")
    return sandbox_config(
        sandbox,
        tmp_path / "hub",
        delivery={"timeout": "2s"},
        extra={
            "webhook": {"listen": f"127.0.0.1:{free_port()}", "path": "/notify", "secret": SECRET},
            "hub": {
                "url": broker_url,
                "username": HUB_USER,
                "password_file": str(password),
                "ca_file": str(tls.ca_cert),
                "client_id": "ecgw-hub-1",
                "sites": [
                    {
                        "site_id": s,
                        "resources": [o.resource],
                        "locations": [o.location],
                        "meter_points": [o.meter_point],
                    }
                    for s, o in OWNED.items()
                ],
            },
        },
    )


def site_toml(site: str, broker_url: str, tls: TlsFiles, directory: Path) -> Path:
    """A site's config: the broker, its own password and the CA; no [api]."""
    directory.mkdir(parents=True, exist_ok=True)
    password = directory / "broker-password"
    password.write_text(PASSWORDS[site] + "\n")
    owned = OWNED[site]
    data = {
        "gateway": {"state_dir": str(directory / "state")},
        "upstream": {
            "mode": "hub",
            "url": broker_url,
            "site_id": site,
            "password_file": str(password),
            "ca_file": str(tls.ca_cert),
            "answer_timeout": "5s",
        },
        "delivery": {"timeout": "2s", "backoff_initial": "100ms", "backoff_max": "1s"},
        "reporting": {"grace": "1s"},
        "adapters": {
            "boiler": {"type": "simulated", "power_kw": 3.6, "poll_interval": "1s"},
            "main": {"type": "simulated", "power_kw": 40.0, "poll_interval": "1s"},
        },
        "resources": [
            {"resource_id": owned.resource, "location_id": owned.location, "adapter": "boiler"}
        ],
        "locations": [
            {
                "location_id": owned.location,
                "meter_point_id": owned.meter_point,
                "adapter": "main",
            }
        ],
    }
    path = directory / "site.toml"
    path.write_text(toml(data))
    return path


@dataclass
class Fleet:
    sandbox: Sandbox
    broker: Mosquitto
    tls: TlsFiles
    hub_db: Path
    hub_log: Path
    configs: dict[str, Path]
    sites: dict[str, GatewayProcess] = field(default_factory=dict)

    def site_db(self, site: str) -> Path:
        return self.configs[site].parent / "state" / "ecgw.sqlite3"

    async def inbox(self, site: str) -> list[dict[str, Any]]:
        """The site's events, as ``ecgw events list --json`` shows them."""
        shown = json.loads(await run_ecgw("events", "list", "--json", config=self.configs[site]))
        assert isinstance(shown, list)
        return shown

    def client(self, user: str, identifier: str) -> aiomqtt.Client:
        """A bare MQTT client on the fleet's broker: TLS, the user's own password."""
        return aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            username=user,
            password=PASSWORDS[user],
            identifier=identifier,
            tls_context=ssl.create_default_context(cafile=str(self.tls.ca_cert)),
        )


@contextlib.asynccontextmanager
async def running_fleet(tmp_path: Path, *, persistence: bool = False) -> AsyncIterator[Fleet]:
    """The broker (TLS, passwords, the printed ACL), the sandbox, the hub and three sites,
    every site connected (the hub has its ``online``)."""
    tls = make_tls_files(tmp_path / "tls")
    broker = Mosquitto(tmp_path / "broker", users=PASSWORDS, tls=tls, persistence=persistence)
    broker.port = free_port()  # the URL goes into the configs before the broker starts
    async with run_sandbox(push_retry_delays=(0.2, 0.4, 0.8)) as sandbox:
        hub_path = tmp_path / "hub.toml"
        hub_path.write_text(hub_toml(hub_table(sandbox, broker.url, tls, tmp_path)))
        broker.acl = await run_ecgw("hub", "acl", config=hub_path)  # as an operator would
        await broker.start()
        configs = {s: site_toml(s, broker.url, tls, tmp_path / s) for s in SITES}
        fleet = Fleet(
            sandbox, broker, tls, tmp_path / "hub" / "ecgw.sqlite3", tmp_path / "hub.log", configs
        )
        hub = await start_ecgw("hub", "run", config=hub_path, log=fleet.hub_log)
        try:
            for site, config in configs.items():
                fleet.sites[site] = await GatewayProcess.spawn(config, tmp_path / f"{site}.log")
            await asyncio.gather(*(p.wait_ready(60) for p in fleet.sites.values()))
            await wait_until(lambda: _online(fleet.hub_db, len(SITES)), timeout=60)
            hook = _hook(hub_path)
            await register_webhook(sandbox, hook)
            yield fleet
        finally:
            codes = {}
            for site, process in fleet.sites.items():
                codes[site] = await process.terminate()
            if hub.returncode is None:
                hub.terminate()
            codes["hub"] = await asyncio.wait_for(hub.wait(), timeout=30)
            await broker.stop()
        assert codes == dict.fromkeys([*SITES, "hub"], 0), codes
        for name in [*SITES, "hub"]:
            log = (tmp_path / f"{name}.log").read_text()
            assert not any(p in log for p in PASSWORDS.values()), f"a password in {name}.log"
            assert sandbox.client_secret not in log


def _hook(hub_path: Path) -> str:
    for line in hub_path.read_text().splitlines():
        if line.startswith("listen = "):
            return f"http://{json.loads(line.split(' = ', 1)[1])}/notify"
    raise AssertionError("no webhook listen address in the hub's config")


async def _online(hub_db: Path, count: int) -> bool:
    try:  # mode=ro: a database not created yet does not open
        rows = query(hub_db, "SELECT site_id FROM fleet_seen WHERE online = 1")
    except sqlite3.OperationalError:  # not created yet
        return False
    return len(rows) == count


def reports_of(sandbox: Sandbox, resource: str) -> list[Any]:
    return [r for r in sandbox.reports if _names(r.body, resource)]


def _names(body: Any, ident: str) -> bool:
    return any(ident in p.values() for p in body.get("payloads", []))


async def _true(value: object) -> bool:
    return bool(value)


# --- 1. the right sites, once, and nothing for anyone else ----------------------------------


async def test_a_price_curve_reaches_exactly_its_two_sites_and_each_report_spark_once(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    async with running_fleet(tmp_path) as fleet:
        sandbox = fleet.sandbox
        for site, config in fleet.configs.items():  # the sites hold no Spark credentials
            text = config.read_text()
            assert "[api]" not in text and "client_secret" not in text, site
            assert sandbox.client_secret not in text and sandbox.token_url not in text, site
        snooped: list[aiomqtt.Message] = []
        async with (
            fleet.client("site-c", "site-c-snoop") as snoop,
            fleet.client("site-b", "site-b-rogue") as rogue,
            contextlib.AsyncExitStack() as stack,
        ):
            for other in ("site-a", "site-b"):  # the ACL lets it subscribe, and sends nothing
                await snoop.subscribe(TOPICS.events(other), qos=1)
            await rogue.subscribe(TOPICS.acks("site-b"), qos=1)
            answers: list[HubAck] = []
            listening = await stack.enter_async_context(
                _listening(_collect(snoop, snooped), _answers(rogue, answers))
            )

            start = math.ceil(time.time()) + 8
            event = await sandbox.create_event(price_curve(("site-a", "site-b"), start, 1))
            for site in ("site-a", "site-b"):
                await wait_until(lambda s=site: _has_event(fleet.site_db(s)), timeout=20)

            # site-b's credentials, site-a's resource: rejected at once, never posted
            body = {
                "eventId": event["id"],
                "payloads": [
                    {
                        "payloadType": "EnergyUsage",
                        "resourceId": "r-a1",
                        "locationId": "loc-a",
                        "resolution": "00:00:10",
                        "points": [{"timestamp": iso(start), "kiloWattHours": 99.5}],
                    }
                ],
            }
            raw = json.dumps(body).encode()
            report = SiteReport(event["id"], "EnergyUsage", msgspec.Raw(raw))
            await rogue.publish(TOPICS.reports("site-b"), encode_message(report), qos=1)
            await wait_until(lambda: _true(answers), timeout=15)
            rejected = answers[0]
            assert (rejected.event_id, rejected.outcome, rejected.status) == (
                event["id"],
                "rejected",
                403,
            )
            assert "resource 'r-a1' is not this site's" in (rejected.reason or "")

            # each site's own report: once, valid, with the site's own resource only
            await wait_until(lambda: _true(len(sandbox.reports) >= 2), timeout=45)
            for site in ("site-a", "site-b"):
                await wait_until(lambda s=site: _delivered(fleet.site_db(s), 1), timeout=15)
            await asyncio.sleep(1.0)  # a second post, or a late event for site-c, would show
            assert not any(task.done() for task in listening)  # both clients still connected
        assert snooped == []  # site-c could subscribe, and was sent nothing
        assert len(sandbox.reports) == 2, [r.body for r in sandbox.reports]
        for site in ("site-a", "site-b"):
            owned = OWNED[site]
            (received,) = reports_of(sandbox, owned.resource)
            assert not received.duplicate and received.event_id == event["id"]
            contract.check("PostReportRequest", received.body)
            assert [p["resourceId"] for p in received.body["payloads"]] == [owned.resource]
            (row,) = query(fleet.site_db(site), "SELECT state, report_id FROM outbox")
            assert row == ("delivered", received.id)
        assert not any(b"99.5" in r.raw for r in sandbox.reports)  # the rogue's body

        # each site's inbox: the event, cut to its own target; site-c's: nothing
        for site in ("site-a", "site-b"):
            (shown,) = await fleet.inbox(site)
            assert shown["event_id"] == event["id"], shown
            (payload,) = query(fleet.site_db(site), "SELECT payload FROM events")
            targets = json.loads(payload[0])["targets"]
            assert [t["resourceId"] for t in targets] == [OWNED[site].resource]
        assert await fleet.inbox("site-c") == []
        assert query(fleet.site_db("site-c"), "SELECT COUNT(*) FROM events") == [(0,)]
        routes = query(fleet.hub_db, "SELECT site_id FROM fleet_routes ORDER BY site_id")
        assert routes == [("site-a",), ("site-b",)]
    # the real site-b heard the rogue's answer too (its log is whole once it stopped), and
    # let it decide nothing
    assert '"site_link.answer_unasked"' in (tmp_path / "site-b.log").read_text()
    print(f"\nwall time: {time.monotonic() - started:.1f} s")


# --- 2. the broker away for 30 s -------------------------------------------------------------

OUTAGE = 30.0
"""Seconds the broker is down (issue 11)."""


@pytest.mark.timeout(240)
async def test_broker_down_for_30_s_while_reports_are_due_loses_nothing(tmp_path: Path) -> None:
    """Mosquitto stops (SIGTERM: it saves its sessions) while the sites' usage reports of
    a PriceCurve fall due, and two LocationLPCs reach the hub meanwhile; it starts again
    30 s later on the same port with the same config. Every report reaches the sandbox and
    is accepted once; each LPC reaches its site and is acknowledged once."""
    started = time.monotonic()
    async with running_fleet(tmp_path, persistence=True) as fleet:
        sandbox = fleet.sandbox
        start = math.ceil(time.time()) + 6
        curve = await sandbox.create_event(price_curve(SITES, start, 1))
        for site in SITES:
            await wait_until(lambda s=site: _has_event(fleet.site_db(s)), timeout=20)
        assert time.time() < start + 10  # before the interval ends: no report due yet
        down_at = time.monotonic()
        await fleet.broker.stop()

        # events that reach the hub now wait in its inbox
        lpcs = {s: await sandbox.create_event(location_lpc(s)) for s in ("site-a", "site-b")}
        await wait_until(lambda: _in_hub(fleet.hub_db, len(lpcs) + 1), timeout=15)
        # the usage reports fall due, and wait in each site's outbox
        for site in SITES:
            await wait_until(lambda s=site: _queued(fleet.site_db(s), "EnergyUsage"), timeout=30)
        await asyncio.sleep(max(0.0, down_at + OUTAGE - time.monotonic()))
        for site in SITES:  # tried (the broker is not connected), not delivered
            (row,) = query(fleet.site_db(site), "SELECT state, attempts, last_error FROM outbox")
            assert row[0] == "pending" and row[1] >= 1 and "not connected" in row[2], (site, row)
        assert [r.event_id for r in sandbox.reports] == []
        await fleet.broker.start()  # same port, same config, the sessions it saved
        up_at = time.monotonic()

        expected = {(curve["id"], "EnergyUsage", OWNED[s].resource) for s in SITES}
        expected |= {(lpcs[s]["id"], "LocationLPCAcknowledgement", OWNED[s].location) for s in lpcs}
        await wait_until(lambda: _true(_accepted(sandbox) >= expected), timeout=90)
        caught_up = time.monotonic() - up_at
        for site in SITES:
            count = 2 if site in lpcs else 1
            await wait_until(lambda s=site, n=count: _delivered(fleet.site_db(s), n), timeout=30)
        await wait_until(lambda: _answered(fleet.hub_db), timeout=15)
        await asyncio.sleep(1.0)  # a second post would show

        fresh = [r for r in sandbox.reports if not r.duplicate]
        keys = [r.idempotency_key for r in fresh]
        assert len(set(keys)) == len(keys) == len(expected)  # each accepted once
        assert sorted(_what(r) for r in fresh) == sorted(expected)
        for r in sandbox.reports:
            contract.check("PostReportRequest", r.body)
        hub_rows = query(fleet.hub_db, "SELECT idempotency_key, state, report_id FROM outbox")
        assert sorted(k for k, _, _ in hub_rows) == sorted(keys)
        assert {state for _, state, _ in hub_rows} == {"delivered"}
        ids = {r.idempotency_key: r.id for r in fresh}
        spark_ids = {report_id for _, _, report_id in hub_rows}
        assert spark_ids == set(ids.values())
        for site in SITES:  # every site holds Spark's id for each of its reports
            rows = query(fleet.site_db(site), "SELECT report_id FROM outbox")
            assert all(rid in spark_ids for (rid,) in rows), (site, rows)
        assert [e["event_id"] for e in await fleet.inbox("site-c")] == [curve["id"]]
        for site, lpc in lpcs.items():  # the LPC routed while the site was away reached it
            shown = {e["event_id"] for e in await fleet.inbox(site)}
            assert shown == {curve["id"], lpc["id"]}, (site, shown)
    print(
        f"\nbroker down {OUTAGE:g} s; all reports accepted {caught_up:.1f} s after it came back;"
        f" {len(sandbox.reports)} posts ({len(fresh)} fresh); wall time:"
        f" {time.monotonic() - started:.1f} s"
    )


async def _in_hub(db: Path, count: int) -> bool:
    return bool(query(db, "SELECT COUNT(*) FROM events")[0][0] >= count)


async def _queued(db: Path, kind: str) -> bool:
    return bool(query(db, "SELECT COUNT(*) FROM outbox WHERE kind = ?", (kind,))[0][0])


async def _answered(db: Path) -> bool:
    owed = query(db, "SELECT COUNT(*) FROM fleet_answers WHERE answered_at IS NULL")[0][0]
    return owed == 0


def _what(report: Any) -> tuple[str, str, str]:
    """(event id, payload type, the resource or location it is for) of one posted report."""
    (payload,) = report.body["payloads"]
    if payload["payloadType"] == "LocationLPCAcknowledgement":
        assert payload["declinedTargets"] == [], payload
        (target,) = payload["acknowledgedTargets"]
        return report.event_id, payload["payloadType"], target["locationId"]
    return report.event_id, payload["payloadType"], payload["resourceId"]


def _accepted(sandbox: Sandbox) -> set[tuple[str, str, str]]:
    return {_what(r) for r in sandbox.reports if not r.duplicate}


@contextlib.asynccontextmanager
async def _listening(*loops: Coroutine[Any, Any, None]) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks = [asyncio.create_task(loop) for loop in loops]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _collect(client: aiomqtt.Client, into: list[aiomqtt.Message]) -> None:
    async for message in client.messages:
        into.append(message)


async def _answers(client: aiomqtt.Client, into: list[HubAck]) -> None:
    async for message in client.messages:
        assert isinstance(message.payload, bytes)
        into.append(decode_ack(message.payload))


async def _has_event(db: Path, count: int = 1) -> bool:
    try:
        return bool(query(db, "SELECT COUNT(*) FROM events")[0][0] >= count)
    except sqlite3.OperationalError:  # not migrated yet
        return False


async def _delivered(db: Path, count: int) -> bool:
    rows = query(db, "SELECT state FROM outbox")
    return len(rows) == count and all(state == "delivered" for (state,) in rows)
