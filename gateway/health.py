"""The running gateway's health record: what happened last, and how often.

One :class:`Health` per ``Gateway.run``, fed by small hooks in the code paths that
talk to the API (token, poll, delivery), take in notifications (webhook) and read
the adapters (the runtime's status sink). It is read live by the admin listener
(``/healthz``, ``/metrics``) and, through the ``meta`` table, by ``ecgw status``:
:meth:`Health.snapshot` is the part a status needs, written at each heartbeat and
whenever the error state changes (``on_change``), never per request.

Pure apart from the injected clock: no I/O, no asyncio.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "STALE_FLOOR",
    "STALE_POLLS",
    "Health",
    "HealthRules",
    "Outcome",
    "problems",
    "stale_limit",
    "status_class",
]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's result: when, whether it worked, and why not (or what it gave)."""

    at: float
    ok: bool
    detail: str | None = None


STALE_POLLS = 3  # an adapter is stale after this many poll intervals without a reading ...
STALE_FLOOR = 60.0  # ... and never sooner than this many seconds


def stale_limit(poll_interval: float, floor: float = STALE_FLOOR) -> float:
    """How long an adapter may go without a stored reading before it counts as stale."""
    return max(STALE_POLLS * poll_interval, floor)


@dataclass(frozen=True, slots=True)
class HealthRules:
    """What ``/healthz`` holds the record against.

    ``api_budget``: how long the API may keep failing (token, poll or delivery, with no
    success between) before the gateway is unhealthy; the delivery retry budget,
    ``delivery.backoff_max``. A token endpoint that refuses the credentials is unhealthy
    at once: no retry fixes a wrong secret. ``stale_after``: per adapter, the seconds
    without a stored reading (counted from the start if it never read) after which it is
    stale (:func:`stale_limit`).
    """

    api_budget: float
    stale_after: dict[str, float]
    started_at: float


def problems(health: Health, rules: HealthRules, now: float) -> list[str]:
    """Why the gateway is unhealthy now (empty: healthy), one reason per line."""
    found = []
    if health.auth_refused and health.token is not None:
        found.append(f"API: {health.token.detail}")
    elif health.api_failing_since is not None and now - health.api_failing_since > rules.api_budget:
        error = health.last_error.detail if health.last_error else "failing"
        seconds = now - health.api_failing_since
        found.append(f"API: failing for {seconds:.0f} s (budget {rules.api_budget:g} s): {error}")
    for name, limit in sorted(rules.stale_after.items()):
        status = health.adapters.get(name, {})
        last = status.get("last_reading_at")
        since = last if isinstance(last, int | float) else rules.started_at
        if now - since > limit:
            never = "" if isinstance(last, int | float) else " (none since the start)"
            error = f": {status['last_error']}" if status.get("last_error") else ""
            found.append(
                f"adapter {name}: no reading for {now - since:.0f} s{never}, "
                f"limit {limit:g} s{error}"
            )
    return found


def status_class(status: int | None) -> str:
    """``2xx`` .. ``5xx`` for an HTTP status; ``none`` when no answer came (transport)."""
    if status is None or not 100 <= status <= 599:
        return "none"
    return f"{status // 100}xx"


class Health:
    """What the gateway last saw and counted since it started. Times are clock() seconds."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.on_change: Callable[[], None] | None = None  # the error state changed
        self.token: Outcome | None = None
        self.poll: Outcome | None = None
        self.delivery: Outcome | None = None  # detail: "<result> <status class>"
        self.last_delivered_at: float | None = None
        self.last_error: Outcome | None = None
        self.auth_refused = False  # the token endpoint refused the credentials, last time
        self.api_failing_since: float | None = None  # first failure since the last success
        self.next_report_due: float | None = None
        self.adapters: dict[str, dict[str, Any]] = {}  # the runtime's last AdapterStatus
        self.deliveries: collections.Counter[tuple[str, str]] = collections.Counter()
        self.webhook_requests: collections.Counter[str] = collections.Counter()
        self.readings: collections.Counter[str] = collections.Counter()  # by adapter
        self.adapter_restarts: collections.Counter[str] = collections.Counter()
        self.token_failures = 0

    # --- hooks ------------------------------------------------------------------------------

    def token_fetched(self) -> None:
        self.token = Outcome(self.clock(), True)
        self.auth_refused = False
        self._api_ok()

    def token_failed(self, reason: str, *, refused: bool) -> None:
        """``refused``: the endpoint refused the credentials (no retry can fix that)."""
        self.token_failures += 1
        self.token = Outcome(self.clock(), False, reason)
        self.auth_refused = refused
        self._api_failed(f"token: {reason}")

    def polled(self, error: str | None = None) -> None:
        self.poll = Outcome(self.clock(), error is None, error)
        if error is None:
            self._api_ok()
        else:
            self._api_failed(f"poll: {error}")

    def delivered(self, result: str, status: int | None, error: str | None = None) -> None:
        """One POST /reports outcome: ``result`` is delivered, retry or dead."""
        now, klass = self.clock(), status_class(status)
        self.deliveries[(result, klass)] += 1
        self.delivery = Outcome(now, result == "delivered", f"{result} {klass}")
        if result == "delivered":
            self.last_delivered_at = now
            self._api_ok()
        elif status is None or status >= 500 or status in (401, 403, 429):
            self._api_failed(f"delivery: {error or klass}")  # the API, not our report

    def readings_stored(self, adapter: str, count: int) -> None:
        self.readings[adapter] += count

    def webhook_request(self, outcome: str) -> None:
        self.webhook_requests[outcome] += 1

    def adapter_status(self, status: dict[str, Any]) -> None:
        """The runtime's AdapterStatus (as a dict); its restarts become a counter."""
        name = str(status["name"])
        before = self.adapters.get(name)
        self.adapters[name] = status
        self.adapter_restarts[name] = int(status.get("restarts") or 0)
        if before is None or before.get("last_error") != status.get("last_error"):
            self._changed()

    # --- the error state ----------------------------------------------------------------------

    def _api_ok(self) -> None:
        if self.api_failing_since is not None:
            self.api_failing_since = None
            self._changed()

    def _api_failed(self, message: str) -> None:
        now = self.clock()
        changed = self.api_failing_since is None
        if changed:
            self.api_failing_since = now
        self.last_error = Outcome(now, False, message)
        if changed:
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def snapshot(self) -> dict[str, Any]:
        """The status part, JSON-ready (times as clock() seconds), for the ``meta`` table."""

        def out(outcome: Outcome | None) -> dict[str, Any] | None:
            return None if outcome is None else asdict(outcome)

        return {
            "token": out(self.token),
            "poll": out(self.poll),
            "delivery": out(self.delivery),
            "last_delivered_at": self.last_delivered_at,
            "last_error": out(self.last_error),
            "api_failing_since": self.api_failing_since,
            "auth_refused": self.auth_refused,
            "next_report_due": self.next_report_due,
            "token_failures": self.token_failures,
        }
