"""Report only what was done (issue 9, item 6).

The planner's rules, pure: no interval that began before the event reached the gateway, no
report (and for LPC no acknowledgement) for an event that arrived after its window, ``off``
resources never reported, the operator's override honoured, and how long a report may wait
for late readings. Then the scheduler on a real SQLite file with a given clock: a PriceCurve
polled a day late gets no report and ``ecgw events show`` says why; a report with a gap waits
until readings fill it or ``reporting.max_wait`` passes; a job without any data is not
recorded ``empty`` before its wait is over, across a restart too.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import wire
from gateway.config import Config, load_config
from gateway.control.targets import location_key, resource_key
from gateway.errors import StoreError
from gateway.plugin import Channel, ChannelKind, Reading, Unit
from gateway.reports.clock import ServerClock
from gateway.reports.planner import ENERGY_USAGE, LOCATION_ACK, RESOURCE_ACK, plan_event
from gateway.reports.scheduler import ReportJobs, ReportScheduler
from gateway.store.database import Database, open_database
from gateway.store.inbox import Inbox, NewEvent
from gateway.store.outbox import Outbox
from gateway.store.readings import ReadingsStore
from tests.kit.gateway import toml
from tests.kit.proc import ecgw
from tests.test_planner import (
    EVENT,
    GRACE,
    HOUR,
    acknowledged,
    hours,
    loc,
    location_lpc,
    make_config,
    price_curve,
    res,
    resource_lpc,
    stamp,
)

DAY = "2025-03-11"
TEN = stamp(f"{DAY}T10:00:00+00:00")


def plan(payload: wire.EventPayload, config: Config, received_at: float, **kw: Any) -> Any:
    return plan_event(EVENT, payload, config, now=received_at, received_at=received_at, **kw)


# --- arrival: the planner --------------------------------------------------------------------


def test_intervals_that_began_before_arrival_are_not_reported() -> None:
    payload = price_curve([("hwt", "home")], hours(DAY, 10, 3))
    result = plan(payload, make_config([res("hwt", "home")]), TEN + 1800)
    (job,) = result.jobs
    assert job.intervals == ((TEN + HOUR, TEN + 2 * HOUR), (TEN + 2 * HOUR, TEN + 3 * HOUR))
    (target,) = job.targets
    assert target.intervals == job.intervals
    assert [s.timestamp() for s in target.starts] == [TEN + HOUR, TEN + 2 * HOUR]
    assert job.due_at == TEN + 3 * HOUR + GRACE  # the window's end: unchanged
    assert result.notes == (
        "the price curve: 1 of 3 intervals began before the event arrived at "
        "2025-03-11T10:30:00Z: not reported",
    )


def test_an_interval_beginning_at_the_arrival_is_reported() -> None:
    payload = price_curve([("hwt", "home")], hours(DAY, 10, 2))
    (job,) = plan(payload, make_config([res("hwt", "home")]), TEN).jobs
    assert len(job.intervals) == 2
    (job,) = plan(payload, make_config([res("hwt", "home")]), TEN + 0.001).jobs
    assert job.intervals == ((TEN + HOUR, TEN + 2 * HOUR),)


def test_a_curve_that_arrived_after_its_window_gets_no_report_and_says_why() -> None:
    payload = price_curve([("hwt", "home")], hours(DAY, 10, 3))
    result = plan(payload, make_config([res("hwt", "home")]), TEN + 27 * HOUR)
    assert result.jobs == ()
    assert result.no_report_reason == (
        "arrived at 2025-03-12T13:00:00Z after its window ended at 2025-03-11T13:00:00Z: "
        "nothing was reacted to"
    )


def test_a_curve_that_arrived_inside_its_last_interval_gets_no_report() -> None:
    payload = price_curve([("hwt", "home")], hours(DAY, 10, 2))
    result = plan(payload, make_config([res("hwt", "home")]), TEN + 1.5 * HOUR)
    assert result.jobs == ()
    assert result.no_report_reason == (
        "arrived at 2025-03-11T11:30:00Z after its last interval began at "
        "2025-03-11T11:00:00Z (the window ends at 2025-03-11T12:00:00Z): nothing was reacted to"
    )


def test_lpc_that_arrived_after_its_window_is_not_even_acknowledged() -> None:
    config = make_config([res("hwt", "home")], [loc("home", "1")])
    late = TEN + 5 * HOUR
    location = plan(location_lpc([("home", "1", "01:00:00", hours(DAY, 10, 2))]), config, late)
    resource = plan(
        resource_lpc([("hwt", "home", "1", "01:00:00", hours(DAY, 10, 2))]), config, late
    )
    for result in (location, resource):
        assert result.jobs == ()
        assert result.no_report_reason is not None
        assert "after its window ended at 2025-03-11T12:00:00Z" in result.no_report_reason


def test_lpc_arriving_in_its_window_is_acknowledged_and_reports_only_what_is_left() -> None:
    config = make_config(locations=[loc("home", "1"), loc("shop", "2")])
    payload = location_lpc(
        [
            ("home", "1", "01:00:00", hours(DAY, 10, 3)),
            ("shop", "2", "01:00:00", hours(DAY, 10, 1)),  # over before it arrived
        ]
    )
    decisions = acknowledged(location_key("home", "1"), location_key("shop", "2"))
    result = plan(payload, config, TEN + 1, decisions=decisions)
    ack, usage = result.jobs
    assert ack.kind == LOCATION_ACK and ack.due_at == TEN + 1
    assert isinstance(ack.acknowledgement, wire.LocationLPCAcknowledgement)
    assert len(ack.acknowledgement.acknowledged_targets) == 2
    (home,) = usage.targets
    assert home.location_id == "home"
    assert [s for s, _ in home.intervals] == [TEN + HOUR, TEN + 2 * HOUR]
    assert any("'shop'" in n and "1 of 1 intervals began before" in n for n in result.notes)


def test_resource_lpc_arriving_in_its_window_drops_the_intervals_begun() -> None:
    config = make_config([res("hwt", "home")])
    payload = resource_lpc(
        [("hwt", "home", "1", "00:15:00", [f"{DAY}T10:{m:02d}:00Z" for m in (0, 15)])]
    )
    decisions = acknowledged(resource_key("hwt", "home", "1"))
    ack, usage = plan(payload, config, TEN + 60, decisions=decisions).jobs
    assert ack.kind == RESOURCE_ACK
    assert usage.kind == ENERGY_USAGE
    assert usage.intervals == ((TEN + 900, TEN + 1800),)


@given(
    arrival=st.floats(min_value=TEN - HOUR, max_value=TEN + 7 * HOUR),
    count=st.integers(min_value=1, max_value=6),
)
def test_nothing_before_arrival_is_ever_planned(arrival: float, count: int) -> None:
    config = make_config([res("hwt", "home")], [loc("home", "1")])
    stamps = hours(DAY, 10, count)
    decisions = acknowledged(location_key("home", "1"), resource_key("hwt", "home", "1"))
    for payload in (
        price_curve([("hwt", "home")], stamps),
        location_lpc([("home", "1", "01:00:00", stamps)]),
        resource_lpc([("hwt", "home", "1", "01:00:00", stamps)]),
    ):
        result = plan(payload, config, arrival, decisions=decisions)
        ahead = [(TEN + HOUR * i, TEN + HOUR * (i + 1)) for i in range(count)]
        ahead = [i for i in ahead if i[0] >= arrival]
        usage = [j for j in result.jobs if j.acknowledgement is None]
        if not ahead:
            assert result.jobs == () and result.no_report_reason is not None
            continue
        (job,) = usage
        assert list(job.intervals) == ahead
        assert all(start >= arrival for t in job.targets for start, _ in t.intervals)


# --- participation -----------------------------------------------------------------------------


def test_an_off_resource_is_left_out_with_a_note() -> None:
    config = make_config([{**res("hwt", "home"), "participation": "off"}, res("ev", "home")])
    result = plan(price_curve([("hwt", "home"), ("ev", "home")], hours(DAY, 10, 1)), config, TEN)
    (job,) = result.jobs
    assert [t.resource_id for t in job.targets] == ["ev"]
    assert result.notes == (
        "target resource 'hwt' takes no part (participation 'off' from the config): left out",
    )


OFF = "takes no part (participation = off): never reported"


@pytest.mark.parametrize(
    ("hwt", "note"),
    [
        pytest.param(
            ("declined", OFF), f"target resource 'hwt': declined: {OFF}", id="by-the-decider"
        ),
        pytest.param(
            ("acknowledged", "the site can hold every cap"),
            "target resource 'hwt' takes no part (participation 'off' from the config): declined",
            id="acknowledged-under-another-config",
        ),
    ],
)
def test_an_off_resource_is_declined_in_a_resource_lpc(hwt: tuple[str, str], note: str) -> None:
    config = make_config([{**res("hwt", "home"), "participation": "off"}, res("ev", "home")])
    payload = resource_lpc(
        [
            ("hwt", "home", "1", "01:00:00", hours(DAY, 10, 1)),
            ("ev", "home", "1", "01:00:00", hours(DAY, 10, 1)),
        ]
    )
    decisions = {
        **acknowledged(resource_key("ev", "home", "1")),
        resource_key("hwt", "home", "1"): hwt,
    }
    result = plan(payload, config, TEN, decisions=decisions)
    ack, usage = result.jobs
    assert isinstance(ack.acknowledgement, wire.ResourceLPCAcknowledgement)
    assert [t.resource_id for t in ack.acknowledgement.declined_targets] == ["hwt"]
    assert [t.resource_id for t in ack.acknowledgement.acknowledged_targets] == ["ev"]
    assert [t.resource_id for t in usage.targets] == ["ev"]
    assert result.notes == (note,)


def test_an_override_off_declines_a_resource_the_decider_acknowledged() -> None:
    """The decider reads the config only; the operator's override for the event still
    keeps the resource out of the acknowledgement."""
    config = make_config([res("hwt", "home"), res("ev", "home")])
    payload = resource_lpc(
        [
            ("hwt", "home", "1", "01:00:00", hours(DAY, 10, 1)),
            ("ev", "home", "1", "01:00:00", hours(DAY, 10, 1)),
        ]
    )
    decisions = acknowledged(resource_key("hwt", "home", "1"), resource_key("ev", "home", "1"))
    result = plan(payload, config, TEN, decisions=decisions, overrides={"hwt": "off"})
    ack, usage = result.jobs
    assert isinstance(ack.acknowledgement, wire.ResourceLPCAcknowledgement)
    assert [t.resource_id for t in ack.acknowledgement.declined_targets] == ["hwt"]
    assert [t.resource_id for t in ack.acknowledgement.acknowledged_targets] == ["ev"]
    assert [t.resource_id for t in usage.targets] == ["ev"]
    assert result.notes == (
        "target resource 'hwt' takes no part (participation 'off' from the operator's override): "
        "declined",
    )


def test_the_operators_override_wins_over_the_config() -> None:
    config = make_config([{**res("hwt", "home"), "participation": "off"}, res("ev", "home")])
    payload = price_curve([("hwt", "home"), ("ev", "home")], hours(DAY, 10, 1))
    result = plan(payload, config, TEN, overrides={"hwt": "report", "ev": "off"})
    (job,) = result.jobs
    assert [t.resource_id for t in job.targets] == ["hwt"]
    assert result.notes == (
        "target resource 'ev' takes no part (participation 'off' from the operator's override): "
        "left out",
    )


def test_no_report_when_every_target_is_off() -> None:
    config = make_config([res("hwt", "home")])
    payload = price_curve([("hwt", "home"), ("hwt", "home")], hours(DAY, 10, 1))
    result = plan(payload, config, TEN, overrides={"hwt": "off"})
    assert result.jobs == ()
    assert result.no_report_reason == (
        "no target takes part: 1 configured resource(s) have participation 'off'"
    )
    assert len(result.notes) == 1  # listed twice, noted once


# --- how long a report may wait --------------------------------------------------------------


def test_a_usage_report_may_wait_max_wait_after_it_fell_due() -> None:
    payload = price_curve([("hwt", "home")], hours(DAY, 10, 2))
    (job,) = plan(payload, make_config([res("hwt", "home")], max_wait="2h"), TEN).jobs
    assert job.wait_until == job.due_at + 2 * HOUR
    (job,) = plan(payload, make_config([res("hwt", "home")], max_wait="0s"), TEN).jobs
    assert job.wait_until == job.due_at


def test_the_wait_ends_a_day_before_the_month_end_cutoff() -> None:
    config = make_config([res("hwt", "home")], max_wait="6h")
    payload = price_curve([("hwt", "home")], ["2025-03-30T20:00:00Z"])
    (job,) = plan(payload, config, stamp("2025-03-30T00:00:00Z")).jobs
    assert job.due_at == stamp("2025-03-30T21:05:00Z")
    assert job.wait_until == stamp("2025-03-31T00:00:00Z")
    late = price_curve([("hwt", "home")], ["2025-03-31T10:00:00Z"])
    (job,) = plan(late, config, stamp("2025-03-31T00:00:00Z")).jobs
    assert job.wait_until == job.due_at  # already inside the last day: no wait at all


def test_acknowledgements_never_wait() -> None:
    config = make_config(locations=[loc("home", "1")])
    decisions = acknowledged(location_key("home", "1"))
    payload = location_lpc([("home", "1", "01:00:00", hours(DAY, 10, 1))])
    ack, usage = plan(payload, config, TEN, decisions=decisions).jobs
    assert ack.wait_until is None
    assert usage.wait_until == usage.due_at + 6 * HOUR


# --- the scheduler, on a real database ----------------------------------------------------------

T0 = 1_795_000_020.0  # 2026-11-18, a whole minute
QUARTER = 900.0
MAX_WAIT = 3600.0
RETRY = 60.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


def curve(*resources: str, intervals: int = 2) -> bytes:
    return json.dumps(
        {
            "payloadType": "PriceCurve",
            "priceArea": "NO5",
            "targets": [{"resourceId": r, "locationId": "loc-1"} for r in resources],
            "priceCurveDelta": {
                "resolution": "00:15:00",
                "points": [
                    {"timestamp": iso(T0 + QUARTER * i), "price": 1.0} for i in range(intervals)
                ],
            },
        }
    ).encode()


def lpc(intervals: int = 2) -> bytes:
    points = [
        {"timestamp": iso(T0 + QUARTER * i), "maxPowerInKiloWatts": 1.0} for i in range(intervals)
    ]
    return json.dumps(
        {
            "payloadType": "LocationLPC",
            "targets": [
                {
                    "locationId": "loc-1",
                    "meterPointId": "mp-1",
                    "resolution": "00:15:00",
                    "points": points,
                }
            ],
        }
    ).encode()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Config]:
    path = tmp_path / "ecgw.toml"
    table = {
        "gateway": {"state_dir": "state"},
        "reporting": {"grace": "5m", "max_wait": "1h"},
        "adapters": {"tank": {"type": "simulated"}, "heater": {"type": "simulated"}},
        "resources": [
            {"resource_id": "hwt-1", "location_id": "loc-1", "adapter": "tank"},
            {"resource_id": "heat-1", "location_id": "loc-1", "adapter": "heater"},
        ],
        "locations": [{"location_id": "loc-1", "meter_point_id": "mp-1", "adapter": "tank"}],
    }
    path.write_text(toml(table))
    return path, load_config(str(path))


async def store_event(
    db: Database, event_id: str, payload: bytes, *, at: float, polled: bool = False
) -> None:
    kind = json.loads(payload)["payloadType"]
    new = NewEvent(event_id=event_id, payload_type=kind, created_at=None, payload=payload)
    if polled:
        sweep = await Inbox(db).begin_sweep()
        await Inbox(db).add_polled_page([new], sweep=sweep, at=at)
    else:
        await Inbox(db).add(new, via="webhook", at=at)


async def store_readings(db: Database, adapter: str, start: float, end: float) -> None:
    """2 kW on ``adapter``'s counter, one reading a minute from ``start`` to ``end``."""
    store = ReadingsStore(db)
    await store.register_channels(adapter, [Channel("energy", ChannelKind.ENERGY, Unit.KWH)])
    rows = []
    t = start
    while t <= end:
        rows.append(Reading("energy", t, 100.0 + 2.0 * (t - T0) / 3600))
        t += 60.0
    async with store.writer():
        await store.write(adapter, rows)


