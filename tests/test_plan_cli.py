"""``ecgw plan show`` and ``ecgw plan override`` on a real database, and plans published as
retained JSON on a real broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.config import parse_config
from gateway.control.publish import PlanPublisher
from gateway.store.control import ControlStore, DecisionRow, ScheduleRow, location_key
from gateway.store.database import open_database
from gateway.store.inbox import Inbox, NewEvent
from tests.kit.mosquitto import Mosquitto


def curve(start: float) -> bytes:
    import datetime as dt

    def iso(t: float) -> str:
        return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()

    return json.dumps(
        {
            "payloadType": "PriceCurve",
            "priceArea": "NO1",
            "targets": [{"resourceId": "boiler", "locationId": "home"}],
            "priceCurveDelta": {
                "points": [{"timestamp": iso(start + 3600 * i), "price": 0.1} for i in range(2)],
                "energyUnit": "kWh",
                "currency": "NOK",
                "resolution": "01:00:00",
            },
        }
    ).encode()


def write_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "ecgw.toml"
    path.write_text(
        f"""
[gateway]
state_dir = "{tmp_path / "state"}"
[adapters.boiler]
type = "simulated"
[[resources]]
resource_id = "boiler"
location_id = "home"
adapter = "boiler"
control = "switch"
rated_kw = 2.0
need_kwh = 1.0
{extra}
"""
    )
    return path


def ecgw(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ECGW_LOG_LEVEL": "warning"},
        check=False,
    )


async def seed(db_path: Path, start: float) -> None:
    async with open_database(db_path) as db:
        await Inbox(db).add_many(
            [
                NewEvent(
                    event_id="ev-1",
                    payload_type="PriceCurve",
                    created_at=None,
                    payload=curve(start),
                    notification_id=None,
                    notification_type=None,
                )
            ],
            via="webhook",
            at=time.time(),
        )
        store = ControlStore(db)
        await store.put_schedule(
            ScheduleRow(
                "ev-1",
                "boiler",
                "shift",
                "shift",
                ((start, start + 1800),),
                (start, start + 7200),
                "placed 1 of 1 kWh in 1 run(s)",
                time.time(),
            )
        )
        await store.decide(
            [
                DecisionRow(
                    event_id="ev-1",
                    target=location_key("home", "mp"),
                    kind="location",
                    location_id="home",
                    meter_point_id="mp",
                    resource_id=None,
                    decision="acknowledged",
                    reason="fits",
                    caps=((start, start + 3600, 5.0),),
                    decided_at=time.time(),
                )
            ]
        )
        cmd = await store.command_started(
            event_id="ev-1",
            resource_id="boiler",
            adapter="boiler",
            control="switch",
            value=0.0,
            reason="shift: outside the paid hours",
            now=time.time(),
        )
        await store.command_sent(cmd, attempts=1, now=time.time())
        await store.command_done(cmd, state="confirmed", now=time.time(), confirmed_value=0.0)


async def test_plan_show_prints_decisions_schedule_and_commands(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    await seed(tmp_path / "state" / "ecgw.sqlite3", time.time() + 3600)
    shown = ecgw(config, "plan", "show", "ev-1", "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["targets"][0]["decision"] == "acknowledged"
    assert record["schedules"][0]["participation"] == "shift"
    assert [c["state"] for c in record["commands"]] == ["confirmed"]
    text = ecgw(config, "plan", "show", "ev-1")
    assert text.returncode == 0 and "acknowledged" in text.stdout and "confirmed" in text.stdout
    missing = ecgw(config, "plan", "show", "nope")
    assert missing.returncode == 2 and "no event 'nope'" in missing.stderr


async def test_plan_override_before_the_window_replaces_the_schedule(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    await seed(tmp_path / "state" / "ecgw.sqlite3", time.time() + 3600)
    done = ecgw(
        config, "plan", "override", "ev-1", "--resource", "boiler", "--participation", "off"
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(ecgw(config, "plan", "show", "ev-1", "--json").stdout)
    assert record["overrides"] == {"boiler": "off"} and record["schedules"] == []
    wrong = ecgw(
        config, "plan", "override", "ev-1", "--resource", "ghost", "--participation", "off"
    )
    assert wrong.returncode == 2 and "ghost" in wrong.stderr


async def test_plan_override_after_the_window_started_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    await seed(tmp_path / "state" / "ecgw.sqlite3", time.time() - 60)
    late = ecgw(
        config, "plan", "override", "ev-1", "--resource", "boiler", "--participation", "off"
    )
    assert late.returncode == 2 and "too late" in late.stderr


async def test_open_plans_are_published_retained(tmp_path: Path) -> None:
    async with Mosquitto.running(tmp_path / "broker") as broker:
        config_path = write_config(
            tmp_path, f'[control]\npublish = "mqtt://{broker.host}:{broker.port}/site-a"\n'
        )
        import tomllib

        config = parse_config(tomllib.loads(config_path.read_text()), base=tmp_path)
        await seed(config.db_path, time.time() + 3600)
        async with open_database(config.db_path) as db:
            publisher = PlanPublisher(db, config)
            task = asyncio.create_task(publisher.run())
            try:
                got: dict[str, Any] = {}
                async with aiomqtt.Client(broker.host, broker.port) as client:
                    await client.subscribe("site-a/plans/#", qos=1)
                    async with asyncio.timeout(10):
                        async for message in client.messages:
                            assert message.retain or not got
                            got = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                            assert str(message.topic) == "site-a/plans/ev-1"
                            break
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        assert got["event_id"] == "ev-1" and got["schedules"][0]["resource_id"] == "boiler"
        # retained: a subscriber that comes later still gets it
        async with aiomqtt.Client(broker.host, broker.port) as late:
            await late.subscribe("site-a/plans/#", qos=1)
            async with asyncio.timeout(5):
                async for message in late.messages:
                    assert message.retain
                    break
