"""Wire types: Volue's own vectors, tolerant inbound decoding, UTC outbound encoding."""

from __future__ import annotations

import datetime as dt
import gc
import json
import weakref
from pathlib import Path

import pytest

from gateway import contract, wire
from gateway.config import parse_config
from gateway.errors import WireError
from gateway.lifecycle import settled
from gateway.metering.energy import IntervalEnergy, Quality
from gateway.reports.builder import build_report
from gateway.reports.planner import plan_event
from tests.conftest import vector


def test_volue_price_curve_vector_decodes_with_tag_last_and_7_digit_fractions() -> None:
    body, _, _ = vector("price-curve-event.json")
    note, payload = wire.decode_notification(body)
    assert note.event_id == "1cc9ea41-59a4-453e-8c3a-2385b900a0a9"
    assert note.notification_type == "PriceCurveCreated"
    assert isinstance(payload, wire.PriceCurve)
    assert payload.price_area == "SE1"
    assert len(payload.price_curve_delta.points) == 24
    first = payload.price_curve_delta.points[0].timestamp
    # 13:48:47.1936858 -> microseconds (the 7th digit rounds), in UTC
    assert first == dt.datetime(2024, 9, 12, 13, 48, 47, 193686, tzinfo=dt.UTC)


def test_a_decoded_notification_leaves_nothing_for_the_cycle_collector_to_track() -> None:
    # a price curve is dozens of structs: tracked, a burst of them set off a collection
    # every few notifications (see Wire's gc=False)
    body, _, _ = vector("price-curve-event.json")
    note, payload = wire.decode_notification(body)
    assert isinstance(payload, wire.PriceCurve)
    structs = [note, payload, payload.price_curve_delta, *payload.price_curve_delta.points]
    assert not [s for s in structs if gc.is_tracked(s)]


def test_settled_freezes_while_it_lasts_then_hands_everything_back_to_the_collector() -> None:
    class Node:
        pass

    def cycle(kept: weakref.WeakSet[object]) -> None:
        node = Node()
        node.self = node  # type: ignore[attr-defined]
        kept.add(node)

    before, during = weakref.WeakSet[object](), weakref.WeakSet[object]()
    gc.disable()  # no automatic collection between the steps
    try:
        cycle(before)
        strong = list(before)
        with settled():
            assert gc.get_freeze_count() > 0
            del strong  # made before: frozen, so not collected while settled
            gc.collect()
            assert len(before) == 1
            cycle(during)
            gc.collect()
            assert len(during) == 0  # made while settled: collected as before
        assert gc.get_freeze_count() == 0
        gc.collect()
        assert len(before) == 0  # handed back on the way out
    finally:
        gc.enable()
        gc.unfreeze()


def test_volue_user_eligibility_vector_decodes() -> None:
    body, _, _ = vector("user-eligibility-event.json")
    _, payload = wire.decode_notification(body)
    assert isinstance(payload, wire.UserEligibility)
    assert payload.added_users == ["6d263c2b-2074-4146-121f-67d702a6d9a6"]
    assert payload.removed_users == ["cc7f94bd-5888-6abb-ce63-cce87228bc33"]


def test_any_offset_is_read_and_converted_to_utc() -> None:
    raw = (
        b'{"payloadType":"LocationLPC","targets":[{"locationId":"l","meterPointId":"m",'
        b'"resolution":"01:00:00","points":[{"timestamp":"2025-03-11T12:00:00.1234567+02:00",'
        b'"maxPowerInKiloWatts":0}]}]}'
    )
    payload = wire.decode_event_payload(raw)
    assert isinstance(payload, wire.LocationLPC)
    stamp = payload.targets[0].points[0].timestamp
    assert stamp.astimezone(dt.UTC) == dt.datetime(2025, 3, 11, 10, 0, 0, 123457, tzinfo=dt.UTC)


@pytest.mark.parametrize("tag", ["Unknown", "SomethingNew2027", ""])
def test_unknown_payload_type_is_kept_raw_not_an_error(tag: str) -> None:
    raw = json.dumps({"foo": [1, 2], "payloadType": tag}).encode()
    payload = wire.decode_event_payload(raw)
    assert isinstance(payload, wire.UnknownPayload)
    assert payload.raw == raw