def scheduler(db: Database, config: Config, clock: Clock) -> ReportScheduler:
    return ReportScheduler(
        db=db,
        readings=ReadingsStore(db),
        config=config,
        server_clock=ServerClock(),
        on_queued=lambda: None,
        clock=clock,
        retry_every=RETRY,
    )


def kwh(body: bytes) -> dict[str, list[float]]:
    payloads = json.loads(body)["payloads"]
    return {p["resourceId"]: [q["kiloWattHours"] for q in p["points"]] for p in payloads}


DUE = T0 + 2 * QUARTER + 300.0
AFTER_EDGE = T0 + 3 * QUARTER + 1.0  # due, and past max_gap after the last edge
"""Builds from here are not held back waiting for a reading that brackets the last edge."""


async def test_a_price_curve_polled_a_day_after_its_window_gets_no_report(
    setup: tuple[Path, Config],
) -> None:
    path, config = setup
    polled_at = T0 + 2 * QUARTER + 86400.0
    async with open_database(config.db_path) as db:
        await store_readings(db, "tank", T0 - 60, T0 + 2 * QUARTER + 60)  # data was there
        await store_event(db, "late", curve("hwt-1"), at=polled_at, polled=True)
        await scheduler(db, config, Clock(polled_at + 1)).pass_once()
        assert await Outbox(db).items() == []
        assert await ReportJobs(db).for_event("late") == []
    shown = json.loads(ecgw("events", "show", "late", config=path).stdout)
    assert shown["received_via"] == "poll"
    assert shown["plan_state"] == "no_report"
    assert shown["plan_note"] == (
        "arrived at 2026-11-19T11:37:00Z after its window ended at 2026-11-18T11:37:00Z: "
        "nothing was reacted to"
    )


