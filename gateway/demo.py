"""``ecgw demo``: the whole pipeline on this machine, in under a minute.

A sandbox of the API and a gateway with two simulated resources start in a
temporary folder. The demo registers the gateway's webhook with the sandbox,
asks the sandbox for a PriceCurve event with three 10-second intervals
starting a few seconds from now, shows the collection as it goes, and prints
the report the sandbox received with a table of kWh per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from gateway.app import Gateway
from gateway.config import Config, parse_config
from gateway.sandbox import Sandbox, run_sandbox
from gateway.sandbox.client import api_post
from gateway.store.database import open_database
from gateway.store.readings import ReadingsStore

__all__ = ["run_demo"]

RESOURCES = (  # (resource id, adapter name, power in kW)
    ("demo-hot-water-tank", "tank", 3.0),
    ("demo-ev-charger", "charger", 11.0),
)
INTERVALS = 3
RESOLUTION = 10  # seconds
SECRET = "demo-webhook-secret"  # noqa: S105 - a throwaway secret for a local demo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_config(sandbox: Sandbox, state_dir: Path) -> Config:
    return parse_config(
        {
            "gateway": {"state_dir": str(state_dir)},
            "api": {
                "base_url": sandbox.base_url,
                "token_url": sandbox.token_url,
                "client_id": sandbox.client_id,
                "client_secret": sandbox.client_secret,
            },
            "webhook": {"listen": f"127.0.0.1:{_free_port()}", "path": "/notify", "secret": SECRET},
            "reporting": {"grace": "2s"},
            "delivery": {"timeout": "5s", "backoff_initial": "200ms", "backoff_max": "2s"},
            "adapters": {
                name: {"type": "simulated", "power_kw": kw, "poll_interval": "1s"}
                for _, name, kw in RESOURCES
            },
            "resources": [
                {"resource_id": rid, "location_id": "demo-location", "adapter": name}
                for rid, name, _ in RESOURCES
            ],
        },
        base=state_dir,
    )


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


async def _readings(config: Config) -> dict[str, int]:
    async with open_database(config.db_path) as db:
        stats = await ReadingsStore(db).channel_stats()
    return {s.adapter: s.readings for s in stats if s.channel == "energy"}


async def _progress(config: Config, first: float, out: Callable[[str], None]) -> None:
    end = first + INTERVALS * RESOLUTION
    while True:
        now = time.time()
        counts = await _readings(config)
        readings = ", ".join(f"{name} {counts.get(name, 0)}" for _, name, _ in RESOURCES)
        if now < first:
            phase = f"waiting for the first interval ({first - now:4.1f} s)"
        elif now < end:
            phase = f"collecting interval {int((now - first) // RESOLUTION) + 1}/{INTERVALS}"
        else:
            phase = "building and delivering the report"
        out(f"  {phase:<42} readings: {readings}")
        await asyncio.sleep(3.0)


def _table(body: dict[str, Any]) -> str:
    payloads = {p["resourceId"]: p for p in body["payloads"]}
    stamps = sorted({pt["timestamp"] for p in payloads.values() for pt in p["points"]})
    rids = [rid for rid, _, _ in RESOURCES]
    lines = ["interval start (UTC)      " + "".join(f"{rid:>22}" for rid in rids)]
    for stamp in stamps:
        cells = []
        for rid in rids:
            value = next(
                (
                    pt["kiloWattHours"]
                    for pt in payloads.get(rid, {}).get("points", [])
                    if pt["timestamp"] == stamp
                ),
                None,
            )
            cells.append(f"{'-' if value is None else f'{value:.6f} kWh':>22}")
        lines.append(f"{stamp:<26}" + "".join(cells))
    expected = "".join(f"{kw * RESOLUTION / 3600:>18.6f} kWh" for _, _, kw in RESOURCES)
    lines.append(f"{'expected (power x 10 s)':<26}{expected}")
    return "\n".join(lines)


async def run_demo(out: Callable[[str], None] = print) -> int:
    with tempfile.TemporaryDirectory(prefix="ecgw-demo-") as tmp:
        async with run_sandbox() as sandbox, aiohttp.ClientSession() as session:
            config = demo_config(sandbox, Path(tmp))
            gateway = Gateway(config)
            task = asyncio.create_task(gateway.run(), name="gateway")
            try:
                await asyncio.wait_for(gateway.ready.wait(), timeout=15)
                out(f"sandbox API  {sandbox.base_url}")
                out(f"gateway      webhook {gateway.webhook_url}, state in {tmp}")
                await api_post(
                    session,
                    sandbox,
                    "/webhooks",
                    {
                        "webhookUrl": gateway.webhook_url,
                        "webhookSecret": SECRET,
                        "name": "ecgw-demo",
                    },
                )
                first = math.ceil((time.time() + 2) / RESOLUTION) * RESOLUTION
                reply = await api_post(
                    session,
                    sandbox,
                    "/simulation/events/pricecurve",
                    {
                        "targets": [
                            {"resourceId": rid, "locationId": "demo-location"}
                            for rid, _, _ in RESOURCES
                        ],
                        "priceArea": "NO5",
                        "priceCurveDelta": {
                            "points": [
                                {"timestamp": _iso(first + RESOLUTION * i), "price": 0.4}
                                for i in range(INTERVALS)
                            ],
                            "energyUnit": "kWh",
                            "currency": "NOK",
                            "resolution": "00:00:10",
                        },
                    },
                )
                event_id = reply["simulatedEvent"]["id"]
                out(
                    f"event        PriceCurve {event_id}: {INTERVALS} intervals of 10 s from "
                    f"{_iso(first)}"
                )
                out("resources    " + ", ".join(f"{rid} ({kw:g} kW)" for rid, _, kw in RESOURCES))
                progress = asyncio.create_task(_progress(config, first, out))
                try:
                    await sandbox.wait_for_reports(1, timeout=45)
                finally:
                    progress.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await progress
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            report = sandbox.reports[0]
            out(f"\ndelivered    report {report.id} for event {report.event_id}\n")
            out(json.dumps(report.body, indent=2))
            out("")
            out(_table(report.body))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(asyncio.run(run_demo()))
