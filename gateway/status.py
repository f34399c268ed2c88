"""``ecgw status``: what the gateway is doing, from the ``meta`` table and the stores.

Running means: the PID the gateway recorded at its start is alive
(``os.kill(pid, 0)``) and no clean stop was recorded after that start. API health
is the health record's status part (:meth:`gateway.health.Health.snapshot`), which
the running gateway writes at each heartbeat and whenever its error state changes.
Every time in :func:`status_record` is ISO-8601 UTC; ages are seconds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypeGuard

from gateway import render
from gateway.config import Config
from gateway.errors import StoreError
from gateway.lifecycle import version
from gateway.store.database import open_database
from gateway.store.meta import Meta
from gateway.store.observed import ChannelLatest, Observed, OldestPending

__all__ = ["HEARTBEAT_STALE", "process_state", "status_record", "status_text"]

HEARTBEAT_STALE = 60.0  # a running gateway beats every 15 s: older than this is worth a word


def process_state(facts: Mapping[str, object], *, alive: bool | None) -> tuple[bool, str]:
    """``(running, why)`` from the meta facts and whether the recorded PID is alive."""
    started, stopped = _num(facts.get("gateway.started_at")), _num(facts.get("gateway.stopped_at"))
    if started is None or not _is_pid(facts.get("gateway.pid")):
        return False, "never started"
    if stopped is not None and stopped >= started:
        reason = facts.get("gateway.stop_reason") or "clean stop"
        return False, f"stopped cleanly at {render.iso(stopped)} ({reason})"
    if not alive:
        return False, "not running: its process is gone without a clean stop (crash or kill)"
    return True, "running"


def pid_alive(pid: object) -> bool:
    if not _is_pid(pid):
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: beyond any pid
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


async def status_record(config: Config, *, now: float) -> dict[str, Any]:
    """StoreError when there is no database yet: status only reads, it never creates one."""
    if not config.db_path.is_file():
        raise StoreError(f"no database at {config.db_path}: the gateway has not run here yet")
    async with open_database(config.db_path) as db:
        facts = await Meta(db).get_all()
        observed = Observed(db)
        outbox = await observed.outbox_by_state()
        oldest = await observed.oldest_pending()
        channels = await observed.channels()
        events = await observed.events_total()
    pid = facts.get("gateway.pid")
    running, why = process_state(facts, alive=pid_alive(pid))
    heartbeat = _num(facts.get("gateway.heartbeat"))
    health = facts.get("gateway.health")
    health = health if isinstance(health, dict) else {}
    return {
        "running": running,
        "state": why,
        "version": version(),
        "pid": pid,
        "started_at": render.iso(_num(facts.get("gateway.started_at"))),
        "stopped_at": render.iso(_num(facts.get("gateway.stopped_at"))),
        "heartbeat": render.iso(heartbeat),
        "heartbeat_stale": running and (heartbeat is None or now - heartbeat > HEARTBEAT_STALE),
        "webhook_url": facts.get("gateway.webhook_url"),
        "upstream": _upstream(config),
        "database": str(config.db_path),
        "api": _api(health),
        "events": events,
        "outbox": outbox,
        "oldest_pending": _oldest(oldest, now),
        # the scheduler's plan: only a running gateway has one
        "next_report_due": render.iso(_num(health.get("next_report_due"))) if running else None,
        "adapters": _adapters(facts, channels, now, running=running),
    }


def _upstream(config: Config) -> dict[str, Any]:
    """Where reports go: Spark's API, or (a site of a fleet) the hub through its broker."""
    if config.upstream is not None:
        return {"via": "hub", "url": config.upstream.url, "site_id": config.upstream.site_id}
    return {"via": "api", "url": config.api.base_url if config.api is not None else None}


def _upstream_text(upstream: Mapping[str, Any]) -> str:
    if upstream["via"] == "hub":
        return f"upstream: hub via {upstream['url']} (site {upstream['site_id']})"
    return f"upstream: api {upstream['url'] or 'not configured'}"


def _api(health: Mapping[str, Any]) -> dict[str, Any]:
    def outcome(value: object) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            return None
        at = render.iso(_num(value.get("at")))
        return {"at": at, "ok": value.get("ok"), "detail": value.get("detail")}

    return {
        "token": outcome(health.get("token")),
        "poll": outcome(health.get("poll")),
        "delivery": outcome(health.get("delivery")),
        "last_delivered_at": render.iso(_num(health.get("last_delivered_at"))),
        "last_error": outcome(health.get("last_error")),
        "failing_since": render.iso(_num(health.get("api_failing_since"))),
        "token_failures": health.get("token_failures", 0),
    }