def test_unknown_fields_and_enum_values_are_tolerated() -> None:
    raw = json.dumps(
        {
            "payloadType": "PriceCurve",
            "newField": {"x": 1},
            "priceArea": "NO9",
            "targets": [{"resourceId": "r", "locationId": "l", "extra": True}],
            "priceCurveDelta": {
                "points": [],
                "resolution": "00:15:00",
                "currency": "XBT",
                "energyUnit": "GWh",
            },
        }
    ).encode()
    payload = wire.decode_event_payload(raw)
    assert isinstance(payload, wire.PriceCurve)
    assert payload.price_area == "NO9"


def test_field_errors_name_the_field() -> None:
    raw = (
        b'{"payloadType":"PriceCurve","targets":[{"resourceId":1,"locationId":"l"}],'
        b'"priceCurveDelta":{}}'
    )
    with pytest.raises(WireError) as err:
        wire.decode_event_payload(raw)
    assert err.value.field == "payload.targets[0].resourceId"


def test_timestamp_without_offset_is_refused() -> None:
    raw = (
        b'{"payloadType":"UserEligibility","lastUpdated":"2025-01-01T00:00:00",'
        b'"addedUsers":[],"removedUsers":[]}'
    )
    with pytest.raises(WireError):
        wire.decode_event_payload(raw)


def test_report_is_written_in_utc_camel_case_without_unset_fields() -> None:
    request = wire.PostReportRequest(
        event_id="e1",
        payloads=[
            wire.EnergyUsage(
                resource_id="r1",
                location_id="l1",
                resolution="01:00:00",
                points=[
                    wire.EnergyCurvePoint(
                        timestamp=dt.datetime(2025, 3, 11, 10, tzinfo=dt.UTC), kilo_watt_hours=2.4
                    )
                ],
            ),
            wire.LocationLPCAcknowledgement(
                acknowledged_targets=[
                    wire.LPCLocation(location_id="l1", meter_point_id="707057500012345678")
                ],
                declined_targets=[],
            ),
        ],
    )
    data = json.loads(wire.encode(request))
    assert data == {
        "eventId": "e1",
        "payloads": [
            {
                "payloadType": "EnergyUsage",
                "resourceId": "r1",
                "resolution": "01:00:00",
                "locationId": "l1",
                "points": [{"timestamp": "2025-03-11T10:00:00Z", "kiloWattHours": 2.4}],
            },
            {
                "payloadType": "LocationLPCAcknowledgement",
                "acknowledgedTargets": [{"locationId": "l1", "meterPointId": "707057500012345678"}],
                "declinedTargets": [],  # always written, as in Spark's examples
            },
        ],
    }
    assert wire.report_kind(request) == "EnergyUsage+LocationLPCAcknowledgement"


def test_polled_page_decodes_with_pagination() -> None:
    body, _, _ = vector("user-eligibility-event.json")
    note = json.loads(body)
    page = {
        "events": [
            {"id": "e", "createdAt": "2025-01-01T00:00:00+00:00", "payload": note["payload"]}
        ],
        "pagination": {
            "totalRecords": 1,
            "pageSize": 1,
            "currentPage": 1,
            "totalPages": 1,
            "nextPage": None,
            "previousPage": None,
        },
    }
    reply = wire.decode_events_page(json.dumps(page).encode())
    assert reply.pagination.next_page is None
    event, payload = wire.decode_polled_event(bytes(reply.events[0]))
    assert event.id == "e"
    assert isinstance(payload, wire.UserEligibility)


# --- the boundary: what the gateway cannot represent is refused, naming the field ----------

NOTE = {
    "notificationId": "n1",
    "eventId": "e1",
    "eventCreatedAtUtc": "2025-03-10T12:00:00Z",
    "notificationSentUtc": "2025-03-10T12:00:01Z",
    "notificationType": "PriceCurveCreated",
    "payload": {
        "payloadType": "PriceCurve",
        "targets": [{"resourceId": "r", "locationId": "l"}],
        "priceCurveDelta": {
            "points": [{"price": 0.5, "timestamp": "2025-03-11T10:00:00+00:00"}],
            "resolution": "01:00:00",
        },
        "priceArea": "NO5",
    },
}


def note_with(path: str, value: object) -> bytes:
    """NOTE with the value at a dotted path (list indexes as numbers) replaced."""
    data = json.loads(json.dumps(NOTE))
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    return json.dumps(data).encode()


def refused(body: bytes) -> WireError:
    with pytest.raises(WireError) as err:
        wire.decode_notification(body)
    return err.value


