"""gateway.contract: the OpenAPI document as a validator, on Volue's data and our own."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import contract
from gateway.errors import ReportInvalid, WireError

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "volue-partner-reference"
PACKAGED = resources.files("gateway.contract").joinpath("ec-sandbox-openapi.json")


def _vector(name: str) -> Any:
    """A Volue webhook test body (the repository keeps an unchanged copy of the vectors)."""
    return json.loads((Path(__file__).resolve().parent / "fixtures" / "volue" / name).read_bytes())


def paths(schema: str, instance: object) -> list[str]:
    return [v.path for v in contract.violations(schema, instance)]


# --- the examples the digest constructs (energy-coordination-api.md) -------------------------

PRICE_CURVE_NOTIFICATION: dict[str, Any] = {
    "notificationId": "0f6c2a1e-7d4b-4c1e-9a55-1b2c3d4e5f60",
    "eventId": "a3d9e2b4-5c6f-4a71-8b92-0c1d2e3f4a5b",
    "eventCreatedAtUtc": "2025-03-10T12:00:03.4411223+00:00",
    "notificationSentUtc": "2025-03-10T12:00:04.0019876+00:00",
    "notificationType": "PriceCurveCreated",
    "payload": {
        "payloadType": "PriceCurve",
        "targets": [{"resourceId": "gw1-hwt-0001", "locationId": "gw1-loc-0001"}],
        "priceCurveDelta": {
            "points": [
                {"price": 0.42, "timestamp": "2025-03-11T10:00:00+00:00"},
                {"price": 0.55, "timestamp": "2025-03-11T11:00:00+00:00"},
                {"price": 0.38, "timestamp": "2025-03-11T12:00:00+00:00"},
            ],
            "energyUnit": "kWh",
            "currency": "NOK",
            "resolution": "01:00:00",
        },
        "priceArea": "NO5",
    },
}

USER_ELIGIBILITY_EVENT: dict[str, Any] = {
    "id": "5e1f0c7a-2b3d-4e5f-8a9b-0c1d2e3f4a5b",
    "createdAt": "2025-03-10T08:10:00+00:00",
    "payload": {
        "payloadType": "UserEligibility",
        "lastUpdated": "2025-03-10T08:09:58+00:00",
        "addedUsers": ["gw1-user-0007", "gw1-user-0012"],
        "removedUsers": [],
    },
}

ENERGY_USAGE_REPORT: dict[str, Any] = {
    "eventId": "a3d9e2b4-5c6f-4a71-8b92-0c1d2e3f4a5b",
    "payloads": [
        {
            "payloadType": "EnergyUsage",
            "resourceId": "gw1-hwt-0001",
            "locationId": "gw1-loc-0001",
            "resolution": "01:00:00",
            "points": [
                {"timestamp": "2025-03-11T10:00:00.000Z", "kiloWattHours": 2.4},
                {"timestamp": "2025-03-11T11:00:00.000Z", "kiloWattHours": 3.1},
            ],
        }
    ],
}

LOCATION_ENERGY_USAGE_REPORT: dict[str, Any] = {
    "eventId": "7c2e9b10-1d4a-4f3b-9e8d-6a5b4c3d2e1f",
    "payloads": [
        {
            "payloadType": "LocationEnergyUsage",
            "locationId": "gw1-loc-0001",
            "meterPointId": "707057500012345678",
            "resolution": "01:00:00",
            "points": [
                {"timestamp": "2025-03-12T16:00:00.000Z", "kiloWattHours": 0.0},
                {"timestamp": "2025-03-12T17:00:00.000Z", "kiloWattHours": 0.2},
            ],
        }
    ],
}

LOCATION_ACK_REPORT: dict[str, Any] = {
    "eventId": "7c2e9b10-1d4a-4f3b-9e8d-6a5b4c3d2e1f",
    "payloads": [
        {
            "payloadType": "LocationLPCAcknowledgement",
            "acknowledgedTargets": [
                {"locationId": "gw1-loc-0001", "meterPointId": "707057500012345678"}
            ],
            "declinedTargets": [],
        }
    ],
}

RESOURCE_ACK_REPORT: dict[str, Any] = {
    "eventId": "7c2e9b10-1d4a-4f3b-9e8d-6a5b4c3d2e1f",
    "payloads": [
        {
            "payloadType": "ResourceLPCAcknowledgement",
            "acknowledgedTargets": [],
            "declinedTargets": [
                {"meterPointId": "707057500012345678", "locationId": "l", "resourceId": "r"}
            ],
        }
    ],
}

REPORTS = [ENERGY_USAGE_REPORT, LOCATION_ENERGY_USAGE_REPORT, LOCATION_ACK_REPORT]


def energy_report(**changes: Any) -> dict[str, Any]:
    """The digest's EnergyUsage report with fields of its first payload changed."""
    report = copy.deepcopy(ENERGY_USAGE_REPORT)
    report["payloads"][0].update(changes)
    return report


