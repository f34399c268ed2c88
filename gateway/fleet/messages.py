"""What the hub and its sites say to each other over the broker (pure).

* hub -> site, on ``.../events``: one event in the shape of an item of Spark's
  ``GET /events`` page (``id``, ``createdAt``, ``payload``), its targets cut to the
  site's own. The site stores it exactly as it stores a polled event.
* site -> hub, on ``.../reports``: :class:`SiteReport`, the ``POST /reports`` body the site
  would have sent itself, with the key of its outbox row (``eventId`` + ``kind``).
* hub -> site, on ``.../acks``: :class:`HubAck`, what became of a report: ``delivered``
  (with Spark's report id) or ``rejected`` (with the reason: Spark's 4xx, or a target
  that is not the site's). A report the hub has only queued gets no answer yet.

Every message is JSON; a message that does not decode raises WireError naming the field.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeAlias

import msgspec

from gateway import wire
from gateway.errors import WireError, validation_parts

__all__ = [
    "HubAck",
    "SiteReport",
    "decode_ack",
    "decode_site_report",
    "encode_message",
    "event_message",
]

Text: TypeAlias = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Reason: TypeAlias = Annotated[str, msgspec.Meta(max_length=2000)]

MAX_MESSAGE = 1024 * 1024
"""Bytes a hub or site reads of one message at most (a report of a day of 1-minute
intervals for a hundred resources is well under it)."""


class SiteReport(msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True):
    event_id: Text
    kind: Text
    body: msgspec.Raw
    """The ``POST /reports`` body, exactly as the site froze it in its outbox."""


class HubAck(msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True):
    event_id: Text
    kind: Text
    outcome: Literal["delivered", "rejected"]
    report_id: Text | None = None
    status: int | None = None
    reason: Reason | None = None

    def __post_init__(self) -> None:
        if self.outcome == "delivered" and self.report_id is None:
            raise ValueError("reportId: a delivered report needs Spark's report id")


_site_report = msgspec.json.Decoder(SiteReport)
_ack = msgspec.json.Decoder(HubAck)
_encoder = msgspec.json.Encoder()


def _error(exc: msgspec.MsgspecError, what: str) -> WireError:
    field, message = validation_parts(exc)
    where = f" at {field}" if field else ""
    return WireError(f"{what}{where}: {message}")


def _bounded(raw: bytes, what: str) -> None:
    """Not too big, and not nested deeper than a report ever is (msgspec raises
    RecursionError, not a MsgspecError, for a deep one: one site's message must not stop
    the hub's intake, and it would come back after every reconnect)."""
    if len(raw) > MAX_MESSAGE:
        raise WireError(f"{what}: {len(raw)} bytes, more than {MAX_MESSAGE}")
    if wire.too_deep(raw, wire.MAX_DEPTH):
        raise WireError(f"{what}: nested deeper than {wire.MAX_DEPTH} levels")


def decode_site_report(raw: bytes) -> tuple[SiteReport, wire.PostReportRequest]:
    """A site's report and its body decoded as Spark would read it; WireError if bad."""
    _bounded(raw, "site report")
    try:
        report = _site_report.decode(raw)
    except msgspec.MsgspecError as exc:
        raise _error(exc, "site report") from exc
    request = wire.decode_report_request(bytes(report.body))
    if request.event_id != report.event_id:
        raise WireError(
            f"site report: eventId {report.event_id!r} but its body's is {request.event_id!r}"
        )
    if wire.report_kind(request) != report.kind:
        raise WireError(
            f"site report: kind {report.kind!r} but its body is {wire.report_kind(request)!r}"
        )
    return report, request


def decode_ack(raw: bytes) -> HubAck:
    _bounded(raw, "hub ack")
    try:
        return _ack.decode(raw)
    except msgspec.MsgspecError as exc:
        raise _error(exc, "hub ack") from exc


def event_message(event_id: str, created_at: str | None, payload: bytes) -> bytes:
    """An event for a site, as an item of a ``GET /events`` page."""
    document: dict[str, object] = {"id": event_id}
    if created_at is not None:
        document["createdAt"] = created_at
    return _encoder.encode(document)[:-1] + b',"payload":' + payload + b"}"


def encode_message(message: SiteReport | HubAck) -> bytes:
    return _encoder.encode(message)
