"""Wire messages of the Energy Coordination API, as msgspec Structs.

Inbound types (events) tolerate unknown fields and unknown enum values: Spark
adds both without a version bump. Enum-like fields are plain ``str`` for that
reason. An unknown ``payloadType`` is kept as raw JSON (:class:`UnknownPayload`)
and ignored, never an error. Outbound types (reports) write camelCase, UTC
timestamps, and leave out optional fields that are unset.

What the gateway cannot represent is refused here, at the boundary, as a
:class:`~gateway.errors.WireError` naming the field, so that nothing downstream
needs a ``try`` for it:

* a timestamp must carry an offset and fall within 2000-01-01..2200-01-01 UTC
  (msgspec parses it natively; ``__post_init__`` checks the range, year first,
  so an offset form of year 1 or 9999 never overflows). A payload decoded for
  planning (:func:`decode_event_payload`) has its point timestamps as
  :class:`SparkTime`, which keeps the text Spark wrote, so that a report can
  carry the event's timestamps exactly as Spark wrote them when that text is in the
  report contract's ``date-time`` form (else in UTC, :meth:`SparkTime.utc_text`);
* a resolution must be 1 s .. 1 day in whole seconds, written as a .NET
  time-span (``01:00:00``, ``1.00:00:00``) or ISO-8601 (``PT1H``); it is kept
  normalised to ``hh:mm:ss`` (:class:`Resolution`; one day is ``1.00:00:00``);
* envelope ids are non-empty strings of at most 256 characters;
* numbers are finite (JSON has no NaN; msgspec refuses overflowing floats);
* a document nests at most :data:`MAX_DEPTH` levels, checked by a byte scan
  before decoding: a deep document never reaches msgspec's recursion.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeAlias, TypeVar

import msgspec

from gateway.errors import WireError, validation_parts
from gateway.wire_bounds import (
    MAX_DEPTH,
    SURE_YEARS,
    Resolution,
    SparkTime,
    Timestamp,
    check_point_times,
    check_times,
    cut_deep,
    normal_resolution,
    restore,
    too_deep,
)

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
    "MAX_DEPTH",
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
    "Resolution",
    "SparkTime",
    "UnknownPayload",
    "UserEligibility",
    "decode_event_payload",
    "decode_events_page",
    "decode_notification",
    "decode_polled_event",
    "polled_event_id",
    "decode_report_request",
    "decode_report_response",
    "encode",
    "normal_resolution",
    "payload_type",
    "report_kind",
    "too_deep",
]


Id: TypeAlias = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
"""An envelope id: a non-empty string (a GUID in practice)."""


class Wire(msgspec.Struct, rename="camel", frozen=True, kw_only=True, gc=False):
    """Shared base: camelCase on the wire, immutable, keyword-only.

    ``gc=False``: a wire message holds strings, numbers, times and other wire messages,
    never itself, so the cycle collector need not track it. A price curve decodes into
    dozens of structs; tracked, they set off a collection every few notifications at a
    burst (189 instead of 20 for 8,000 notifications, a tenth of the receiver's time)."""


class Outbound(Wire, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """What we write: unset optional fields are left out; unknown fields refused on decode."""


# --- event payloads (inbound) ------------------------------------------------


class PriceCurveTarget(Wire, frozen=True):
    resource_id: str
    location_id: str


class PriceCurvePoint(Wire, frozen=True):
    """Its timestamp's range is checked by the list's holder (:func:`check_point_times`)."""

    timestamp: Timestamp
    price: float | None = None


class PriceCurveDelta(Wire, frozen=True):
    points: list[PriceCurvePoint] = []
    resolution: Resolution = Resolution("01:00:00")
    energy_unit: str | None = None
    currency: str | None = None

    def __post_init__(self) -> None:
        check_point_times(self.points)


class PriceCurve(Wire, frozen=True, tag_field="payloadType", tag="PriceCurve"):
    targets: list[PriceCurveTarget]
    price_curve_delta: PriceCurveDelta
    price_area: str | None = None


class UserEligibility(Wire, frozen=True, tag_field="payloadType", tag="UserEligibility"):
    last_updated: Timestamp | None = None
    added_users: list[str] = []
    removed_users: list[str] = []

    def __post_init__(self) -> None:
        check_times(lastUpdated=self.last_updated)


class LPCDataPoint(Wire, frozen=True):
    """Its timestamp's range is checked by the list's holder (:func:`check_point_times`)."""

    timestamp: Timestamp
    max_power_in_kilo_watts: float | None = None


class LocationLPCTarget(Wire, frozen=True):
    location_id: str
    meter_point_id: str
    resolution: Resolution
    points: list[LPCDataPoint]

    def __post_init__(self) -> None:
        check_point_times(self.points)


class ResourceLPCTarget(Wire, frozen=True):
    resource_id: str
    location_id: str
    meter_point_id: str
    resolution: Resolution
    points: list[LPCDataPoint]

    def __post_init__(self) -> None:
        check_point_times(self.points)


class LocationLPC(Wire, frozen=True, tag_field="payloadType", tag="LocationLPC"):
    targets: list[LocationLPCTarget]


class ResourceLPC(Wire, frozen=True, tag_field="payloadType", tag="ResourceLPC"):
    targets: list[ResourceLPCTarget]


class LPCReservation(Wire, frozen=True, tag_field="payloadType", tag="LPCReservation"):
    targets: list[LocationLPCTarget]


class UnknownPayload(msgspec.Struct, frozen=True, gc=False):
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
    id: Id
    created_at: Timestamp | None = None
    payload: msgspec.Raw = msgspec.Raw(b"null")

    def __post_init__(self) -> None:
        check_times(createdAt=self.created_at)


class Pagination(Wire, frozen=True):
    total_records: int = 0
    page_size: int = 0
    current_page: int = 0
    total_pages: int | None = None
    next_page: int | None = None
    previous_page: int | None = None


class GetEventsResponse(Wire, frozen=True):
    """A page: each event is decoded alone (:func:`decode_polled_event`), so one bad event
    fails alone. An event nested deeper than :data:`MAX_DEPTH` is here as Spark sent it."""

    pagination: Pagination
    events: list[msgspec.Raw] = []


class EventNotification(Wire, frozen=True):
    notification_id: Id
    event_id: Id
    event_created_at_utc: Timestamp
    notification_sent_utc: Timestamp
    notification_type: str
    payload: msgspec.Raw

    def __post_init__(self) -> None:
        check_times(
            eventCreatedAtUtc=self.event_created_at_utc,
            notificationSentUtc=self.notification_sent_utc,
        )


# --- reports (outbound) ------------------------------------------------------


class EnergyCurvePoint(Outbound, frozen=True):
    timestamp: Timestamp
    kilo_watt_hours: float

    def __post_init__(self) -> None:
        if self.timestamp.tzinfo is None or self.timestamp.year not in SURE_YEARS:
            check_times(timestamp=self.timestamp)


class EnergyUsage(Outbound, frozen=True, tag_field="payloadType", tag="EnergyUsage"):
    resource_id: str
    resolution: str
    location_id: str | None = None
    meter_point_id: str | None = None
    points: list[EnergyCurvePoint] = []
    curve_points: list[EnergyCurvePoint] | None = None
    """Deprecated in the OpenAPI document, whose own example sends it as ``null``."""


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
    event_id: Id
    payloads: list[ReportPayload]


class GetReportResponse(Wire, frozen=True):
    id: str
    event_id: str | None = None
    created_at: Timestamp | None = None

    def __post_init__(self) -> None:
        check_times(createdAt=self.created_at)


# --- depth, checked before decoding -------------------------------------------


def _check_depth(raw: bytes, what: str, limit: int = MAX_DEPTH) -> None:
    if too_deep(raw, limit):
        raise WireError(f"{what}: nested deeper than {limit} levels")


# --- codecs, built once ------------------------------------------------------


class _Tag(msgspec.Struct, gc=False):
    payloadType: str = ""


def _dec_hook(kind: type, value: Any) -> Any:
    if kind is Resolution:
        return Resolution.parse(value)
    raise NotImplementedError(f"no decoder for {kind}")


def _enc_hook(value: Any) -> Any:
    if isinstance(value, SparkTime):
        return value.utc_text()
    if isinstance(value, Resolution):
        return str.__str__(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_tag_decoder = msgspec.json.Decoder(_Tag)
_payload_decoder = msgspec.json.Decoder(KnownPayload, dec_hook=_dec_hook)
_notification_decoder = msgspec.json.Decoder(EventNotification, dec_hook=_dec_hook)
_events_decoder = msgspec.json.Decoder(GetEventsResponse, dec_hook=_dec_hook)
_event_decoder = msgspec.json.Decoder(GetEventResponse, dec_hook=_dec_hook)
_report_request_decoder = msgspec.json.Decoder(PostReportRequest, dec_hook=_dec_hook)
_report_response_decoder = msgspec.json.Decoder(GetReportResponse, dec_hook=_dec_hook)

PAGE_DEPTH = MAX_DEPTH + 2
"""A page nests its events two levels down: ``{"events": [event, ...]}``."""


T = TypeVar("T", PriceCurvePoint, LPCDataPoint, EnergyCurvePoint)
L = TypeVar("L", LocationLPCTarget, ResourceLPCTarget)

_NAMED = re.compile(r"([a-z][A-Za-z]*(?:\[\d+\])?(?:\.[a-z][A-Za-z]*)*): (.*)", re.DOTALL)
"""A ``__post_init__`` names its field first: ``"timestamp: ... is outside ..."``, or a
path below it: ``"points[3].timestamp: ..."``."""


def _wire_error(exc: msgspec.MsgspecError, what: str, prefix: str = "") -> WireError:
    path, message = validation_parts(exc)
    if isinstance(exc, msgspec.ValidationError) and (named := _NAMED.fullmatch(message)):
        path, message = f"{path}.{named[1]}".lstrip("."), named[2]
    field = f"{prefix}.{path}".strip(".") if path or prefix else ""
    where = f" at {field}" if field else ""
    return WireError(f"{what}: {message}{where}", field=field or None)


def decode_event_payload(raw: bytes) -> EventPayload:
    """Decode a ``payload`` object for planning; unknown ``payloadType`` gives
    :class:`UnknownPayload`. Point timestamps are :class:`SparkTime`: they keep their text."""
    raw = bytes(raw)
    _check_depth(raw, "event payload", MAX_DEPTH - 1)
    return _with_texts(_decode_payload(raw), raw)


class _Text(msgspec.Struct, gc=False):
    timestamp: str


class _Points(msgspec.Struct, gc=False):
    points: list[_Text] = []


class _CurveTexts(msgspec.Struct, rename="camel", gc=False):
    price_curve_delta: _Points


class _TargetTexts(msgspec.Struct, gc=False):
    targets: list[_Points] = []


_curve_texts = msgspec.json.Decoder(_CurveTexts)
_target_texts = msgspec.json.Decoder(_TargetTexts)


def _texts(points: list[T], texts: list[_Text]) -> list[T]:
    return [
        msgspec.structs.replace(p, timestamp=SparkTime.read(p.timestamp, t.timestamp))
        for p, t in zip(points, texts, strict=True)
    ]


def _targets(targets: list[L], raw: bytes) -> list[L]:
    texts = _target_texts.decode(raw).targets
    return [
        msgspec.structs.replace(t, points=_texts(t.points, x.points))
        for t, x in zip(targets, texts, strict=True)
    ]


def _with_texts(payload: EventPayload, raw: bytes) -> EventPayload:
    """``payload`` (decoded from ``raw``) with each point timestamp's text attached."""
    match payload:
        case PriceCurve():
            delta = payload.price_curve_delta
            points = _texts(delta.points, _curve_texts.decode(raw).price_curve_delta.points)
            return msgspec.structs.replace(
                payload, price_curve_delta=msgspec.structs.replace(delta, points=points)
            )
        case LocationLPC() | LPCReservation():
            return msgspec.structs.replace(payload, targets=_targets(payload.targets, raw))
        case ResourceLPC():
            return msgspec.structs.replace(payload, targets=_targets(payload.targets, raw))
    return payload


def _decode_payload(raw: bytes) -> EventPayload:
    """A payload whose depth was checked with the document around it. A known type
    decodes in one pass; only a payload that does not is read again for its type."""
    try:
        payload: KnownPayload = _payload_decoder.decode(raw)
    except msgspec.MsgspecError as exc:
        failed = exc
    else:
        return payload
    try:
        tag = _tag_decoder.decode(raw).payloadType
    except msgspec.MsgspecError as exc:
        raise _wire_error(exc, "event payload", "payload") from exc
    if tag not in KNOWN_EVENT_TYPES:
        return UnknownPayload(payload_type=tag or "Unknown", raw=bytes(raw))
    raise _wire_error(failed, f"{tag} payload", "payload") from failed


def decode_notification(body: bytes) -> tuple[EventNotification, EventPayload]:
    """A webhook body: the envelope and its decoded payload. Raises WireError."""
    _check_depth(body, "notification")
    try:
        note = _notification_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise _wire_error(exc, "notification") from exc
    return note, _decode_payload(note.payload)


def decode_events_page(body: bytes) -> GetEventsResponse:
    """A ``GET /events`` page; its events are left raw (see :func:`decode_polled_event`).

    Raises WireError only when the page itself cannot be read: an event nested too deep is
    handed back as Spark sent it, for :func:`decode_polled_event` to refuse on its own.
    """
    shallow, cuts = body, dict[bytes, bytes]()
    if too_deep(body, PAGE_DEPTH):
        shallow, cuts = cut_deep(body, PAGE_DEPTH)
    try:
        page = _events_decoder.decode(shallow)
    except msgspec.MsgspecError as exc:
        raise _wire_error(exc, "GET /events reply") from exc
    if cuts:
        events = [msgspec.Raw(restore(bytes(e), cuts)) for e in page.events]
        page = msgspec.structs.replace(page, events=events)
    return page


def decode_polled_event(raw: bytes) -> tuple[GetEventResponse, EventPayload]:
    """One event of a page, and its decoded payload. Raises WireError naming the field."""
    _check_depth(raw, "event")
    try:
        event = _event_decoder.decode(raw)
    except msgspec.MsgspecError as exc:
        raise _wire_error(exc, "event") from exc
    return event, _decode_payload(event.payload)


class _IdOnly(msgspec.Struct, gc=False):
    id: Id


_id_decoder = msgspec.json.Decoder(_IdOnly)


def polled_event_id(raw: bytes) -> str | None:
    """The ``id`` of an event that does not decode, if it has a usable one (else None)."""
    shallow, _ = cut_deep(raw, 1)  # nothing nested is read, however deep
    try:
        return _id_decoder.decode(shallow).id
    except msgspec.MsgspecError:
        return None


class _AnyId(msgspec.Struct, gc=False):
    id: Any = None


_any_id_decoder = msgspec.json.Decoder(_AnyId)


def unusable_id_text(raw: bytes) -> str | None:
    """An event's unusable ``id`` as JSON text (at most 64 characters), to name it in a
    note: ``12345``, ``""``; None when it has no ``id`` at all or is not an object."""
    shallow, _ = cut_deep(raw, 1)
    try:
        value = _any_id_decoder.decode(shallow).id
    except msgspec.MsgspecError:
        return None
    return None if value is None else _encoder.encode(value).decode()[:64]


class _ReportTexts(msgspec.Struct, gc=False):
    payloads: list[_Points] = []


_report_texts = msgspec.json.Decoder(_ReportTexts)


def decode_report_request(body: bytes) -> PostReportRequest:
    """A report request; its point timestamps are :class:`SparkTime` (their text kept)."""
    _check_depth(body, "report request")
    try:
        request: PostReportRequest = _report_request_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise _wire_error(exc, "report request") from exc
    texts = _report_texts.decode(body).payloads
    payloads = [
        msgspec.structs.replace(p, points=_texts(p.points, t.points))
        if isinstance(p, EnergyUsage | LocationEnergyUsage)
        else p
        for p, t in zip(request.payloads, texts, strict=True)
    ]
    return msgspec.structs.replace(request, payloads=payloads)


def decode_report_response(body: bytes) -> GetReportResponse:
    _check_depth(body, "POST /reports reply")
    try:
        return _report_response_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise _wire_error(exc, "POST /reports reply") from exc


def encode(message: Any) -> bytes:
    """JSON bytes of a wire message; timestamps in UTC, a read one as written when it was UTC."""
    return _encoder.encode(message)


_TAGS: dict[type, str] = {
    kind: str(kind.__struct_config__.tag)
    for kind in (PriceCurve, UserEligibility, LocationLPC, ResourceLPC, LPCReservation)
}


def payload_type(payload: EventPayload) -> str:
    """The ``payloadType`` of a decoded event payload."""
    if isinstance(payload, UnknownPayload):
        return payload.payload_type
    return _TAGS.get(type(payload)) or str(type(payload).__struct_config__.tag)


def report_kind(request: PostReportRequest) -> str:
    """The outbox ``kind`` of a report: its payload type, or ``A+B`` when mixed."""
    return "+".join(sorted({str(type(p).__struct_config__.tag) for p in request.payloads}))
