"""Attack: a signed PriceCurve whose timestamps msgspec reads but the report contract refuses.

The webhook decodes point timestamps with msgspec, which also accepts a space for ``T``
(``2026-12-01 13:01:50Z``) and more than 7 fractional digits (``...:50.000000000Z``). The
event is answered 200, stored and planned; the report then echoes the timestamp text as
Spark wrote it, the gateway's own ``PostReportRequest`` contract check refuses it
(``format: date-time`` allows ``T`` and up to 7 digits), and the job is set aside as
``invalid``: no report for an event that was acknowledged, and ``ecgw events replan``
meets the same failure. The same event with ``T`` and no fraction is reported.

Expected: either the webhook refuses the body (400, so Spark knows), or the report is sent
with the instant written in a form the contract accepts.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import math
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.sandbox import Sandbox, run_sandbox
from tests.kit.proc import ecgw, start_ecgw

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SECRET = "attack-secret"
FORMS = {
    "ts-normal": "%Y-%m-%dT%H:%M:%SZ",
    "ts-space": "%Y-%m-%d %H:%M:%SZ",
    "ts-nanos": "%Y-%m-%dT%H:%M:%S.000000000Z",
}


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with run_sandbox() as sb:
        yield sb


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _notification(event_id: str, points: list[str]) -> bytes:
    note: dict[str, Any] = {
        "notificationId": f"n-{event_id}",
        "eventId": event_id,
        "eventCreatedAtUtc": "2026-12-01T12:00:00Z",
        "notificationSentUtc": "2026-12-01T12:00:01Z",
        "notificationType": "PriceCurveCreated",
        "payload": {
            "payloadType": "PriceCurve",
            "targets": [{"resourceId": "r1", "locationId": "loc-1"}],
            "priceCurveDelta": {
                "points": [{"timestamp": p, "price": 1.0} for p in points],
                "resolution": "00:00:05",
            },
        },
    }
    return json.dumps(note).encode()


async def test_accepted_timestamps_give_a_report(sandbox: Sandbox, tmp_path: Path) -> None:
    port = _free_port()
    config = tmp_path / "ecgw.toml"
    config.write_text(
        f"""
[gateway]
state_dir = "{tmp_path / "state"}"
[api]
base_url = "{sandbox.base_url}"
token_url = "{sandbox.token_url}"
client_id = "{sandbox.client_id}"
client_secret = "{sandbox.client_secret}"
[webhook]
listen = "127.0.0.1:{port}"
path = "/notify"
secret = "{SECRET}"
[delivery]
timeout = "2s"
backoff_initial = "100ms"
backoff_max = "1s"
[reporting]
grace = "0s"
[adapters.tank]
type = "simulated"
poll_interval = "1s"
power_kw = 2.0
[[resources]]
resource_id = "r1"
location_id = "loc-1"
adapter = "tank"
"""
    )
    url = f"http://127.0.0.1:{port}/notify"
    proc = await start_ecgw("run", config=config, log=tmp_path / "gateway.log")
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.post(url, data=b"{}"):
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            start = math.ceil(time.time() / 5) * 5 + 5
            for event_id, form in FORMS.items():
                points = [
                    dt.datetime.fromtimestamp(start + 5 * i, dt.UTC).strftime(form)
                    for i in range(2)
                ]
                body = _notification(event_id, points)
                mac = hmac.new(SECRET.encode(), body, hashlib.sha256).digest()
                headers = {"X-Payload-Signature": base64.b64encode(mac).decode()}
                async with session.post(url, data=body, headers=headers) as resp:
                    status = resp.status
                if status != 200:  # refused at the boundary: Spark is told; fine
                    assert status == 400, (event_id, status)
                    del FORMS[event_id]
                    break
        deadline = time.monotonic() + 40
        delivered: set[str] = set()
        while time.monotonic() < deadline and delivered != set(FORMS):
            await asyncio.sleep(1)
            listed = await asyncio.to_thread(ecgw, "outbox", "list", "--json", config=config)
            if listed.returncode == 0:
                rows = json.loads(listed.stdout)
                delivered = {r["event_id"] for r in rows if r["state"] == "delivered"}
    finally:
        proc.terminate()
        await proc.wait()
    assert "ts-normal" in delivered  # the control
    shown = {
        e: json.loads(ecgw("events", "show", e, config=config).stdout)["jobs"]
        for e in set(FORMS) - delivered
    }
    assert delivered == set(FORMS), f"acknowledged 200 but never reported: {shown}"
