"""Report planner: which reports each event asks for, over which targets and intervals, when."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import wire
from gateway.config import DEFAULT_MAX_KW, Config, parse_config
from gateway.control.targets import location_key, resource_key
from gateway.errors import WireError
from gateway.reports.planner import (
    ENERGY_USAGE,
    LOCATION_ACK,
    LOCATION_ENERGY_USAGE,
    RESOURCE_ACK,
    Job,
    Plan,
    Target,
    plan_event,
)
from tests.conftest import VECTORS

UTC = dt.UTC
EVENT = "7c2e9b10-1d4a-4f3b-9e8d-6a5b4c3d2e1f"
NOW = dt.datetime(2025, 3, 10, 12, 0, tzinfo=UTC).timestamp()
GRACE = 300.0
HOUR = 3600.0
VECTOR_ARRIVED = dt.datetime(2024, 9, 12, 12, 0, tzinfo=UTC).timestamp()
"""Before the Volue vector's window (2024-09-12 13:48 on): as if pushed when it was created."""


# --- helpers shared with test_builder ------------------------------------------------------


def make_config(
    resources: Sequence[dict[str, Any]] = (),
    locations: Sequence[dict[str, Any]] = (),
    *,
    grace: str = "5m",
    max_wait: str = "6h",
) -> Config:
    return parse_config(
        {
            "adapters": {"meter": {"type": "simulated"}, "other": {"type": "simulated"}},
            "reporting": {"grace": grace, "max_wait": max_wait},
            "resources": list(resources),
            "locations": list(locations),
        },
        base=Path("."),
    )


def res(
    resource_id: str, location_id: str, meter_point_id: str | None = None, **extra: str
) -> dict[str, Any]:
    entry: dict[str, Any] = {"resource_id": resource_id, "location_id": location_id}
    entry["adapter"] = extra.get("adapter", "meter")
    if meter_point_id is not None:
        entry["meter_point_id"] = meter_point_id
    if "channel" in extra:
        entry["channel"] = extra["channel"]
    return entry


def loc(location_id: str, meter_point_id: str, *, adapter: str = "meter") -> dict[str, Any]:
    return {"location_id": location_id, "meter_point_id": meter_point_id, "adapter": adapter}


