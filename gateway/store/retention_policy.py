"""What retention may drop, and when. Pure: no SQLite, no clock (``now`` is passed in).

Spark takes a report, or a correction of it, until the end of the month of its
intervals (the outbox ``deadline``: the first instant of the next month). The
money for month M is settled during month M+1, so a report's frozen body is what
an operator needs to answer a question about month M until M+1 is over. Kept:

    what                                     dropped once
    delivered report's body                  month M+1 has ended, plus MONTH_MARGIN (7 days)
    event's payload, its report jobs         the same, M being the month the event arrived,
      and its taking-part rows                 and none of its reports still holds a body
    LPC decisions, schedules, overrides,     the same, M being the month they were decided,
      device commands                          ended (schedules) or requested (commands)
    quarantined: dead report's body,         the same, and QUARANTINE_KEEP (90 days) after it
      set-aside event's payload and job        was set aside: time for an operator to look
    what stays of a report or an event       LEDGER_KEEP (270 days) after its body or payload
      (the slim row: the ledger)               went: on the 8th of month M+12

LEDGER_KEEP: Spark takes nothing for a month once it has ended, so keeping a report's key
longer guards against nothing that could still be sent (an event that old is never planned
again: its payload is gone, and one fetched again is refused as late); it is the audit trail.
The ledger holds the last twelve months: month M's rows go on the 8th of month M+12 (their
bodies went on the 8th of M+2; 270 days later falls between the 1st of M+11 and of M+12,
whatever the months' lengths, and the cutoff moves a month at a time). So the file stops
growing after a year at a site, instead of by some 400 bytes per report and event for ever.

MONTH_MARGIN covers a gateway that was down across a month's end and an operator who
looks in the first week of the month. QUARANTINE_KEEP is longer than the readings'
default retention (62 days): by then the readings a quarantined report would be rebuilt
from are gone anyway, and so is the month Spark would take it in.

A report that is pending or in flight (a retry included) is never touched, nor an event
still open (``new``, ``planned``), nor a command still ``sending``, nor a resource's latest
sent command (the controller reads it at start to know what it holds off). What stays of a
dropped report is its row: event id, kind, ``Idempotency-Key``, state, Spark's report
id, times, and ``kwh_totals`` (per target, the kWh its body reported, computed by
:func:`report_totals` before the body goes). That row keeps the report from being
queued twice. Readings are kept by ``metering.retention`` (:mod:`readings_compaction`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass

__all__ = [
    "DAY",
    "LEDGER_KEEP",
    "MONTH_MARGIN",
    "QUARANTINE_KEEP",
    "Cutoffs",
    "cutoffs",
    "month_start",
    "previous_month_start",
    "report_totals",
]

DAY = 86400.0
MONTH_MARGIN = 7 * DAY
QUARANTINE_KEEP = 90 * DAY
LEDGER_KEEP = 270 * DAY


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Epoch seconds; everything strictly before a cutoff may go.

    ``reports``: a delivered report whose ``deadline`` (the first instant of the month
    after its intervals) is before it. ``months``: an event, decision, schedule, command
    or job whose own time is before it (the same months as ``reports``, one earlier since
    these are times inside the month, not the month's end). ``quarantine``: a quarantined
    item set aside before it (also never later than ``months``).
    """

    reports: float
    months: float
    quarantine: float


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


def month_start(t: float) -> float:
    """The first instant (UTC) of the month holding ``t``."""
    moment = _utc(t)
    return dt.datetime(moment.year, moment.month, 1, tzinfo=dt.UTC).timestamp()


def previous_month_start(t: float) -> float:
    """The first instant of the month before the one holding ``t``."""
    moment = _utc(t)
    year, month = (moment.year - 1, 12) if moment.month == 1 else (moment.year, moment.month - 1)
    return dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp()


def cutoffs(now: float) -> Cutoffs:
    """The cutoffs at ``now``.

    A report of month M (deadline = start of M+1) goes once M+1 has ended MONTH_MARGIN
    ago: ``deadline < month_start(now - MONTH_MARGIN)``. A time ``t`` inside month M goes
    at the same moment: ``t < previous_month_start(that)``.
    """
    reports = month_start(now - MONTH_MARGIN)
    months = previous_month_start(reports)
    return Cutoffs(reports=reports, months=months, quarantine=min(months, now - QUARANTINE_KEEP))


def _label(payload: dict[str, object]) -> str:
    parts = [payload.get(k) for k in ("resourceId", "locationId", "meterPointId")]
    where = "/".join(str(p) for p in parts if p)
    return f"{payload.get('payloadType')} {where}".strip()


def report_totals(body: bytes) -> dict[str, float] | None:
    """Per payload of a report body (``EnergyUsage R1/L1/M1``), the kWh of its points, summed
    exactly and rounded to the Wh's thousandth. {} for a report without energy (an LPC
    acknowledgement); None for a body that is not a report (nothing to sum)."""
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):
        return None
    payloads = request.get("payloads") if isinstance(request, dict) else None
    if not isinstance(payloads, list):
        return None
    totals: dict[str, list[float]] = {}
    for payload in payloads:
        if not isinstance(payload, dict) or not isinstance(payload.get("points"), list):
            continue
        kwh = [p.get("kiloWattHours") for p in payload["points"] if isinstance(p, dict)]
        values = [float(v) for v in kwh if isinstance(v, int | float) and math.isfinite(v)]
        totals.setdefault(_label(payload), []).extend(values)
    return {label: round(math.fsum(values), 6) for label, values in totals.items()}
