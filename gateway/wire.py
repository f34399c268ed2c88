"""Wire messages of the Energy Coordination API, as msgspec Structs.

Inbound types (events) tolerate unknown fields and unknown enum values: Spark
adds both without a version bump. Enum-like fields are plain ``str`` for that
reason. An unknown ``payloadType`` is kept as raw JSON (:class:`UnknownPayload`)
and ignored, never an error. Outbound types (reports) write camelCase, UTC
timestamps, and leave out optional fields that are unset.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, TypeAlias

import msgspec

from gateway.errors import WireError

__all__ = [
    "EnergyCurvePoint",
    "EnergyUsage",
    "EventNotification",
    "EventPayload",
    "GetEventResponse",
    "GetEventsResponse",
    "GetReportResponse",
    "KNOWN_EVENT_TYPES",
    "LPCDataPoint",
    "LPCLocation",
    "LPCReservation",
    "LPCResource",
    "LocationEnergyUsage",
    "LocationLPC",
    "LocationLPCAcknowledgement",
    "LocationLPCTarget",
    "Pagination",
    "PostReportRequest",
    "PriceCurve",
    "PriceCurveDelta",
    "PriceCurvePoint",
    "PriceCurveTarget",
    "ReportPayload",
    "ResourceLPC",
    "ResourceLPCAcknowledgement",
    "ResourceLPCTarget",
    "UnknownPayload",
    "UserEligibility",
    "decode_event_payload",
    "decode_events_page",
    "decode_notification",
    "decode_report_request",
    "decode_report_response",
    "encode",
    "payload_type",
    "report_kind",
]


Timestamp: TypeAlias = Annotated[dt.datetime, msgspec.Meta(tz=True)]
"""An aware datetime: a timestamp without an offset is refused, never guessed."""


class Wire(msgspec.Struct, rename="camel", frozen=True, kw_only=True):
    """Shared base: camelCase on the wire, immutable, keyword-only."""


class Outbound(Wire, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """What we write: unset optional fields are left out; unknown fields refused on decode."""


# --- event payloads (inbound) ------------------------------------------------


class PriceCurveTarget(Wire, frozen=True):
    resource_id: str
    location_id: str


class PriceCurvePoint(Wire, frozen=True):
    timestamp: Timestamp
    price: float | None = None


class PriceCurveDelta(Wire, frozen=True):
    points: list[PriceCurvePoint] = []
    resolution: str = "01:00:00"
    energy_unit: str | None = None
    currency: str | None = None


class PriceCurve(Wire, frozen=True, tag_field="payloadType", tag="PriceCurve"):
    targets: list[PriceCurveTarget]
    price_curve_delta: PriceCurveDelta
    price_area: str | None = None


class UserEligibility(Wire, frozen=True, tag_field="payloadType", tag="UserEligibility"):
    last_updated: Timestamp | None = None
    added_users: list[str] = []
    removed_users: list[str] = []


class LPCDataPoint(Wire, frozen=True):
    timestamp: Timestamp
    max_power_in_kilo_watts: float | None = None


class LocationLPCTarget(Wire, frozen=True):
    location_id: str
    meter_point_id: str
    resolution: str
    points: list[LPCDataPoint]


class ResourceLPCTarget(Wire, frozen=True):
    resource_id: str
    location_id: str
    meter_point_id: str
    resolution: str
    points: list[LPCDataPoint]


class LocationLPC(Wire, frozen=True, tag_field="payloadType", tag="LocationLPC"):
    targets: list[LocationLPCTarget]


class ResourceLPC(Wire, frozen=True, tag_field="payloadType", tag="ResourceLPC"):
    targets: list[ResourceLPCTarget]


class LPCReservation(Wire, frozen=True, tag_field="payloadType", tag="LPCReservation"):
    targets: list[LocationLPCTarget]


class UnknownPayload(msgspec.Struct, frozen=True):
    """A payload whose ``payloadType`` we do not know: kept as raw JSON, ignored."""

    payload_type: str
    raw: bytes


KnownPayload: TypeAlias = PriceCurve | UserEligibility | LocationLPC | ResourceLPC | LPCReservation
EventPayload: TypeAlias = KnownPayload | UnknownPayload
KNOWN_EVENT_TYPES = frozenset(
    {"PriceCurve", "UserEligibility", "LocationLPC", "ResourceLPC", "LPCReservation"}
)


# --- envelopes (inbound) -----------------------------------------------------


class GetEventResponse(Wire, frozen=True):
    id: str
    created_at: Timestamp | None = None
    payload: msgspec.Raw = msgspec.Raw(b"null")


class Pagination(Wire, frozen=True):
    total_records: int = 0
    page_size: int = 0
    current_page: int = 0
    total_pages: int | None = None
    next_page: int | None = None
    previous_page: int | None = None


class GetEventsResponse(Wire, frozen=True):
    pagination: Pagination
    events: list[GetEventResponse] = []


class EventNotification(Wire, frozen=True):
    notification_id: str
    event_id: str
    event_created_at_utc: Timestamp
    notification_sent_utc: Timestamp
    notification_type: str
    payload: msgspec.Raw


# --- reports (outbound) ------------------------------------------------------


class EnergyCurvePoint(Outbound, frozen=True):
    timestamp: Timestamp
    kilo_watt_hours: float


class EnergyUsage(Outbound, frozen=True, tag_field="payloadType", tag="EnergyUsage"):
    resource_id: str
    resolution: str
    location_id: str | None = None
    meter_point_id: str | None = None
    points: list[EnergyCurvePoint] = []


class LocationEnergyUsage(
    Outbound, frozen=True, tag_field="payloadType", tag="LocationEnergyUsage"
):
    location_id: str
    meter_point_id: str
    resolution: str
    points: list[EnergyCurvePoint] = []


class LPCLocation(Outbound, frozen=True):
    location_id: str
    meter_point_id: str


class LPCResource(Outbound, frozen=True):
    resource_id: str
    location_id: str
    meter_point_id: str


class LocationLPCAcknowledgement(
    Outbound,
    frozen=True,
    omit_defaults=False,  # both lists always written, [] included, as in Spark's examples
    tag_field="payloadType",
    tag="LocationLPCAcknowledgement",
):
    acknowledged_targets: list[LPCLocation] = []
    declined_targets: list[LPCLocation] = []


class ResourceLPCAcknowledgement(
    Outbound,
    frozen=True,
    omit_defaults=False,  # both lists always written, [] included, as in Spark's examples
    tag_field="payloadType",
    tag="ResourceLPCAcknowledgement",
):
    acknowledged_targets: list[LPCResource] = []
    declined_targets: list[LPCResource] = []


ReportPayload: TypeAlias = (
    EnergyUsage | LocationEnergyUsage | LocationLPCAcknowledgement | ResourceLPCAcknowledgement
)


class PostReportRequest(Outbound, frozen=True):
    event_id: str
    payloads: list[ReportPayload]


class GetReportResponse(Wire, frozen=True):
    id: str
    event_id: str | None = None
    created_at: Timestamp | None = None


# --- codecs, built once ------------------------------------------------------


class _Tag(msgspec.Struct):
    payloadType: str = ""


_encoder = msgspec.json.Encoder()
_tag_decoder = msgspec.json.Decoder(_Tag)
_payload_decoder = msgspec.json.Decoder(KnownPayload)
_notification_decoder = msgspec.json.Decoder(EventNotification)
_events_decoder = msgspec.json.Decoder(GetEventsResponse)
_report_request_decoder = msgspec.json.Decoder(PostReportRequest)
_report_response_decoder = msgspec.json.Decoder(GetReportResponse)


def _wire_error(exc: msgspec.DecodeError, what: str, prefix: str = "") -> WireError:
    text = str(exc)
    field = None
    if " - at `$" in text:
        text, _, path = text.partition(" - at `$")
        field = (prefix + path.rstrip("`")).lstrip(".")
    where = f" at {field}" if field else ""
    return WireError(f"{what}: {text}{where}", field=field)


def decode_event_payload(raw: bytes) -> EventPayload:
    """Decode a ``payload`` object; unknown ``payloadType`` gives :class:`UnknownPayload`."""
    try:
        tag = _tag_decoder.decode(raw).payloadType
    except msgspec.DecodeError as exc:
        raise _wire_error(exc, "event payload", "payload") from exc
    if tag not in KNOWN_EVENT_TYPES:
        return UnknownPayload(payload_type=tag or "Unknown", raw=bytes(raw))
    try:
        payload: KnownPayload = _payload_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise _wire_error(exc, f"{tag} payload", "payload") from exc
    return payload


def decode_notification(body: bytes) -> tuple[EventNotification, EventPayload]:
    """A webhook body: the envelope and its decoded payload. Raises WireError."""
    try:
        note = _notification_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise _wire_error(exc, "notification") from exc
    return note, decode_event_payload(note.payload)


def decode_events_page(body: bytes) -> GetEventsResponse:
    try:
        return _events_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise _wire_error(exc, "GET /events reply") from exc


def decode_report_request(body: bytes) -> PostReportRequest:
    try:
        return _report_request_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise _wire_error(exc, "report request") from exc


def decode_report_response(body: bytes) -> GetReportResponse:
    try:
        return _report_response_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise _wire_error(exc, "POST /reports reply") from exc


def encode(message: Any) -> bytes:
    """JSON bytes of a wire message (datetimes must be aware; they are written as UTC)."""
    return _encoder.encode(message)


def payload_type(payload: EventPayload) -> str:
    """The ``payloadType`` of a decoded event payload."""
    if isinstance(payload, UnknownPayload):
        return payload.payload_type
    return str(type(payload).__struct_config__.tag)


def report_kind(request: PostReportRequest) -> str:
    """The outbox ``kind`` of a report: its payload type, or ``A+B`` when mixed."""
    return "+".join(sorted({str(type(p).__struct_config__.tag) for p in request.payloads}))