async def test_a_location_lpc_that_arrived_after_its_window_gets_no_acknowledgement(
    setup: tuple[Path, Config],
) -> None:
    _, config = setup
    async with open_database(config.db_path) as db:
        await store_event(db, "live-lpc", lpc(), at=T0 - 10)
        await scheduler(db, config, Clock(T0 + 1)).pass_once()
        await store_event(db, "late-lpc", lpc(), at=T0 + 2 * QUARTER)
        await scheduler(db, config, Clock(T0 + 2 * QUARTER + 1)).pass_once()
        queued = {(r.event_id, r.kind) for r in await Outbox(db).items()}
        late = await Inbox(db).get("late-lpc")
    assert queued == {("live-lpc", LOCATION_ACK)}  # the live one: acknowledged at once
    assert late is not None and late.plan_state == "no_report"
    assert "after its window ended" in str(late.plan_note)


async def test_an_lpc_not_acknowledged_before_its_window_ended_never_is(
    setup: tuple[Path, Config],
) -> None:
    """The gateway stored the event (and may have decided), then was down until after the
    window: it held no cap meanwhile, so it acknowledges nothing and reports nothing."""
    _, config = setup
    async with open_database(config.db_path) as db:
        await store_event(db, "lpc", lpc(), at=T0 - 10)
        await store_readings(db, "tank", T0 - 60, T0 + 3 * QUARTER)
        await scheduler(db, config, Clock(T0 + 2 * QUARTER + 1)).pass_once()
        await scheduler(db, config, Clock(AFTER_EDGE + 3600)).pass_once()
        assert await Outbox(db).items() == []
        event = await Inbox(db).get("lpc")
    assert event is not None and event.plan_state == "no_report"
    assert event.plan_note == (
        "its window ended at 2026-11-18T11:37:00Z before its acknowledgement was queued "
        "(the gateway was not running): nothing acknowledged, nothing reported"
    )


