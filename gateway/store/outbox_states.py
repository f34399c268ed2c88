"""The outbox row state machine, written down as a table. Pure: no SQLite, no clock.

Every change :mod:`gateway.store.outbox` makes to a row's ``state`` is one of
these transitions; its SQL says ``WHERE state IN (sources(event))`` and sets
``target(event)``, so a row in any other state is left alone and reported:

    state       event        new state   who
    pending     claim        in_flight   the keeper (attempts + 1)
    pending     retry_now    pending     ``ecgw outbox retry`` (due now)
    in_flight   delivered    delivered   a 2xx was answered (final: never sent again)
    in_flight   retry        pending     a temporary failure (due after the backoff)
    in_flight   dead         dead        a permanent rejection (status and body kept)
    in_flight   hand_back    pending     shutdown, or the breaker paused delivery
    in_flight   recover      pending     at start: a crash left it claimed
    dead        retry_now    pending     ``ecgw outbox retry``
    dead        purge        (deleted)   ``ecgw outbox purge``

``delivered`` has no way out: its ``Idempotency-Key`` keeps the report from
being queued twice. The outcome of one attempt (:data:`Outcome`) is the event
the delivery policy chooses; this module also makes a report's key.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from dataclasses import dataclass
from types import MappingProxyType
from typing import assert_never

from gateway.errors import GatewayError

__all__ = [
    "TRANSITIONS",
    "Dead",
    "Delivered",
    "Outcome",
    "Retry",
    "RowEvent",
    "RowState",
    "TransitionError",
    "event_of",
    "idempotency_key",
    "sources",
    "target",
    "transition",
]


class RowState(enum.StrEnum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    DELIVERED = "delivered"
    DEAD = "dead"


class RowEvent(enum.StrEnum):
    CLAIM = "claim"
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"
    HAND_BACK = "hand_back"
    RECOVER = "recover"
    RETRY_NOW = "retry_now"
    PURGE = "purge"


_S, _E = RowState, RowEvent

# state -> {event: new state}; None = the row is deleted. A pair not listed is illegal.
TRANSITIONS: MappingProxyType[RowState, MappingProxyType[RowEvent, RowState | None]] = (
    MappingProxyType(
        {
            _S.PENDING: MappingProxyType({_E.CLAIM: _S.IN_FLIGHT, _E.RETRY_NOW: _S.PENDING}),
            _S.IN_FLIGHT: MappingProxyType(
                {
                    _E.DELIVERED: _S.DELIVERED,
                    _E.RETRY: _S.PENDING,
                    _E.DEAD: _S.DEAD,
                    _E.HAND_BACK: _S.PENDING,
                    _E.RECOVER: _S.PENDING,
                }
            ),
            _S.DELIVERED: MappingProxyType({}),
            _S.DEAD: MappingProxyType({_E.RETRY_NOW: _S.PENDING, _E.PURGE: None}),
        }
    )
)


class TransitionError(GatewayError):
    """A state change the table does not allow: a bug, or a row changed behind our back."""

    def __init__(self, machine: str, state: str, event: str) -> None:
        self.machine, self.state, self.event = machine, state, event
        super().__init__(f"{machine}: no transition from '{state}' on '{event}'")


def transition(state: RowState, event: RowEvent) -> RowState | None:
    """The new state (None: deleted); :class:`TransitionError` if the pair is not in the table."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise TransitionError("outbox row", state, event) from None


def sources(event: RowEvent) -> tuple[RowState, ...]:
    """The states ``event`` may leave from, in table order."""
    return tuple(state for state, moves in TRANSITIONS.items() if event in moves)


def target(event: RowEvent) -> RowState | None:
    """The one state ``event`` leads to (every source leads to the same one)."""
    (new,) = {TRANSITIONS[state][event] for state in sources(event)}
    return new


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


def event_of(outcome: Outcome) -> RowEvent:
    """The row event that records ``outcome``."""
    match outcome:
        case Delivered():
            return RowEvent.DELIVERED
        case Retry():
            return RowEvent.RETRY
        case Dead():
            return RowEvent.DEAD
    assert_never(outcome)


def idempotency_key(event_id: str, kind: str, body: bytes) -> str:
    """A stable key for one frozen report body: the same bytes always give the same key."""
    digest = hashlib.sha256(b"%s\n%s\n%s" % (event_id.encode(), kind.encode(), body)).digest()
    return str(uuid.UUID(bytes=digest[:16], version=5))


for _event in RowEvent:  # every event is used, and leads to one state
    assert sources(_event), _event
    target(_event)
