"""Attack on f0169d3..d570a12 (inbox fast path, wire one-pass decode and holder-checked
point stamps, committer future, NewEvent struct, format_utc through msgspec).

Only the defect found is tested here; what held is listed in the review report."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from gateway import wire
from gateway.timeutil import format_utc
from gateway.wire_bounds import SparkTime


def _expected(moment: dt.datetime) -> str:
    """What format_utc wrote before d570a12 (isoformat of the UTC time)."""
    utc = moment.astimezone(dt.UTC)
    text = utc.isoformat()[:-6]
    return (text.rstrip("0") if utc.microsecond else text) + "Z"


class _Moment(dt.datetime):
    """Any datetime subclass (pandas, pendulum, freezegun's FakeDatetime are others)."""


def _decoded_point_stamp() -> dt.datetime:
    """A point timestamp as the gateway itself hands it on: a SparkTime from
    decode_event_payload (the planner's and the hub's decoder)."""
    raw = json.dumps(
        {
            "payloadType": "PriceCurve",
            "targets": [{"resourceId": "r", "locationId": "l"}],
            "priceCurveDelta": {"points": [{"timestamp": "2025-03-11T10:00:00.25+01:00"}]},
        }
    ).encode()
    payload = wire.decode_event_payload(raw)
    assert isinstance(payload, wire.PriceCurve)
    stamp = payload.price_curve_delta.points[0].timestamp
    assert isinstance(stamp, SparkTime)
    return stamp


@pytest.mark.parametrize(
    "make",
    [
        _decoded_point_stamp,
        lambda: SparkTime.of(dt.datetime(2199, 12, 31, 23, 30, 0, 120000, tzinfo=dt.UTC)),
        lambda: _Moment(2025, 3, 11, 10, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
    ],
    ids=["decoded-SparkTime", "SparkTime.of", "datetime-subclass"],
)
def test_format_utc_takes_any_aware_datetime_including_subclasses(make: object) -> None:
    """d570a12: format_utc now passes the UTC time to msgspec's JSON encoder, which only
    knows the exact ``datetime`` type. ``to_utc`` (``astimezone``) keeps a subclass, so
    format_utc of a SparkTime -- the gateway's own type for every decoded point stamp --
    or of any other aware datetime subclass raises ``TypeError: Encoding objects of type
    SparkTime is unsupported`` where it returned the UTC text before. No current caller
    passes one (webhook/poller/listing/scheduler/decide pass plain datetimes), so this is
    a latent break of the function's contract ("an aware datetime")."""
    moment = make()  # type: ignore[operator]
    assert format_utc(moment) == _expected(moment)
