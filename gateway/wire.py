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
  carry the event's timestamps exactly as Spark wrote them;
* a resolution must be 1 s .. 1 day in whole seconds, written as a .NET
  time-span (``01:00:00``, ``1.00:00:00``) or ISO-8601 (``PT1H``); it is kept
  normalised to ``hh:mm:ss`` (:class:`Resolution`; one day is ``1.00:00:00``);
* envelope ids are non-empty strings of at most 256 characters;
* numbers are finite (JSON has no NaN; msgspec refuses overflowing floats);
* a document nests at most :data:`MAX_DEPTH` levels, checked by a byte scan
  before decoding: a deep document never reaches msgspec's recursion.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from typing import Annotated, Any, TypeAlias, TypeVar

import msgspec

from gateway.errors import WireError, validation_parts

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


MAX_DEPTH = 32
"""Deepest nesting accepted in a notification, an event or a report (Spark's need about 6)."""

EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)
SHORTEST = dt.timedelta(seconds=1)
LONGEST = dt.timedelta(days=1)

_STAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
    r"(?:[Zz]|([+-])(\d{2}):?(\d{2}))"
)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class SparkTime(dt.datetime):
    """An aware datetime within 2000..2200 that remembers the text it was read from.

    :attr:`text` is what Spark wrote (7 fractional digits and offset kept); the datetime
    itself holds microseconds (the 7th digit rounds). A SparkTime made by arithmetic or
    :meth:`of` has no text of its own and is written in UTC.
    """

    __slots__ = ("_text",)
    _text: str

    @classmethod
    def read(cls, moment: dt.datetime, text: str) -> SparkTime:
        """``moment`` as read from ``text`` (by msgspec, which checked both)."""
        stamp = cls._copy(moment)
        stamp._text = text
        return stamp

    @classmethod
    def of(cls, moment: dt.datetime) -> SparkTime:
        """The same instant and offset as a SparkTime (written in UTC: it has no text)."""
        return moment if isinstance(moment, cls) else cls._copy(moment)

    @classmethod
    def _copy(cls, moment: dt.datetime) -> SparkTime:
        return cls(
            moment.year,
            moment.month,
            moment.day,
            moment.hour,
            moment.minute,
            moment.second,
            moment.microsecond,
            moment.tzinfo,
            fold=moment.fold,
        )

    @property
    def text(self) -> str | None:
        """The text this timestamp was read from, if it was read."""
        return getattr(self, "_text", None)

    def utc_text(self) -> str:
        """As written when it was read in UTC (``Z`` or ``+00:00``, every fractional digit);
        otherwise converted to UTC, its fractional digits kept as written."""
        m = _STAMP.fullmatch(self.text or "")
        if m is None:
            utc: dt.datetime = self.astimezone(dt.UTC)
            frac = f"{utc.microsecond:06d}".rstrip("0")
        elif self.utcoffset() == dt.timedelta(0):
            return m.string
        else:
            y, mo, d, h, mi, sec = map(int, m.groups()[:6])
            utc = dt.datetime(y, mo, d, h, mi, sec, tzinfo=self.tzinfo).astimezone(dt.UTC)
            frac = m[7] or ""
        return utc.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


class Resolution(str):
    """An interval length of 1 s .. 1 day in whole seconds, normalised to ``hh:mm:ss``.

    Read from a .NET time-span (``01:00:00``, ``1.00:00:00``, ``01:00:00.0000000``) or an
    ISO-8601 duration (``PT1H``); one day is written ``1.00:00:00`` (.NET reads no ``24:``).
    """

    __slots__ = ()

    @classmethod
    def parse(cls, value: object) -> Resolution:
        if not isinstance(value, str):
            raise TypeError(f"expected a time-span like '01:00:00', got {_shown(value)}")
        return cls(normal_resolution(value))


_NET_SPAN = re.compile(r"(?:(\d{1,9})\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,7}))?")
_ISO_SPAN = re.compile(r"P(?:(\d{1,9})D)?(?:T(?:(\d{1,9})H)?(?:(\d{1,9})M)?(?:(\d{1,9})S)?)?")