def _oldest(oldest: OldestPending | None, now: float) -> dict[str, Any] | None:
    if oldest is None:
        return None
    return {
        "event_id": oldest.event_id,
        "kind": oldest.kind,
        "created_at": render.iso(oldest.created_at),
        "age_seconds": round(now - oldest.created_at, 3),
        "cutoff": render.iso(oldest.deadline),
        "cutoff_in_seconds": None if oldest.deadline is None else round(oldest.deadline - now, 3),
    }


def _adapters(
    facts: Mapping[str, object], channels: list[ChannelLatest], now: float, *, running: bool
) -> dict[str, dict[str, Any]]:
    """Each adapter's last status and its channels' last values. An error is shown only
    while the gateway runs and the adapter has not read since (the runtime clears it)."""
    adapters: dict[str, dict[str, Any]] = {}
    for key, info in facts.items():
        if key.startswith("adapter.") and isinstance(info, dict):
            record = dict(info)
            if not running:
                record["last_error"] = None
            for field in ("since", "last_reading_at"):
                record[field] = render.iso(_num(record.get(field)))
            record["channels"] = []
            adapters[key.removeprefix("adapter.")] = record
    for channel in channels:
        record = adapters.setdefault(channel.adapter, {"name": channel.adapter, "channels": []})
        record["channels"].append(
            {
                "channel": channel.channel,
                "value": channel.value,
                "unit": channel.unit,
                "at": render.iso(channel.at),
                "age_seconds": None if channel.at is None else round(now - channel.at, 3),
            }
        )
    return adapters


def status_text(record: Mapping[str, Any]) -> list[str]:
    """The readable summary, one line per fact (control characters escaped)."""
    lines = [
        f"gateway:  {'running' if record['running'] else 'not running'} - {record['state']}"
        f" (pid {record['pid']}, last heartbeat {record['heartbeat']}"
        f"{', STALE' if record['heartbeat_stale'] else ''})",
        f"version:  {record['version']}",
        f"database: {record['database']}",
        f"webhook:  {record['webhook_url'] or 'off'}",
        _upstream_text(record["upstream"]),
    ]
    lines += _api_text(record["api"], hub=record["upstream"]["via"] == "hub")
    lines.append(f"events:   {record['events']}")
    lines.append("outbox:   " + ", ".join(f"{k} {v}" for k, v in record["outbox"].items()))
    if (oldest := record["oldest_pending"]) is not None:
        lines.append(
            f"oldest pending: {oldest['kind']} report of event {oldest['event_id']}, "
            f"{oldest['age_seconds']:.0f} s old, month-end cut-off {oldest['cutoff']}"
        )
    if record["running"]:
        lines.append(f"next report due: {record['next_report_due'] or 'none planned'}")
    for name, info in sorted(record["adapters"].items()):
        lines += _adapter_text(name, info)
    return [render.printable(line) for line in lines]


def _api_text(api: Mapping[str, Any], *, hub: bool = False) -> list[str]:
    """The API's lines; a site of a fleet neither fetches tokens nor polls (its deliveries
    are to the hub)."""

    def show(what: str, outcome: Mapping[str, Any] | None) -> str:
        if outcome is None:
            return f"api {what}: none yet"
        result = "ok" if outcome.get("ok") else "FAILED"
        detail = f": {outcome['detail']}" if outcome.get("detail") else ""
        return f"api {what}: {result} at {outcome['at']}{detail}"

    lines = [] if hub else [show("token", api["token"]), show("poll", api["poll"])]
    lines.append(show("delivery", api["delivery"]))
    if api["failing_since"] is not None and api["last_error"] is not None:
        lines.append(
            f"api error: failing since {api['failing_since']}: {api['last_error']['detail']}"
        )
    return lines


def _adapter_text(name: str, info: Mapping[str, Any]) -> list[str]:
    error = f" - {info['last_error']}" if info.get("last_error") else ""
    rejected = f", {info['rejected']} rejected" if info.get("rejected") else ""
    lines = [
        f"adapter:  {name} {info.get('state')} ({info.get('readings')} readings, "
        f"{info.get('restarts')} restarts{rejected}){error}"
    ]
    for channel in info.get("channels", []):
        age = channel["age_seconds"]
        lines.append(
            f"  {channel['channel']}: {channel['value']} {channel['unit']}"
            f" ({'no reading' if age is None else f'{age:.0f} s ago'})"
        )
    return lines


def _is_pid(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _num(value: object) -> float | None:
    """A moment from ``meta``, or None for what is not one (``json`` reads NaN, Infinity
    and 1e20, which no clock gives and :func:`render.iso` cannot show)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    moment = float(value)
    return moment if _FIRST_MOMENT <= moment <= _LAST_MOMENT else None  # False for NaN


_FIRST_MOMENT, _LAST_MOMENT = 0.0, 253402300799.0  # 1970-01-01 .. 9999-12-31T23:59:59Z