def test_an_lpc_acknowledged_in_its_window_is_still_reported_after_it() -> None:
    config = make_config(locations=[loc("home", "1")])
    payload = location_lpc([("home", "1", "01:00:00", hours(DAY, 10, 2))])
    decisions = acknowledged(location_key("home", "1"))
    after = TEN + 3 * HOUR
    kw: dict[str, Any] = {"now": after, "received_at": TEN - 60, "decisions": decisions}
    queued = plan_event(EVENT, payload, config, ack_queued=True, **kw)
    assert [j.kind for j in queued.jobs] == [LOCATION_ACK, "LocationEnergyUsage"]
    never = plan_event(EVENT, payload, config, ack_queued=False, **kw)
    assert never.jobs == () and "before its acknowledgement was queued" in str(
        never.no_report_reason
    )
    unknown = plan_event(EVENT, payload, config, **kw)  # not told: as before
    assert [j.kind for j in unknown.jobs] == [LOCATION_ACK, "LocationEnergyUsage"]


async def test_a_report_with_a_gap_waits_and_is_built_when_readings_fill_it(
    setup: tuple[Path, Config],
) -> None:
    _, config = setup
    clock = Clock(AFTER_EDGE)
    async with open_database(config.db_path) as db:
        await store_event(db, "gap", curve("hwt-1"), at=T0 - 60)
        await store_readings(db, "tank", T0 - 60, T0 + QUARTER + 60)  # the second: none yet
        sched = scheduler(db, config, clock)
        assert await sched.pass_once() == AFTER_EDGE + RETRY
        assert await Outbox(db).items() == []
        assert await ReportJobs(db).for_event("gap") == []  # nothing recorded: not final
        event = await Inbox(db).get("gap")
        assert event is not None and event.plan_state == "planned"
        assert event.plan_note == (
            "EnergyUsage report waits for readings of 1 interval(s) (resource 'hwt-1': 1 of 2) "
            "until 2026-11-18T12:42:00Z at the latest, then is built with what exists"
        )
        await store_readings(db, "tank", T0 + QUARTER + 120, T0 + 2 * QUARTER + 120)  # late
        clock.now += RETRY / 2
        await sched.pass_once()  # not built again before retry_every
        assert await Outbox(db).items() == []
        clock.now += RETRY / 2
        await sched.pass_once()
        (row,) = await Outbox(db).items()
        (job,) = await ReportJobs(db).for_event("gap")
        await sched.pass_once()
        event = await Inbox(db).get("gap")
    assert kwh(row.body) == {"hwt-1": [0.5, 0.5]}
    assert job["outcome"] == "queued" and job["note"] is None
    assert event is not None and event.plan_state == "done" and event.plan_note is None