def stamp(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def decode(payload: dict[str, Any]) -> wire.EventPayload:
    """Through the real decoder, as events arrive."""
    return wire.decode_event_payload(json.dumps(payload).encode())


def price_curve(
    targets: Sequence[tuple[str, str]],
    stamps: Sequence[str],
    resolution: str = "01:00:00",
) -> wire.EventPayload:
    return decode(
        {
            "payloadType": "PriceCurve",
            "targets": [{"resourceId": r, "locationId": lc} for r, lc in targets],
            "priceCurveDelta": {
                "points": [{"price": 0.5, "timestamp": s} for s in stamps],
                "energyUnit": "kWh",
                "currency": "NOK",
                "resolution": resolution,
            },
            "priceArea": "NO5",
        }
    )


def lpc_points(stamps: Sequence[str]) -> list[dict[str, Any]]:
    return [{"timestamp": s, "maxPowerInKiloWatts": 0} for s in stamps]


def location_lpc(targets: Sequence[tuple[str, str, str, Sequence[str]]]) -> wire.EventPayload:
    """targets: (locationId, meterPointId, resolution, point timestamps)."""
    return decode(
        {
            "payloadType": "LocationLPC",
            "targets": [
                {"locationId": lc, "meterPointId": mp, "resolution": r, "points": lpc_points(p)}
                for lc, mp, r, p in targets
            ],
        }
    )


def resource_lpc(targets: Sequence[tuple[str, str, str, str, Sequence[str]]]) -> wire.EventPayload:
    """targets: (resourceId, locationId, meterPointId, resolution, point timestamps)."""
    return decode(
        {
            "payloadType": "ResourceLPC",
            "targets": [
                {
                    "resourceId": rid,
                    "locationId": lc,
                    "meterPointId": mp,
                    "resolution": r,
                    "points": lpc_points(p),
                }
                for rid, lc, mp, r, p in targets
            ],
        }
    )


def hours(day: str, first: int, count: int) -> list[str]:
    return [f"{day}T{h:02d}:00:00+00:00" for h in range(first, first + count)]


Decisions = dict[str, tuple[str, str]]
HOLDS = "the site can hold every cap"


def acknowledged(*keys: str) -> Decisions:
    """What the decider answers for targets the site can hold: acknowledge them."""
    return dict.fromkeys(keys, ("acknowledged", HOLDS))


def decided(key: str, decision: str, reason: str) -> Decisions:
    """One target's decision, ``acknowledged``, ``declined`` or ``left_out``, with its reason."""
    return {key: (decision, reason)}


def only_job(plan: Plan) -> Job:
    assert plan.no_report_reason is None
    assert len(plan.jobs) == 1
    return plan.jobs[0]


# --- PriceCurve ----------------------------------------------------------------------------


def test_volue_vector_has_no_targets_so_no_report() -> None:
    _, payload = wire.decode_notification((VECTORS / "price-curve-event.json").read_bytes())
    plan = plan_event("e", payload, make_config([res("hwt", "home")]), now=NOW, received_at=NOW)
    assert plan.jobs == ()
    assert plan.no_report_reason == "the event has no targets"


def test_volue_vector_with_a_target_gives_hourly_intervals_at_its_odd_seconds() -> None:
    note, payload = wire.decode_notification((VECTORS / "price-curve-event.json").read_bytes())
    assert isinstance(payload, wire.PriceCurve)
    payload = msgspec.structs.replace(
        payload, targets=[wire.PriceCurveTarget(resource_id="hwt", location_id="home")]
    )
    plan = plan_event(
        note.event_id,
        payload,
        make_config([res("hwt", "home")]),
        now=NOW,
        received_at=VECTOR_ARRIVED,
    )
    job = only_job(plan)
    assert job.kind == ENERGY_USAGE
    assert job.event_id == "1cc9ea41-59a4-453e-8c3a-2385b900a0a9"
    assert job.resolution == "01:00:00"
    assert len(job.intervals) == 24
    expected = [p.timestamp.timestamp() for p in payload.price_curve_delta.points]
    assert [start for start, _ in job.intervals] == expected
    first = dt.datetime(2024, 9, 12, 13, 48, 47, 193686, tzinfo=UTC)
    assert job.intervals[0] == (first.timestamp(), (first + dt.timedelta(hours=1)).timestamp())
    assert all(end - start == pytest.approx(HOUR) for start, end in job.intervals)
    assert job.due_at == job.intervals[-1][1] + GRACE
    assert job.acknowledgement is None
    (target,) = job.targets
    assert target.intervals == job.intervals
    assert plan.notes == ()


@pytest.mark.parametrize(
    ("resolution", "step", "count"),
    [("01:00:00", 3600, 24), ("00:15:00", 900, 96), ("00:00:10", 10, 360)],
)
def test_any_resolution_gives_contiguous_intervals(resolution: str, step: int, count: int) -> None:
    base = dt.datetime(2025, 3, 11, 10, tzinfo=UTC)
    stamps = [(base + dt.timedelta(seconds=step * i)).isoformat() for i in range(count)]
    payload = price_curve([("hwt", "home")], stamps, resolution)
    job = only_job(
        plan_event(EVENT, payload, make_config([res("hwt", "home")]), now=NOW, received_at=NOW)
    )
    assert job.resolution == resolution
    assert len(job.intervals) == count
    assert job.intervals[0] == (base.timestamp(), base.timestamp() + step)
    for (_, end), (start, _) in zip(job.intervals, job.intervals[1:], strict=False):
        assert end == start  # bit-equal: ends come from exact datetime arithmetic
    assert job.due_at == base.timestamp() + step * count + GRACE
    assert (
        plan_event(
            EVENT, payload, make_config([res("hwt", "home")]), now=NOW, received_at=NOW
        ).notes
        == ()
    )


def test_ten_second_curve_at_odd_sub_seconds() -> None:
    stamps = [f"2025-03-11T10:00:{s:02d}.1234560+00:00" for s in (3, 13, 23)]
    payload = price_curve([("hwt", "home")], stamps, "00:00:10")
    job = only_job(
        plan_event(EVENT, payload, make_config([res("hwt", "home")]), now=NOW, received_at=NOW)
    )
    start = stamp("2025-03-11T10:00:03.123456+00:00")
    assert job.intervals == (
        (start, start + 10),
        (start + 10, start + 20),
        (start + 20, start + 30),
    )


def test_sparse_unordered_duplicate_points_become_sorted_unique_intervals() -> None:
    stamps = [
        "2025-03-11T17:00:00+00:00",
        "2025-03-11T10:00:00+00:00",
        "2025-03-11T13:00:00+00:00",
        "2025-03-11T10:00:00Z",
    ]
    payload = price_curve([("hwt", "home")], stamps)
    job = only_job(
        plan_event(EVENT, payload, make_config([res("hwt", "home")]), now=NOW, received_at=NOW)
    )
    starts = [stamp(f"2025-03-11T{h}:00:00+00:00") for h in ("10", "13", "17")]
    assert job.intervals == tuple((s, s + HOUR) for s in starts)
    assert job.due_at == starts[-1] + HOUR + GRACE


def test_timestamps_with_any_offset_are_the_same_instants() -> None:
    payload = price_curve([("hwt", "home")], ["2025-03-11T12:00:00+02:00"])
    job = only_job(
        plan_event(EVENT, payload, make_config([res("hwt", "home")]), now=NOW, received_at=NOW)
    )
    assert job.intervals == ((stamp("2025-03-11T10:00:00+00:00"), stamp("2025-03-11T11:00:00Z")),)


def test_only_configured_targets_are_planned_and_the_others_noted() -> None:
    config = make_config(
        [res("hwt", "home", "707057500012345678", channel="import"), res("ev", "home")]
    )
    payload = price_curve(
        [("hwt", "home"), ("stranger", "home"), ("ev", "home")], hours("2025-03-11", 10, 2)
    )
    plan = plan_event(EVENT, payload, config, now=NOW, received_at=NOW)
    job = only_job(plan)
    assert [t.resource_id for t in job.targets] == ["hwt", "ev"]
    hwt = job.targets[0]
    assert hwt == Target(
        kind="resource",
        resource_id="hwt",
        location_id="home",
        meter_point_id="707057500012345678",
        adapter="meter",
        channel="import",
        resolution="01:00:00",
        intervals=job.intervals,
    )
    assert job.targets[1].meter_point_id is None
    assert job.targets[1].channel == "energy"
    assert plan.notes == (
        "target resource 'stranger' at location 'home' is not configured: left out",
    )


def test_a_resource_configured_at_another_location_is_not_configured() -> None:
    config = make_config([res("hwt", "cabin"), res("ev", "home")])
    payload = price_curve([("hwt", "home"), ("ev", "home")], hours("2025-03-11", 10, 1))
    plan = plan_event(EVENT, payload, config, now=NOW, received_at=NOW)
    assert [t.resource_id for t in only_job(plan).targets] == ["ev"]
    assert plan.notes == (
        "target resource 'hwt' is configured at location 'cabin', not at the event's 'home': "
        "left out",
    )


def test_no_configured_target_means_no_report_with_a_reason() -> None:
    payload = price_curve([("a", "x"), ("b", "x"), ("c", "y")], hours("2025-03-11", 10, 1))
    plan = plan_event(
        EVENT, payload, make_config([res("a", "elsewhere")]), now=NOW, received_at=NOW
    )
    assert plan.jobs == ()
    assert plan.no_report_reason == "none of the event's 3 targets is configured"
    assert len(plan.notes) == 3
    single = price_curve([("a", "x")], hours("2025-03-11", 10, 1))
    assert (
        plan_event(EVENT, single, make_config(), now=NOW, received_at=NOW).no_report_reason
        == "the event's only target is not configured"
    )


def test_a_target_listed_twice_is_planned_once() -> None:
    payload = price_curve([("hwt", "home"), ("hwt", "home")], hours("2025-03-11", 10, 1))
    job = only_job(
        plan_event(EVENT, payload, make_config([res("hwt", "home")]), now=NOW, received_at=NOW)
    )
    assert len(job.targets) == 1


def test_a_curve_without_points_is_not_reported() -> None:
    payload = price_curve([("hwt", "home")], [])
    plan = plan_event(EVENT, payload, make_config([res("hwt", "home")]), now=NOW, received_at=NOW)
    assert plan.jobs == ()
    assert plan.no_report_reason == "the event has no points"


def test_an_unreadable_resolution_never_reaches_the_planner() -> None:
    """The wire refuses it, naming the field (the poller quarantines, the webhook answers 400)."""
    with pytest.raises(WireError) as err:
        price_curve([("hwt", "home")], hours("2025-03-11", 10, 1), "hourly")
    assert err.value.field == "payload.priceCurveDelta.resolution"
    assert "hourly" in str(err.value)


def test_due_at_is_not_moved_when_already_past() -> None:
    payload = price_curve([("hwt", "home")], hours("2025-03-11", 10, 1))
    late = stamp("2025-04-02T00:00:00+00:00")
    job = only_job(
        plan_event(EVENT, payload, make_config([res("hwt", "home")]), now=late, received_at=NOW)
    )
    assert job.due_at == stamp("2025-03-11T11:05:00+00:00")
    assert job.due_at < late  # the caller sees it is due at once


def test_grace_comes_from_config() -> None:
    payload = price_curve([("hwt", "home")], hours("2025-03-11", 10, 1))
    config = make_config([res("hwt", "home")], grace="1h")
    job = only_job(plan_event(EVENT, payload, config, now=NOW, received_at=NOW))
    assert job.due_at == stamp("2025-03-11T12:00:00+00:00")


def test_overlapping_points_are_kept_and_noted() -> None:
    stamps = ["2025-03-11T10:00:00+00:00", "2025-03-11T10:30:00+00:00"]
    plan = plan_event(
        EVENT,
        price_curve([("hwt", "home")], stamps),
        make_config([res("hwt", "home")]),
        now=NOW,
        received_at=NOW,
    )
    assert len(only_job(plan).intervals) == 2
    assert len(plan.notes) == 1
    assert "overlap" in plan.notes[0]


@given(
    offsets=st.lists(st.integers(min_value=0, max_value=2 * 86400 * 10**6), max_size=60),
    step=st.sampled_from([("00:00:10", 10), ("00:15:00", 900), ("01:00:00", 3600)]),
)
def test_intervals_are_the_distinct_points_sorted(
    offsets: list[int], step: tuple[str, int]
) -> None:
    resolution, seconds = step
    base = dt.datetime(2025, 3, 11, tzinfo=UTC)
    moments = [base + dt.timedelta(microseconds=us) for us in offsets]
    payload = price_curve([("hwt", "home")], [m.isoformat() for m in moments], resolution)
    plan = plan_event(EVENT, payload, make_config([res("hwt", "home")]), now=NOW, received_at=NOW)
    if not moments:
        assert plan.no_report_reason == "the event has no points"
        return
    job = only_job(plan)
    distinct = sorted(set(moments))
    assert [dt.datetime.fromtimestamp(s, UTC) for s, _ in job.intervals] == distinct
    assert all(end - start == pytest.approx(seconds) for start, end in job.intervals)
    assert job.due_at == max(end for _, end in job.intervals) + GRACE


# --- LocationLPC ---------------------------------------------------------------------------


def test_location_lpc_acks_now_then_reports_usage_per_target_schedule() -> None:
    config = make_config(
        locations=[
            loc("home", "707057500000000001"),
            loc("shop", "707057500000000002", adapter="other"),
        ]
    )
    quarter = [f"2025-03-12T16:{m:02d}:00+00:00" for m in (0, 15, 30, 45)]
    payload = location_lpc(
        [
            ("home", "707057500000000001", "01:00:00", hours("2025-03-12", 16, 2)),
            ("shop", "707057500000000002", "00:15:00", quarter),
            ("barn", "707057500000000009", "01:00:00", hours("2025-03-12", 16, 1)),
        ]
    )
    barn = "location 'barn' is not one of this gateway's (lpc.decline_unknown)"
    decisions = {
        **acknowledged(
            location_key("home", "707057500000000001"),
            location_key("shop", "707057500000000002"),
        ),
        **decided(location_key("barn", "707057500000000009"), "declined", barn),
    }
    plan = plan_event(EVENT, payload, config, now=NOW, received_at=NOW, decisions=decisions)
    assert plan.no_report_reason is None
    ack, usage = plan.jobs
    assert ack.kind == LOCATION_ACK
    assert ack.due_at == NOW
    assert ack.targets == ()
    assert ack.intervals == ()
    assert ack.acknowledgement == wire.LocationLPCAcknowledgement(
        acknowledged_targets=[
            wire.LPCLocation(location_id="home", meter_point_id="707057500000000001"),
            wire.LPCLocation(location_id="shop", meter_point_id="707057500000000002"),
        ],
        declined_targets=[
            wire.LPCLocation(location_id="barn", meter_point_id="707057500000000009")
        ],
    )
    assert usage.kind == LOCATION_ENERGY_USAGE
    home, shop = usage.targets
    sixteen = stamp("2025-03-12T16:00:00+00:00")
    assert home == Target(
        kind="location",
        resource_id=None,
        location_id="home",
        meter_point_id="707057500000000001",
        adapter="meter",
        channel="energy",
        resolution="01:00:00",
        intervals=((sixteen, sixteen + HOUR), (sixteen + HOUR, sixteen + 2 * HOUR)),
    )
    assert shop.adapter == "other"
    assert shop.resolution == "00:15:00"
    assert shop.intervals == tuple((sixteen + 900 * i, sixteen + 900 * (i + 1)) for i in range(4))
    assert usage.intervals == tuple(sorted(set(home.intervals) | set(shop.intervals)))
    assert usage.due_at == sixteen + 2 * HOUR + GRACE
    assert usage.resolution == "00:15:00, 01:00:00"
    assert usage.acknowledgement is None
    assert plan.notes == (
        f"target location 'barn' meter point '707057500000000009': declined: {barn}",
    )


MISMATCH = location_key("home", "707057500000000099")


@pytest.mark.parametrize(
    ("decisions", "note"),
    [
        pytest.param(
            decided(
                MISMATCH, "declined", "meter point '707057500000000099' is not configured here"
            ),
            "target location 'home' meter point '707057500000000099': declined: "
            "meter point '707057500000000099' is not configured here",
            id="declined-by-the-decider",
        ),
        pytest.param(
            acknowledged(MISMATCH),
            "target location 'home' meter point '707057500000000099' is not configured "
            "(the location's meter points are ['707057500000000001']): declined",
            id="acknowledged-under-another-config",
        ),
    ],
)
def test_location_lpc_meter_point_mismatch_is_declined_and_noted(
    decisions: Decisions, note: str
) -> None:
    """The decider declines a meter point the config does not name; a stored decision that
    acknowledged it (taken before the config changed) does not make the planner acknowledge
    it either."""
    config = make_config(locations=[loc("home", "707057500000000001")])
    payload = location_lpc([("home", "707057500000000099", "01:00:00", hours("2025-03-12", 16, 1))])
    plan = plan_event(EVENT, payload, config, now=NOW, received_at=NOW, decisions=decisions)
    (ack,) = plan.jobs
    assert ack.acknowledgement == wire.LocationLPCAcknowledgement(
        acknowledged_targets=[],
        declined_targets=[
            wire.LPCLocation(location_id="home", meter_point_id="707057500000000099")
        ],
    )
    assert plan.notes == (note, "no target was acknowledged with points: no energy report")


def test_location_lpc_with_nothing_configured_still_acknowledges_by_declining() -> None:
    payload = location_lpc([("home", "1", "01:00:00", hours("2025-03-12", 16, 1))])
    plan = plan_event(EVENT, payload, make_config(), now=NOW, received_at=NOW)
    (ack,) = plan.jobs
    assert ack.kind == LOCATION_ACK
    assert isinstance(ack.acknowledgement, wire.LocationLPCAcknowledgement)
    assert ack.acknowledgement.acknowledged_targets == []
    assert len(ack.acknowledgement.declined_targets) == 1


@pytest.mark.parametrize(
    ("targets", "reason"),
    [
        ([], "the event has no targets"),
        ([("home", "1", "01:00:00", [])], "the event has no points"),
    ],
)
def test_location_lpc_without_targets_or_points_is_not_reported(
    targets: list[tuple[str, str, str, list[str]]], reason: str
) -> None:
    plan = plan_event(
        EVENT,
        location_lpc(targets),
        make_config(locations=[loc("home", "1")]),
        now=NOW,
        received_at=NOW,
    )
    assert plan.jobs == ()
    assert plan.no_report_reason == reason


def test_location_lpc_target_without_points_is_acknowledged_but_not_measured() -> None:
    config = make_config(locations=[loc("home", "1"), loc("shop", "2")])
    payload = location_lpc(
        [("home", "1", "01:00:00", []), ("shop", "2", "01:00:00", hours("2025-03-12", 16, 1))]
    )
    decisions = acknowledged(location_key("home", "1"), location_key("shop", "2"))
    plan = plan_event(EVENT, payload, config, now=NOW, received_at=NOW, decisions=decisions)
    ack, usage = plan.jobs
    assert isinstance(ack.acknowledgement, wire.LocationLPCAcknowledgement)
    assert len(ack.acknowledgement.acknowledged_targets) == 2
    assert [t.location_id for t in usage.targets] == ["shop"]
    assert any("'home'" in n and "no points" in n for n in plan.notes)


@pytest.mark.parametrize(
    ("shop", "note"),
    [
        pytest.param(
            ("declined", "listed with resolutions ['00:15:00', '01:00:00']"),
            "target location 'shop' meter point '2': declined: "
            "listed with resolutions ['00:15:00', '01:00:00']",
            id="declined-by-the-decider",
        ),
        pytest.param(
            ("acknowledged", HOLDS),
            "target location 'shop' meter point '2' is listed with resolutions "
            "['00:15:00', '01:00:00']: declined",
            id="acknowledged-all-the-same",
        ),
    ],
)
def test_location_lpc_target_listed_twice_is_merged_or_declined(
    shop: tuple[str, str], note: str
) -> None:
    """One target listed twice with one resolution is merged; with two it is declined, by the
    decider and, should a decision say otherwise, by the planner."""
    config = make_config(locations=[loc("home", "1"), loc("shop", "2")])
    payload = location_lpc(
        [
            ("home", "1", "01:00:00", hours("2025-03-12", 16, 1)),
            ("shop", "2", "01:00:00", hours("2025-03-12", 16, 1)),
            ("home", "1", "01:00:00", hours("2025-03-12", 16, 2)),
            ("shop", "2", "00:15:00", hours("2025-03-12", 18, 1)),
        ]
    )
    decisions = {**acknowledged(location_key("home", "1")), location_key("shop", "2"): shop}
    plan = plan_event(EVENT, payload, config, now=NOW, received_at=NOW, decisions=decisions)
    ack, usage = plan.jobs
    assert isinstance(ack.acknowledgement, wire.LocationLPCAcknowledgement)
    assert ack.acknowledgement.acknowledged_targets == [
        wire.LPCLocation(location_id="home", meter_point_id="1")
    ]
    assert ack.acknowledgement.declined_targets == [
        wire.LPCLocation(location_id="shop", meter_point_id="2")
    ]
    (home,) = usage.targets
    assert len(home.intervals) == 2
    assert note in plan.notes


def test_location_lpc_target_with_unreadable_resolution_never_reaches_the_planner() -> None:
    with pytest.raises(WireError) as err:
        location_lpc([("home", "1", "1h", hours("2025-03-12", 16, 1))])
    assert err.value.field == "payload.targets[0].resolution"


# --- ResourceLPC ---------------------------------------------------------------------------


def mp1(resource_id: str) -> str:
    return resource_key(resource_id, "home", "707057500000000001")


BY_THE_DECIDER = {
    **acknowledged(mp1("hwt"), mp1("ev")),
    **decided(mp1("heat"), "declined", "resource 'heat' is not configured at 'home'"),
    **decided(mp1("pump"), "declined", "configured with meter point '707057500000000005'"),
    **decided(mp1("ghost"), "declined", "resource 'ghost' is not configured at 'home'"),
}


@pytest.mark.parametrize(
    ("decisions", "notes"),
    [
        pytest.param(
            BY_THE_DECIDER,
            (
                "target resource 'heat': declined: resource 'heat' is not configured at 'home'",
                "target resource 'pump': declined: "
                "configured with meter point '707057500000000005'",
                "target resource 'ghost': declined: resource 'ghost' is not configured at 'home'",
            ),
            id="declined-by-the-decider",
        ),
        pytest.param(
            acknowledged(*map(mp1, ["hwt", "ev", "heat", "pump", "ghost"])),
            (
                "target resource 'heat' is configured at location 'cabin', not at the event's "
                "'home': declined",
                "target resource 'pump' is configured with meter point '707057500000000005', "
                "not the event's '707057500000000001': declined",
                "target resource 'ghost' at location 'home' is not configured: declined",
            ),
            id="acknowledged-under-another-config",
        ),
    ],
)
def test_resource_lpc_acks_then_energy_usage_with_the_targets_meter_point(
    decisions: Decisions, notes: tuple[str, ...]
) -> None:
    """Only configured resources are acknowledged: the decider declines the others, and a
    stored decision taken under another config does not make the planner acknowledge them."""
    config = make_config(
        [
            res("hwt", "home"),
            res("ev", "home", "707057500000000001"),
            res("heat", "cabin"),
            res("pump", "home", "707057500000000005"),
        ]
    )
    payload = resource_lpc(
        [
            ("hwt", "home", "707057500000000001", "01:00:00", hours("2025-03-12", 16, 3)),
            ("ev", "home", "707057500000000001", "01:00:00", hours("2025-03-12", 17, 1)),
            ("heat", "home", "707057500000000001", "01:00:00", hours("2025-03-12", 16, 1)),
            ("pump", "home", "707057500000000001", "01:00:00", hours("2025-03-12", 16, 1)),
            ("ghost", "home", "707057500000000001", "01:00:00", hours("2025-03-12", 16, 1)),
        ]
    )
    plan = plan_event(EVENT, payload, config, now=NOW, received_at=NOW, decisions=decisions)
    ack, usage = plan.jobs
    assert ack.kind == RESOURCE_ACK
    assert ack.due_at == NOW
    assert isinstance(ack.acknowledgement, wire.ResourceLPCAcknowledgement)

    def item(rid: str) -> wire.LPCResource:
        return wire.LPCResource(
            resource_id=rid, location_id="home", meter_point_id="707057500000000001"
        )

    assert ack.acknowledgement.acknowledged_targets == [item("hwt"), item("ev")]
    assert ack.acknowledgement.declined_targets == [item("heat"), item("pump"), item("ghost")]
    assert usage.kind == ENERGY_USAGE
    assert [t.resource_id for t in usage.targets] == ["hwt", "ev"]
    assert all(t.meter_point_id == "707057500000000001" for t in usage.targets)
    assert all(t.kind == "resource" for t in usage.targets)
    assert usage.due_at == stamp("2025-03-12T19:00:00+00:00") + GRACE
    assert plan.notes == notes


def test_resource_lpc_without_points_is_not_reported() -> None:
    payload = resource_lpc([("hwt", "home", "1", "01:00:00", [])])
    plan = plan_event(EVENT, payload, make_config([res("hwt", "home")]), now=NOW, received_at=NOW)
    assert plan.jobs == ()
    assert plan.no_report_reason == "the event has no points"


def test_resource_lpc_with_nothing_acknowledged_sends_only_the_ack() -> None:
    payload = resource_lpc([("hwt", "home", "1", "01:00:00", hours("2025-03-12", 16, 1))])
    plan = plan_event(EVENT, payload, make_config([res("other", "home")]), now=NOW, received_at=NOW)
    (ack,) = plan.jobs
    assert ack.kind == RESOURCE_ACK
    assert plan.no_report_reason is None


# --- decisions -----------------------------------------------------------------------------

LPC_STAMPS = hours("2025-03-12", 16, 2)


def lpc_config() -> Config:
    return make_config(
        [res("hwt", "home"), res("ev", "home")], [loc("home", "1"), loc("shop", "2")]
    )


def both_lpcs() -> list[tuple[wire.EventPayload, list[str]]]:
    """A LocationLPC and a ResourceLPC over two configured targets each, with their keys."""
    location = location_lpc(
        [("home", "1", "01:00:00", LPC_STAMPS), ("shop", "2", "01:00:00", LPC_STAMPS)]
    )
    resource = resource_lpc(
        [("hwt", "home", "1", "01:00:00", LPC_STAMPS), ("ev", "home", "1", "01:00:00", LPC_STAMPS)]
    )
    return [
        (location, [location_key("home", "1"), location_key("shop", "2")]),
        (resource, [resource_key("hwt", "home", "1"), resource_key("ev", "home", "1")]),
    ]


def ack_lists(plan: Plan) -> tuple[list[Any], list[Any]]:
    ack = plan.jobs[0].acknowledgement
    assert isinstance(ack, wire.LocationLPCAcknowledgement | wire.ResourceLPCAcknowledgement)
    return list(ack.acknowledged_targets), list(ack.declined_targets)


def test_without_decisions_every_lpc_target_is_declined() -> None:
    """Nothing checked that the site can hold the caps: configured targets are declined."""
    for payload, _ in both_lpcs():
        plan = plan_event(EVENT, payload, lpc_config(), now=NOW, received_at=NOW)
        (ack,) = plan.jobs
        assert ack.kind in (LOCATION_ACK, RESOURCE_ACK)
        acked, declined = ack_lists(plan)
        assert acked == []
        assert len(declined) == 2
        assert plan.notes[-1] == "no target was acknowledged with points: no energy report"
        reasons = plan.notes[:-1]
        assert len(reasons) == 2
        assert all(
            n.endswith(": declined: nothing checked that the site can hold it") for n in reasons
        )


def test_a_left_out_target_is_in_neither_list() -> None:
    config = make_config([res("hwt", "home")], [loc("home", "1")])
    why = "location 'barn' is not one of this gateway's: left out of both lists"
    payload = location_lpc(
        [("home", "1", "01:00:00", LPC_STAMPS), ("barn", "9", "01:00:00", LPC_STAMPS)]
    )
    decisions = {
        **acknowledged(location_key("home", "1")),
        **decided(location_key("barn", "9"), "left_out", why),
    }
    plan = plan_event(EVENT, payload, config, now=NOW, received_at=NOW, decisions=decisions)
    ack, usage = plan.jobs
    assert ack.acknowledgement == wire.LocationLPCAcknowledgement(
        acknowledged_targets=[wire.LPCLocation(location_id="home", meter_point_id="1")],
        declined_targets=[],
    )
    assert [t.location_id for t in usage.targets] == ["home"]
    assert plan.notes == (f"target location 'barn' meter point '9': left out: {why}",)


def test_no_report_at_all_when_every_target_is_left_out() -> None:
    """Another gateway's event: it answers alone, this one sends nothing, not even a decline."""
    for payload, keys in both_lpcs():
        decisions = dict.fromkeys(keys, ("left_out", "not one of this gateway's"))
        plan = plan_event(
            EVENT, payload, lpc_config(), now=NOW, received_at=NOW, decisions=decisions
        )
        assert plan.jobs == ()
        assert plan.no_report_reason == (
            "no target is at a location of this gateway's: nothing sent"
        )
        assert len(plan.notes) == 2
        assert all(": left out: not one of this gateway's" in n for n in plan.notes)


def test_a_target_without_a_decision_is_never_acknowledged() -> None:
    """A missing decision is no decision to hold the cap: that target is declined."""
    for payload, (first, second) in both_lpcs():
        plan = plan_event(EVENT, payload, lpc_config(), now=NOW, received_at=NOW, decisions={})
        acked, declined = ack_lists(plan)
        assert (acked, [key_of(t) for t in declined]) == ([], [first, second])
        assert plan.notes[:2] == tuple(
            f"{label}: declined: no decision was taken for it" for label in labels(payload)
        )
        decisions = acknowledged(first)
        plan = plan_event(
            EVENT, payload, lpc_config(), now=NOW, received_at=NOW, decisions=decisions
        )
        acked, declined = ack_lists(plan)
        assert ([key_of(t) for t in acked], [key_of(t) for t in declined]) == ([first], [second])
        assert plan.notes == (f"{labels(payload)[1]}: declined: no decision was taken for it",)
        _, usage = plan.jobs
        assert len(usage.targets) == 1


def labels(payload: wire.EventPayload) -> list[str]:
    """How the planner names both_lpcs() targets in its notes."""
    if isinstance(payload, wire.LocationLPC):
        return ["target location 'home' meter point '1'", "target location 'shop' meter point '2'"]
    return ["target resource 'hwt'", "target resource 'ev'"]


@given(
    verdicts=st.lists(
        st.sampled_from(["acknowledged", "declined", "left_out", "missing"]),
        min_size=2,
        max_size=2,
    ),
    kind=st.sampled_from([0, 1]),
)
def test_the_lists_follow_the_decisions_exactly(verdicts: list[str], kind: int) -> None:
    """Acknowledged: exactly the targets decided so; declined: those declined or undecided;
    left out: in neither list. No list at all: no report."""
    payload, keys = both_lpcs()[kind]
    decisions = {
        key: (verdict, "why")
        for key, verdict in zip(keys, verdicts, strict=True)
        if verdict != "missing"
    }
    plan = plan_event(EVENT, payload, lpc_config(), now=NOW, received_at=NOW, decisions=decisions)
    expect_acked = [k for k, v in zip(keys, verdicts, strict=True) if v == "acknowledged"]
    expect_declined = [
        k for k, v in zip(keys, verdicts, strict=True) if v in ("declined", "missing")
    ]
    if not expect_acked and not expect_declined:
        assert plan.jobs == ()
        assert plan.no_report_reason is not None
        return
    acked, declined = ack_lists(plan)
    assert [key_of(t) for t in acked] == expect_acked
    assert [key_of(t) for t in declined] == expect_declined
    usage = plan.jobs[1:]
    assert len(usage) == (1 if expect_acked else 0)


def key_of(item: wire.LPCLocation | wire.LPCResource) -> str:
    if isinstance(item, wire.LPCLocation):
        return location_key(item.location_id, item.meter_point_id)
    return resource_key(item.resource_id, item.location_id, item.meter_point_id)


# --- events without reports ----------------------------------------------------------------


def test_user_eligibility_is_informational() -> None:
    payload = decode(
        {
            "payloadType": "UserEligibility",
            "lastUpdated": "2025-03-10T08:09:58+00:00",
            "addedUsers": ["u1"],
            "removedUsers": [],
        }
    )
    plan = plan_event(EVENT, payload, make_config([res("hwt", "home")]), now=NOW, received_at=NOW)
    assert plan.jobs == ()
    assert plan.no_report_reason is not None
    assert "informational" in plan.no_report_reason


def test_volue_user_eligibility_vector_is_informational() -> None:
    _, payload = wire.decode_notification((VECTORS / "user-eligibility-event.json").read_bytes())
    plan = plan_event("e", payload, make_config(), now=NOW, received_at=NOW)
    assert plan.jobs == ()
    assert plan.no_report_reason is not None


def test_lpc_reservation_has_no_documented_report() -> None:
    payload = decode(
        {
            "payloadType": "LPCReservation",
            "targets": [
                {
                    "locationId": "home",
                    "meterPointId": "1",
                    "resolution": "01:00:00",
                    "points": lpc_points(hours("2025-03-12", 16, 1)),
                }
            ],
        }
    )
    plan = plan_event(
        EVENT, payload, make_config(locations=[loc("home", "1")]), now=NOW, received_at=NOW
    )
    assert plan.jobs == ()
    assert plan.no_report_reason is not None
    assert "LPCReservation" in plan.no_report_reason


def test_unknown_payload_type_is_ignored() -> None:
    payload = decode({"payloadType": "SomethingNew2027", "targets": [{"resourceId": "hwt"}]})
    assert isinstance(payload, wire.UnknownPayload)
    plan = plan_event(EVENT, payload, make_config([res("hwt", "home")]), now=NOW, received_at=NOW)
    assert plan.jobs == ()
    assert plan.no_report_reason == "payload type 'SomethingNew2027' is unknown: ignored"


def test_plans_are_immutable_and_targets_hashable() -> None:
    payload = price_curve([("hwt", "home")], hours("2025-03-11", 10, 2))
    job = only_job(
        plan_event(EVENT, payload, make_config([res("hwt", "home")]), now=NOW, received_at=NOW)
    )
    assert {job.targets[0]: 1}[job.targets[0]] == 1
    with pytest.raises(AttributeError):
        job.due_at = 0.0  # type: ignore[misc]


def test_targets_carry_their_configured_direction_and_max_kw() -> None:
    """The energy core and the builder judge each target by its own config."""
    battery = {**res("bat", "home"), "direction": "net", "max_kw": 5.0}
    site = {**loc("home", "mp-1"), "max_kw": 40.0}
    config = make_config([battery, res("hwt", "home")], [site])
    stamps = hours("2025-03-11", 10, 1)
    plan = plan_event(
        EVENT,
        price_curve([("bat", "home"), ("hwt", "home")], stamps),
        config,
        now=NOW,
        received_at=NOW,
    )
    (job,) = plan.jobs
    limits = {t.resource_id: (t.direction, t.max_kw) for t in job.targets}
    assert limits == {"bat": ("net", 5.0), "hwt": ("import", DEFAULT_MAX_KW)}
    lpc = location_lpc([("home", "mp-1", "01:00:00", stamps)])
    decisions = acknowledged(location_key("home", "mp-1"))
    _, usage = plan_event(EVENT, lpc, config, now=NOW, received_at=NOW, decisions=decisions).jobs
    ((direction, max_kw),) = {(t.direction, t.max_kw) for t in usage.targets}
    assert (direction, max_kw) == ("import", 40.0)
