"""Faults the sandbox injects into ``POST /reports`` answers, consumed first in, first out.

Pure: no clock, no sockets. The server asks :meth:`FaultQueue.take` once per authorised
``POST /reports`` request and acts on what it gets.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = ["Fault", "FaultQueue", "faults_from_json"]


@dataclass(frozen=True)
class Fault:
    """What to do to the next ``count`` ``POST /reports`` requests.

    ``status``: answer this status instead of the normal answer (with ``retry_after`` sent
    verbatim as ``Retry-After`` and ``body`` as the body). ``delay``: wait this many seconds
    first. ``drop``: close the connection without answering; the report is not accepted.
    ``drop_after_accept``: accept and record the report, then close the connection without
    answering (the client never learns it succeeded). ``drop`` wins over ``status``, which wins
    over the normal answer.
    """

    status: int | None = None
    retry_after: str | None = None
    body: str | None = None
    delay: float = 0.0
    drop: bool = False
    drop_after_accept: bool = False
    count: int = 1

    def __post_init__(self) -> None:
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"status: expected an HTTP status 100-599, got {self.status}")
        if self.delay < 0:
            raise ValueError(f"delay: cannot be negative, got {self.delay}")
        if self.count < 1:
            raise ValueError(f"count: must be at least 1, got {self.count}")


class FaultQueue:
    """Faults waiting to be applied; a fault with ``count=n`` serves ``n`` requests in a row."""

    def __init__(self) -> None:
        self._queue: deque[tuple[Fault, int]] = deque()

    def add(self, *faults: Fault) -> None:
        self._queue.extend((fault, fault.count) for fault in faults)

    def clear(self) -> None:
        self._queue.clear()

    def take(self) -> Fault | None:
        """The fault for this request, or ``None`` for a normal answer."""
        if not self._queue:
            return None
        fault, left = self._queue.popleft()
        if left > 1:
            self._queue.appendleft((fault, left - 1))
        return fault

    def __len__(self) -> int:
        """How many requests the queued faults will still affect."""
        return sum(left for _, left in self._queue)


_FIELDS = frozenset(f.name for f in dataclasses.fields(Fault))


def faults_from_json(data: Any) -> list[Fault]:
    """Faults from decoded JSON: one object of :class:`Fault` fields, or a list of them.

    Raises ValueError (TypeError for a non-object) naming the offending field (``[1].status: ...``).
    """
    items = data if isinstance(data, list) else [data]
    faults = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise TypeError(f"[{index}]: expected an object of Fault fields, got {item!r}")
        unknown = sorted(set(item) - _FIELDS)
        if unknown:
            raise ValueError(f"[{index}].{unknown[0]}: unknown field; known: {sorted(_FIELDS)}")
        try:
            faults.append(msgspec.convert(item, Fault))
        except (msgspec.ValidationError, ValueError) as exc:
            raise ValueError(f"[{index}]: {exc}") from exc
    return faults
