"""A PriceCurve moves a controllable load into the hours Spark pays for.

Six 10 s intervals; a simulated 2 kW load (a `switch` control, its energy counter
integrating the power it actually draws) whose need, 2 kW for 20 s, fits in two of
them. The gateway switches it off for the event's window except in the two
best-paid intervals, back on after, and the EnergyUsage report shows where the
energy went. A `dry_run` gateway computes the same plan and switches nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.control.plan_view import plan_record
from gateway.sandbox import Sandbox, run_sandbox
from gateway.store.database import open_database
from tests.kit.gateway import make_config, running, sandbox_config
from tests.test_e2e_reports import SECRET, free_port, register_webhook
from tests.test_site_lpc import iso, until

pytestmark = pytest.mark.slow

RATED_KW = 2.0
PRICES = [0.1, 0.5, 0.2, 0.9, 0.3, 0.8]  # the best two: intervals 3 and 5
BEST = (3, 5)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox(push_retry_delays=(0.2, 0.4, 0.8)) as sb:
        yield sb


def config_table(sandbox: Sandbox, tmp_path: Path, *, dry_run: bool = False) -> dict[str, Any]:
    return sandbox_config(
        sandbox,
        tmp_path / "state",
        extra={
            "webhook": {"listen": f"127.0.0.1:{free_port()}", "path": "/notify", "secret": SECRET},
            "reporting": {"grace": "2s", "max_wait": "0s"},
            "control": {"dry_run": dry_run, "confirm_timeout": "2s"},
            "adapters": {
                "boiler": {"type": "simulated", "power_kw": RATED_KW, "poll_interval": "0.5s"}
            },
            "resources": [
                {
                    "resource_id": "boiler",
                    "location_id": "site-1",
                    "adapter": "boiler",
                    "control": "switch",
                    "rated_kw": RATED_KW,
                    "need_kwh": RATED_KW * 20 / 3600,
                }
            ],
        },
    )


def price_curve(start: float) -> dict[str, Any]:
    return {
        "payloadType": "PriceCurve",
        "priceArea": "NO1",
        "targets": [{"resourceId": "boiler", "locationId": "site-1"}],
        "priceCurveDelta": {
            "points": [
                {"timestamp": iso(start + 10 * i), "price": price} for i, price in enumerate(PRICES)
            ],
            "energyUnit": "kWh",
            "currency": "NOK",
            "resolution": "00:00:10",
        },
    }


async def test_the_need_lands_in_the_two_best_paid_intervals(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    config = make_config(config_table(sandbox, tmp_path))
    async with running(config) as gateway:
        assert gateway.webhook_url is not None
        await register_webhook(sandbox, gateway.webhook_url)
        await asyncio.sleep(1.0)
        start = time.time() + 8
        event = await sandbox.create_event(price_curve(start))
        await sandbox.wait_for_reports(1, timeout=100)
        async with open_database(config.db_path) as db:
            plan = await plan_record(db, config, event["id"])
    (report,) = sandbox.reports
    (payload,) = report.body["payloads"]
    kwh = [p["kiloWattHours"] for p in payload["points"]]
    assert [p["timestamp"] for p in payload["points"]] == [iso(start + 10 * i) for i in range(6)]
    best = sum(kwh[i] for i in BEST)
    print(f"shift: kWh per interval {kwh}; best two {best / sum(kwh):.1%} of the event's energy")
    assert best >= 0.9 * sum(kwh), kwh
    assert best == pytest.approx(RATED_KW * 20 / 3600, rel=0.1), kwh
    assert plan is not None
    (schedule,) = plan["schedules"]
    assert schedule["participation"] == "shift"
    assert [r["start"] for r in schedule["on"]] == [_z(start + 10 * i) for i in BEST]
    states = [c["state"] for c in plan["commands"]]
    assert states and set(states) == {"confirmed"}, plan["commands"]


async def test_a_dry_run_plans_the_same_and_switches_nothing(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    config = make_config(config_table(sandbox, tmp_path, dry_run=True))
    async with running(config) as gateway:
        assert gateway.webhook_url is not None
        await register_webhook(sandbox, gateway.webhook_url)
        await asyncio.sleep(1.0)
        start = time.time() + 4
        event = await sandbox.create_event(price_curve(start))
        await until(lambda: time.time() > start + 25, 40, "the window half over")
        async with open_database(config.db_path) as db:
            plan = await plan_record(db, config, event["id"])
            rows = await db.fetchall("SELECT value FROM readings ORDER BY at DESC LIMIT 1")
    assert plan is not None and plan["dry_run"] is True
    (schedule,) = plan["schedules"]
    assert len(schedule["on"]) == 2
    assert plan["commands"] and {c["state"] for c in plan["commands"]} == {"dry_run"}
    assert len(plan["commands"]) <= 2, plan["commands"]  # recorded once, not every step
    assert rows  # the load kept drawing: its power channel never read 0
    async with open_database(config.db_path) as db:
        powers = await db.fetchall(
            "SELECT r.value FROM readings r JOIN channels c ON c.id = r.channel_id "
            "WHERE c.channel = 'power'"
        )
    assert powers and min(v for (v,) in powers) == RATED_KW


def _z(t: float) -> str:
    from gateway.render import iso as render_iso

    found = render_iso(t)
    assert found is not None
    return found