@pytest.mark.parametrize(
    "stamp",
    [
        "0001-01-01T00:00:00+01:00",  # overflows when converted to UTC
        "9999-12-31T23:00:00Z",
        "9999-12-31T23:59:59-01:00",  # overflows the other way
        "1999-12-31T23:59:59Z",
        "2000-01-01T00:30:00+01:00",  # 1999 in UTC
        "2200-01-01T00:00:01Z",
        "2025-02-30T00:00:00Z",
        "2025-03-11T10:00:00+24:00",
        "2025-03-11T10:00:00",
        "yesterday",
    ],
)
@pytest.mark.parametrize(
    "field",
    [
        "eventCreatedAtUtc",
        "notificationSentUtc",
        "payload.priceCurveDelta.points.0.timestamp",
    ],
)
def test_timestamps_outside_2000_2200_are_refused_naming_the_field(field: str, stamp: str) -> None:
    error = refused(note_with(field, stamp))
    assert error.field == field.replace(".0.", "[0].")


@pytest.mark.parametrize(
    "stamp", ["2000-01-01T00:00:00Z", "2200-01-01T00:00:00Z", "2199-12-31T23:00:00-01:00"]
)
def test_timestamps_at_the_edges_are_accepted(stamp: str) -> None:
    body = note_with("payload.priceCurveDelta.points.0.timestamp", stamp)
    wire.decode_notification(body)  # the webhook's check
    payload = wire.decode_event_payload(json.dumps(json.loads(body)["payload"]).encode())
    assert isinstance(payload, wire.PriceCurve)
    assert payload.price_curve_delta.points[0].timestamp.text == stamp


@pytest.mark.parametrize(
    "resolution", ["99999999.00:00:00", "1.00:00:01", "00:00:00", "00:00:00.5", "25:00:00", "x", ""]
)
def test_resolutions_outside_a_second_to_a_day_are_refused(resolution: str) -> None:
    error = refused(note_with("payload.priceCurveDelta.resolution", resolution))
    assert error.field == "payload.priceCurveDelta.resolution"
    lpc = (
        b'{"payloadType":"LocationLPC","targets":[{"locationId":"l","meterPointId":"m",'
        b'"resolution":' + json.dumps(resolution).encode() + b',"points":[]}]}'
    )
    with pytest.raises(WireError) as err:
        wire.decode_event_payload(lpc)
    assert err.value.field == "payload.targets[0].resolution"


@pytest.mark.parametrize(
    ("written", "normal"),
    [
        ("01:00:00", "01:00:00"),
        ("1:00:00", "01:00:00"),
        ("01:00:00.0000000", "01:00:00"),
        ("00:15:00", "00:15:00"),
        ("00:00:01", "00:00:01"),
        ("1.00:00:00", "1.00:00:00"),
        ("PT1H", "01:00:00"),
        ("PT15M", "00:15:00"),
        ("P1D", "1.00:00:00"),
    ],
)
def test_resolutions_are_normalised_to_hh_mm_ss(written: str, normal: str) -> None:
    _, payload = wire.decode_notification(note_with("payload.priceCurveDelta.resolution", written))
    assert isinstance(payload, wire.PriceCurve)
    assert payload.price_curve_delta.resolution == normal


@pytest.mark.parametrize("field", ["eventId", "notificationId"])
@pytest.mark.parametrize("value", [12345, "", None, "x" * 257, ["e"]])
def test_ids_must_be_non_empty_strings(field: str, value: object) -> None:
    assert refused(note_with(field, value)).field == field


@pytest.mark.parametrize("number", [b"1e999", b"-1e400", b"NaN", b"Infinity"])
def test_non_finite_numbers_are_refused(number: bytes) -> None:
    body = note_with("payload.priceCurveDelta.points.0.price", 0.5).replace(b"0.5", number)
    error = refused(body)
    assert "payload" in str(error) or "malformed" in str(error)


def deep(levels: int) -> object:
    value: object = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_nesting_is_limited_before_decoding() -> None:
    body = note_with("payload.extra", "X").replace(b'"X"', b"[" * 10_000 + b"]" * 10_000)
    error = refused(body)  # not RecursionError
    assert "nested deeper than" in str(error)
    with pytest.raises(WireError, match="nested deeper than"):
        wire.decode_event_payload(
            b'{"payloadType":"PriceCurve","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
        )
    with pytest.raises(WireError, match="nested deeper than"):
        wire.decode_report_request(b'{"eventId":"e","payloads":' + b"[" * 5000 + b"]" * 5000 + b"}")
    # brackets inside strings are not nesting
    shallow = note_with("payload.extra", "[" * 10_000 + '\\"' + "{" * 100)
    assert isinstance(wire.decode_notification(shallow)[1], wire.PriceCurve)
    for limit in (1, 5, wire.MAX_DEPTH):
        assert not wire.too_deep(json.dumps(deep(limit)).encode(), limit)
        assert wire.too_deep(json.dumps(deep(limit + 1)).encode(), limit)