# --- the packaged document --------------------------------------------------------------------


def test_packaged_document_is_byte_identical_to_volue_reference() -> None:
    reference = REFERENCE / "ec-sandbox-openapi.json"
    if not reference.exists():
        pytest.skip(f"{reference} is not available")
    assert PACKAGED.read_bytes() == reference.read_bytes()


def test_document_is_parsed_once() -> None:
    assert contract.openapi_document() is contract.openapi_document()
    assert contract.openapi_document()["info"]["title"]


def test_every_component_translates_and_compiles() -> None:
    names = contract.schema_names()
    assert {"PostReportRequest", "EventNotification", "GetEventsResponse"} <= set(names)
    for name in names:
        schema = contract.json_schema(name)
        assert "$ref" not in json.dumps(schema), name
        assert "nullable" not in json.dumps(schema), name
        assert contract._compile(schema) is not None, name  # no silent slow path


def test_unknown_schema_names_are_refused() -> None:
    with pytest.raises(ValueError, match="NoSuchSchema"):
        contract.violations("NoSuchSchema", {})


# --- Volue's data validates -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["price-curve-event.json", "user-eligibility-event.json"])
def test_volue_webhook_bodies_are_event_notifications(name: str) -> None:
    body = _vector(name)
    assert contract.violations("EventNotification", body) == []
    contract.check("EventNotification", body)


def test_volue_price_curve_vector_has_seven_fraction_digits_and_empty_targets() -> None:
    body = _vector("price-curve-event.json")
    assert body["payload"]["priceCurveDelta"]["points"][0]["timestamp"].endswith(".1936858+00:00")
    assert body["payload"]["targets"] == []


def _spec_examples() -> list[tuple[str, str, Any]]:
    """(where, schema, example) for every example on the event, report and webhook paths."""
    found = []
    for path, operations in contract.openapi_document()["paths"].items():
        if not path.startswith(("/events", "/reports", "/webhooks")):
            continue
        for method, operation in operations.items():
            bodies = [("request", operation.get("requestBody", {}))]
            bodies += [(code, r) for code, r in operation["responses"].items()]
            for label, body in bodies:
                for media in body.get("content", {}).values():
                    if "example" in media and "$ref" in media.get("schema", {}):
                        name = media["schema"]["$ref"].rsplit("/", 1)[-1]
                        found.append((f"{method} {path} {label}", name, media["example"]))
    return found


@pytest.mark.parametrize(("where", "schema", "example"), _spec_examples(), ids=lambda v: str(v))
def test_the_specs_own_examples_validate(where: str, schema: str, example: Any) -> None:
    assert contract.violations(schema, example) == [], where


def test_the_spec_example_events_cover_every_event_type() -> None:
    example = next(e for w, s, e in _spec_examples() if s == "GetEventsResponse")
    types = {event["payload"]["payloadType"] for event in example["events"]}
    assert types == {"PriceCurve", "UserEligibility", "LocationLPC", "ResourceLPC"}


# --- the digest's constructed examples validate ------------------------------------------------


def test_digest_price_curve_notification_is_valid() -> None:
    assert contract.violations("EventNotification", PRICE_CURVE_NOTIFICATION) == []


def test_digest_user_eligibility_event_is_valid() -> None:
    assert contract.violations("GetEventResponse", USER_ELIGIBILITY_EVENT) == []


