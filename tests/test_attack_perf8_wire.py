"""Attack on the per-point year fast path (SURE_YEARS) and the Resolution cache."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable

import pytest

from gateway import wire
from gateway.errors import WireError
from gateway.wire_bounds import _READ, _READ_MAX, EARLIEST, LATEST, Resolution

# --- defects ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda t: wire.EnergyCurvePoint(timestamp=t, kilo_watt_hours=1.0),
        # An inbound point is checked by the list that holds it (the decoder builds
        # it there; so would anyone building one in Python to use it).
        lambda t: wire.PriceCurveDelta(points=[wire.PriceCurvePoint(timestamp=t, price=0.5)]),
        lambda t: wire.LocationLPCTarget(
            location_id="l",
            meter_point_id="m",
            resolution=wire.Resolution("01:00:00"),
            points=[wire.LPCDataPoint(timestamp=t, max_power_in_kilo_watts=3.0)],
        ),
    ],
    ids=["EnergyCurvePoint", "PriceCurvePoint", "LPCDataPoint"],
)
def test_a_naive_point_built_in_python_is_refused_in_every_year(
    build: Callable[[dt.datetime], object],
) -> None:
    """check_times was also the only guard against a naive stamp on a point built in
    Python (the report builder builds EnergyCurvePoints; Meta(tz=True) binds only the
    decoder). Before: refused (TypeError) in every year. Now: refused in 2000/2199/2200,
    accepted in 2001..2198, and encoded without an offset for Spark to guess."""
    with pytest.raises((ValueError, TypeError)):
        build(dt.datetime(2000, 1, 1, 12))  # an edge year: still refused
    with pytest.raises((ValueError, TypeError)):
        build(dt.datetime(2025, 3, 11, 10))


def test_a_str_subclass_cannot_poison_the_resolution_cache() -> None:
    """The cache keys on the caller's object; a str subclass that reads as a valid
    resolution (its strip() is overridden) stores its *text* as valid for everyone."""

    class Lying(str):
        def strip(self, chars: str | None = None) -> str:
            return "01:00:00"

    text = "not-a-resolution-8"
    with contextlib.suppress(TypeError, ValueError):
        Resolution.parse(Lying(text))
    try:
        with pytest.raises(ValueError):
            Resolution.parse(text)
    finally:
        _READ.pop(text, None)


# --- what held ----------------------------------------------------------------------------


def note(stamp: str, resolution: str = "01:00:00") -> bytes:
    return json.dumps(
        {
            "notificationId": "n",
            "eventId": "e",
            "eventCreatedAtUtc": "2025-03-10T12:00:03Z",
            "notificationSentUtc": "2025-03-10T12:00:04Z",
            "notificationType": "PriceCurveCreated",
            "payload": {
                "payloadType": "PriceCurve",
                "targets": [{"resourceId": "hwt", "locationId": "home"}],
                "priceCurveDelta": {
                    "points": [{"price": 0.4, "timestamp": stamp}],
                    "resolution": resolution,
                },
            },
        }
    ).encode()


STAMPS = [
    f"{y:04d}-{md}T{hms}{off}"
    for y in (1, 1999, 2000, 2001, 2198, 2199, 2200, 2201, 9999)
    for md, hms in (("01-01", "00:00:00"), ("12-31", "23:59:59"), ("07-01", "12:00:00"))
    for off in ("Z", "+23:59", "-23:59", "+00:01", "-00:01")
]


@pytest.mark.parametrize("stamp", STAMPS)
def test_a_point_is_accepted_exactly_inside_the_range(stamp: str) -> None:
    moment = dt.datetime.fromisoformat(stamp)
    try:
        inside = EARLIEST <= moment <= LATEST
    except OverflowError:
        inside = False
    if inside:
        wire.decode_notification(note(stamp))
    else:
        with pytest.raises(WireError, match=r"points\[0\]\.timestamp"):
            wire.decode_notification(note(stamp))


def test_refused_resolutions_are_never_cached_and_the_cache_is_bounded() -> None:
    for i in range(3 * _READ_MAX):
        Resolution.parse(" " * i + "01:00:00")
        with pytest.raises(ValueError):
            Resolution.parse(" " * i + "00:00:00")
    assert len(_READ) <= _READ_MAX
    assert all(Resolution.parse(k) == v for k, v in _READ.items())
    assert "00:00:00" not in _READ
    with pytest.raises(WireError, match="resolution"):
        wire.decode_notification(note("2025-01-01T00:00:00Z", "00:00:00"))
