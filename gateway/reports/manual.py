"""``ecgw report submit``: check a report request written elsewhere and queue it.

The file must be a ``PostReportRequest`` within the OpenAPI contract, with an
``eventId`` (the outbox key) and at least one payload. It is re-encoded in
the gateway's canonical form and that body is frozen: timestamps in UTC (one
written in UTC is kept as written, every fractional digit), resolutions as
``hh:mm:ss``, unset optional fields left out. The deprecated ``curvePoints``
is accepted as ``null`` or ``[]`` (the OpenAPI document's own example sends
``null``) and left out; points in it are refused: they belong in ``points``.

The file must be a regular file of at most :data:`MAX_FILE_BYTES` (4 MiB, far more than any
report the API takes); a longer one, or a device, pipe or directory, is refused unread.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat

import msgspec

from gateway import contract, wire
from gateway.errors import ReportInvalid, WireError
from gateway.store.outbox import Outbox
from gateway.timeutil import month_end

__all__ = [
    "MAX_FILE_BYTES",
    "ManualReport",
    "canonical_report",
    "parse_manual_report",
    "read_report_file",
    "report_deadline",
    "submit",
]

MAX_FILE_BYTES = 4 * 1024 * 1024


class ManualReport(msgspec.Struct, frozen=True):
    event_id: str
    kind: str
    body: bytes
    deadline: float


def _canonical_payload(payload: wire.ReportPayload, index: int) -> wire.ReportPayload:
    if not isinstance(payload, wire.EnergyUsage | wire.LocationEnergyUsage):
        return payload
    where = f"payloads[{index}]"
    try:
        resolution = wire.normal_resolution(payload.resolution)
    except ValueError as exc:
        raise ReportInvalid(f"{where}.resolution: {exc}", field=f"{where}.resolution") from None
    if isinstance(payload, wire.LocationEnergyUsage):
        return msgspec.structs.replace(payload, resolution=resolution)
    if payload.curve_points:
        raise ReportInvalid(
            f"{where}.curvePoints: deprecated; put the points in points",
            field=f"{where}.curvePoints",
        )
    return msgspec.structs.replace(payload, resolution=resolution, curve_points=None)


def canonical_report(request: wire.PostReportRequest) -> wire.PostReportRequest:
    """The report as the gateway writes it (resolutions ``hh:mm:ss``, no ``curvePoints``).

    Timestamps need nothing here: :func:`gateway.wire.encode` writes them in UTC.
    """
    payloads = [_canonical_payload(p, i) for i, p in enumerate(request.payloads)]
    return msgspec.structs.replace(request, payloads=payloads)


def read_report_file(path: str) -> bytes:
    """The bytes of a report file, at most :data:`MAX_FILE_BYTES`; ValueError saying why
    not (not a regular file, too long, unreadable). Never blocks on a pipe, never reads
    more than the limit and one byte."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_FILE_BYTES:
        raise ValueError(f"{path}: longer than {MAX_FILE_BYTES} bytes (4 MiB); not read")
    return raw


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
    if wire.too_deep(raw):
        raise ReportInvalid(f"nested deeper than {wire.MAX_DEPTH} levels")
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
    request = canonical_report(request)
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