@pytest.mark.parametrize(
    "report",
    [*REPORTS, RESOURCE_ACK_REPORT],
    ids=["EnergyUsage", "LocationEnergyUsage", "LocationLPCAck", "ResourceLPCAck"],
)
def test_digest_reports_are_valid_post_report_requests(report: dict[str, Any]) -> None:
    assert contract.violations("PostReportRequest", report) == []
    contract.check("PostReportRequest", report, error=ReportInvalid)


# --- wrong things fail, naming the field ------------------------------------------------------


def test_missing_resource_id_is_named() -> None:
    report = energy_report()
    del report["payloads"][0]["resourceId"]
    [violation] = contract.violations("PostReportRequest", report)
    assert violation.path == "payloads[0].resourceId"
    assert "required" in violation.message


def test_extra_property_is_named_with_the_allowed_ones() -> None:
    [violation] = contract.violations("PostReportRequest", energy_report(kWh=1.0))
    assert violation.path == "payloads[0].kWh"
    assert "unexpected property" in violation.message
    assert "resourceId" in violation.message


def test_extra_property_at_the_root_and_in_a_point() -> None:
    report = energy_report()
    report["reportId"] = "x"
    report["payloads"][0]["points"][1]["unit"] = "kWh"
    assert paths("PostReportRequest", report) == ["reportId", "payloads[0].points[1].unit"]


def test_kilowatthours_as_string_is_named() -> None:
    report = energy_report()
    report["payloads"][0]["points"][1]["kiloWattHours"] = "3.1"
    [violation] = contract.violations("PostReportRequest", report)
    assert violation.path == "payloads[0].points[1].kiloWattHours"
    assert "number" in violation.message


def test_booleans_are_not_numbers() -> None:
    report = energy_report()
    report["payloads"][0]["points"][0]["kiloWattHours"] = True
    assert paths("PostReportRequest", report) == ["payloads[0].points[0].kiloWattHours"]


def test_bad_timestamp_is_named() -> None:
    report = energy_report()
    report["payloads"][0]["points"][0]["timestamp"] = "2025-03-11 10:00"
    [violation] = contract.violations("PostReportRequest", report)
    assert violation.path == "payloads[0].points[0].timestamp"
    assert "date-time" in violation.message


def test_unknown_report_payload_type_lists_the_allowed_ones() -> None:
    [violation] = contract.violations("PostReportRequest", energy_report(payloadType="Usage"))
    assert violation.path == "payloads[0].payloadType"
    for allowed in ("EnergyUsage", "LocationEnergyUsage", "LocationLPCAcknowledgement"):
        assert allowed in violation.message


def test_missing_report_payload_type_is_named() -> None:
    report = energy_report()
    del report["payloads"][0]["payloadType"]
    assert paths("PostReportRequest", report) == ["payloads[0].payloadType"]


def test_unknown_event_payload_type_is_named() -> None:
    event = copy.deepcopy(USER_ELIGIBILITY_EVENT)
    event["payload"]["payloadType"] = "Unknown"
    [violation] = contract.violations("GetEventResponse", event)
    assert violation.path == "payload.payloadType"
    assert "PriceCurve" in violation.message


def test_only_the_tagged_variant_is_checked() -> None:
    """A PriceCurve-shaped payload tagged UserEligibility is judged as UserEligibility only."""
    event = copy.deepcopy(USER_ELIGIBILITY_EVENT)
    event["payload"]["targets"] = []
    found = contract.violations("GetEventResponse", event)
    assert [v.path for v in found] == ["payload.targets"]
    assert "lastUpdated" in found[0].message  # the allowed list is UserEligibility's


def test_a_variant_checked_by_name_pins_its_tag() -> None:
    payload = dict(PRICE_CURVE_NOTIFICATION["payload"], payloadType="LocationLPC")
    assert paths("PriceCurvePayload", payload) == ["payloadType"]
    assert contract.violations("PriceCurvePayload", PRICE_CURVE_NOTIFICATION["payload"]) == []


def test_inherited_fields_are_not_extra() -> None:
    """allOf + additionalProperties: false would reject payloadType without the merge."""
    payload = LOCATION_ENERGY_USAGE_REPORT["payloads"][0]
    assert contract.violations("LocationEnergyUsageReportPayload", payload) == []


def test_ack_target_missing_meter_point_is_named() -> None:
    report = copy.deepcopy(LOCATION_ACK_REPORT)
    del report["payloads"][0]["acknowledgedTargets"][0]["meterPointId"]
    assert paths("PostReportRequest", report) == ["payloads[0].acknowledgedTargets[0].meterPointId"]