async def test_a_report_with_a_gap_is_built_with_what_exists_when_max_wait_passes(
    setup: tuple[Path, Config],
) -> None:
    _, config = setup
    clock = Clock(AFTER_EDGE)
    async with open_database(config.db_path) as db:
        await store_event(db, "gap", curve("hwt-1"), at=T0 - 60)
        await store_readings(db, "tank", T0 - 60, T0 + QUARTER + 60)
        sched = scheduler(db, config, clock)
        while clock.now < DUE + MAX_WAIT:
            await sched.pass_once()
            assert await Outbox(db).items() == [], clock.now
            clock.now += RETRY
        clock.now = DUE + MAX_WAIT
        await sched.pass_once()
        (row,) = await Outbox(db).items()
        (job,) = await ReportJobs(db).for_event("gap")
    assert kwh(row.body) == {"hwt-1": [0.5]}
    assert "1 of 2 intervals have no data" in job["note"]
    assert "the wait for missing readings ended at 2026-11-18T12:42:00Z" in job["note"]


async def test_a_job_without_any_data_is_not_recorded_empty_before_its_wait_is_over(
    setup: tuple[Path, Config],
) -> None:
    _, config = setup
    async with open_database(config.db_path) as db:
        await store_event(db, "quiet", curve("heat-1"), at=T0 - 60)  # heater: never read
        for now in (DUE, DUE + MAX_WAIT / 2, DUE + MAX_WAIT - 1):
            # a fresh scheduler each time: a restart remembers nothing and still waits
            await scheduler(db, config, Clock(now)).pass_once()
            assert await ReportJobs(db).for_event("quiet") == [], now
        event = await Inbox(db).get("quiet")
        assert event is not None and "waits for readings of 2 interval(s)" in str(event.plan_note)
        await scheduler(db, config, Clock(DUE + MAX_WAIT)).pass_once()
        (job,) = await ReportJobs(db).for_event("quiet")
        assert await Outbox(db).items() == []
    assert job["outcome"] == "empty"
    assert "no target has any data" in job["note"]


