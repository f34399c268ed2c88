"""Events the sandbox makes up: simulate requests -> event payloads -> envelopes.

Pure: every builder takes ``now``; ids are passed in. Every event built here validates against
``GetEventResponse`` and every notification against ``EventNotification``.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from gateway.sandbox.state import iso
from gateway.timeutil import format_timespan, parse_timespan, parse_timestamp

__all__ = [
    "DEFAULT_LOCATION",
    "DEFAULT_METER_POINT",
    "DEFAULT_RESOURCE",
    "NOTIFICATION_TYPES",
    "event_envelope",
    "location_lpc_payload",
    "notification",
    "notification_type",
    "price_curve_payload",
    "resource_lpc_payload",
    "user_eligibility_payload",
]

DEFAULT_RESOURCE = "sandbox-resource-1"
DEFAULT_LOCATION = "sandbox-location-1"
DEFAULT_METER_POINT = "707057500000000001"
DEFAULT_USER = "sandbox-user-1"
HOURLY = "01:00:00"

NOTIFICATION_TYPES = {
    "PriceCurve": "PriceCurveCreated",
    "UserEligibility": "UserEligibilityUpdated",
    "LocationLPC": "LocationLPCRequested",
    "ResourceLPC": "ResourceLPCRequested",
    "LPCReservation": "LPCReservationCreated",
}

Json = dict[str, Any]


def notification_type(payload: Json) -> str:
    """The ``NotificationType`` that announces a payload (``Unknown`` for unknown types)."""
    return NOTIFICATION_TYPES.get(str(payload.get("payloadType")), "Unknown")


def event_envelope(event_id: str, created_at: dt.datetime, payload: Json) -> Json:
    """A ``GetEventResponse``: how ``GET /events`` shows an event."""
    return {"id": event_id, "createdAt": iso(created_at), "payload": payload}


def notification(event: Json, notification_id: str, sent_at: dt.datetime) -> Json:
    """An ``EventNotification``: how a webhook push carries an event."""
    return {
        "notificationId": notification_id,
        "eventId": event["id"],
        "eventCreatedAtUtc": event["createdAt"],
        "notificationSentUtc": iso(sent_at),
        "notificationType": notification_type(event["payload"]),
        "payload": event["payload"],
    }


def price_curve_payload(request: Json, now: dt.datetime) -> Json:
    """From a ``SimulatePriceCurveEventRequest``; what is missing gets a default.

    Defaults: one sandbox target, price area NO5, 24 hourly points for tomorrow (UTC) in
    NOK/kWh. Given points and resolution are used as given.
    """
    targets = request.get("targets")
    if targets is None:
        targets = [{"resourceId": DEFAULT_RESOURCE, "locationId": DEFAULT_LOCATION}]
    given = request.get("priceCurveDelta") or {}
    points = given.get("points")
    resolution = given.get("resolution") or (_implied_resolution(points) if points else HOURLY)
    if points is None:
        points = _default_price_points(now, resolution)
    curve = {
        "points": points,
        "energyUnit": given.get("energyUnit", "kWh"),
        "currency": given.get("currency", "NOK"),
        "resolution": resolution,
    }
    return {
        "payloadType": "PriceCurve",
        "targets": targets,
        "priceCurveDelta": curve,
        "priceArea": request.get("priceArea") or "NO5",
    }


def user_eligibility_payload(now: dt.datetime) -> Json:
    """What ``POST /simulation/events/usereligibility`` fires (it changes nobody's eligibility)."""
    return {
        "payloadType": "UserEligibility",
        "lastUpdated": iso(now),
        "addedUsers": [DEFAULT_USER],
        "removedUsers": [],
    }


def location_lpc_payload(request: Json, now: dt.datetime) -> Json:
    """From a ``SimulateLocationLPCEventRequest`` (``locations[].location``, ``points``)."""
    items = request.get("locations") or [{}]
    targets = []
    for item in items:
        where = item.get("location") or {}
        target = {
            "locationId": where.get("locationId", DEFAULT_LOCATION),
            "meterPointId": where.get("meterPointId", DEFAULT_METER_POINT),
        }
        targets.append(target | _lpc_schedule(item.get("points"), now))
    return {"payloadType": "LocationLPC", "targets": targets}


def resource_lpc_payload(request: Json, now: dt.datetime) -> Json:
    """From a ``SimulateResourceLPCEventRequest`` (``resources[].resource``, ``points``)."""
    items = request.get("resources") or [{}]
    targets = []
    for item in items:
        what = item.get("resource") or {}
        target = {
            "resourceId": what.get("resourceId", DEFAULT_RESOURCE),
            "locationId": what.get("locationId", DEFAULT_LOCATION),
            "meterPointId": what.get("meterPointId", DEFAULT_METER_POINT),
        }
        targets.append(target | _lpc_schedule(item.get("points"), now))
    return {"payloadType": "ResourceLPC", "targets": targets}


def _lpc_schedule(points: list[Json] | None, now: dt.datetime) -> Json:
    """``resolution`` and ``points`` of an LPC target; default: cap 0 kW for the next 2 hours."""
    resolution = _implied_resolution(points) if points else HOURLY
    step = parse_timespan(resolution)
    if not points:
        start = _next_hour(now)
        points = [
            {"maxPowerInKiloWatts": 0.0, "timestamp": iso(start + i * step)} for i in range(2)
        ]
    else:
        first = _first_timestamp(points) or _next_hour(now)
        points = [
            {
                "maxPowerInKiloWatts": point.get("maxPowerInKiloWatts", 0.0),
                "timestamp": point.get("timestamp") or iso(first + i * step),
            }
            for i, point in enumerate(points)
        ]
    return {"resolution": resolution, "points": points}


def _implied_resolution(points: list[Json]) -> str:
    """The spacing of the first two timestamped points, else one hour."""
    stamps = [parse_timestamp(p["timestamp"]) for p in points if p.get("timestamp")]
    if len(stamps) >= 2 and stamps[1] > stamps[0]:
        return format_timespan(stamps[1] - stamps[0])
    return HOURLY


def _first_timestamp(points: list[Json]) -> dt.datetime | None:
    for point in points:
        if point.get("timestamp"):
            return parse_timestamp(point["timestamp"])
    return None


def _default_price_points(now: dt.datetime, resolution: str) -> list[Json]:
    """Tomorrow (UTC), one point per ``resolution`` (at most 1440): cheapest around 03:00."""
    try:
        step = parse_timespan(resolution)
    except ValueError:  # "00:00:00" is a well-formed time-span, but no use as a step
        step = dt.timedelta(hours=1)
    start = dt.datetime.combine(now.astimezone(dt.UTC).date(), dt.time(), dt.UTC)
    start += dt.timedelta(days=1)
    count = min(1440, max(1, int(dt.timedelta(days=1) / step)))
    points = []
    for i in range(count):
        at = start + i * step
        hour = at.hour + at.minute / 60
        price = round(0.5 + 0.4 * math.sin((hour - 9) / 24 * 2 * math.pi), 4)
        points.append({"price": price, "timestamp": iso(at)})
    return points


def _next_hour(now: dt.datetime) -> dt.datetime:
    utc = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return utc + dt.timedelta(hours=1)
