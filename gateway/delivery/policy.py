"""What to do after each POST /reports attempt. Pure: ``now`` and randomness come in.

- 2xx: delivered, never sent again, whatever the reply's body says (or fails to say).
- 3xx: not delivery, and never followed (the API has no redirects; a 3xx comes from
  a proxy or a moved URL): retried with backoff, the status and ``Location`` kept.
- 408, 425, 429, 5xx, timeouts, connection errors, 401 after a fresh token, and any
  status outside 200-599: retry with capped exponential backoff and equal jitter
  (:func:`gateway.backoff.backoff_delay`), never earlier than a ``Retry-After``
  (seconds or HTTP date, capped).
- Any other 4xx: dead, with status and body kept; the other reports go on.

:class:`Breaker` makes the gateway back off *as a whole* while the API is down.
Its states and what moves them are the table :data:`BREAKER_TRANSITIONS`:

    closed   every slot may send; a temporary failure opens it (pause)
    open     nothing is sent until the pause ends; then one report goes out as the probe
    probing  that probe is out; nothing else starts

The probe's answer decides: delivered closes the breaker; a temporary failure
opens it again with a longer pause; a rejection (4xx: the report is dead) ends
the probe and the next report probes at once. Answers to requests sent before
the breaker opened close it when delivered and are otherwise already known.
"""

from __future__ import annotations

import email.utils
import enum
import math
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.backoff import backoff_delay
from gateway.store.outbox_states import (
    Dead,
    Delivered,
    Outcome,
    Retry,
    TransitionError,
    idempotency_key,
)

__all__ = [
    "BREAKER_TRANSITIONS",
    "Breaker",
    "BreakerState",
    "Dead",
    "Delivered",
    "Effect",
    "Outcome",
    "Retry",
    "Signal",
    "classify",
    "idempotency_key",
    "parse_retry_after",
    "signal_for",
]

RETRYABLE_STATUSES = frozenset({401, 408, 425, 429})
BODY_KEPT = 2000  # characters of an error body kept in the outbox row


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
    if status is not None and 400 <= status < 500 and status not in RETRYABLE_STATUSES:
        return Dead(status=status, error=error[:BODY_KEPT])
    delay = backoff_delay(attempt, initial=initial, maximum=maximum, rand=rand)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return Retry(status=status, error=error[:BODY_KEPT], next_attempt_at=now + delay)


def parse_retry_after(value: str | None, *, now: float, cap: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), capped."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return min(float(text), cap)
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, OverflowError):
        return None
    if moment.tzinfo is None:
        return None
    seconds = moment.timestamp() - now
    return min(max(seconds, 0.0), cap) if math.isfinite(seconds) else None


# --- the breaker ---------------------------------------------------------------------------


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    PROBING = "probing"


class Signal(enum.StrEnum):
    """What the deliverer tells the breaker: a request starts, or one was answered."""

    SEND = "send"  # a request starts while closed
    PROBE = "probe"  # the one request that tests the API while open
    DELIVERED = "delivered"  # answers to requests sent as SEND ...
    RETRY = "retry"
    REJECTED = "rejected"
    PROBE_DELIVERED = "probe_delivered"  # ... and to the probe
    PROBE_RETRY = "probe_retry"
    PROBE_REJECTED = "probe_rejected"


class Effect(enum.Enum):
    KEEP = "keep"  # failures and pause unchanged
    RESET = "reset"  # the API works: forget the failures and the pause
    PAUSE = "pause"  # one more failure: pause everything for longer


_B, _G, _F = BreakerState, Signal, Effect

