"""End to end: ``ecgw run`` as a site of a fleet, as a process, against a real Mosquitto.

The test plays the hub: it publishes a PriceCurve on the site's ``events`` topic as the
hub would, takes the site's report from its ``reports`` topic and answers on ``acks``
with Spark's report id. The site's config holds no API credentials.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from gateway import contract
from gateway.fleet.messages import HubAck
from tests.kit.gateway import toml, wait_until
from tests.kit.live import ECGW, GatewayProcess, query
from tests.kit.mosquitto import Mosquitto
from tests.test_fleet_site import SITE, FakeHub

pytestmark = pytest.mark.slow

HUB_PASSWORD = "hub-broker-password"
SITE_PASSWORD = "site-broker-password"
METER_POINT = "707057500012345678"


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


def site_config(tmp_path: Path, broker: Mosquitto) -> Path:
    password = tmp_path / "broker-password"
    password.write_text(SITE_PASSWORD + "\n")
    data = {
        "gateway": {"state_dir": str(tmp_path / "state")},
        "upstream": {
            "mode": "hub",
            "url": broker.url,
            "site_id": SITE,
            "password_file": str(password),
            "answer_timeout": "5s",
        },
        "delivery": {"timeout": "2s", "backoff_initial": "100ms", "backoff_max": "1s"},
        "reporting": {"grace": "1s"},
        "adapters": {
            "boiler": {"type": "simulated", "power_kw": 36.0, "poll_interval": "1s"},
            "main": {"type": "simulated", "power_kw": 40.0, "poll_interval": "1s"},
        },
        "resources": [{"resource_id": "r1", "location_id": "loc-a", "adapter": "boiler"}],
        "locations": [{"location_id": "loc-a", "meter_point_id": METER_POINT, "adapter": "main"}],
    }
    path = tmp_path / "site.toml"
    path.write_text(toml(data))
    return path


def price_curve(event_id: str, start: float) -> bytes:
    points = [{"timestamp": iso(start + 2 * i), "price": 0.5} for i in range(2)]
    return json.dumps(
        {
            "id": event_id,
            "createdAt": iso(time.time()),
            "payload": {
                "payloadType": "PriceCurve",
                "priceArea": "NO1",
                "targets": [{"resourceId": "r1", "locationId": "loc-a"}],
                "priceCurveDelta": {
                    "points": points,
                    "energyUnit": "kWh",
                    "currency": "NOK",
                    "resolution": "00:00:02",
                },
            },
        }
    ).encode()


def location_lpc(event_id: str) -> bytes:
    start = math.ceil(time.time() / 3600) * 3600 + 86400  # tomorrow: no usage due today
    points = [{"timestamp": iso(start), "maxPowerInKiloWatts": 60.0}]
    target = {"locationId": "loc-a", "meterPointId": METER_POINT, "resolution": "01:00:00"}
    return json.dumps(
        {
            "id": event_id,
            "createdAt": iso(time.time()),
            "payload": {"payloadType": "LocationLPC", "targets": [{**target, "points": points}]},
        }
    ).encode()


async def answered(hub: FakeHub, event_id: str, kind: str, report_id: str) -> Any:
    """The next report, checked against the contract and answered as delivered."""
    report = await hub.next_report(timeout=60)
    assert (report.event_id, report.kind) == (event_id, kind)
    body = json.loads(bytes(report.body))
    contract.check("PostReportRequest", body)
    ack = HubAck(event_id=event_id, kind=kind, outcome="delivered", report_id=report_id)
    await hub.answer(ack)
    return body


async def test_a_site_takes_its_event_from_the_hub_and_reports_through_it(
    tmp_path: Path,
) -> None:
    users = {SITE: SITE_PASSWORD, "fake-hub": HUB_PASSWORD}
    async with Mosquitto.running(tmp_path / "broker", users=users) as broker:
        config = site_config(tmp_path, broker)
        assert "api" not in config.read_text() and "secret" not in config.read_text()
        site = await GatewayProcess.spawn(config, tmp_path / "site.log")
        try:
            await site.wait_ready(30)
            async with FakeHub.running(broker, password=HUB_PASSWORD) as hub:
                await hub.online()  # its first session: what is sent before it is not kept
                start = math.ceil(time.time()) + 4  # intervals that begin after it arrives
                await hub.event(location_lpc("lpc-1"))  # acknowledged at once
                await answered(hub, "lpc-1", "LocationLPCAcknowledgement", "rep-0")
                await hub.event(price_curve("ev-1", start))
                body = await answered(hub, "ev-1", "EnergyUsage", "rep-1")
                assert [p["resourceId"] for p in body["payloads"]] == ["r1"]
                db = tmp_path / "state" / "ecgw.sqlite3"

                async def delivered() -> bool:
                    rows = query(db, "SELECT 1 FROM outbox WHERE state = 'delivered'")
                    return len(rows) == 2

                await wait_until(delivered, timeout=20)
            assert query(db, "SELECT received_via FROM events") == [("hub",), ("hub",)]
            assert query(db, "SELECT report_id FROM outbox ORDER BY id") == [("rep-0",), ("rep-1",)]
            status = await asyncio.create_subprocess_exec(
                *ECGW, "status", "-c", str(config), stdout=asyncio.subprocess.PIPE
            )
            shown = (await status.communicate())[0].decode()
            assert f"upstream: hub via {broker.url} (site {SITE})" in shown, shown
            assert "api token" not in shown and "api poll" not in shown, shown
        finally:
            assert await site.terminate() == 0, site.tail()
        log = (tmp_path / "site.log").read_text()
        assert SITE_PASSWORD not in log
        assert '"gateway.stopped"' in log and "token" not in log
