"""When each open event is next to be looked at: the scheduler's agenda (pure, in memory).

Each open event has one due time; the scheduler advances only the events whose time
has come and sleeps until the earliest of the rest, so a pass costs what is due, not
what is open. The agenda is rebuilt from the database (every open event due at once)
when the scheduler starts, after a failed pass and after the clock jumped back.
"""

from __future__ import annotations

import heapq

__all__ = ["Agenda"]


class Agenda:
    """Event id -> due time, with the earliest found in O(log n)."""

    def __init__(self) -> None:
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._due

    def due_at(self, event_id: str) -> float | None:
        return self._due.get(event_id)

    def set(self, event_id: str, at: float) -> None:
        """``event_id`` is next due at ``at`` (replacing any earlier time set)."""
        if self._due.get(event_id) == at:
            return
        self._due[event_id] = at
        heapq.heappush(self._heap, (at, event_id))
        if len(self._heap) > 2 * len(self._due) + 64:  # drop the stale entries now and then
            self._heap = [(t, e) for e, t in self._due.items()]
            heapq.heapify(self._heap)

    def sooner(self, event_id: str, at: float) -> None:
        """``event_id`` is due at ``at`` at the latest."""
        current = self._due.get(event_id)
        if current is None or at < current:
            self.set(event_id, at)

    def drop(self, event_id: str) -> None:
        """``event_id`` is no longer open (its stale heap entry is skipped later)."""
        self._due.pop(event_id, None)

    def clear(self) -> None:
        self._due.clear()
        self._heap.clear()

    def earliest(self) -> float | None:
        self._skip_stale()
        return self._heap[0][0] if self._heap else None

    def take_due(self, now: float) -> list[str]:
        """Every event due at or before ``now``, earliest first; they leave the agenda
        (the caller sets each one's next time after advancing it)."""
        taken: list[str] = []
        while True:
            self._skip_stale()
            if not self._heap or self._heap[0][0] > now:
                return taken
            _, event_id = heapq.heappop(self._heap)
            del self._due[event_id]
            taken.append(event_id)

    def _skip_stale(self) -> None:
        heap = self._heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
