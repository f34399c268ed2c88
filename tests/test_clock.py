"""Clock sanity: with an obviously wrong clock, readings go on but no report is built."""

from __future__ import annotations

import json
import time
from pathlib import Path

from gateway.config import parse_config
from gateway.reports.clock import EARLIEST_PLAUSIBLE, ServerClock, clock_problem
from gateway.reports.scheduler import ReportScheduler
from gateway.store.database import Database
from gateway.store.inbox import Inbox, NewEvent
from gateway.store.outbox import Outbox
from gateway.store.readings import ReadingsStore

NOW = EARLIEST_PLAUSIBLE + 30 * 86400


def test_a_sane_clock_passes() -> None:
    assert clock_problem(NOW, api_date=None, seen_at=None) is None
    assert clock_problem(NOW, api_date=NOW - 2, seen_at=NOW) is None


def test_before_the_release_is_wrong() -> None:
    problem = clock_problem(EARLIEST_PLAUSIBLE - 86400 * 400, api_date=None, seen_at=None)
    assert problem is not None and "before this release" in problem


def test_far_from_the_apis_date_is_wrong_either_way() -> None:
    ahead = clock_problem(NOW, api_date=NOW - 3600, seen_at=NOW)
    behind = clock_problem(NOW, api_date=NOW + 900, seen_at=NOW)
    assert ahead is not None and "ahead of" in ahead
    assert behind is not None and "behind" in behind


def http_date(t: float) -> str:
    import email.utils

    return email.utils.formatdate(t, usegmt=True)


async def test_reports_wait_for_a_sane_clock(db: Database, tmp_path: Path) -> None:
    config = parse_config(
        {
            "adapters": {"site": {"type": "simulated"}},
            "locations": [{"location_id": "loc-1", "meter_point_id": "mp-1", "adapter": "site"}],
        },
        base=tmp_path,
    )
    now = time.time()
    payload = {
        "payloadType": "LocationLPC",
        "targets": [
            {
                "locationId": "loc-1",
                "meterPointId": "mp-1",
                "resolution": "01:00:00",
                "points": [{"timestamp": "2030-01-01T00:00:00Z", "maxPowerInKiloWatts": 0}],
            }
        ],
    }
    await Inbox(db).add(
        NewEvent(
            event_id="lpc-1",
            payload_type="LocationLPC",
            created_at=None,
            payload=json.dumps(payload).encode(),
        ),
        via="poll",
        at=now,
    )
    clock = [now]
    server_clock = ServerClock(lambda: clock[0])
    server_clock.observe(http_date(now + 3600))  # the API says we are an hour behind
    queued: list[int] = []
    scheduler = ReportScheduler(
        db=db,
        readings=ReadingsStore(db),
        config=config,
        server_clock=server_clock,
        on_queued=lambda: queued.append(1),
        clock=lambda: now,
    )
    await scheduler.pass_once()
    assert await Outbox(db).items() == []
    event = await Inbox(db).get("lpc-1")
    assert event is not None and event.plan_note and "held back" in event.plan_note
    clock[0] = now + 2  # the Date header is sampled at most once a second
    server_clock.observe(http_date(now + 2))  # clock fixed
    await scheduler.pass_once()
    (ack,) = await Outbox(db).items()
    assert ack.kind == "LocationLPCAcknowledgement" and queued == [1]