def _span_parts(text: str) -> tuple[int, int, int, int, str]:
    if m := _NET_SPAN.fullmatch(text):
        days, hours, minutes, seconds, frac = m.groups()
        if int(hours) > 23 or int(minutes) > 59 or int(seconds) > 59:
            raise ValueError(f"time-span {_shown(text)} has a field out of range")
        return int(days or 0), int(hours), int(minutes), int(seconds), frac or ""
    if (m := _ISO_SPAN.fullmatch(text)) and text not in ("P", "PT") and not text.endswith("T"):
        days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
        return days, hours, minutes, seconds, ""
    raise ValueError(f"expected a time-span like '01:00:00', got {_shown(text)}")


def normal_resolution(text: str) -> str:
    """``"1:00:00"``, ``"01:00:00.0000000"``, ``"PT1H"`` -> ``"01:00:00"``; ValueError if bad."""
    days, hours, minutes, seconds, frac = _span_parts(text.strip())
    if frac.strip("0"):
        raise ValueError(f"resolution {_shown(text)} is not a whole number of seconds")
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if not SHORTEST.total_seconds() <= total <= LONGEST.total_seconds():
        raise ValueError(f"resolution {_shown(text)} is outside 00:00:01..1.00:00:00")
    if total == LONGEST.total_seconds():
        return "1.00:00:00"
    return f"{total // 3600:02d}:{total // 60 % 60:02d}:{total % 60:02d}"


Timestamp: TypeAlias = Annotated[dt.datetime, msgspec.Meta(tz=True)]
"""An aware datetime: a timestamp without an offset is refused, never guessed. A Struct that
holds one checks its range in ``__post_init__`` (:func:`_check_times`)."""


def _check_times(**stamps: dt.datetime | None) -> None:
    """ValueError ``"name: why"`` for the first stamp outside 2000..2200 (the year first:
    comparing a year-1 or year-9999 time that has an offset can overflow)."""
    for name, stamp in stamps.items():
        if stamp is not None and not (1999 <= stamp.year <= 2200 and EARLIEST <= stamp <= LATEST):
            shown = stamp.isoformat() if stamp.tzinfo is None else f"{stamp:%Y-%m-%dT%H:%M:%S%z}"
            raise ValueError(f"{name}: {shown} is outside 2000-01-01..2200-01-01")


Id: TypeAlias = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
"""An envelope id: a non-empty string (a GUID in practice)."""


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

    def __post_init__(self) -> None:
        _check_times(timestamp=self.timestamp)


class PriceCurveDelta(Wire, frozen=True):
    points: list[PriceCurvePoint] = []
    resolution: Resolution = Resolution("01:00:00")
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

    def __post_init__(self) -> None:
        _check_times(lastUpdated=self.last_updated)


class LPCDataPoint(Wire, frozen=True):
    timestamp: Timestamp
    max_power_in_kilo_watts: float | None = None

    def __post_init__(self) -> None:
        _check_times(timestamp=self.timestamp)


class LocationLPCTarget(Wire, frozen=True):
    location_id: str
    meter_point_id: str
    resolution: Resolution
    points: list[LPCDataPoint]


class ResourceLPCTarget(Wire, frozen=True):
    resource_id: str
    location_id: str
    meter_point_id: str
    resolution: Resolution
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
    id: Id
    created_at: Timestamp | None = None
    payload: msgspec.Raw = msgspec.Raw(b"null")

    def __post_init__(self) -> None:
        _check_times(createdAt=self.created_at)


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
        _check_times(
            eventCreatedAtUtc=self.event_created_at_utc,
            notificationSentUtc=self.notification_sent_utc,
        )


# --- reports (outbound) ------------------------------------------------------


class EnergyCurvePoint(Outbound, frozen=True):
    timestamp: Timestamp
    kilo_watt_hours: float

    def __post_init__(self) -> None:
        _check_times(timestamp=self.timestamp)


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
        _check_times(createdAt=self.created_at)


# --- depth, checked before decoding -------------------------------------------

_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
_TOKENS = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')


def too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether ``raw`` nests deeper than ``limit`` (brackets outside strings count).

    Cheap and never recursive: C-level bytes operations, one pass per level up to ``limit``.
    Malformed nesting is left to the decoder to report, unless it opens too many levels.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    # without escapes every quote opens or closes a string
    outside = _STRINGS.sub(b"", raw) if b"\\" in raw else b"".join(raw.split(b'"')[0::2])
    brackets = outside.translate(_ONE_KIND, _NOT_BRACKETS)
    run = b"[" * (limit + 1)
    for _ in range(limit):
        if run in brackets:  # the usual deep document: caught without peeling
            return True
        inner = brackets.replace(b"[]", b"")  # every innermost pair: one level less
        if not inner:
            return False
        if len(inner) == len(brackets):  # unbalanced: what is left only opens or closes
            return brackets.count(b"[") > limit
        brackets = inner
    return True