def test_curve_points_null_is_accepted_and_a_string_is_not() -> None:
    assert contract.violations("PostReportRequest", energy_report(curvePoints=None)) == []
    assert paths("PostReportRequest", energy_report(curvePoints="[]")) == [
        "payloads[0].curvePoints"
    ]


def test_nullable_fields_take_null_and_others_do_not() -> None:
    report = energy_report(locationId=None, meterPointId=None)
    report["eventId"] = None
    assert contract.violations("PostReportRequest", report) == []
    assert paths("PostReportRequest", energy_report(resourceId=None)) == ["payloads[0].resourceId"]


def test_nullable_enum_and_pagination() -> None:
    pagination = {"totalRecords": 0, "pageSize": 10, "currentPage": 1, "nextPage": None}
    assert contract.violations("ApiPagination", pagination) == []
    assert paths("ApiPagination", dict(pagination, currentPage=None)) == ["currentPage"]


def test_missing_notification_field_is_named() -> None:
    body = copy.deepcopy(PRICE_CURVE_NOTIFICATION)
    del body["notificationSentUtc"]
    assert paths("EventNotification", body) == ["notificationSentUtc"]


def test_nested_event_errors_carry_the_whole_path() -> None:
    body = copy.deepcopy(PRICE_CURVE_NOTIFICATION)
    body["payload"]["priceCurveDelta"]["points"][2]["price"] = "cheap"
    body["payload"]["priceArea"] = "NO9"
    assert paths("EventNotification", body) == [
        "payload.priceArea",
        "payload.priceCurveDelta.points[2].price",
    ]


def test_root_errors_have_an_empty_path() -> None:
    [violation] = contract.violations("PostReportRequest", [])
    assert violation.path == ""
    with pytest.raises(WireError) as caught:
        contract.check("PostReportRequest", [])
    assert caught.value.field == ""
    assert not str(caught.value).startswith(":")


def test_check_raises_the_requested_error_with_field() -> None:
    with pytest.raises(ReportInvalid) as caught:
        contract.check("PostReportRequest", energy_report(resolution="1h"), error=ReportInvalid)
    assert caught.value.field == "payloads[0].resolution"
    assert str(caught.value).startswith("payloads[0].resolution: ")


def test_check_passes_quietly() -> None:
    contract.check("PostReportRequest", ENERGY_USAGE_REPORT)


def test_problem_details_admit_extension_members() -> None:
    problem = {"title": "t", "status": 400, "errors": {"pageSize": ["too big"]}, "traceId": "x"}
    assert contract.violations("HttpValidationProblemDetails", problem) == []
    bad = dict(problem, errors={"pageSize": [1]})
    assert paths("HttpValidationProblemDetails", bad) == ["errors.pageSize[0]"]


# --- formats ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stamp",
    [
        "2024-09-12T13:48:47.1936858+00:00",
        "2025-03-11T10:00:00.000Z",
        "2025-03-11T10:00:00Z",
        "2025-03-11T10:00:00+00:00",
        "2025-03-11T12:00:00+02:00",
        "2025-03-11T04:30:00-05:30",
        "2024-02-29T23:59:59.9+00:00",
    ],
)
def test_date_times_dotnet_writes_are_accepted(stamp: str) -> None:
    report = energy_report(points=[{"timestamp": stamp, "kiloWattHours": 1.0}])
    assert contract.violations("PostReportRequest", report) == []


@pytest.mark.parametrize(
    "stamp",
    [
        "2025-03-11T10:00:00",  # no offset
        "2025-03-11T10:00:00.12345678+00:00",  # 8 fraction digits
        "2025-03-11 10:00:00+00:00",
        "2025-13-11T10:00:00Z",
        "2025-02-30T10:00:00Z",
        "2025-03-11T24:00:00Z",
        "2025-03-11T10:00:61Z",
        "2025-03-11T10:60:00Z",
        "2025-03-11T10:00:00+24:00",
        "2025-03-11T10:00:00+0000",
        "2025-03-11",
        "",
        "yesterday",
    ],
)
def test_bad_date_times_are_refused(stamp: str) -> None:
    report = energy_report(points=[{"timestamp": stamp, "kiloWattHours": 1.0}])
    assert paths("PostReportRequest", report) == ["payloads[0].points[0].timestamp"]