# state -> {signal: (new state, effect)}. A pair not listed is illegal and raises.
BREAKER_TRANSITIONS: MappingProxyType[
    BreakerState, MappingProxyType[Signal, tuple[BreakerState, Effect]]
] = MappingProxyType(
    {
        _B.CLOSED: MappingProxyType(
            {
                _G.SEND: (_B.CLOSED, _F.KEEP),
                _G.DELIVERED: (_B.CLOSED, _F.KEEP),
                _G.RETRY: (_B.OPEN, _F.PAUSE),
                _G.REJECTED: (_B.CLOSED, _F.KEEP),
                # a probe still out when another answer closed the breaker
                _G.PROBE_DELIVERED: (_B.CLOSED, _F.KEEP),
                _G.PROBE_RETRY: (_B.OPEN, _F.PAUSE),
                _G.PROBE_REJECTED: (_B.CLOSED, _F.KEEP),
            }
        ),
        _B.OPEN: MappingProxyType(
            {
                _G.PROBE: (_B.PROBING, _F.KEEP),
                _G.DELIVERED: (_B.CLOSED, _F.RESET),
                _G.RETRY: (_B.OPEN, _F.PAUSE),
                _G.REJECTED: (_B.OPEN, _F.KEEP),
                _G.PROBE_DELIVERED: (_B.CLOSED, _F.RESET),
                _G.PROBE_RETRY: (_B.OPEN, _F.PAUSE),
                _G.PROBE_REJECTED: (_B.OPEN, _F.KEEP),
            }
        ),
        _B.PROBING: MappingProxyType(
            {
                _G.DELIVERED: (_B.CLOSED, _F.RESET),
                _G.RETRY: (_B.PROBING, _F.KEEP),  # sent before the pause: already known
                _G.REJECTED: (_B.PROBING, _F.KEEP),
                _G.PROBE_DELIVERED: (_B.CLOSED, _F.RESET),
                _G.PROBE_RETRY: (_B.OPEN, _F.PAUSE),
                _G.PROBE_REJECTED: (_B.OPEN, _F.KEEP),  # the probe ends; the next one goes now
            }
        ),
    }
)


def signal_for(outcome: Outcome, *, probe: bool) -> Signal:
    """The breaker signal for the answer to a request (``probe``: it went out as the probe)."""
    match outcome:
        case Delivered():
            return Signal.PROBE_DELIVERED if probe else Signal.DELIVERED
        case Retry():
            return Signal.PROBE_RETRY if probe else Signal.RETRY
        case Dead():
            return Signal.PROBE_REJECTED if probe else Signal.REJECTED


@dataclass
class Breaker:
    """Whole-gateway backoff while the API is unavailable. Pure; the deliverer drives it."""

    initial: float
    maximum: float
    state: BreakerState = field(default=BreakerState.CLOSED)
    paused_until: float = 0.0
    failures: int = 0

    def allowance(self, now: float, free: int) -> int:
        """How many new requests may start now, given ``free`` open slots."""
        match self.state:
            case BreakerState.CLOSED:
                return max(free, 0)
            case BreakerState.OPEN:
                return min(max(free, 0), 1) if now >= self.paused_until else 0
            case BreakerState.PROBING:
                return 0

    def start(self) -> bool:
        """One request starts (the caller checked :meth:`allowance`); True if it is the probe."""
        probe = self.state is not BreakerState.CLOSED
        self.apply(Signal.PROBE if probe else Signal.SEND)
        return probe

    def apply(
        self, signal: Signal, *, now: float = 0.0, rand: float = 0.5, not_before: float = 0.0
    ) -> bool:
        """Move by the table; True if the state or the pause changed. A pause lasts at least until
        ``not_before`` (a report's own retry time, which honours ``Retry-After``)."""
        moves = BREAKER_TRANSITIONS[self.state]
        if signal not in moves:
            raise TransitionError("delivery breaker", self.state, signal)
        new, effect = moves[signal]
        if effect is Effect.RESET:
            self.failures, self.paused_until = 0, 0.0
        elif effect is Effect.PAUSE:
            self.failures += 1
            delay = backoff_delay(
                self.failures, initial=self.initial, maximum=self.maximum, rand=rand
            )
            self.paused_until = max(self.paused_until, now + delay, not_before)
        changed, self.state = new is not self.state, new
        return changed or effect is not Effect.KEEP

    def resumes_at(self) -> float:
        return self.paused_until if self.state is BreakerState.OPEN else 0.0
