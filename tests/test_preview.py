"""``ecgw report preview`` and the reasons ``ecgw events show`` gives for no report."""

from __future__ import annotations

import json
import time
from pathlib import Path

from gateway.config import load_config
from gateway.plugin import Channel, ChannelKind, Reading, Unit
from gateway.reports.clock import ServerClock
from gateway.reports.scheduler import ReportScheduler
from gateway.store.database import open_database
from gateway.store.inbox import Inbox, NewEvent
from gateway.store.outbox import Outbox
from gateway.store.readings import ReadingsStore
from tests.kit.gateway import toml
from tests.kit.proc import ecgw

T0 = 1_795_000_000.0  # 2026-11-18, a whole minute


def price_curve(targets: list[tuple[str, str]], starts: list[float]) -> bytes:
    import datetime as dt

    return json.dumps(
        {
            "payloadType": "PriceCurve",
            "priceArea": "NO5",
            "targets": [{"resourceId": r, "locationId": loc} for r, loc in targets],
            "priceCurveDelta": {
                "resolution": "00:15:00",
                "points": [
                    {"timestamp": dt.datetime.fromtimestamp(s, dt.UTC).isoformat(), "price": 1.0}
                    for s in starts
                ],
            },
        }
    ).encode()


async def setup(tmp_path: Path) -> Path:
    path = tmp_path / "ecgw.toml"
    path.write_text(
        toml(
            {
                "gateway": {"state_dir": "state"},
                "adapters": {"tank": {"type": "simulated"}},
                "resources": [{"resource_id": "hwt-1", "location_id": "loc-1", "adapter": "tank"}],
            }
        )
    )
    config = load_config(str(path))
    async with open_database(config.db_path) as db:
        inbox = Inbox(db)
        await inbox.add(
            NewEvent(
                event_id="pc-ours",
                payload_type="PriceCurve",
                created_at=None,
                payload=price_curve([("hwt-1", "loc-1"), ("x", "y")], [T0, T0 + 900]),
            ),
            via="poll",
            at=T0,
        )
        await inbox.add(
            NewEvent(
                event_id="pc-theirs",
                payload_type="PriceCurve",
                created_at=None,
                payload=price_curve([("x", "y"), ("z", "y")], [T0]),
            ),
            via="poll",
            at=T0,
        )
        store = ReadingsStore(db)
        await store.register_channels("tank", [Channel("energy", ChannelKind.ENERGY, Unit.KWH)])
        async with store.writer():  # 2 kW for 30 minutes, a reading a minute
            await store.write(
                "tank", [Reading("energy", T0 - 60 + 60 * i, 2.0 * (i - 1) / 60) for i in range(33)]
            )
    return path


async def test_preview_prints_the_report_and_queues_nothing(tmp_path: Path) -> None:
    path = await setup(tmp_path)
    result = ecgw("report", "preview", "pc-ours", config=path)
    assert result.returncode == 0, result.stderr
    preview = json.loads(result.stdout)
    (report,) = preview["reports"]
    (payload,) = report["report"]["payloads"]
    assert payload["resourceId"] == "hwt-1"
    assert [round(p["kiloWattHours"], 6) for p in payload["points"]] == [0.5, 0.5]
    assert any("'x'" in note for note in preview["notes"])  # the unknown target is named
    assert json.loads(ecgw("outbox", "list", "--json", config=path).stdout) == []


async def test_events_show_says_why_there_is_no_report(tmp_path: Path) -> None:
    path = await setup(tmp_path)
    config = load_config(str(path))
    async with open_database(config.db_path) as db:
        scheduler = ReportScheduler(
            db=db,
            readings=ReadingsStore(db),
            config=config,
            server_clock=ServerClock(),
            on_queued=lambda: None,
            clock=time.time,
        )
        await scheduler.pass_once()
        assert [r.event_id for r in await Outbox(db).items()] == ["pc-ours"]
    shown = json.loads(ecgw("events", "show", "pc-theirs", config=path).stdout)
    assert shown["plan_state"] == "no_report"
    assert "configured" in shown["plan_note"]
    ours = json.loads(ecgw("events", "show", "pc-ours", config=path).stdout)
    assert ours["jobs"][0]["outcome"] == "queued" and ours["reports"][0]["kind"] == "EnergyUsage"
