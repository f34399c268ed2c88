"""What Spark sent or holds that the gateway never received. Pure: data in, findings out.

Inputs: Spark's webhook notification logs (``WebhookNotificationLog``, one entry per push
attempt), the events ``GET /events`` lists, both limited to a window (``since``), and the event
ids in the local inbox. A notification *failed* when none of its attempts was answered 200 (a
timeout, another status, no answer). An event is *missing* when it is not in the inbox, whether
its notification failed, was never sent (no webhook, disabled, not subscribed) or was answered
200 by something that is not this gateway. Missing events are then fetched by id.

What the OpenAPI document does not say, and what is assumed: ``GET /webhooks/logs`` has no
time filter and no stated order (the whole log is read and filtered here; the latest attempt
is the one with the latest ``notificationSent``); ``GET /events`` has no filter either and is
documented newest first, so reading stops at the first event older than the window.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.timeutil import parse_timestamp

__all__ = ["FailedNotification", "Findings", "compare", "in_window"]


@dataclass(frozen=True, slots=True)
class FailedNotification:
    """A notification no attempt of which was answered 200."""

    notification_id: str
    event_id: str | None
    webhook_url: str
    attempts: int
    last_result: str
    """``HTTP 401``, ``timeout`` or ``no answer``."""
    received: bool
    """The event is in the inbox all the same (polled, or pushed again)."""


@dataclass(frozen=True, slots=True)
class Findings:
    failed: list[FailedNotification]
    missing: list[str]
    """Event ids the API knows (listed or named by a notification) that the inbox lacks,
    oldest first as the API lists them."""
    events_seen: int
    notifications_seen: int


def in_window(stamp: object, since: dt.datetime) -> bool:
    """True for an ISO-8601 timestamp at or after ``since``; an unreadable one counts (it is
    better to look at one event too many than to miss one)."""
    if not isinstance(stamp, str):
        return True
    try:
        return parse_timestamp(stamp) >= since
    except ValueError:
        return True


def _result(entry: dict[str, Any]) -> str:
    if entry.get("requestTimeout") is True:
        return "timeout"
    status = entry.get("responseStatusCode")
    return f"HTTP {status}" if isinstance(status, int) else "no answer"


def compare(
    logs: Iterable[dict[str, Any]],
    events: Iterable[dict[str, Any]],
    local: Container[str],
) -> Findings:
    """Failed notifications and missing events. ``logs`` and ``events`` are newest first (as
    the API lists them) and already limited to the window."""
    attempts: dict[str, list[dict[str, Any]]] = {}
    for entry in logs:
        notification_id = entry.get("notificationId")
        if isinstance(notification_id, str):
            attempts.setdefault(notification_id, []).append(entry)
    failed = []
    missing: list[str] = []

    def want(event_id: object) -> None:
        if isinstance(event_id, str) and event_id not in local and event_id not in missing:
            missing.append(event_id)

    for notification_id, entries in reversed(attempts.items()):  # oldest first
        if any(e.get("responseStatusCode") == 200 for e in entries):
            continue
        event_id = entries[0].get("partnerEventId")
        latest = max(entries, key=lambda e: str(e.get("notificationSent", "")))
        failed.append(
            FailedNotification(
                notification_id=notification_id,
                event_id=event_id if isinstance(event_id, str) else None,
                webhook_url=str(latest.get("webhookUrl", "")),
                attempts=len(entries),
                last_result=_result(latest),
                received=isinstance(event_id, str) and event_id in local,
            )
        )
    listed = list(events)
    for event in reversed(listed):
        want(event.get("id"))
    for notice in failed:
        want(notice.event_id)
    return Findings(
        failed=failed, missing=missing, events_seen=len(listed), notifications_seen=len(attempts)
    )
