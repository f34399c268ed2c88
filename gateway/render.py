"""How the CLI shows things: JSON records and plain text tables. Pure.

Text that came from outside (event ids, payload types, reply bodies, notes) reaches the
operator's terminal with every control character (C0, DEL, C1) escaped as ``\\xNN``, so
an event id cannot retitle or clear the terminal; JSON escapes them as ``\\uNNNN``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.store.inbox import InboxEvent
from gateway.store.outbox import OutboxItem

__all__ = [
    "event_record",
    "iso",
    "outbox_record",
    "plan_text",
    "printable",
    "table",
    "to_json",
]

_CONTROLS = [*range(0x20), *range(0x7F, 0xA0)]  # C0, DEL, C1
_ESCAPED = {c: f"\\x{c:02x}" for c in _CONTROLS}
_JSON_ESCAPED = {c: f"\\u{c:04x}" for c in range(0x7F, 0xA0)}  # json.dumps leaves these


def printable(text: str) -> str:
    """``text`` with every C0, DEL and C1 control character written as ``\\xNN``."""
    return text.translate(_ESCAPED)


def iso(moment: float | None) -> str | None:
    """ISO-8601 UTC, or what a row holds that is no time (``1e+20 (not a time)``: year
    10000, infinite, text) instead of an exception that would hide the whole listing."""
    if moment is None:
        return None
    try:
        return (
            dt.datetime.fromtimestamp(moment, dt.UTC)
            .isoformat(timespec="seconds")
            .replace("+00:00", "Z")
        )
    except (OverflowError, OSError, ValueError, TypeError):
        return f"{printable(str(moment))[:40]} (not a time)"


def outbox_record(item: OutboxItem, *, body: bool = False) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": item.id,
        "event_id": item.event_id,
        "kind": item.kind,
        "state": item.state,
        "attempts": item.attempts,
        "last_status": item.last_status,
        "last_error": item.last_error,
        "report_id": item.report_id,
        "source": item.source,
        "idempotency_key": item.idempotency_key,
        "next_attempt_at": iso(item.next_attempt_at) if item.state == "pending" else None,
        "created_at": iso(item.created_at),
        "delivered_at": iso(item.delivered_at),
        "deadline": iso(item.deadline),
    }
    if item.body_dropped_at is not None:
        record["body_dropped"] = f"by retention at {iso(item.body_dropped_at)} (its month closed)"
        record["kwh_totals"] = json.loads(item.kwh_totals) if item.kwh_totals else None
    if body:
        record["body"] = None if item.body_dropped_at is not None else json.loads(item.body)
    return record


def event_record(event: InboxEvent, *, payload: bool = False) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event_id": event.event_id,
        "payload_type": event.payload_type,
        "created_at": event.created_at,
        "received_via": event.received_via,
        "received_at": iso(event.received_at),
        "notification_id": event.notification_id,
        "notification_type": event.notification_type,
        "plan_state": event.plan_state,
        "plan_note": event.plan_note,
    }
    if event.payload_dropped_at is not None:
        record["payload_dropped"] = f"by retention at {iso(event.payload_dropped_at)}"
    if payload and event.payload_dropped_at is not None:
        record["payload"] = None
    elif payload:
        try:
            record["payload"] = json.loads(event.payload)
        except (ValueError, RecursionError):  # a quarantined event is kept as it came
            record["payload"] = event.payload.decode("utf-8", "replace")
    return record


def to_json(value: object) -> str:
    """Indented JSON, non-ASCII text as is but DEL and C1 escaped like C0 (``\\u009b``)."""
    return json.dumps(value, indent=2, ensure_ascii=False).translate(_JSON_ESCAPED)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A plain fixed-width table; long cells are cut to keep one row per line."""
    if not rows:
        return "(none)"
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: object, limit: int = 60) -> str:
    text = "-" if value is None else printable(str(value).replace("\n", " "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plan_text(record: Mapping[str, Any]) -> str:
    """``ecgw plan show`` for a terminal: the event, then targets, schedules and commands."""
    window = record.get("window") or {}
    lines = [
        f"event {_cell(record['event_id'], 200)} ({_cell(record['payload_type'])}), received "
        f"{record['received_at']}, window {window.get('start', '-')} .. {window.get('end', '-')}"
        + ("  [dry run: nothing is switched]" if record.get("dry_run") else ""),
        f"plan: {_cell(record.get('plan_state'))}; {_cell(record.get('plan_note'), 200)}",
    ]
    for target in record["targets"]:
        who = target["resource_id"] or f"{target['location_id']}/{target['meter_point_id']}"
        lines += ["", f"{target['kind']} {_cell(who, 120)}: {target['decision']}"]
        lines.append(f"  {_cell(target['reason'], 300)}")
        if target["intervals"]:
            lines.append(table(target["intervals"], ("start", "end", "cap_kw", "highest_kw")))
    if record["schedules"]:
        lines += ["", "schedules:"]
        for sched in record["schedules"]:
            runs = ", ".join(f"{r['start']}..{r['end']}" for r in sched["on"]) or "none"
            lines.append(
                f"  {_cell(sched['resource_id'])}: {sched['participation']} "
                f"({_cell(sched['strategy'])}); on: {runs}; {_cell(sched['note'], 200)}"
            )
    lines += ["", "commands:"]
    columns = ("id", "resource_id", "value", "reason", "state", "sent_at", "confirmed_at", "error")
    lines.append(table(record["commands"], columns))
    return "\n".join(lines)