@pytest.mark.parametrize(
    "span", ["01:00:00", "00:00:10", "00:15:00", "1.00:00:00", "00:00:00.5", "23:59:59.1234567"]
)
def test_dotnet_time_spans_are_accepted(span: str) -> None:
    assert contract.violations("PostReportRequest", energy_report(resolution=span)) == []


@pytest.mark.parametrize(
    "span", ["1:00", "24:00:00", "01:60:00", "PT1H", "-01:00:00", "01:00", "3600", "01:00:00."]
)
def test_bad_time_spans_are_refused(span: str) -> None:
    assert paths("PostReportRequest", energy_report(resolution=span)) == ["payloads[0].resolution"]


def test_leap_second_is_a_valid_date_time() -> None:
    report = energy_report(points=[{"timestamp": "2016-12-31T23:59:60Z", "kiloWattHours": 1.0}])
    assert contract.violations("PostReportRequest", report) == []


@pytest.mark.parametrize(
    ("period", "ok"),
    [
        ({"from": "2025-03-01", "to": "2025-03-31"}, True),
        ({"from": "2025-W11-1"}, False),
        ({"from": "20250301"}, False),
        ({"to": "2025-02-30"}, False),
    ],
)
def test_date_format(period: dict[str, str], ok: bool) -> None:
    assert (contract.violations("Period", period) == []) is ok


def test_uuid_format() -> None:
    good = {"userId": "u", "enrollmentId": "0f6c2a1e-7d4b-4c1e-9a55-1b2c3d4e5f60"}
    assert contract.violations("GetUserEnrollmentResponse", good) == []
    bad = dict(good, enrollmentId="not-a-uuid")
    assert paths("GetUserEnrollmentResponse", bad) == ["enrollmentId"]


# --- the compiled accept-path agrees with jsonschema ------------------------------------------

SEEDS: list[tuple[str, Any]] = [
    ("PostReportRequest", ENERGY_USAGE_REPORT),
    ("PostReportRequest", LOCATION_ENERGY_USAGE_REPORT),
    ("PostReportRequest", LOCATION_ACK_REPORT),
    ("PostReportRequest", RESOURCE_ACK_REPORT),
    ("EventNotification", PRICE_CURVE_NOTIFICATION),
    ("GetEventResponse", USER_ELIGIBILITY_EVENT),
    *[(s, e) for _, s, e in _spec_examples()],
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(
        [
            "",
            "01:00:00",
            "2025-03-11T10:00:00Z",
            "2025-03-11T10:00:00",
            "EnergyUsage",
            "PriceCurve",
            "NOK",
            "x",
        ]
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


def _nodes(value: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [here]
    if isinstance(value, dict):
        for key, sub in value.items():
            found += _nodes(sub, (*here, key))
    elif isinstance(value, list):
        for index, sub in enumerate(value):
            found += _nodes(sub, (*here, index))
    return found


def _mutate(document: Any, data: st.DataObject) -> Any:
    document = copy.deepcopy(document)
    target = data.draw(st.sampled_from(_nodes(document)))
    if not target:
        return data.draw(json_values)
    parent = document
    for part in target[:-1]:
        parent = parent[part]
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    last = target[-1]
    if action == "replace":
        parent[last] = data.draw(json_values)
    elif action == "delete" and isinstance(parent, dict):
        del parent[last]
    elif isinstance(parent, dict):
        parent[data.draw(st.sampled_from(["extra", "payloadType", "points", last]))] = data.draw(
            json_values
        )
    else:
        parent.append(copy.deepcopy(parent[last]))
    return document


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fast_path_and_jsonschema_agree_on_mutated_documents(data: st.DataObject) -> None:
    schema, seed = data.draw(st.sampled_from(SEEDS))
    for _ in range(data.draw(st.integers(1, 3))):
        seed = _mutate(seed, data)
    fast = contract._fast_check(schema)(seed)
    slow = contract._validator(schema).is_valid(seed)
    assert fast == slow, (schema, seed)
    assert (contract.violations(schema, seed) == []) == slow
