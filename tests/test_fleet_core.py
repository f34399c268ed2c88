"""The fleet's pure core: topics, who owns what, routing, report checks, access rules."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import wire
from gateway.errors import WireError
from gateway.fleet.acl import acl_file, dynamic_security
from gateway.fleet.messages import (
    HubAck,
    SiteReport,
    decode_ack,
    decode_site_report,
    encode_message,
    event_message,
)
from gateway.fleet.sites import Site, SiteTable, sites_from_mapping
from gateway.fleet.topics import Topics, check_site_id

CURVE_POINTS = [
    {"price": 0.25, "timestamp": "2026-12-02T00:00:00.1234567+00:00"},
    {"price": None, "timestamp": "2026-12-02T01:00:00+01:00"},
]


def price_curve(*targets: tuple[str, str]) -> bytes:
    return json.dumps(
        {
            "payloadType": "PriceCurve",
            "targets": [{"resourceId": r, "locationId": loc} for r, loc in targets],
            "priceCurveDelta": {"points": CURVE_POINTS, "resolution": "01:00:00"},
            "priceArea": "NO1",
        }
    ).encode()


def location_lpc(*targets: tuple[str, str]) -> bytes:
    points = [{"timestamp": "2026-12-02T00:00:00Z", "maxPowerInKiloWatts": 5.0}]
    return json.dumps(
        {
            "payloadType": "LocationLPC",
            "targets": [
                {"locationId": loc, "meterPointId": mp, "resolution": "01:00:00", "points": points}
                for loc, mp in targets
            ],
        }
    ).encode()


@pytest.fixture
def table() -> SiteTable:
    return SiteTable(
        [
            Site("site-a", frozenset({"r1", "r2"}), frozenset({"loc-a"}), frozenset({"mp-a"})),
            Site("site-b", frozenset({"r3"}), frozenset({"loc-b"})),
            Site("site-c", frozenset({"r4"}), frozenset({"loc-c"}), frozenset({"mp-c"})),
        ]
    )


def routed(table: SiteTable, raw: bytes) -> dict[str, dict[str, object]]:
    payload = wire.decode_event_payload(raw)
    return {site: json.loads(body) for site, body in table.route(payload, raw).items()}


def test_a_price_curve_goes_to_the_sites_that_own_its_resources_cut_to_their_own(
    table: SiteTable,
) -> None:
    raw = price_curve(("r1", "loc-a"), ("r3", "loc-b"), ("r2", "loc-a"), ("r-none", "x"))
    out = routed(table, raw)
    assert set(out) == {"site-a", "site-b"}
    assert [t["resourceId"] for t in out["site-a"]["targets"]] == ["r1", "r2"]  # type: ignore[index]
    assert [t["resourceId"] for t in out["site-b"]["targets"]] == ["r3"]  # type: ignore[index]
    for body in out.values():  # the rest as Spark wrote it: timestamps keep their text
        assert body["priceCurveDelta"]["points"] == CURVE_POINTS  # type: ignore[index]
        assert body["priceArea"] == "NO1"


def test_a_routed_payload_decodes_as_the_site_will_read_it(table: SiteTable) -> None:
    raw = price_curve(("r1", "loc-a"), ("r3", "loc-b"))
    payload = wire.decode_event_payload(raw)
    body = table.route(payload, raw)["site-a"]
    message = event_message("ev-1", "2026-12-01T10:00:00Z", body)
    event, decoded = wire.decode_polled_event(message)
    assert event.id == "ev-1"
    assert isinstance(decoded, wire.PriceCurve)
    assert [t.resource_id for t in decoded.targets] == ["r1"]
    assert [p.price for p in decoded.price_curve_delta.points] == [0.25, None]


def test_a_location_lpc_goes_by_location_or_else_meter_point(table: SiteTable) -> None:
    out = routed(table, location_lpc(("loc-b", "mp-x"), ("loc-unknown", "mp-c"), ("z", "z")))
    assert set(out) == {"site-b", "site-c"}
    assert out["site-c"]["targets"][0]["meterPointId"] == "mp-c"  # type: ignore[index]


def test_no_site_owns_user_eligibility_or_an_unknown_payload(table: SiteTable) -> None:
    raw = b'{"payloadType":"UserEligibility","addedUsers":["u1"],"removedUsers":[]}'
    assert table.route(wire.decode_event_payload(raw), raw) == {}
    raw = b'{"payloadType":"SomethingNew","targets":[{"resourceId":"r1"}]}'
    assert table.route(wire.decode_event_payload(raw), raw) == {}
    raw = price_curve()  # no targets at all
    assert table.route(wire.decode_event_payload(raw), raw) == {}


def test_an_id_claimed_by_two_sites_is_refused_naming_both() -> None:
    with pytest.raises(ValueError, match="resource 'r1' is claimed by two sites: a and b"):
        SiteTable([Site("a", frozenset({"r1"})), Site("b", frozenset({"r1", "r2"}))])
    with pytest.raises(ValueError, match="listed twice"):
        SiteTable([Site("a"), Site("a")])


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "$SYS", "a b", "x" * 65, "é", "a\x00"])
def test_a_site_id_that_cannot_be_a_topic_level_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="site id"):
        check_site_id(bad)


def test_sites_from_a_file_name_the_bad_entry() -> None:
    sites = sites_from_mapping({"sites": [{"site_id": "a", "resources": ["r1"]}]})
    assert sites == [Site("a", frozenset({"r1"}))]
    with pytest.raises(ValueError, match=r"sites\[1\]: site id"):
        sites_from_mapping({"sites": [{"site_id": "a"}, {"site_id": "b/c"}]})
    with pytest.raises(ValueError, match="resourcez"):
        sites_from_mapping({"sites": [{"site_id": "a", "resourcez": []}]})
    with pytest.raises(ValueError, match="resource id"):
        sites_from_mapping({"sites": [{"site_id": "a", "resources": [" "]}]})


def report(event_id: str, *payloads: dict[str, object]) -> bytes:
    return json.dumps({"eventId": event_id, "payloads": list(payloads)}).encode()


def usage(resource: str, location: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {
        "payloadType": "EnergyUsage",
        "resourceId": resource,
        "resolution": "01:00:00",
        "points": [{"timestamp": "2026-12-02T00:00:00Z", "kiloWattHours": 1.5}],
    }
    if location:
        body["locationId"] = location
    return body


def test_a_report_naming_only_the_sites_own_targets_passes(table: SiteTable) -> None:
    request = wire.decode_report_request(report("e", usage("r1", "loc-a"), usage("r2")))
    assert table.foreign("site-a", request) == []


def test_a_report_naming_another_sites_target_is_foreign(table: SiteTable) -> None:
    request = wire.decode_report_request(report("e", usage("r1"), usage("r3", "loc-b")))
    problems = table.foreign("site-a", request)
    assert problems == [
        "payloads[1]: resource 'r3' is not this site's",
        "payloads[1]: location 'loc-b' is not this site's",
    ]
    assert table.foreign("nobody", request) == ["site 'nobody' is not registered"]
    ack = {
        "payloadType": "LocationLPCAcknowledgement",
        "acknowledgedTargets": [{"locationId": "loc-a", "meterPointId": "mp-c"}],
        "declinedTargets": [],
    }
    request = wire.decode_report_request(report("e", ack))
    assert table.foreign("site-a", request) == [
        "payloads[0]: meter point 'mp-c' is not this site's"
    ]
    # site-b lists no meter points: one no site claims is its own, another site's is not
    ack["acknowledgedTargets"] = [{"locationId": "loc-b", "meterPointId": "mp-new"}]
    assert table.foreign("site-b", wire.decode_report_request(report("e", ack))) == []


@given(
    owners=st.lists(st.sampled_from(["site-a", "site-b", "site-c", None]), max_size=12),
)
def test_routing_gives_each_target_to_its_owner_once(owners: list[str | None]) -> None:
    table = SiteTable(
        [
            Site(s, frozenset({f"{s}-r{i}" for i in range(12)}))
            for s in ("site-a", "site-b", "site-c")
        ]
    )
    targets = [(f"{o}-r{i}" if o else f"free-{i}", "loc") for i, o in enumerate(owners)]
    raw = price_curve(*targets)
    out = {
        site: [t["resourceId"] for t in json.loads(body)["targets"]]
        for site, body in table.route(wire.decode_event_payload(raw), raw).items()
    }
    expected: dict[str, list[str]] = {}
    for (resource, _), owner in zip(targets, owners, strict=True):
        if owner:
            expected.setdefault(owner, []).append(resource)
    assert out == expected


def test_the_acl_file_gives_each_site_its_own_topics_only() -> None:
    text = acl_file(Topics("fleet/eu"), ["b", "a"], hub_user="hub")
    lines = text.splitlines()
    assert "#   use_username_as_clientid true" in lines
    assert lines[lines.index("user hub") :] == [
        "user hub",
        "topic readwrite fleet/eu/sites/#",
        "",
        "user a",
        "topic read fleet/eu/sites/a/events",
        "topic read fleet/eu/sites/a/acks",
        "topic write fleet/eu/sites/a/reports",
        "topic write fleet/eu/sites/a/status",
        "",
        "user b",
        "topic read fleet/eu/sites/b/events",
        "topic read fleet/eu/sites/b/acks",
        "topic write fleet/eu/sites/b/reports",
        "topic write fleet/eu/sites/b/status",
    ]
    with pytest.raises(ValueError, match="hub's own"):
        acl_file(Topics(), ["hub"], hub_user="hub")


def test_dynamic_security_has_a_role_per_site_and_no_password() -> None:
    doc = dynamic_security(Topics(), ["a"], hub_user="hub")
    assert doc["defaultACLAccess"]["subscribe"] is False
    assert [c["username"] for c in doc["clients"]] == ["hub", "a"]
    assert "password" not in json.dumps(doc)
    role = next(r for r in doc["roles"] if r["rolename"] == "ecgw-site-a")
    assert {(a["acltype"], a["topic"]) for a in role["acls"]} == {
        ("subscribePattern", "ecgw/sites/a/events"),
        ("publishClientReceive", "ecgw/sites/a/events"),
        ("subscribePattern", "ecgw/sites/a/acks"),
        ("publishClientReceive", "ecgw/sites/a/acks"),
        ("publishClientSend", "ecgw/sites/a/reports"),
        ("publishClientSend", "ecgw/sites/a/status"),
    }


def test_topics() -> None:
    topics = Topics("ecgw")
    assert topics.shared_reports == "$share/ecgw-hubs/ecgw/sites/+/reports"
    assert topics.site_of_report("ecgw/sites/a-1/reports") == "a-1"
    assert topics.site_of_report("ecgw/sites/a/b/reports") is None
    assert topics.site_of_report("ecgw/sites/a/events") is None
    assert (topics.status("a-1"), topics.all_status) == (
        "ecgw/sites/a-1/status",
        "ecgw/sites/+/status",
    )
    assert topics.site_of_status("ecgw/sites/a-1/status") == "a-1"
    assert topics.site_of_status("ecgw/sites/a-1/reports") is None
    for bad in ("", "a//b", "a/+", "#", "$SYS"):
        with pytest.raises(ValueError, match="prefix"):
            Topics(bad)


def test_site_reports_and_acks_round_trip_and_name_the_bad_field() -> None:
    body = report("ev-1", usage("r1"))
    message = encode_message(SiteReport("ev-1", "EnergyUsage", msgspec.Raw(body)))
    got, request = decode_site_report(message)
    assert bytes(got.body) == body and request.event_id == "ev-1"
    with pytest.raises(WireError, match="eventId 'ev-2' but its body's is 'ev-1'"):
        decode_site_report(encode_message(SiteReport("ev-2", "EnergyUsage", msgspec.Raw(body))))
    with pytest.raises(WireError, match="kind"):
        decode_site_report(
            encode_message(SiteReport("ev-1", "LocationEnergyUsage", msgspec.Raw(body)))
        )
    with pytest.raises(WireError, match="site report at eventId"):
        decode_site_report(b'{"eventId": 5, "kind": "x", "body": {}}')
    with pytest.raises(WireError, match="bytes, more than"):
        decode_site_report(b" " * (1024 * 1024 + 1))
    ack = HubAck("ev-1", "EnergyUsage", "delivered", report_id="rep-9", status=200)
    assert decode_ack(encode_message(ack)) == ack
    with pytest.raises(WireError, match="reportId"):
        decode_ack(b'{"eventId":"e","kind":"k","outcome":"delivered"}')
    with pytest.raises(WireError, match="outcome"):
        decode_ack(b'{"eventId":"e","kind":"k","outcome":"maybe"}')