def test_a_page_with_one_deep_event_still_gives_the_others_as_sent() -> None:
    good = {"id": "a", "createdAt": "2025-01-01T00:00:00Z", "payload": {"payloadType": "X"}}
    bad = {"id": "b", "payload": {"payloadType": "UserEligibility", "x": deep(10_000)}}
    other = {"id": "c", "payload": {"payloadType": "UserEligibility"}}
    body = (
        b'{"pagination":{"currentPage":1},"events":['
        + json.dumps(good).encode()
        + b","
        + b'{"id":"b","payload":{"payloadType":"UserEligibility","x":'
        + b"[" * 10_000
        + b"]" * 10_000
        + b"}},"
        + json.dumps(other).encode()
        + b"]}"
    )
    assert bad["id"] == "b"
    page = wire.decode_events_page(body)
    raws = [bytes(e) for e in page.events]
    assert len(raws) == 3
    assert raws[1].count(b"[") == 10_000 and raws[1] in body  # given back exactly as sent
    assert wire.decode_polled_event(raws[0])[0].id == "a"
    assert wire.decode_polled_event(raws[2])[0].id == "c"
    with pytest.raises(WireError, match="nested deeper than"):
        wire.decode_polled_event(raws[1])


def test_a_read_timestamp_is_written_back_exactly_as_spark_wrote_it() -> None:
    stamp = "2024-05-01T10:00:00.1234567Z"
    body = note_with("payload.priceCurveDelta.points.0.timestamp", stamp)
    wire.decode_notification(body)  # the webhook's check
    payload = wire.decode_event_payload(json.dumps(json.loads(body)["payload"]).encode())
    assert isinstance(payload, wire.PriceCurve)
    read = payload.price_curve_delta.points[0].timestamp
    assert read == dt.datetime(2024, 5, 1, 10, 0, 0, 123457, tzinfo=dt.UTC)
    point = wire.EnergyCurvePoint(timestamp=read, kilo_watt_hours=1.0)
    assert json.loads(wire.encode(point))["timestamp"] == stamp
    made = wire.SparkTime.of(
        dt.datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    )
    assert made.text is None
    written = json.loads(wire.encode(wire.EnergyCurvePoint(timestamp=made, kilo_watt_hours=1.0)))
    assert dt.datetime.fromisoformat(written["timestamp"]) == made


def test_the_openapi_report_example_with_curve_points_null_decodes() -> None:
    example = {
        "eventId": "b8c9d0e1-f2a3-4567-1234-678901234567",
        "payloads": [
            {
                "resourceId": "e5f6a7b8-c9d0-1234-ef12-345678901234",
                "locationId": None,
                "meterPointId": None,
                "points": [{"timestamp": "2026-03-03T12:00:00+00:00", "kiloWattHours": 3.14}],
                "resolution": "01:00:00",
                "curvePoints": None,
                "payloadType": "EnergyUsage",
            }
        ],
    }
    request = wire.decode_report_request(json.dumps(example).encode())
    assert isinstance(request.payloads[0], wire.EnergyUsage)
    assert request.payloads[0].curve_points is None


def test_a_report_carries_sparks_timestamps_and_a_normalised_resolution() -> None:
    """Event in -> report out, through the planner and builder as the scheduler runs them."""
    stamps = ["2024-05-01T10:00:00.1234567Z", "2024-05-01T11:00:00.1234567+00:00"]
    shifted = "2024-05-01T14:00:00.7654321+02:00"  # 12:00 UTC
    payload = {
        "payloadType": "PriceCurve",
        "targets": [{"resourceId": "hwt", "locationId": "home"}],
        "priceCurveDelta": {
            "points": [{"price": 1.0, "timestamp": s} for s in [*stamps, shifted]],
            "resolution": "PT1H",
        },
        "priceArea": "NO5",
    }
    config = parse_config(
        {
            "adapters": {"meter": {"type": "simulated"}},
            "resources": [{"resource_id": "hwt", "location_id": "home", "adapter": "meter"}],
        },
        base=Path("/"),
    )
    decoded = wire.decode_event_payload(json.dumps(payload).encode())
    (job,) = plan_event("e1", decoded, config, now=0.0, received_at=0.0).jobs
    (target,) = job.targets
    energy = [IntervalEnergy(s, e, 1.0, Quality.MEASURED) for s, e in target.intervals]
    result = build_report(job, {target: energy})
    assert result.body is not None
    contract.check("PostReportRequest", json.loads(result.body))
    (sent,) = json.loads(result.body)["payloads"]
    assert sent["resolution"] == "01:00:00"
    assert [p["timestamp"] for p in sent["points"]] == [
        *stamps,  # exactly as Spark wrote them
        "2024-05-01T12:00:00.7654321Z",  # an offset form: in UTC, every digit kept
    ]