async def test_the_scheduler_honours_the_operators_override(setup: tuple[Path, Config]) -> None:
    path, config = setup
    async with open_database(config.db_path) as db:
        await store_event(db, "pc", curve("hwt-1", "heat-1"), at=T0 - 60)
        await store_readings(db, "tank", T0 - 60, T0 + 2 * QUARTER + 60)
        async with db.write() as conn:
            await conn.execute(
                "INSERT INTO overrides (event_id, resource_id, participation, at) "
                "VALUES ('pc', 'heat-1', 'off', ?)",
                (T0 - 30,),
            )
        await scheduler(db, config, Clock(AFTER_EDGE)).pass_once()
        (row,) = await Outbox(db).items()  # heat-1 (never read) does not hold it back
    assert kwh(row.body) == {"hwt-1": [0.5, 0.5]}
    shown = json.loads(ecgw("events", "show", "pc", config=path).stdout)
    assert (
        "'heat-1' takes no part (participation 'off' from the operator's override)"
        in (shown["plan_note"])
    )


async def test_a_report_and_its_job_row_commit_together(setup: tuple[Path, Config]) -> None:
    """The outbox row and the ``report_jobs`` row are one transaction: when the second
    cannot be written, the first is not there either (and the next pass builds it again)."""
    _, config = setup
    async with open_database(config.db_path) as db:
        await store_event(db, "pc", curve("hwt-1"), at=T0 - 60)
        await store_readings(db, "tank", T0 - 60, T0 + 2 * QUARTER + 60)
        async with db.write() as conn:
            await conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON report_jobs "
                "BEGIN SELECT RAISE(ABORT, 'report_jobs refused'); END"
            )
        with pytest.raises(StoreError, match="report_jobs refused"):
            await scheduler(db, config, Clock(AFTER_EDGE)).pass_once()
        assert await Outbox(db).items() == []
        async with db.write() as conn:
            await conn.execute("DROP TRIGGER refuse")
        await scheduler(db, config, Clock(AFTER_EDGE)).pass_once()
        (row,) = await Outbox(db).items()
        (job,) = await ReportJobs(db).for_event("pc")
    assert row.kind == job["kind"] == ENERGY_USAGE and job["outcome"] == "queued"
