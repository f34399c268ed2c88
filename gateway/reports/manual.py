"""``ecgw report submit``: check a report request written elsewhere and queue it.

The file must be a ``PostReportRequest`` within the OpenAPI contract, with an
``eventId`` (the outbox key) and at least one payload. It is re-encoded in
the gateway's canonical form (timestamps in UTC) and that body is frozen.
"""

from __future__ import annotations

import datetime as dt
import json

import msgspec

from gateway import contract, wire
from gateway.errors import ReportInvalid, WireError
from gateway.store.outbox import Outbox
from gateway.timeutil import month_end, to_utc

__all__ = ["ManualReport", "parse_manual_report", "report_deadline", "submit", "utc_report"]


class ManualReport(msgspec.Struct, frozen=True):
    event_id: str
    kind: str
    body: bytes
    deadline: float


def _utc_points(points: list[wire.EnergyCurvePoint]) -> list[wire.EnergyCurvePoint]:
    return [msgspec.structs.replace(p, timestamp=to_utc(p.timestamp)) for p in points]


def utc_report(request: wire.PostReportRequest) -> wire.PostReportRequest:
    """The same report with every timestamp in UTC."""
    payloads: list[wire.ReportPayload] = []
    for payload in request.payloads:
        if isinstance(payload, wire.EnergyUsage | wire.LocationEnergyUsage):
            payload = msgspec.structs.replace(payload, points=_utc_points(payload.points))
        payloads.append(payload)
    return msgspec.structs.replace(request, payloads=payloads)


def report_deadline(request: wire.PostReportRequest, *, now: float) -> float:
    """Spark's cut-off: the end of the month of the latest reported interval."""
    stamps = [
        p.timestamp.timestamp()
        for payload in request.payloads
        if isinstance(payload, wire.EnergyUsage | wire.LocationEnergyUsage)
        for p in payload.points
    ]
    latest = max(stamps, default=now)
    return month_end(dt.datetime.fromtimestamp(latest, dt.UTC)).timestamp()


def parse_manual_report(raw: bytes, *, now: float) -> ManualReport:
    """Validate and canonicalise; raises ReportInvalid naming the field."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ReportInvalid(f"not JSON: {exc}") from None
    contract.check("PostReportRequest", data, error=ReportInvalid)
    if not isinstance(data, dict) or not data.get("eventId"):
        raise ReportInvalid("eventId: required (it keys the report in the outbox)", field="eventId")
    if not data.get("payloads"):
        raise ReportInvalid("payloads: at least one payload is required", field="payloads")
    try:
        request = wire.decode_report_request(raw)
    except WireError as exc:
        raise ReportInvalid(str(exc), field=exc.field) from None
    request = utc_report(request)
    return ManualReport(
        event_id=request.event_id,
        kind=wire.report_kind(request),
        body=wire.encode(request),
        deadline=report_deadline(request, now=now),
    )


async def submit(outbox: Outbox, raw: bytes, *, now: float) -> tuple[ManualReport, bool]:
    report = parse_manual_report(raw, now=now)
    queued = await outbox.enqueue(
        event_id=report.event_id,
        kind=report.kind,
        body=report.body,
        source="manual",
        now=now,
        deadline=report.deadline,
    )
    return report, queued
