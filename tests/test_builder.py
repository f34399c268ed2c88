"""Report builder: exact bodies, missing data left out (never 0), rounding, contract validity."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import contract, wire
from gateway.control.targets import location_key, resource_key
from gateway.errors import ReportInvalid
from gateway.metering.energy import IntervalEnergy, Quality
from gateway.reports.builder import KWH_DECIMALS, BuildResult, build_report
from gateway.reports.planner import (
    ENERGY_USAGE,
    LOCATION_ENERGY_USAGE,
    Interval,
    Job,
    Target,
    plan_event,
)
from tests.conftest import VECTORS
from tests.test_planner import (
    EVENT,
    NOW,
    VECTOR_ARRIVED,
    acknowledged,
    decided,
    hours,
    loc,
    location_lpc,
    make_config,
    price_curve,
    res,
    resource_lpc,
)

UTC = dt.UTC
Energy = Mapping[Target, Sequence[IntervalEnergy | None]]


def body_json(result: BuildResult) -> Any:
    """The body, checked against the OpenAPI contract and our own strict decoder."""
    assert result.request is not None
    assert result.body is not None
    assert result.body == wire.encode(result.request)
    data = json.loads(result.body)
    contract.check("PostReportRequest", data)
    assert wire.decode_report_request(result.body) == result.request
    return data


def measured(interval: Interval, kwh: float) -> IntervalEnergy:
    return IntervalEnergy(interval[0], interval[1], kwh, Quality.MEASURED)


def series(target: Target, values: Sequence[float | None]) -> list[IntervalEnergy | None]:
    return [
        None if v is None else measured(i, v) for i, v in zip(target.intervals, values, strict=True)
    ]


def price_job(
    resources: Sequence[dict[str, Any]],
    targets: Sequence[tuple[str, str]],
    stamps: Sequence[str],
    resolution: str = "01:00:00",
) -> Job:
    plan = plan_event(
        EVENT,
        price_curve(targets, stamps, resolution),
        make_config(resources),
        now=NOW,
        received_at=NOW,
    )
    (job,) = plan.jobs
    return job


# --- gaps: what a waiting report waits for -------------------------------------------------


def test_gaps_name_every_target_interval_without_data() -> None:
    job = price_job(
        [res("hwt", "home"), res("ev", "home"), res("pv", "home")],
        [("hwt", "home"), ("ev", "home"), ("pv", "home")],
        hours("2025-03-11", 10, 3),
    )
    hwt, ev, pv = job.targets
    result = build_report(job, {hwt: series(hwt, [1.0, None, 2.0]), ev: series(ev, [None] * 3)})
    first, second, third = hwt.intervals
    assert result.gaps == (
        (hwt, second),
        (ev, first),
        (ev, second),
        (ev, third),
        (pv, first),  # not read at all
        (pv, second),
        (pv, third),
    )
    assert result.request is not None  # the report is still built with what exists


def test_no_gaps_when_every_interval_has_data_or_for_an_acknowledgement() -> None:
    job = price_job([res("hwt", "home")], [("hwt", "home")], hours("2025-03-11", 10, 2))
    (hwt,) = job.targets
    assert build_report(job, {hwt: series(hwt, [0.0, 1.0])}).gaps == ()
    payload = location_lpc([("home", "1", "01:00:00", hours("2025-03-12", 16, 1))])
    config = make_config(locations=[loc("home", "1")])
    decisions = acknowledged(location_key("home", "1"))
    ack_job, _ = plan_event(
        EVENT, payload, config, now=NOW, received_at=NOW, decisions=decisions
    ).jobs
    assert build_report(ack_job, {}).gaps == ()


def test_a_job_without_any_data_has_every_interval_as_a_gap() -> None:
    job = price_job([res("hwt", "home")], [("hwt", "home")], hours("2025-03-11", 10, 2))
    (hwt,) = job.targets
    result = build_report(job, {hwt: series(hwt, [None, None])})
    assert result.request is None
    assert [interval for _, interval in result.gaps] == list(hwt.intervals)


# --- EnergyUsage ---------------------------------------------------------------------------


def test_energy_usage_body_is_exact() -> None:
    job = price_job(
        [res("hwt", "home", "707057500012345678"), res("ev", "home")],
        [("hwt", "home"), ("ev", "home")],
        hours("2025-03-11", 10, 2),
    )
    hwt, ev = job.targets
    result = build_report(job, {hwt: series(hwt, [2.4, 3.1]), ev: series(ev, [0.0, 11.5])})
    assert body_json(result) == {
        "eventId": EVENT,
        "payloads": [
            {
                "payloadType": "EnergyUsage",
                "resourceId": "hwt",
                "resolution": "01:00:00",
                "locationId": "home",
                "meterPointId": "707057500012345678",
                "points": [
                    {"timestamp": "2025-03-11T10:00:00+00:00", "kiloWattHours": 2.4},
                    {"timestamp": "2025-03-11T11:00:00+00:00", "kiloWattHours": 3.1},
                ],
            },
            {
                "payloadType": "EnergyUsage",
                "resourceId": "ev",
                "resolution": "01:00:00",
                "locationId": "home",
                "points": [
                    {"timestamp": "2025-03-11T10:00:00+00:00", "kiloWattHours": 0.0},
                    {"timestamp": "2025-03-11T11:00:00+00:00", "kiloWattHours": 11.5},
                ],
            },
        ],
    }
    assert result.notes == ()
    start = dt.datetime(2025, 3, 11, 10, tzinfo=UTC).timestamp()
    assert result.table == [
        ("resource 'hwt'", start, 2.4),
        ("resource 'hwt'", start + 3600, 3.1),
        ("resource 'ev'", start, 0.0),
        ("resource 'ev'", start + 3600, 11.5),
    ]


def test_intervals_without_data_are_absent_not_zero() -> None:
    job = price_job([res("hwt", "home")], [("hwt", "home")], hours("2025-03-11", 10, 4))
    (hwt,) = job.targets
    result = build_report(job, {hwt: series(hwt, [1.0, None, 0.0, None])})
    (payload,) = body_json(result)["payloads"]
    assert payload["points"] == [
        {"timestamp": "2025-03-11T10:00:00+00:00", "kiloWattHours": 1.0},
        {"timestamp": "2025-03-11T12:00:00+00:00", "kiloWattHours": 0.0},
    ]
    assert result.notes == (
        "resource 'hwt': 2 of 4 intervals have no data: left out, not reported as 0",
    )
    assert [kwh for _, _, kwh in result.table] == [1.0, None, 0.0, None]


def test_a_target_without_any_data_gets_no_payload() -> None:
    job = price_job(
        [res("hwt", "home"), res("ev", "home"), res("pump", "home")],
        [("hwt", "home"), ("ev", "home"), ("pump", "home")],
        hours("2025-03-11", 10, 2),
    )
    hwt, ev, pump = job.targets
    result = build_report(job, {hwt: series(hwt, [None, None]), ev: series(ev, [0.5, 0.25])})
    assert [p["resourceId"] for p in body_json(result)["payloads"]] == ["ev"]
    assert result.notes == (
        "resource 'hwt': no data in any interval: payload left out",
        "resource 'pump': no energy was read: payload left out",
    )
    assert len(result.table) == 6
    assert [kwh for label, _, kwh in result.table if label == "resource 'pump'"] == [None, None]
    assert pump not in {hwt, ev}


def test_no_data_at_all_means_no_request() -> None:
    job = price_job([res("hwt", "home")], [("hwt", "home")], hours("2025-03-11", 10, 2))
    (hwt,) = job.targets
    for energy in ({}, {hwt: series(hwt, [None, None])}):
        result = build_report(job, energy)
        assert result.request is None
        assert result.body is None
        assert result.notes[-1] == "no target has any data: nothing to report"


@pytest.mark.parametrize(
    ("kwh", "sent", "text"),
    [
        (2.4000000000000004, 2.4, "2.4"),
        (0.1 + 0.2, 0.3, "0.3"),
        (1.2345674999, 1.234567, "1.234567"),
        (1.2345675001, 1.234568, "1.234568"),
        (0.0000004, 0.0, "0.0"),
        (0.0000005001, 0.000001, "1e-6"),
        (-0.0, 0.0, "0.0"),
        (123456.789, 123456.789, "123456.789"),
        (0.001, 0.001, "0.001"),
    ],
)
def test_kwh_are_rounded_to_6_decimals_when_encoding(kwh: float, sent: float, text: str) -> None:
    big = {**res("hwt", "home"), "max_kw": 200_000.0}  # 123 MWh in an hour is plausible here
    job = price_job([big], [("hwt", "home")], hours("2025-03-11", 10, 1))
    (hwt,) = job.targets
    result = build_report(job, {hwt: series(hwt, [kwh])})
    (point,) = body_json(result)["payloads"][0]["points"]
    assert point["kiloWattHours"] == sent
    assert math.copysign(1.0, point["kiloWattHours"]) == 1.0
    assert result.body is not None
    assert f'"kiloWattHours":{text}}}'.encode() in result.body
    assert result.table[0][2] == sent
    assert KWH_DECIMALS == 6


@pytest.mark.parametrize("kwh", [-0.000001, -5.0, math.nan, math.inf, -math.inf])
def test_impossible_energy_is_refused(kwh: float) -> None:
    job = price_job([res("hwt", "home")], [("hwt", "home")], hours("2025-03-11", 10, 2))
    (hwt,) = job.targets
    with pytest.raises(ReportInvalid) as caught:
        build_report(job, {hwt: series(hwt, [1.0, kwh])})
    assert caught.value.field == "payloads[0].points[1].kiloWattHours"


@pytest.mark.parametrize(
    ("kwh", "ok"),
    [(10.0, True), (10.000001, True), (10.001, False), (2.78e297, False), (0.0, True)],
)
def test_energy_beyond_max_kw_is_refused(kwh: float, ok: bool) -> None:
    """A 10 kW resource cannot use more than 10 kWh in an hour (a float margin aside)."""
    small = {**res("hwt", "home"), "max_kw": 10.0}
    job = price_job([small], [("hwt", "home")], hours("2025-03-11", 10, 1))
    (hwt,) = job.targets
    assert (hwt.max_kw, hwt.direction) == (10.0, "import")
    if ok:
        assert body_json(build_report(job, {hwt: series(hwt, [kwh])}))["payloads"]
        return
    with pytest.raises(ReportInvalid, match=r"not possible for import at most 10\.0 kW") as caught:
        build_report(job, {hwt: series(hwt, [kwh])})
    assert caught.value.field == "payloads[0].points[0].kiloWattHours"


def test_the_default_max_kw_refuses_the_delivered_absurd_value() -> None:
    job = price_job([res("hwt", "home")], [("hwt", "home")], hours("2025-03-11", 10, 1))
    (hwt,) = job.targets
    with pytest.raises(ReportInvalid, match=r"2\.78e\+297"):
        build_report(job, {hwt: series(hwt, [2.78e297])})


@pytest.mark.parametrize(("kwh", "ok"), [(-4.5, True), (-5.0, True), (-5.01, False)])
def test_a_net_target_may_report_export_as_negative_kwh(kwh: float, ok: bool) -> None:
    battery = {**res("bat", "home"), "direction": "net", "max_kw": 5.0}
    job = price_job([battery], [("bat", "home")], hours("2025-03-11", 10, 2))
    (bat,) = job.targets
    assert bat.direction == "net"
    if not ok:
        with pytest.raises(ReportInvalid, match="not possible for net"):
            build_report(job, {bat: series(bat, [1.0, kwh])})
        return
    points = body_json(build_report(job, {bat: series(bat, [1.0, kwh])}))["payloads"][0]["points"]
    assert [p["kiloWattHours"] for p in points] == [1.0, kwh]  # the contract has no minimum


def test_misaligned_energy_is_refused() -> None:
    job = price_job([res("hwt", "home")], [("hwt", "home")], hours("2025-03-11", 10, 2))
    (hwt,) = job.targets
    with pytest.raises(ReportInvalid, match="1 energy values for 2 intervals"):
        build_report(job, {hwt: [measured(hwt.intervals[0], 1.0)]})
    shifted = [measured((s + 3600, e + 3600), 1.0) for s, e in hwt.intervals]
    with pytest.raises(ReportInvalid, match="given for interval"):
        build_report(job, {hwt: shifted})
    nudged = [measured((s + 1e-6, e), 1.0) for s, e in hwt.intervals]
    assert build_report(job, {hwt: nudged}).request is not None  # float noise is not misalignment


def test_volue_vector_timestamps_are_the_events_own_as_spark_wrote_them() -> None:
    note, _ = wire.decode_notification((VECTORS / "price-curve-event.json").read_bytes())
    payload = wire.decode_event_payload(note.payload)  # as the scheduler reads it back
    assert isinstance(payload, wire.PriceCurve)
    payload = msgspec.structs.replace(
        payload, targets=[wire.PriceCurveTarget(resource_id="hwt", location_id="home")]
    )
    (job,) = plan_event(
        note.event_id,
        payload,
        make_config([res("hwt", "home")]),
        now=NOW,
        received_at=VECTOR_ARRIVED,
    ).jobs
    (hwt,) = job.targets
    result = build_report(job, {hwt: series(hwt, [0.5 * i for i in range(24)])})
    (sent,) = body_json(result)["payloads"]
    assert sent["resolution"] == "01:00:00"
    assert sent["points"][0] == {
        "timestamp": "2024-09-12T13:48:47.1936858+00:00",
        "kiloWattHours": 0.0,
    }
    assert sent["points"][2]["timestamp"] == "2024-09-12T15:48:47.194055+00:00"
    assert result.request is not None
    (usage,) = result.request.payloads
    assert isinstance(usage, wire.EnergyUsage)
    assert [p.timestamp for p in usage.points] == [
        p.timestamp for p in payload.price_curve_delta.points
    ]
    assert all(p.timestamp.utcoffset() == dt.timedelta(0) for p in usage.points)


def test_ten_second_curve_at_odd_sub_seconds_keeps_its_timestamps() -> None:
    stamps = [f"2025-03-11T10:00:{s:02d}.1234567+00:00" for s in (3, 13, 23)]
    job = price_job([res("hwt", "home")], [("hwt", "home")], stamps, "00:00:10")
    (hwt,) = job.targets
    result = build_report(job, {hwt: series(hwt, [0.001, None, 0.002])})
    (sent,) = body_json(result)["payloads"]
    assert sent["resolution"] == "00:00:10"
    assert sent["points"] == [
        {"timestamp": "2025-03-11T10:00:03.1234567+00:00", "kiloWattHours": 0.001},
        {"timestamp": "2025-03-11T10:00:23.1234567+00:00", "kiloWattHours": 0.002},
    ]


def test_offset_timestamps_are_written_in_utc() -> None:
    job = price_job([res("hwt", "home")], [("hwt", "home")], ["2025-03-11T12:00:00+02:00"])
    (hwt,) = job.targets
    (sent,) = body_json(build_report(job, {hwt: series(hwt, [1.0])}))["payloads"]
    assert sent["points"] == [{"timestamp": "2025-03-11T10:00:00Z", "kiloWattHours": 1.0}]


def test_interpolated_values_are_sent_and_noted() -> None:
    job = price_job([res("hwt", "home")], [("hwt", "home")], hours("2025-03-11", 10, 2))
    (hwt,) = job.targets
    first, second = hwt.intervals
    energy = {
        hwt: [measured(first, 1.0), IntervalEnergy(*second, kwh=2.0, quality=Quality.INTERPOLATED)]
    }
    result = build_report(job, energy)
    assert len(body_json(result)["payloads"][0]["points"]) == 2
    assert result.notes == (
        "resource 'hwt': 1 of 2 values have an interval edge interpolated between readings",
    )


# --- LPC -----------------------------------------------------------------------------------


def test_location_lpc_ack_and_usage_bodies() -> None:
    config = make_config(locations=[loc("home", "707057500000000001"), loc("shop", "2")])
    quarter = [f"2025-03-12T16:{m:02d}:00+00:00" for m in (0, 15)]
    payload = location_lpc(
        [
            ("home", "707057500000000001", "01:00:00", hours("2025-03-12", 16, 2)),
            ("shop", "2", "00:15:00", quarter),
            ("barn", "9", "01:00:00", hours("2025-03-12", 16, 1)),
        ]
    )
    decisions = {
        **acknowledged(location_key("home", "707057500000000001"), location_key("shop", "2")),
        **decided(location_key("barn", "9"), "declined", "location 'barn' is not one of ours"),
    }
    plan = plan_event(EVENT, payload, config, now=NOW, received_at=NOW, decisions=decisions)
    ack_job, usage_job = plan.jobs
    ack = build_report(ack_job, {})
    assert body_json(ack) == {
        "eventId": EVENT,
        "payloads": [
            {
                "payloadType": "LocationLPCAcknowledgement",
                "acknowledgedTargets": [
                    {"locationId": "home", "meterPointId": "707057500000000001"},
                    {"locationId": "shop", "meterPointId": "2"},
                ],
                "declinedTargets": [{"locationId": "barn", "meterPointId": "9"}],
            }
        ],
    }
    assert ack.notes == ()
    assert ack.table == []
    assert usage_job.kind == LOCATION_ENERGY_USAGE
    home, shop = usage_job.targets
    usage = build_report(
        usage_job, {home: series(home, [0.0, 0.2]), shop: series(shop, [None, 0.05])}
    )
    assert body_json(usage)["payloads"] == [
        {
            "payloadType": "LocationEnergyUsage",
            "locationId": "home",
            "meterPointId": "707057500000000001",
            "resolution": "01:00:00",
            "points": [
                {"timestamp": "2025-03-12T16:00:00+00:00", "kiloWattHours": 0.0},
                {"timestamp": "2025-03-12T17:00:00+00:00", "kiloWattHours": 0.2},
            ],
        },
        {
            "payloadType": "LocationEnergyUsage",
            "locationId": "shop",
            "meterPointId": "2",
            "resolution": "00:15:00",
            "points": [{"timestamp": "2025-03-12T16:15:00+00:00", "kiloWattHours": 0.05}],
        },
    ]


def test_all_declined_location_ack_is_contract_valid() -> None:
    payload = location_lpc([("home", "1", "01:00:00", hours("2025-03-12", 16, 1))])
    (ack_job,) = plan_event(EVENT, payload, make_config(), now=NOW, received_at=NOW).jobs
    (sent,) = body_json(build_report(ack_job, {}))["payloads"]
    assert sent["payloadType"] == "LocationLPCAcknowledgement"
    assert sent["declinedTargets"] == [{"locationId": "home", "meterPointId": "1"}]


def test_resource_lpc_ack_and_usage_bodies() -> None:
    config = make_config([res("hwt", "home")])
    payload = resource_lpc(
        [
            ("hwt", "home", "707057500000000001", "01:00:00", hours("2025-03-12", 16, 2)),
            ("ghost", "home", "707057500000000001", "01:00:00", hours("2025-03-12", 16, 2)),
        ]
    )
    decisions = {
        **acknowledged(resource_key("hwt", "home", "707057500000000001")),
        **decided(
            resource_key("ghost", "home", "707057500000000001"),
            "declined",
            "resource 'ghost' is not configured at 'home'",
        ),
    }
    plan = plan_event(EVENT, payload, config, now=NOW, received_at=NOW, decisions=decisions)
    ack_job, usage_job = plan.jobs
    assert body_json(build_report(ack_job, {}))["payloads"] == [
        {
            "payloadType": "ResourceLPCAcknowledgement",
            "acknowledgedTargets": [
                {"resourceId": "hwt", "locationId": "home", "meterPointId": "707057500000000001"}
            ],
            "declinedTargets": [
                {"resourceId": "ghost", "locationId": "home", "meterPointId": "707057500000000001"}
            ],
        }
    ]
    assert usage_job.kind == ENERGY_USAGE
    (hwt,) = usage_job.targets
    usage = build_report(usage_job, {hwt: series(hwt, [1.5, 0.75])})
    assert body_json(usage)["payloads"] == [
        {
            "payloadType": "EnergyUsage",
            "resourceId": "hwt",
            "resolution": "01:00:00",
            "locationId": "home",
            "meterPointId": "707057500000000001",
            "points": [
                {"timestamp": "2025-03-12T16:00:00+00:00", "kiloWattHours": 1.5},
                {"timestamp": "2025-03-12T17:00:00+00:00", "kiloWattHours": 0.75},
            ],
        }
    ]


def test_a_job_of_unknown_kind_is_refused() -> None:
    job = price_job([res("hwt", "home")], [("hwt", "home")], hours("2025-03-11", 10, 1))
    with pytest.raises(ReportInvalid):
        build_report(dataclasses.replace(job, kind="LocationEnergyUsagePlan"), {})


# --- properties ----------------------------------------------------------------------------

RESOLUTIONS = [("00:00:10", 10), ("00:15:00", 900), ("01:00:00", 3600)]
BASE = dt.datetime(2025, 3, 11, tzinfo=UTC)
ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
kwh_values = st.one_of(
    st.none(),
    st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False),
)


@st.composite
def targets(draw: st.DrawFn, kind: str) -> Target:
    resolution, step = draw(st.sampled_from(RESOLUTIONS))
    offsets = draw(st.lists(st.integers(0, 86400 * 10**6), min_size=1, max_size=30, unique=True))
    starts = sorted(BASE + dt.timedelta(microseconds=us) for us in offsets)
    intervals = tuple((s.timestamp(), (s + dt.timedelta(seconds=step)).timestamp()) for s in starts)
    is_resource = kind == ENERGY_USAGE
    return Target(
        kind="resource" if is_resource else "location",
        resource_id=draw(ids) if is_resource else None,
        location_id=draw(ids),
        meter_point_id=draw(st.one_of(st.none(), ids)) if is_resource else draw(ids),
        adapter="meter",
        channel="energy",
        resolution=resolution,
        intervals=intervals,
        max_kw=1e9,  # every drawn value is plausible: this property is about the body
    )


@st.composite
def jobs_with_energy(draw: st.DrawFn) -> tuple[Job, dict[Target, list[IntervalEnergy | None]]]:
    kind = draw(st.sampled_from([ENERGY_USAGE, LOCATION_ENERGY_USAGE]))
    chosen = tuple(draw(st.lists(targets(kind), min_size=1, max_size=4, unique=True)))
    energy = {
        t: [
            None if v is None else measured(i, v)
            for i, v in zip(
                t.intervals,
                draw(st.lists(kwh_values, min_size=len(t.intervals), max_size=len(t.intervals))),
                strict=True,
            )
        ]
        for t in chosen
    }
    every = tuple(sorted({i for t in chosen for i in t.intervals}))
    job = Job(
        event_id=EVENT,
        kind=kind,
        due_at=every[-1][1],
        resolution=", ".join(sorted({t.resolution for t in chosen})),
        intervals=every,
        targets=chosen,
    )
    return job, energy


@settings(deadline=None, max_examples=200)
@given(jobs_with_energy())
def test_body_is_contract_valid_and_holds_exactly_the_intervals_with_data(
    case: tuple[Job, dict[Target, list[IntervalEnergy | None]]],
) -> None:
    job, energy = case
    result = build_report(job, energy)
    expected = [
        (t, [(i, round(e.kwh, 6)) for i, e in zip(t.intervals, energy[t], strict=True) if e])
        for t in job.targets
    ]
    expected = [(t, points) for t, points in expected if points]
    if not expected:
        assert result.request is None
        assert result.body is None
        return
    sent = body_json(result)["payloads"]
    assert len(sent) == len(expected)
    for payload, (target, points) in zip(sent, expected, strict=True):
        assert payload["payloadType"] == job.kind
        assert payload["locationId"] == target.location_id
        assert payload["resolution"] == target.resolution
        assert payload.get("meterPointId") == target.meter_point_id
        if job.kind == ENERGY_USAGE:
            assert payload["resourceId"] == target.resource_id
        got = [
            (dt.datetime.fromisoformat(p["timestamp"]), p["kiloWattHours"])
            for p in payload["points"]
        ]
        assert got == [(dt.datetime.fromtimestamp(i[0], UTC), kwh) for i, kwh in points]
        assert all(p["timestamp"].endswith("Z") for p in payload["points"])
        assert all(kwh >= 0 for _, kwh in got)
    assert len(result.table) == sum(len(t.intervals) for t in job.targets)


@given(st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2200, 1, 1)))
def test_epoch_seconds_keep_every_microsecond(moment: dt.datetime) -> None:
    aware = moment.replace(tzinfo=UTC)
    assert dt.datetime.fromtimestamp(aware.timestamp(), UTC) == aware
