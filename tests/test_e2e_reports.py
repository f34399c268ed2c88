"""End to end: sandbox -> signed webhook -> gateway with simulated devices -> report."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import contract
from gateway.sandbox import Sandbox, run_sandbox
from gateway.sandbox.client import api_post
from gateway.store.database import open_database
from gateway.store.inbox import Inbox
from tests.kit.gateway import (
    make_config,
    outbox_rows,
    readings_span,
    running,
    sandbox_config,
    wait_until,
)

pytestmark = pytest.mark.slow

SECRET = "e2e-webhook-secret"


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox(push_retry_delays=(0.2, 0.4, 0.8)) as sb:
        yield sb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def register_webhook(sandbox: Sandbox, url: str) -> None:
    async with aiohttp.ClientSession() as session:
        await api_post(
            session,
            sandbox,
            "/webhooks",
            {"webhookUrl": url, "webhookSecret": SECRET, "name": "e2e"},
        )


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


def gateway_config(sandbox: Sandbox, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    port = free_port()
    data = sandbox_config(
        sandbox,
        tmp_path / "state",
        extra={
            "webhook": {"listen": f"127.0.0.1:{port}", "path": "/notify", "secret": SECRET},
            "reporting": {"grace": "1s"},
            "adapters": {
                "tank": {"type": "simulated", "power_kw": 36.0, "poll_interval": "1s"},
                "charger": {"type": "simulated", "power_kw": 18.0, "poll_interval": "1s"},
                "site": {"type": "simulated", "power_kw": 54.0, "poll_interval": "1s"},
                "pv": {"type": "simulated", "power_kw": -7.2, "poll_interval": "1s"},
            },
            "resources": [
                {"resource_id": "hwt-1", "location_id": "loc-1", "adapter": "tank"},
                {
                    "resource_id": "evc-1",
                    "location_id": "loc-1",
                    "meter_point_id": "707057500012345678",
                    "adapter": "charger",
                },
                {"resource_id": "pv-1", "location_id": "loc-1", "adapter": "pv"},
                {
                    "resource_id": "pv-net",
                    "location_id": "loc-1",
                    "adapter": "pv",
                    "channel": "power",
                    "direction": "net",
                    "max_kw": 10.0,
                },
            ],
            "locations": [
                {"location_id": "loc-1", "meter_point_id": "707057500012345678", "adapter": "site"}
            ],
            **extra,
        },
    )
    return data


async def first_reading_at(config: Any) -> float | None:
    return readings_span(config.db_path)[0]


async def test_price_curve_at_10_second_resolution(sandbox: Sandbox, tmp_path: Path) -> None:
    config = make_config(gateway_config(sandbox, tmp_path))
    async with running(config) as gateway:
        assert gateway.webhook_url is not None
        await register_webhook(sandbox, gateway.webhook_url)
        await wait_until(lambda: _has_readings(config), timeout=10)
        started = await first_reading_at(config)
        assert started is not None
        first = math.floor(started / 10) * 10 - 20  # two intervals end before any reading
        points = [{"timestamp": iso(first + 10 * i), "price": 0.5} for i in range(6)]
        event = await sandbox.create_event(
            {
                "payloadType": "PriceCurve",
                "priceArea": "NO5",
                "targets": [
                    {"resourceId": "hwt-1", "locationId": "loc-1"},
                    {"resourceId": "evc-1", "locationId": "loc-1"},
                    {"resourceId": "pv-1", "locationId": "loc-1"},
                    {"resourceId": "pv-net", "locationId": "loc-1"},
                    {"resourceId": "not-ours", "locationId": "loc-9"},
                ],
                "priceCurveDelta": {
                    "points": points,
                    "energyUnit": "kWh",
                    "currency": "NOK",
                    "resolution": "00:00:10",
                },
            }
        )
        await sandbox.wait_for_reports(1, timeout=90)
        await wait_until(lambda: _delivered(config), timeout=10)
        await asyncio.sleep(1.5)  # nothing more may follow
    arrived = await received_at(config, event["id"])
    assert arrived > first + 20  # the first two intervals had begun: not reported
    assert len(sandbox.reports) == 1
    report = sandbox.reports[0]
    assert report.event_id == event["id"]
    contract.check("PostReportRequest", report.body)
    payloads = {p["resourceId"]: p for p in report.body["payloads"]}
    assert set(payloads) == {"hwt-1", "evc-1", "pv-1", "pv-net"}
    assert payloads["evc-1"]["meterPointId"] == "707057500012345678"
    # pv exports 7.2 kW: nothing drawn on its import register, negative energy when net
    for resource, kw in (("hwt-1", 36.0), ("evc-1", 18.0), ("pv-1", 0.0), ("pv-net", -7.2)):
        payload = payloads[resource]
        assert payload["resolution"] == "00:00:10" and payload["locationId"] == "loc-1"
        got = {
            dt.datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00")).timestamp(): p[
                "kiloWattHours"
            ]
            for p in payload["points"]
        }
        # Only what the gateway could react to: intervals that began once it had the event.
        expected_starts = [first + 10 * i for i in range(6) if first + 10 * i >= arrived]
        assert expected_starts, (arrived, first)
        assert sorted(got) == expected_starts, (resource, started, sorted(got))
        for start in expected_starts:
            truth = kw * 10 / 3600
            assert abs(got[start] - truth) <= 0.02 * abs(truth), (resource, start, got[start])
        assert first not in got and first + 10 not in got  # before any reading: absent, not 0


async def received_at(config: Any, event_id: str) -> float:
    async with open_database(config.db_path) as db:
        event = await Inbox(db).get(event_id)
    assert event is not None
    return event.received_at


async def _has_readings(config: Any) -> bool:
    return await first_reading_at(config) is not None


async def _delivered(config: Any) -> bool:
    rows = await outbox_rows(config)
    return bool(rows) and all(r.state == "delivered" for r in rows.values())


async def test_location_lpc_ack_at_once_then_usage(sandbox: Sandbox, tmp_path: Path) -> None:
    config = make_config(gateway_config(sandbox, tmp_path))
    async with running(config) as gateway:
        assert gateway.webhook_url is not None
        await register_webhook(sandbox, gateway.webhook_url)
        await wait_until(lambda: _has_readings(config), timeout=10)
        start = math.ceil(time.time() / 10) * 10 + 10
        # 60 kW: the site's 54 kW with nothing to switch, plus the 0.2 kW margin, fits
        points = [{"timestamp": iso(start + 10 * i), "maxPowerInKiloWatts": 60.0} for i in range(2)]
        sent = time.monotonic()
        await sandbox.create_event(
            {
                "payloadType": "LocationLPC",
                "targets": [
                    {
                        "locationId": "loc-1",
                        "meterPointId": "707057500012345678",
                        "resolution": "00:00:10",
                        "points": points,
                    },
                    {
                        "locationId": "loc-2",
                        "meterPointId": "707057500099999999",
                        "resolution": "00:00:10",
                        "points": points,
                    },
                ],
            }
        )
        await sandbox.wait_for_reports(1, timeout=10)
        ack_delay = time.monotonic() - sent
        await sandbox.wait_for_reports(2, timeout=60)
    ack, usage = (r.body for r in sandbox.reports)
    assert ack_delay < 5, ack_delay
    (ack_payload,) = ack["payloads"]
    assert ack_payload["payloadType"] == "LocationLPCAcknowledgement"
    assert ack_payload["acknowledgedTargets"] == [
        {"locationId": "loc-1", "meterPointId": "707057500012345678"}
    ]
    assert ack_payload["declinedTargets"] == []  # loc-2 is another gateway's: in neither list
    (usage_payload,) = usage["payloads"]
    assert usage_payload["payloadType"] == "LocationEnergyUsage"
    assert usage_payload["meterPointId"] == "707057500012345678"
    kwh = [p["kiloWattHours"] for p in usage_payload["points"]]
    assert len(kwh) == 2 and all(abs(v - 54 * 10 / 3600) <= 0.02 * 54 * 10 / 3600 for v in kwh)
    for body in (ack, usage):
        contract.check("PostReportRequest", body)
    _ = json
