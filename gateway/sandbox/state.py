"""What the sandbox remembers, and the decisions made on it. Pure: callers pass ``now``.

* :class:`ReportLedger` decides every ``POST /reports`` answer (JSON, contract, idempotency).
* :func:`paginate` / :func:`parse_paging` implement ``GET /events`` paging.
* :class:`EventLog` keeps events in arrival order and serves them newest first.
* :class:`Webhook` is one registration and the ``GetWebhookResponse`` it renders.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from gateway import contract

__all__ = [
    "MAX_PAGE_SIZE",
    "Answer",
    "EventLog",
    "PushAttempt",
    "ReceivedReport",
    "ReportAttempt",
    "ReportLedger",
    "Webhook",
    "iso",
    "paginate",
    "parse_paging",
]

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


def iso(moment: dt.datetime) -> str:
    """Spark's timestamp form: ISO-8601 in UTC with ``+00:00``."""
    return moment.astimezone(dt.UTC).isoformat()


@dataclass(frozen=True, slots=True)
class ReceivedReport:
    """A report the sandbox accepted (``duplicate``: its Idempotency-Key was seen before)."""

    id: str
    event_id: str | None
    body: Any
    raw: bytes
    idempotency_key: str | None
    received_at: float
    duplicate: bool
    known_event: bool


@dataclass(frozen=True, slots=True)
class ReportAttempt:
    """One ``POST /reports`` request, whatever became of it."""

    received_at: float
    monotonic: float
    status: int | Literal["dropped"]
    idempotency_key: str | None
    authorized: bool
    raw: bytes


