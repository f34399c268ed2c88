"""The fault campaign (``bench/campaign.py``), short: every named crash point once and a few
random kill -9 of ``ecgw run`` while events arrive and reports go out. Nothing may be lost,
accepted twice or left stuck, and every ``integrity_check`` must say ok."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from pathlib import Path

import pytest

from bench.campaign import Planned, Settings, run_campaign, tally_reports
from gateway.sandbox import run_sandbox
from tests.kit.gateway import sandbox_config, toml
from tests.kit.live import GatewayProcess, crash_points
from tests.kit.modbus import EastronMeter, modbus_tcp_server

pytestmark = pytest.mark.slow


def test_every_crash_point_in_the_source_is_found() -> None:
    points = crash_points()
    assert {"outbox.queued", "delivery.sent", "delivery.answered_2xx"} <= set(points)


def _report(event_id: str, kind: str, key: str, *, duplicate: bool = False) -> dict[str, object]:
    body = {"eventId": event_id, "payloads": [{"payloadType": kind}]}
    return {"body": body, "idempotencyKey": key, "duplicate": duplicate}


def test_tally_counts_lost_duplicates_and_repeats() -> None:
    planned = [
        Planned("e1", "ResourceLPC", ("ResourceLPCAcknowledgement", "EnergyUsage"), 0.0, True),
        Planned("e2", "PriceCurve", ("EnergyUsage",), 0.0, False),
        Planned("e3", "UserEligibility", (), 0.0, True),
    ]
    reports = [
        _report("e1", "ResourceLPCAcknowledgement", "k1"),
        _report("e1", "ResourceLPCAcknowledgement", "k1", duplicate=True),  # a repeat POST
        _report("e2", "EnergyUsage", "k2"),
        _report("e2", "EnergyUsage", "k2-other"),  # a second key: accepted twice
        _report("e3", "EnergyUsage", "k3"),  # nobody asked for it
    ]
    tally = tally_reports(planned, reports)
    assert tally["expected"] == 3
    assert tally["accepted"] == 2
    assert tally["lost"] == {("e1", "EnergyUsage")}
    assert tally["duplicates_accepted"] == 1
    assert tally["repeat_posts"] == 1
    assert tally["unexpected"] == 1


@pytest.mark.timeout(150)
async def test_short_campaign(tmp_path: Path) -> None:
    # A grace longer than any outage here, so that the figures measure crash safety alone
    # (a report due during an outage waits for the meters: the test below).
    settings = Settings(
        kills=8, seed=8, max_intervals=1, max_uptime=1.5, grace=10.0, settle_timeout=40
    )
    lines: list[str] = []
    fig = await run_campaign(settings, tmp_path, out=lines.append)
    report = "\n".join(lines)
    assert fig.crash_points and all(v == "reached" for v in fig.crash_points.values()), report
    assert fig.kills == len(fig.crash_points) + 8
    assert fig.events > 0 and fig.reports_expected > 0
    assert fig.lost == 0, fig.lost_detail
    assert fig.duplicates_accepted == 0
    assert fig.unexpected_reports == 0
    assert fig.stuck == 0 and fig.dead == 0
    assert fig.events_missing == 0 and fig.acked_not_stored == 0
    assert fig.integrity_ok == fig.integrity_checks == fig.kills + 1
    assert fig.unexpected_exits == 0, report
    assert fig.final_exit == 0
    assert fig.ready_samples > 0 and fig.ready_worst_s > 0


@pytest.mark.timeout(90)
async def test_a_report_due_during_an_outage_keeps_its_last_interval(tmp_path: Path) -> None:
    """A meter that kept counting while the gateway was down (Modbus, like a real one) brackets
    the interval's end with a reading before the kill and readings once it is back."""
    meter = EastronMeter("sdm630")
    meter.ramp(36.0, time.time, from_kwh=500.0)
    async with run_sandbox() as sandbox, modbus_tcp_server({1: meter}) as server:
        data = sandbox_config(sandbox, tmp_path / "state")
        data["reporting"] = {"grace": "1s"}
        data["poll"] = {"interval": "1s"}
        data["adapters"] = {
            "meter": {
                "type": "modbus",
                "host": "127.0.0.1",
                "port": server.port,
                "unit": 1,
                "profile": "eastron-sdm630",
                "poll_interval": "1s",
            }
        }
        data["resources"] = [{"resource_id": "hp-1", "location_id": "loc-1", "adapter": "meter"}]
        config = tmp_path / "ecgw.toml"
        config.write_text(toml(data))
        log = tmp_path / "gateway.log"
        gateway = await GatewayProcess.spawn(config, log)
        await gateway.wait_ready(timeout=30)
        start = math.ceil((time.time() + 2) / 5) * 5
        await sandbox.create_event(
            {
                "payloadType": "PriceCurve",
                "priceArea": "NO5",
                "targets": [{"resourceId": "hp-1", "locationId": "loc-1"}],
                "priceCurveDelta": {
                    "points": [{"timestamp": _iso(start), "price": 1.0}],
                    "energyUnit": "kWh",
                    "currency": "NOK",
                    "resolution": "00:00:05",
                },
            },
            push=False,
        )
        # The event reaches the gateway by poll. A power cut from mid-interval until after the
        # report is due; the meter comes back 3 s after the gateway (a slow Modbus link).
        await asyncio.sleep(max(start + 3 - time.time(), 0))
        await gateway.kill9()
        await server.stop()
        await asyncio.sleep(max(start + 5 + 1 + 1.5 - time.time(), 0))
        gateway = await GatewayProcess.spawn(config, log)
        try:
            await gateway.wait_ready(timeout=30)
            await asyncio.sleep(3)
            await server.start()
            await sandbox.wait_for_reports(1, timeout=12)
        finally:
            assert await gateway.terminate() == 0
    (report,) = sandbox.reports
    ((point,),) = [p["points"] for p in report.body["payloads"]]
    assert abs(point["kiloWattHours"] - 36.0 * 5 / 3600) <= 0.02 * 36.0 * 5 / 3600


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()
