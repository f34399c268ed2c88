"""End to end with real device protocols: an SDM630 on Modbus TCP (pymodbus server) and
a Shelly Plus 1PM on MQTT (a private mosquitto) feed two resources of one PriceCurve."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway import contract
from gateway.sandbox import Sandbox, run_sandbox
from tests.kit.gateway import make_config, running, sandbox_config
from tests.kit.modbus import EastronMeter, modbus_tcp_server
from tests.kit.mosquitto import Mosquitto
from tests.test_e2e_reports import SECRET, free_port, register_webhook

pytestmark = pytest.mark.slow

SHELLY = "shellyplus1pm-a8032ab1c2d3"
METER_KW = 7.2
PLUG_KW = 2.4


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox() as sb:
        yield sb


def shelly_status(now: float, *, kw: float, origin: float, start_wh: float) -> dict[str, Any]:
    """A Plus 1PM's switch:0 status: aenergy.total advances once a minute, as of minute_ts."""
    minute = math.floor(now / 60) * 60
    total = start_wh + kw * 1000 * (minute - origin) / 3600
    return {
        "id": 0,
        "source": "init",
        "output": True,
        "apower": kw * 1000,
        "voltage": 231.4,
        "current": round(kw * 1000 / 231.4, 3),
        "freq": 50.0,
        "aenergy": {"total": round(total, 3), "by_minute": [0.0, 0.0, 0.0], "minute_ts": minute},
        "temperature": {"tC": 41.2, "tF": 106.2},
    }


async def run_shelly(broker: Mosquitto, origin: float) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier="fake-shelly") as client:
        while True:
            status = shelly_status(time.time(), kw=PLUG_KW, origin=origin, start_wh=81234.5)
            await client.publish(f"{SHELLY}/status/switch:0", json.dumps(status), qos=1)
            await asyncio.sleep(2.0)


async def test_sdm630_and_shelly_feed_one_report(sandbox: Sandbox, tmp_path: Path) -> None:
    meter = EastronMeter("sdm630")
    meter.ramp(METER_KW, time.time, from_kwh=1234.5)
    origin = math.floor(time.time() / 60) * 60 - 60  # the plug's counter began a minute ago
    async with (
        modbus_tcp_server({1: meter}) as server,
        Mosquitto.running(tmp_path / "broker") as broker,
    ):
        config = make_config(
            sandbox_config(
                sandbox,
                tmp_path / "state",
                extra={
                    "webhook": {
                        "listen": f"127.0.0.1:{free_port()}",
                        "path": "/notify",
                        "secret": SECRET,
                    },
                    "reporting": {"grace": "5s"},
                    "adapters": {
                        "meter": {
                            "type": "modbus",
                            "host": "127.0.0.1",
                            "port": server.port,
                            "unit": 1,
                            "profile": "eastron-sdm630",
                            "poll_interval": "1s",
                        },
                        "plug": {
                            "type": "mqtt",
                            "url": broker.url,
                            "profile": "shelly-gen2",
                            "device": SHELLY,
                        },
                    },
                    "resources": [
                        {"resource_id": "heat-pump", "location_id": "site", "adapter": "meter"},
                        {"resource_id": "water-heater", "location_id": "site", "adapter": "plug"},
                    ],
                },
            )
        )
        shelly = asyncio.create_task(run_shelly(broker, origin))
        try:
            async with running(config) as gateway:
                assert gateway.webhook_url is not None
                await register_webhook(sandbox, gateway.webhook_url)
                # three 10 s intervals, after the gateway's first reads, ending on a minute
                # boundary (where the plug commits its counter)
                end = math.ceil((time.time() + 32) / 60) * 60
                starts = [end - 30, end - 20, end - 10]
                await sandbox.create_event(
                    {
                        "payloadType": "PriceCurve",
                        "priceArea": "NO1",
                        "targets": [
                            {"resourceId": "heat-pump", "locationId": "site"},
                            {"resourceId": "water-heater", "locationId": "site"},
                        ],
                        "priceCurveDelta": {
                            "points": [{"timestamp": _iso(s), "price": 0.3} for s in starts],
                            "energyUnit": "kWh",
                            "currency": "NOK",
                            "resolution": "00:00:10",
                        },
                    }
                )
                await sandbox.wait_for_reports(1, timeout=120)
        finally:
            shelly.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await shelly
    (report,) = sandbox.reports
    contract.check("PostReportRequest", report.body)
    payloads = {p["resourceId"]: p for p in report.body["payloads"]}
    for resource, kw in (("heat-pump", METER_KW), ("water-heater", PLUG_KW)):
        points = payloads[resource]["points"]
        assert [p["timestamp"] for p in points] == [_iso(s) for s in starts], resource
        truth = kw * 10 / 3600
        for point in points:
            error = abs(point["kiloWattHours"] - truth) / truth
            assert error <= 0.02, (resource, point, truth)


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()