@dataclass(frozen=True, slots=True)
class PushAttempt:
    """One webhook delivery attempt: ``status`` if an answer came, else ``error``."""

    url: str
    webhook_id: str
    notification_id: str
    event_id: str
    attempt: int
    status: int | None
    error: str | None
    at: float
    notification_type: str = "Unknown"
    signature: str | None = None
    duration_ms: int | None = None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.status == 200

    def log_entry(self, tenant_id: str) -> dict[str, Any]:
        """A ``WebhookNotificationLog``: how ``GET /webhooks/logs`` shows this attempt."""
        return {
            "webhookId": self.webhook_id,
            "tenantId": tenant_id,
            "partnerEventId": self.event_id,
            "notificationId": self.notification_id,
            "notificationType": self.notification_type,
            "notificationSent": iso(dt.datetime.fromtimestamp(self.at, dt.UTC)),
            "sparkSignature": self.signature,
            "webhookUrl": self.url,
            "requestTimeout": self.timed_out,
            "responseStatusCode": self.status,
            "requestDurationMs": self.duration_ms,
        }


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer decided by the core: status and a JSON-encodable body."""

    status: int
    body: Any


class ReportLedger:
    """Accepted reports and the receipts handed out per Idempotency-Key."""

    def __init__(self) -> None:
        self.reports: list[ReceivedReport] = []
        self._receipts: dict[str, dict[str, Any]] = {}

    def submit(
        self,
        raw: bytes,
        idempotency_key: str | None,
        *,
        known_events: Container[str],
        now: float,
        report_id: str,
    ) -> Answer:
        """Validate and record one report body; 400 with a JSON string naming the field."""
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            return Answer(400, f"body is not valid JSON: {exc}")
        found = contract.violations("PostReportRequest", body)
        if found:
            return Answer(400, str(found[0]))
        event_id = body.get("eventId")
        receipt = self._receipts.get(idempotency_key) if idempotency_key else None
        duplicate = receipt is not None
        if receipt is None:
            created = iso(dt.datetime.fromtimestamp(now, dt.UTC))
            receipt = {"id": report_id, "eventId": event_id, "createdAt": created}
            if idempotency_key:
                self._receipts[idempotency_key] = receipt
        self.reports.append(
            ReceivedReport(
                id=receipt["id"],
                event_id=event_id,
                body=body,
                raw=raw,
                idempotency_key=idempotency_key,
                received_at=now,
                duplicate=duplicate,
                known_event=event_id is not None and event_id in known_events,
            )
        )
        return Answer(200, receipt)


class EventLog:
    """Stored events (``GetEventResponse`` dicts), looked up by id or paged newest first."""

    def __init__(self) -> None:
        self._oldest_first: list[dict[str, Any]] = []
        self._by_id: dict[str, dict[str, Any]] = {}

    def add(self, event: dict[str, Any]) -> None:
        self._oldest_first.append(event)
        self._by_id[event["id"]] = event

    def get(self, event_id: str) -> dict[str, Any] | None:
        return self._by_id.get(event_id)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._by_id

    def __len__(self) -> int:
        return len(self._oldest_first)

    def newest_first(self) -> list[dict[str, Any]]:
        return self._oldest_first[::-1]

    def page(self, page: int, page_size: int) -> dict[str, Any]:
        """A ``GetEventsResponse`` body."""
        total = len(self._oldest_first)
        pagination, start, stop = paginate(total, page, page_size)
        # newest first: index i counts back from the end of the arrival-ordered list
        events = [self._oldest_first[total - 1 - i] for i in range(start, stop)]
        return {"events": events, "pagination": pagination}


def paginate(total: int, page: int, page_size: int) -> tuple[dict[str, Any], int, int]:
    """An ``ApiPagination`` body and the [start, stop) slice for 1-based ``page``."""
    total_pages = math.ceil(total / page_size)
    start = min((page - 1) * page_size, total)
    stop = min(start + page_size, total)
    pagination = {
        "totalRecords": total,
        "pageSize": page_size,
        "currentPage": page,
        "totalPages": total_pages,
        "nextPage": page + 1 if page < total_pages else None,
        "previousPage": page - 1 if page > 1 else None,
    }
    return pagination, start, stop


def parse_paging(query: Mapping[str, str]) -> tuple[int, int] | dict[str, list[str]]:
    """``(page, pageSize)`` from the query, or validation errors keyed by parameter."""
    errors: dict[str, list[str]] = {}
    values: dict[str, int] = {}
    for name, default, high in (
        ("page", 1, None),
        ("pageSize", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE),
    ):
        text = query.get(name)
        try:
            value = default if text is None or text == "" else int(text)
        except ValueError:
            errors[name] = [f"The value '{text}' is not valid for {name}."]
            continue
        if value < 1:
            errors[name] = [f"{name} must be at least 1, got {value}."]
        elif high is not None and value > high:
            errors[name] = [f"{name} must be at most {high}, got {value}."]
        values[name] = value
    if errors:
        return errors
    return values["page"], values["pageSize"]


def validation_problem(errors: dict[str, list[str]]) -> dict[str, Any]:
    """An ``HttpValidationProblemDetails`` body (RFC 7807), as ASP.NET writes it."""
    return {
        "type": "https://tools.ietf.org/html/rfc9110#section-15.5.1",
        "title": "One or more validation errors occurred.",
        "status": 400,
        "errors": errors,
    }


@dataclass
class Webhook:
    """One registered webhook. The secret is kept for signing and never rendered."""

    id: str
    url: str
    secret: str | None
    name: str | None
    notification_types: tuple[str, ...]
    created: str
    enabled: bool = True
    status: str = "New"
    """``New`` until the first push; then ``Healthy`` or ``Unhealthy`` (``TimeOut`` after a
    timeout) by the last attempt's result, as Spark's ``WebhookStatus`` reads."""

    def wants(self, notification_type: str) -> bool:
        """Subscribed to this type? No types listed means every type."""
        return self.enabled and (
            not self.notification_types or notification_type in self.notification_types
        )

    def to_json(self) -> dict[str, Any]:
        """A ``GetWebhookResponse`` body."""
        return {
            "webhookId": self.id,
            "webhookUrl": self.url,
            "name": self.name,
            "notificationTypes": list(self.notification_types),
            "enabled": self.enabled,
            "status": self.status,
            "createdDate": self.created,
            "modifiedDate": self.created,
        }
