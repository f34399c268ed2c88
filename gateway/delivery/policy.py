"""What to do after each POST /reports attempt. Pure: ``now`` and randomness come in.

- 2xx: delivered, never sent again.
- 408, 425, 429, 5xx, timeouts, connection errors, 401 after a fresh token:
  retry with capped exponential backoff and full jitter, never earlier than a
  ``Retry-After`` (seconds or HTTP date, capped).
- Any other 4xx: dead, with status and body kept; the other reports go on.

:class:`Breaker` makes the gateway back off *as a whole* while the API is down:
after a temporary failure nothing is sent until the pause ends, then one probe
goes out; only its success lets the rest flow again.
"""

from __future__ import annotations

import email.utils
import hashlib
import uuid
from dataclasses import dataclass

__all__ = [
    "Breaker",
    "Dead",
    "Delivered",
    "Outcome",
    "Retry",
    "backoff_delay",
    "classify",
    "idempotency_key",
    "parse_retry_after",
]

RETRYABLE_STATUSES = frozenset({401, 408, 425, 429})
BODY_KEPT = 2000  # characters of an error body kept in the outbox row


@dataclass(frozen=True, slots=True)
class Delivered:
    status: int
    report_id: str | None


@dataclass(frozen=True, slots=True)
class Retry:
    status: int | None
    error: str
    next_attempt_at: float


@dataclass(frozen=True, slots=True)
class Dead:
    status: int
    error: str


Outcome = Delivered | Retry | Dead


def idempotency_key(event_id: str, kind: str, body: bytes) -> str:
    """A stable key for one frozen report body: the same bytes always give the same key."""
    digest = hashlib.sha256(b"%s\n%s\n%s" % (event_id.encode(), kind.encode(), body)).digest()
    return str(uuid.UUID(bytes=digest[:16], version=5))


def backoff_delay(attempt: int, *, initial: float, maximum: float, rand: float) -> float:
    """Full jitter: uniform in [0, min(maximum, initial * 2**(attempt-1))). ``rand`` in [0, 1)."""
    exponent = min(max(attempt - 1, 0), 62)
    ceiling = min(maximum, initial * (2.0**exponent))
    return ceiling * rand


def parse_retry_after(value: str | None, *, now: float, cap: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), capped."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), cap)
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return min(max(moment.timestamp() - now, 0.0), cap)


def classify(
    status: int | None,
    *,
    error: str,
    attempt: int,
    now: float,
    retry_after: float | None,
    initial: float,
    maximum: float,
    rand: float,
    report_id: str | None = None,
) -> Outcome:
    """The outcome of one attempt. ``status`` is None for timeouts and connection errors."""
    if status is not None and 200 <= status < 300:
        return Delivered(status=status, report_id=report_id)
    if status is None or status in RETRYABLE_STATUSES or status >= 500:
        delay = backoff_delay(attempt, initial=initial, maximum=maximum, rand=rand)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return Retry(status=status, error=error[:BODY_KEPT], next_attempt_at=now + delay)
    return Dead(status=status, error=error[:BODY_KEPT])


@dataclass
class Breaker:
    """Whole-gateway backoff while the API is unavailable. Pure; the deliverer drives it."""

    initial: float
    maximum: float
    paused_until: float = 0.0
    failures: int = 0
    probing: bool = False

    def allowance(self, now: float, free: int) -> int:
        """How many new requests may start now, given ``free`` open slots."""
        if now < self.paused_until:
            return 0
        if self.failures == 0:
            return free
        if self.probing:
            return 0
        return min(free, 1)

    def started(self, count: int) -> None:
        if count and self.failures:
            self.probing = True

    def succeeded(self) -> None:
        self.failures = 0
        self.probing = False
        self.paused_until = 0.0

    def failed(self, *, now: float, rand: float, not_before: float) -> None:
        """A temporary failure: pause everything, at least until ``not_before``."""
        self.failures += 1
        self.probing = False
        delay = backoff_delay(
            self.failures, initial=self.initial, maximum=self.maximum, rand=0.5 + rand / 2
        )
        self.paused_until = max(self.paused_until, now + delay, not_before)

    def resumes_at(self) -> float:
        return self.paused_until