@pytest.mark.parametrize(
    ("stamp", "written"),
    [
        ("2026-12-01T13:01:50Z", "2026-12-01T13:01:50Z"),  # the contract's form: kept as is
        ("2026-12-01T13:01:50.1234567+00:00", "2026-12-01T13:01:50.1234567+00:00"),
        ("2026-12-01 13:01:50Z", "2026-12-01T13:01:50Z"),  # a space for T
        ("2026-12-01t13:01:50z", "2026-12-01T13:01:50Z"),
        ("2026-12-01T13:01:50.000000000Z", "2026-12-01T13:01:50.0000000Z"),  # 9 digits
        ("2026-12-01T13:01:50.123456789Z", "2026-12-01T13:01:50.1234567Z"),
        ("2026-12-01 14:01:50.123456789+01:00", "2026-12-01T13:01:50.1234567Z"),
        ("2026-12-01T13:01:50-00:00", "2026-12-01T13:01:50Z"),
    ],
)
def test_a_point_timestamp_is_written_back_in_the_contracts_form(stamp: str, written: str) -> None:
    """A report echoes the event's timestamps; one msgspec reads but the contract's
    ``date-time`` refuses would lose the report, so it is written in the contract's form."""
    body = note_with("payload.priceCurveDelta.points.0.timestamp", stamp)
    wire.decode_notification(body)  # the webhook's check: accepted, so a report is owed
    payload = wire.decode_event_payload(json.dumps(json.loads(body)["payload"]).encode())
    assert isinstance(payload, wire.PriceCurve)
    point = payload.price_curve_delta.points[0]
    text = point.timestamp.utc_text()
    assert text == written
    contract.check("EnergyCurvePoint", {"timestamp": text, "kiloWattHours": 1.0})


def _points_payload(kind: str, stamps: list[str]) -> bytes:
    """A payload of ``kind`` whose (first) list of points has these timestamps."""
    if kind == "PriceCurve":
        points = [{"timestamp": s, "price": 1.0} for s in stamps]
        return json.dumps(
            {"payloadType": kind, "targets": [], "priceCurveDelta": {"points": points}}
        ).encode()
    target: dict[str, object] = {"locationId": "l", "meterPointId": "m", "resolution": "01:00:00"}
    if kind == "ResourceLPC":
        target["resourceId"] = "r"
    target["points"] = [{"timestamp": s, "maxPowerInKiloWatts": 1.0} for s in stamps]
    return json.dumps({"payloadType": kind, "targets": [target]}).encode()


GOOD = ["2025-03-11T10:00:00Z", "2025-03-11T11:00:00+01:00"]


@pytest.mark.parametrize(
    "bad", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "2200-01-01T00:00:01Z"]
)
@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("PriceCurve", "payload.priceCurveDelta.points[2].timestamp"),
        ("LocationLPC", "payload.targets[0].points[2].timestamp"),
        ("ResourceLPC", "payload.targets[0].points[2].timestamp"),
        ("LPCReservation", "payload.targets[0].points[2].timestamp"),
    ],
)
def test_one_point_out_of_range_among_good_ones_is_named_by_its_index(
    kind: str, field: str, bad: str
) -> None:
    with pytest.raises(WireError) as err:
        wire.decode_event_payload(_points_payload(kind, [*GOOD, bad, *GOOD]))
    assert err.value.field == field
    assert "outside 2000-01-01..2200-01-01" in str(err.value)
    wire.decode_event_payload(_points_payload(kind, GOOD * 12))  # fine without it


def test_points_built_in_python_are_checked_by_their_holder() -> None:
    good = wire.PriceCurvePoint(timestamp=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    naive = wire.PriceCurvePoint(timestamp=dt.datetime(2025, 1, 1))
    wire.PriceCurveDelta(points=[good])
    with pytest.raises(ValueError, match=r"points\[1\]\.timestamp: .* has no offset"):
        wire.PriceCurveDelta(points=[good, naive])
