"""Wire types: Volue's own vectors, tolerant inbound decoding, UTC outbound encoding."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from gateway import wire
from gateway.errors import WireError
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
    assert isinstance(wire.decode_event_payload(reply.events[0].payload), wire.UserEligibility)