def _check_depth(raw: bytes, what: str, limit: int = MAX_DEPTH) -> None:
    if too_deep(raw, limit):
        raise WireError(f"{what}: nested deeper than {limit} levels")


def _cut_deep(raw: bytes, limit: int) -> tuple[bytes, dict[bytes, bytes]]:
    """``raw`` with every value nested deeper than ``limit`` replaced by a marker string.

    Returns the shallow document and marker -> the bytes it replaced, so that the parts
    can be put back into each event once the page around them is decoded.
    """
    nonce = secrets.token_hex(8).encode()
    parts: list[bytes] = []
    cuts: dict[bytes, bytes] = {}
    depth = done = start = 0
    for m in _TOKENS.finditer(raw):
        char = raw[m.start()]
        if char == 0x22:  # a string
            continue
        depth += 1 if char in b"[{" else -1
        if char in b"[{" and depth == limit + 1:
            start = m.start()
        elif char in b"]}" and depth == limit:
            marker = b'"\\u0000cut:' + nonce + b":%d" % len(cuts) + b'"'
            cuts[marker] = raw[start : m.end()]
            parts += (raw[done:start], marker)
            done = m.end()
    parts.append(raw[done:])
    return b"".join(parts), cuts


def _restore(raw: bytes, cuts: dict[bytes, bytes]) -> bytes:
    for marker, part in cuts.items():
        if marker in raw:
            raw = raw.replace(marker, part)
    return raw


# --- codecs, built once ------------------------------------------------------


class _Tag(msgspec.Struct):
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

_NAMED = re.compile(r"([a-z][A-Za-z]*): (.*)", re.DOTALL)
"""A ``__post_init__`` names its field first: ``"timestamp: ... is outside ..."``."""


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


class _Text(msgspec.Struct):
    timestamp: str


class _Points(msgspec.Struct):
    points: list[_Text] = []


class _CurveTexts(msgspec.Struct, rename="camel"):
    price_curve_delta: _Points


class _TargetTexts(msgspec.Struct):
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
    """A payload whose depth was checked with the document around it."""
    try:
        tag = _tag_decoder.decode(raw).payloadType
    except msgspec.MsgspecError as exc:
        raise _wire_error(exc, "event payload", "payload") from exc
    if tag not in KNOWN_EVENT_TYPES:
        return UnknownPayload(payload_type=tag or "Unknown", raw=bytes(raw))
    try:
        payload: KnownPayload = _payload_decoder.decode(raw)
    except msgspec.MsgspecError as exc:
        raise _wire_error(exc, f"{tag} payload", "payload") from exc
    return payload


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
        shallow, cuts = _cut_deep(body, PAGE_DEPTH)
    try:
        page = _events_decoder.decode(shallow)
    except msgspec.MsgspecError as exc:
        raise _wire_error(exc, "GET /events reply") from exc
    if cuts:
        events = [msgspec.Raw(_restore(bytes(e), cuts)) for e in page.events]
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


class _IdOnly(msgspec.Struct):
    id: Id


_id_decoder = msgspec.json.Decoder(_IdOnly)


def polled_event_id(raw: bytes) -> str | None:
    """The ``id`` of an event that does not decode, if it has a usable one (else None)."""
    shallow, _ = _cut_deep(raw, 1)  # nothing nested is read, however deep
    try:
        return _id_decoder.decode(shallow).id
    except msgspec.MsgspecError:
        return None


class _ReportTexts(msgspec.Struct):
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


def payload_type(payload: EventPayload) -> str:
    """The ``payloadType`` of a decoded event payload."""
    if isinstance(payload, UnknownPayload):
        return payload.payload_type
    return str(type(payload).__struct_config__.tag)


def report_kind(request: PostReportRequest) -> str:
    """The outbox ``kind`` of a report: its payload type, or ``A+B`` when mixed."""
    return "+".join(sorted({str(type(p).__struct_config__.tag) for p in request.payloads}))
